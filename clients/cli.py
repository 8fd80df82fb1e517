#!/usr/bin/env python
"""tunewire's command line: train, predict, evaluate, embed, jobs, serve, upload.

Without a server address (`--trainer`, `TUNEWIRE_TRAINER`; `--embedder` for embed) the three
services start in this process on loopback ports with their state under one data directory
(`--data-dir`, `TUNEWIRE_DATA_DIR`, default `./.tunewire`). Ludwig's flag spellings work, and so do
dashed ones. With `--json`, the last line of stdout is one JSON object; everything meant for a
person goes to stderr. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python clients/cli.py` from a checkout
    # The checkout's root in place of this script's directory, whose `http` package (the HTTP
    # front door, clients.http) would otherwise shadow the standard library's.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, exit_code  # noqa: E402
from tunewire.errors import TunewireError  # noqa: E402


def _flag(*names: str) -> list[str]:
    """Ludwig's underscore spelling plus the dashed one."""
    out = []
    for n in names:
        out.append(n)
        if n.startswith("--") and "_" in n:
            out.append(n.replace("_", "-"))
    return out


def _add_connection(p: argparse.ArgumentParser, service: str = "trainer") -> None:
    env = {"trainer": "TUNEWIRE_TRAINER", "embedder": "TUNEWIRE_EMBEDDER"}[service]
    p.add_argument(
        f"--{service}",
        default=os.environ.get(env),
        help=f"{service} address HOST:PORT (env {env}); default: start the services "
        "embedded in this process",
    )
    p.add_argument(
        *_flag("--data_dir"),
        dest="data_dir",
        type=Path,
        default=None,
        help="state directory for the embedded services (env TUNEWIRE_DATA_DIR, "
        "default ./.tunewire)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show service logs")
    sec = p.add_argument_group("security (a remote server's token and TLS)")
    sec.add_argument(
        "--token",
        dest="auth_token",
        default=None,
        help="bearer token (env TUNEWIRE_TOKEN, or a file in TUNEWIRE_TOKEN_FILE)",
    )
    for name, what in (
        ("ca", "CA bundle that verifies the server; turns TLS on"),
        ("cert", "client certificate for mutual TLS"),
        ("key", "client private key for mutual TLS"),
    ):
        sec.add_argument(
            *_flag(f"--tls_{name}"),
            dest=f"tls_{name}",
            type=Path,
            default=None,
            help=f"{what} (env TUNEWIRE_TLS_{name.upper()})",
        )


def _channel(args, address: str):
    """A channel to a remote server: the flags above, each falling back to its env variable."""
    from dataclasses import replace

    from clients.sdk import connect
    from tunewire.tls import ClientSecurity

    security = ClientSecurity.from_env()
    flags = {
        "token": args.auth_token,
        "ca": args.tls_ca,
        "cert": args.tls_cert,
        "key": args.tls_key,
    }
    return connect(address, replace(security, **{k: v for k, v in flags.items() if v}))


@contextlib.contextmanager
def trainer_client(args):
    """A TrainerClient on the given address, or on embedded services started for this command."""
    from clients.sdk import TrainerClient

    if args.trainer:
        client = TrainerClient(args.trainer, channel=_channel(args, args.trainer))
        try:
            yield client
        finally:
            client.close()
        return
    from clients.embedded import start_embedded

    with start_embedded(args.data_dir) as services:
        client = TrainerClient(services.trainer_address)
        try:
            yield client
        finally:
            client.close()


