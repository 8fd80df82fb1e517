"""The embedded default: embedder, trainer and hub_gateway in this process on loopback ports,
all state under one data directory.

This is what `clients/cli.py` uses when no server address is given. Jobs run in this process;
their records live in the data directory, so a job interrupted here resumes the next time the
embedded services start on the same directory.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from tunewire.paths import default_data_dir
from tunewire.server import ServerSecurity

log = structlog.get_logger(__name__)

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})


@dataclass
class Embedded:
    data_dir: Path
    embedder_address: str
    trainer_address: str
    hub_gateway_address: str | None
    _apps: list = field(default_factory=list)

    def close(self, grace: float = 2.0) -> None:
        for app in reversed(self._apps):
            app.running.stop(grace).wait(grace + 1)
            app.close()
        self._apps.clear()

    def __enter__(self) -> Embedded:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_embedded(
    data_dir: Path | None = None,
    host: str = "127.0.0.1",
    ports: tuple[int, int, int] = (0, 0, 0),
    security: ServerSecurity | None = None,
    models: dict[str, str] | None = None,
    freeze: bool = False,
    compute_dtype: str = "auto",
) -> Embedded:
    """Start all three services; ports 0 pick free ones. `security` (tokens, TLS, reflection,
    the concurrency cap) applies to all three; `models` (NAME → PATH, `--model`) goes to the
    embedder and the trainer, `compute_dtype` (`--compute-dtype`) to the embedder; their calls
    to each other then take their token and TLS settings from the environment
    (`ClientSecurity.from_env`), as separate services do.

    Starting them imports torch and the services' code: some 400k objects that live as long as
    the process, which the cyclic collector walked again at each of its full collections while
    they were made (~0.15 s of a warm job's CPU on a 2-core VM); it is held off meanwhile.
    `freeze` (a program's run, not a caller that goes on after `close`) then moves every object
    there is out of the collector's way for good (gc.freeze), so that a job's collections walk
    only the job's own objects."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        services = _start(data_dir, host, ports, security, models, compute_dtype)
    finally:
        if enabled:
            gc.enable()
    if freeze:
        gc.freeze()
    return services


def _start(
    data_dir: Path | None,
    host: str,
    ports: tuple[int, int, int],
    security: ServerSecurity | None,
    models: dict[str, str] | None,
    compute_dtype: str = "auto",
) -> Embedded:
    from services.embedder.app import Settings as EmbedderSettings
    from services.embedder.app import start as start_embedder
    from services.hub_gateway.app import Settings as GatewaySettings
    from services.hub_gateway.app import start as start_gateway
    from services.trainer.app import Settings as TrainerSettings
    from services.trainer.app import start as start_trainer

    data_dir = Path(data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    security = security or ServerSecurity()
    # The services call each other on loopback when bound to every interface: a TLS
    # certificate names localhost or 127.0.0.1, never 0.0.0.0.
    dial = "127.0.0.1" if host in WILDCARD_HOSTS else host
    # With tokens the services are shared: PredictRows reads a job's artifact as the job (its
    # owner's, through the trainer), never any path on this machine, nor this folder's; the
    # encoders, the trainer's jobs and Predict read models under their roots only (the data
    # directory's models, the trainer's artifacts, the --model paths), as separate services do.
    shared = security.auth_tokens_file is not None
    apps = []
    try:
        embedder = start_embedder(
            EmbedderSettings(
                host=host,
                port=ports[0],
                data_dir=data_dir,
                security=security,
                artifact_roots=[] if shared else [Path.cwd()],
                allow_any_artifact_path=not shared,
                job_artifact_roots=[data_dir / "artifacts"],
                model_roots=[data_dir / "models"] if shared else None,
                models=dict(models or {}),
                compute_dtype=compute_dtype,
            )
        )
        apps.append(embedder)
        embedder_address = f"{dial}:{embedder.port}"
        trainer = start_trainer(
            TrainerSettings(
                data_dir=data_dir,
                host=host,
                port=ports[1],
                embedder=embedder_address,
                allow_any_model_path=not shared,
                security=security,
                models=dict(models or {}),
            )
        )
        apps.append(trainer)
        trainer_address = f"{dial}:{trainer.port}"
        embedder.set_trainer(trainer_address)
        gateway = start_gateway(
            GatewaySettings(
                host=host,
                port=ports[2],
                data_dir=data_dir,
                trainer_address=trainer_address,
                artifact_roots=[data_dir / "artifacts", Path.cwd()],
                security=security,
            )
        )
        apps.append(gateway)
        gateway_address = f"{dial}:{gateway.port}"
        trainer.core.set_hub_gateway(gateway_address)
    except BaseException:
        for app in reversed(apps):
            app.running.stop(None)
            app.close()
        raise
    log.info(
        "embedded services started",
        data_dir=str(data_dir),
        embedder=embedder_address,
        trainer=trainer_address,
        hub_gateway=gateway_address,
    )
    return Embedded(data_dir, embedder_address, trainer_address, gateway_address, apps)
