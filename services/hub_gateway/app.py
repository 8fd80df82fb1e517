"""Build and start the hub gateway (used by `python -m services.hub_gateway` and embedded mode).

`start` is cheap (no network, no model): the CLI's embedded mode calls it in-process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from services.hub_gateway.hub_client import HubClient
from services.hub_gateway.servicer import SERVICE_NAME, HubGatewayServicer
from services.hub_gateway.staging import DEFAULT_MAX_RECEIVING_UPLOADS, UploadSlots
from services.hub_gateway.uploads import UploadManager
from tunewire import metrics
from tunewire.errors import FailedPrecondition
from tunewire.server import (
    STREAM_CHUNK_BYTES,
    RunningServer,
    ServerSecurity,
    ServerSettings,
    Service,
    channel_options,
    create_server,
)
from tunewire.tls import ClientSecurity
from tunewire.v1 import hub_gateway_pb2_grpc, trainer_pb2_grpc

log = structlog.get_logger("tunewire.hub_gateway")

DEFAULT_ENDPOINT = "https://huggingface.co"
# Clients send files in chunks of STREAM_CHUNK_BYTES (2 MiB); gRPC holds a received message
# about three times over while parsing it, so a 64 MiB message cost ~170 MB per upload.
DEFAULT_MAX_MESSAGE_BYTES = 2 * STREAM_CHUNK_BYTES


@dataclass
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50053
    trainer_address: str | None = None
    artifact_roots: list[Path] = field(default_factory=list)
    # A mounted Secret; read for every upload so a rotated token is picked up.
    token_file: Path | None = None
    # None: HF_ENDPOINT, else the public Hub.
    endpoint: str | None = None
    # A token given directly (embedded mode, tests); wins over the file and HF_TOKEN.
    token: str | None = field(default=None, repr=False)
    workers: int = 2
    # Largest message (an upload chunk); larger is RESOURCE_EXHAUSTED from gRPC.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Uploads being received at once; one more is RESOURCE_EXHAUSTED (UPLOADS_BUSY).
    max_receiving_uploads: int = DEFAULT_MAX_RECEIVING_UPLOADS
    security: ServerSecurity = field(default_factory=ServerSecurity)

    def __post_init__(self) -> None:
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be at least 64 KiB")
        if self.max_receiving_uploads < 1:
            raise ValueError("max_receiving_uploads must be >= 1")


def resolve_endpoint(settings: Settings) -> str:
    return (settings.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def read_token(settings: Settings) -> str | None:
    """The Hub token: given directly, else the token file, else HF_TOKEN; never interactive."""
    if settings.token:
        return settings.token
    if settings.token_file is not None:
        try:
            token = settings.token_file.read_text().strip()
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read the token file {settings.token_file}: {exc.strerror}",
                reason="HUB_TOKEN_UNREADABLE",
            ) from None
        if token:
            return token
    return os.environ.get("HF_TOKEN") or None


def metrics_source(manager: UploadManager) -> Callable[[], list[Metric]]:
    """The gateway's scrape-time metrics: uploads by state (PENDING is the queue's depth)."""

    def collect() -> list[Metric]:
        family = GaugeMetricFamily(
            "tunewire_hub_gateway_uploads", "Uploads by state", labels=["state"]
        )
        for state, count in manager.counts_by_state().items():
            family.add_metric([state], count)
        return [family]

    return collect


@dataclass
class App:
    running: RunningServer
    manager: UploadManager
    trainer_channel: grpc.Channel | None
    remove_metrics: Callable[[], None] = lambda: None

    @property
    def port(self) -> int:
        return self.running.port

    def close(self, grace: float | None = 5.0) -> None:
        """Stop serving, let running uploads finish, close the trainer channel."""
        self.running.stop(grace).wait()
        self.remove_metrics()
        self.manager.close()
        if self.trainer_channel is not None:
            self.trainer_channel.close()


def start(settings: Settings) -> App:
    """Start the gateway on settings.host:settings.port (0 for any) and mark it SERVING."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    endpoint = resolve_endpoint(settings)
    manager = UploadManager(
        data_dir,
        lambda: HubClient(endpoint, read_token(settings)),
        endpoint,
        workers=settings.workers,
    )
    channel = None
    trainer = None
    if settings.trainer_address:
        # TUNEWIRE_TOKEN(_FILE) / TUNEWIRE_TLS_*: the trainer may require a token and TLS.
        channel = ClientSecurity.from_env().channel(settings.trainer_address, channel_options())
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        trainer = lambda: stub  # noqa: E731 - one stub per channel, shared by all calls
    staging = data_dir / "uploads" / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    servicer = HubGatewayServicer(
        manager,
        staging,
        [Path(r) for r in settings.artifact_roots],
        trainer,
        UploadSlots(settings.max_receiving_uploads),
    )
    running = create_server(
        [
            Service(
                SERVICE_NAME, servicer, hub_gateway_pb2_grpc.add_HubGatewayServiceServicer_to_server
            )
        ],
        ServerSettings(
            host=settings.host,
            port=settings.port,
            max_message_bytes=settings.max_message_bytes,
            security=settings.security,
        ),
    )
    running.set_ready(SERVICE_NAME)
    log.info(
        "hub gateway ready",
        port=running.port,
        endpoint=endpoint,
        trainer=settings.trainer_address,
        artifact_roots=[str(r) for r in settings.artifact_roots],
        token_configured=bool(settings.token or settings.token_file or os.environ.get("HF_TOKEN")),
    )
    return App(running, manager, channel, metrics.add_source(metrics_source(manager)))