# ----------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from clients.progress import ProgressPrinter
    from clients.sdk import metrics_dict
    from services.trainer.model_types import resolve
    from tunewire.config import load
    from tunewire.v1 import trainer_pb2

    raw = load(args.config)
    resolve(raw)  # validate at the edge, before any service starts
    sets = {
        "dataset": args.dataset,
        "training_set": args.training_set,
        "validation_set": args.validation_set,
        "test_set": args.test_set,
    }
    if not args.dataset and not args.training_set:
        raise TunewireError("give --dataset or --training_set", field="dataset")
    for name, path in sets.items():
        if path and not Path(path).is_file():
            raise TunewireError(f"{path!r} does not exist", field=name)
    with trainer_client(args) as trainer:
        ids = {name: trainer.upload_dataset(path).id for name, path in sets.items() if path}
        job = trainer.create_job(
            raw,
            dataset_id=ids.get("dataset", ""),
            training_set_id=ids.get("training_set", ""),
            validation_set_id=ids.get("validation_set", ""),
            test_set_id=ids.get("test_set", ""),
            request_id=args.request_id,
            upload_to=args.upload_to or "",
        )
        print(f"job {job.id} queued", file=sys.stderr)
        printer = ProgressPrinter(enabled=not args.quiet)
        try:
            job = trainer.wait(job.id, on_event=printer)
        except KeyboardInterrupt:
            printer.close()
            print(f"\ninterrupted; cancelling job {job.id}", file=sys.stderr)
            trainer.cancel_job(job.id)
            raise
        printer.close()
        artifact = job.artifact_path
        if job.state == trainer_pb2.Job.SUCCEEDED and args.output_directory:
            artifact = str(
                trainer.download_artifact(job.id, Path(args.output_directory) / job.id).resolve()
            )
    metrics = metrics_dict(job.metrics)
    state = trainer_pb2.Job.State.Name(job.state)
    _print_metrics(metrics)
    if job.state == trainer_pb2.Job.SUCCEEDED:
        print(f"artifact: {artifact}", file=sys.stderr)
    else:
        print(f"job {job.id} {state.lower()}: {job.error}", file=sys.stderr)
    summary = {"job_id": job.id, "state": state, "metrics": metrics, "artifact": artifact}
    if job.error:
        summary["error"] = job.error
    if job.upload_id:
        summary["upload_id"] = job.upload_id
    if args.json:
        print(_json(summary))
    return 0 if job.state == trainer_pb2.Job.SUCCEEDED else EXIT_FAILED


