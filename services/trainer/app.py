"""Build and start the trainer server (used by `python -m services.trainer` and embedded mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunewire.server import RunningServer, ServerSettings, Service, create_server
from tunewire.v1 import trainer_pb2_grpc
from services.trainer.service import TrainerCore
from services.trainer.servicer import TrainerServicer

SERVICE_NAME = "tunewire.v1.TrainerService"


@dataclass
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50052
    embedder: str | None = None
    hub_gateway: str | None = None
    workers: int = 1
    # Embedded mode reads model paths anywhere the user can; a server only under its roots.
    allow_any_model_path: bool = False
    model_roots: list[Path] = field(default_factory=list)


@dataclass
class App:
    running: RunningServer
    core: TrainerCore

    @property
    def port(self) -> int:
        return self.running.port

    def close(self) -> None:
        self.core.close()


def start(settings: Settings) -> App:
    core = TrainerCore(settings.data_dir, embedder_address=settings.embedder,
                       hub_gateway_address=settings.hub_gateway, workers=settings.workers,
                       allowed_model_roots=settings.model_roots,
                       allow_any_model_path=settings.allow_any_model_path)
    running = create_server(
        [Service(SERVICE_NAME, TrainerServicer(core),
                 trainer_pb2_grpc.add_TrainerServiceServicer_to_server)],
        ServerSettings(host=settings.host, port=settings.port))
    core.start()
    running.set_ready(SERVICE_NAME)
    return App(running, core)