def _finite(value):
    """`value` with every NaN or infinity made None: JSON has no NaN (a metric that needs two
    classes is undefined on one), and `--json` output must parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(value, **kwargs) -> str:
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _print_metrics(metrics: dict) -> None:
    for split in ("train", "validation", "test"):
        for feature, values in metrics.get(split, {}).items():
            text = "  ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()))
            print(f"{split:<10} {feature}: {text}", file=sys.stderr)


# --------------------------------------------------------------------------- predict, evaluate
def _predict(args, evaluate: bool):
    generation = None
    if getattr(args, "generation_config", None):
        value = args.generation_config
        try:
            generation = json.loads(Path(value).read_text() if Path(value).is_file() else value)
        except (json.JSONDecodeError, OSError) as exc:
            raise TunewireError(
                f"not a JSON object or file: {exc}", field="generation_config"
            ) from None
    if not Path(args.dataset).is_file():
        raise TunewireError(f"{args.dataset!r} does not exist", field="dataset")
    model = args.model
    if Path(model).exists():
        model = str(Path(model).resolve())
    with trainer_client(args) as trainer:
        ds = trainer.upload_dataset(args.dataset)
        return trainer.predict(model, ds.id, evaluate=evaluate, generation_config=generation)


def cmd_predict(args) -> int:
    from clients.sdk import metrics_dict, predictions_frame

    resp = _predict(args, evaluate=False)
    out_dir = Path(args.output_directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "predictions.csv"
    predictions_frame(resp).to_csv(path, index=False)
    print(f"{resp.rows} predictions written to {path}", file=sys.stderr)
    if args.json:
        print(
            _json(
                {
                    "predictions": str(path.resolve()),
                    "rows": resp.rows,
                    "metrics": metrics_dict(resp.metrics),
                }
            )
        )
    return 0


def cmd_evaluate(args) -> int:
    from clients.sdk import metrics_dict, predictions_frame

    resp = _predict(args, evaluate=True)
    metrics = metrics_dict(resp.metrics)
    _print_metrics(metrics)
    if args.output_directory:
        out_dir = Path(args.output_directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        predictions_frame(resp).to_csv(out_dir / "predictions.csv", index=False)
        (out_dir / "test_statistics.json").write_text(_json(metrics, indent=2))
    if args.json:
        print(_json({"rows": resp.rows, "metrics": metrics}))
    return 0


# ------------------------------------------------------------------------------------ embed
def cmd_embed(args) -> int:
    import numpy as np

    from clients.sdk import EmbedderClient, EncoderSpec

    path = Path(args.input)
    if not path.is_file():
        raise TunewireError(f"{args.input!r} does not exist", field="input")
    texts = path.read_text(encoding="utf-8").splitlines()
    if not texts:
        raise TunewireError(f"{args.input!r} has no lines to embed", field="input")
    spec = EncoderSpec(
        model=args.model,
        pooling=args.pooling,
        max_length=args.max_length,
        normalize=args.normalize,
        dtype=args.dtype,
        layer=args.layer,
        instruction=args.instruction,
    )
    with contextlib.ExitStack() as stack:
        address = args.embedder
        if not address:
            from services.embedder.app import Settings, start
            from tunewire.paths import default_data_dir

            app = start(Settings(port=0, data_dir=Path(args.data_dir or default_data_dir())))
            stack.callback(app.stop)
            address = f"127.0.0.1:{app.port}"
        client = EmbedderClient(address, channel=_channel(args, address) if args.embedder else None)
        stack.callback(client.close)
        result = client.embed_many(texts, spec)
    np.save(args.output, result.vectors)
    print(
        f"{len(texts)} vectors of dimension {result.vectors.shape[1]} written to "
        f"{args.output} ({result.cache_hits} from the cache, {result.cache_misses} computed)",
        file=sys.stderr,
    )
    if args.json:
        print(
            _json(
                {
                    "output": str(Path(args.output).resolve()),
                    "shape": list(result.vectors.shape),
                    "cache_hits": result.cache_hits,
                    "cache_misses": result.cache_misses,
                    "fingerprint": result.fingerprint,
                }
            )
        )
    return 0


# ------------------------------------------------------------------------------------- jobs
def cmd_jobs(args) -> int:
    from google.protobuf.json_format import MessageToDict

    from clients.progress import ProgressPrinter
    from clients.sdk import metrics_dict
    from tunewire.v1 import trainer_pb2

    with trainer_client(args) as trainer:
        if args.action == "list":
            jobs = trainer.list_jobs()
            if args.json:
                print(_json([MessageToDict(j) for j in jobs]))
            for j in jobs:
                print(
                    f"{j.id}  {trainer_pb2.Job.State.Name(j.state):<10} {j.error}",
                    file=sys.stderr if args.json else sys.stdout,
                )
            return 0
        if not args.job_id:
            raise TunewireError(f"jobs {args.action} needs a job id", field="job_id")
        if args.action == "cancel":
            job = trainer.cancel_job(args.job_id)
        elif args.action == "watch":
            job = trainer.wait(args.job_id, on_event=ProgressPrinter())
        else:
            job = trainer.get_job(args.job_id)
    state = trainer_pb2.Job.State.Name(job.state)
    summary = {
        "job_id": job.id,
        "state": state,
        "metrics": metrics_dict(job.metrics),
        "artifact": job.artifact_path,
        "error": job.error,
    }
    print(_json(summary) if args.json else f"{job.id} {state} {job.error}".strip())
    return 0


# ------------------------------------------------------------------------------------ serve
def cmd_serve(args, extra: list[str]) -> int:
    if args.service == "embedder":
        from services.embedder.__main__ import main
    elif args.service == "trainer":
        from services.trainer.__main__ import main
    elif args.service == "hub_gateway":
        from services.hub_gateway.__main__ import main
    elif args.service == "http":
        from clients.commands.serve_http import serve_http

        return serve_http(args, extra)
    else:
        return _serve_all(args, extra)
    argv = list(extra)
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    if args.host is not None:
        argv += ["--host", args.host]
    return main(argv) or 0


def _serve_all_parser() -> argparse.ArgumentParser:
    """`serve all`'s own options: the services' security flags, from the one definition in
    tunewire/server_flags.py. Parsed from what the `serve` parser leaves over, because for
    `serve trainer` and the others those same flags pass through to the service's main."""
    from clients.commands.serve_http import add_http_flags
    from tunewire.model_names import add_model_flag
    from tunewire.server_flags import add_security_flags

    p = argparse.ArgumentParser(prog="clients/cli.py serve all", add_help=False)
    add_security_flags(p, calls_peers=True)
    add_model_flag(p)
    add_http_flags(p)
    return p


def _peer_settings_missing(sec: argparse.Namespace) -> str | None:
    """Under `serve all` the services call each other; what they would lack to do so."""
    env = os.environ.get
    if sec.auth_tokens_file and not (sec.service_token_file or env("TUNEWIRE_TOKEN")):
        return (
            "--auth-tokens-file needs --service-token-file (or TUNEWIRE_TOKEN): the token, "
            "of role service, that the services present to each other"
        )
    if sec.tls_cert and not (env("TUNEWIRE_TLS_CA") or env("TUNEWIRE_TLS")):
        return (
            "--tls-cert needs TUNEWIRE_TLS_CA: the CA the services verify each other's "
            "certificate with"
        )
    if sec.tls_client_ca and not (env("TUNEWIRE_TLS_CERT") and env("TUNEWIRE_TLS_KEY")):
        return (
            "--tls-client-ca needs TUNEWIRE_TLS_CERT and TUNEWIRE_TLS_KEY: the client "
            "certificate the services present to each other"
        )
    return None


def _serve_all(args, extra: list[str]) -> int:
    from clients.embedded import start_embedded
    from tunewire.errors import InvalidArgument
    from tunewire.logging import configure, get_logger
    from tunewire.server import wait_for_termination
    from tunewire.server_flags import export_peer_token, security_from_args, warn_if_exposed

    sec, unknown = _serve_all_parser().parse_known_args(extra)
    if unknown:
        raise InvalidArgument(f"unknown options for serve all: {' '.join(unknown)}", field="serve")
    missing = _peer_settings_missing(sec)
    if missing:
        raise InvalidArgument(f"serve all: {missing}", field="serve")
    if sec.health_port is not None:
        # One port cannot serve three servers' health; each answers health on its own port.
        raise InvalidArgument(
            "serve all: --health-port (or TUNEWIRE_HEALTH_PORT) is for one service's own process",
            field="serve",
        )
    from clients.commands.serve_http import HTTP_PORT_OFFSET, start_http
    from clients.http.backend import Backend
    from tunewire.model_names import models_from_args

    security = security_from_args(sec)
    models = models_from_args(sec)
    export_peer_token(sec)
    configure()
    warn_if_exposed(args.host or "127.0.0.1", security, "all")
    base = args.port if args.port is not None else 50051
    services = start_embedded(
        args.data_dir,
        host=args.host or "127.0.0.1",
        ports=(base, base + 1, base + 2),
        security=security,
        models=models,
    )
    backend = Backend(services.embedder_address, services.trainer_address, models)
    http = start_http(
        backend,
        args.host or "127.0.0.1",
        base + HTTP_PORT_OFFSET if base else 0,
        sec.max_concurrent_requests,
        (sec.tls_cert, sec.tls_key, sec.tls_client_ca),
    )
    get_logger("tunewire.cli").info(
        "serving",
        embedder=services.embedder_address,
        trainer=services.trainer_address,
        hub_gateway=services.hub_gateway_address,
        http=f"{http.scheme}://{args.host or '127.0.0.1'}:{http.port}",
        data_dir=str(services.data_dir),
    )

    def stop() -> None:
        http.stop()
        backend.close()
        for app in services._apps:
            app.close()

    wait_for_termination([a.running for a in services._apps], on_stop=stop)
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clients/cli.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a model from a config and a data set")
    p.add_argument("-c", "--config", required=True, help="YAML or JSON config (Ludwig's)")
    p.add_argument("--dataset", help="one data set, split by preprocessing.split")
    p.add_argument(*_flag("--training_set"), dest="training_set")
    p.add_argument(*_flag("--validation_set"), dest="validation_set")
    p.add_argument(*_flag("--test_set"), dest="test_set")
    p.add_argument(
        *_flag("--output_directory"),
        dest="output_directory",
        help="download the artifact to OUTPUT_DIRECTORY/<job id>",
    )
    p.add_argument(
        *_flag("--upload_to"),
        dest="upload_to",
        help="upload the artifact to this Hub repo (ORG/NAME) on success",
    )
    p.add_argument(
        *_flag("--request_id"),
        dest="request_id",
        help="idempotency key: a retried train with the same key reuses the job",
    )
    p.add_argument("--json", action="store_true", help="end stdout with a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_connection(p)
    p.set_defaults(func=cmd_train)

    for name, func, helptext in (
        ("predict", cmd_predict, "predictions for a data set"),
        ("evaluate", cmd_evaluate, "metrics on a labelled data set"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("-m", "--model", required=True, help="an artifact directory or a job id")
        p.add_argument("--dataset", required=True)
        p.add_argument(
            *_flag("--output_directory"),
            dest="output_directory",
            default="results" if name == "predict" else None,
        )
        p.add_argument(
            *_flag("--generation_config"),
            dest="generation_config",
            help="generation overrides: a JSON object or a JSON file",
        )
        p.add_argument("--json", action="store_true")
        _add_connection(p)
        p.set_defaults(func=func)

    p = sub.add_parser("embed", help="embed the lines of a text file to a .npy file")
    p.add_argument("-m", "--model", required=True, help="encoder: local directory or Hub id")
    p.add_argument("--input", required=True, help="text file, one text per line")
    p.add_argument("--output", required=True, help="output .npy path")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls", "last", "max", "sum"])
    p.add_argument(*_flag("--max_length"), dest="max_length", type=int, default=0)
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--instruction", default="", help="prefix for every text")
    p.add_argument("--json", action="store_true")
    _add_connection(p, "embedder")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("jobs", help="list, show, watch or cancel jobs")
    p.add_argument("action", choices=["list", "get", "watch", "cancel"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--json", action="store_true")
    _add_connection(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("serve", help="run long-lived servers until SIGTERM")
    p.add_argument(
        "service",
        nargs="?",
        default="all",
        choices=["embedder", "trainer", "hub_gateway", "http", "all"],
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (for all: the embedder's; trainer +1, hub_gateway +2, http +3; "
        "http alone: 8000)",
    )
    p.add_argument("--host", default=None)
    p.add_argument(*_flag("--data_dir"), dest="data_dir", type=Path, default=None)
    p.epilog = (
        "serve all also takes the services' security flags: "
        + ", ".join(a.option_strings[0] for a in _serve_all_parser()._actions)
        + " (python -m services.trainer --help describes them); a named service takes its own. "
        "serve http takes --embedder, --trainer, --model NAME=PATH, --model_path ARTIFACT, "
        "--max-concurrent-requests and --tls-cert/--tls-key/--tls-client-ca."
    )
    p.set_defaults(func=cmd_serve, passthrough=True)

    from clients.commands import upload

    upload.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command != "serve":
        from tunewire.logging import configure

        configure(level="INFO" if getattr(args, "verbose", False) else "WARNING")
    try:
        if getattr(args, "passthrough", False):
            return args.func(args, extra)
        return args.func(args)
    except TunewireError as err:
        if err.code.name == "UNAVAILABLE":
            print(f"error: service unavailable: {err}", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
