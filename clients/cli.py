#!/usr/bin/env python
"""tunewire's command line: Ludwig's train, experiment, predict, evaluate, visualize, init_config,
render_config, check_install and upload, plus embed, jobs and serve.

Without a server address (`--trainer`, `TUNEWIRE_TRAINER`; `--embedder` for embed) the three
services start in this process on loopback ports with their state under one data directory
(`--data-dir`, `TUNEWIRE_DATA_DIR`, default `./.tunewire`). Ludwig's flag spellings work, and so do
dashed ones. With `--json`, the last line of stdout is one JSON object; everything meant for a
person goes to stderr. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # `python clients/cli.py` from a checkout
    # The checkout's root in place of this script's directory, whose `http` package (the HTTP
    # front door, clients.http) would otherwise shadow the standard library's.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _structlog_without_rich() -> None:
    """Import structlog as if rich were not installed. It imports rich at its own import, for
    the tracebacks of console logs: ~50 ms of every command's start, for tracebacks that this
    program's commands do not print (an error is one line). rich itself stays importable: the
    progress bars import it when they draw. `serve`, whose console logs can carry a traceback,
    keeps structlog's rich ones."""
    if {"rich", "structlog"} & set(sys.modules) or sys.argv[1:2] == ["serve"]:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_structlog_without_rich()

from clients.commands.connection import _channel, add_connection, trainer_client  # noqa: E402,F401
from clients.commands.parsing import Parser, flag  # noqa: E402
from clients.commands.parsing import json_text as _json  # noqa: E402
from clients.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, exit_code  # noqa: E402
from tunewire.errors import TunewireError  # noqa: E402

_flag = flag  # Ludwig's underscore spelling plus the dashed one


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
        from clients.progress import count_progress

        progress, done = count_progress("embedding")
        stack.callback(done)
        result = client.embed_many(texts, spec, progress=None if args.quiet else progress)
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
    from clients.commands.serve_http import add_http_flags, add_http_workers_flag
    from tunewire.compute_dtype_flag import add_compute_dtype_flag
    from tunewire.model_names import add_model_flag
    from tunewire.server_flags import add_security_flags

    p = argparse.ArgumentParser(prog="clients/cli.py serve all", add_help=False)
    add_security_flags(p, calls_peers=True)
    add_model_flag(p)
    add_compute_dtype_flag(p)
    add_http_flags(p)
    add_http_workers_flag(p)
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
    from tunewire.server import termination_requested, wait_for_termination
    from tunewire.server_flags import (
        export_peer_token,
        security_from_args,
        start_operations,
        warn_if_exposed,
    )

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
    from clients.commands.serve_http import (
        HTTP_PORT_OFFSET,
        check_http_flags,
        start_http,
        start_http_process,
    )
    from clients.http.backend import Backend
    from tunewire.model_names import models_from_args

    check_http_flags(sec)

    security = security_from_args(sec)
    models = models_from_args(sec)
    export_peer_token(sec)
    configure()
    stop_requested = termination_requested()
    warn_if_exposed(args.host or "127.0.0.1", security, "all")
    base = args.port if args.port is not None else 50051
    # One metrics port for the three servers: their series carry the service's name.
    metrics_server = start_operations(sec, "tunewire")
    services = start_embedded(
        args.data_dir,
        host=args.host or "127.0.0.1",
        ports=(base, base + 1, base + 2),
        security=security,
        models=models,
        compute_dtype=sec.compute_dtype,
    )
    host = args.host or "127.0.0.1"
    http_port = base + HTTP_PORT_OFFSET if base else 0
    tls = (sec.tls_cert, sec.tls_key, sec.tls_client_ca)
    backend = None
    if sec.http_workers:  # the front door in processes of its own, beside this one
        http = start_http_process(
            services.embedder_address,
            services.trainer_address,
            models,
            host,
            http_port,
            sec.max_concurrent_requests,
            tls,
            sec.http_workers,
        )
    else:
        backend = Backend(services.embedder_address, services.trainer_address, models)
        http = start_http(backend, host, http_port, sec.max_concurrent_requests, tls)
    get_logger("tunewire.cli").info(
        "serving",
        embedder=services.embedder_address,
        trainer=services.trainer_address,
        hub_gateway=services.hub_gateway_address,
        http=f"{http.scheme}://{host}:{http.port}",
        http_workers=sec.http_workers,
        data_dir=str(services.data_dir),
    )

    def stop() -> None:
        http.stop()
        if backend is not None:
            backend.close()
        for app in services._apps:
            app.close()

    wait_for_termination([a.running for a in services._apps], on_stop=stop, stop=stop_requested)
    if metrics_server is not None:
        metrics_server.close()
    return 0


# ------------------------------------------------------------------------------------ parser
def _serve_epilog() -> str:
    return (
        "serve all also takes the services' security flags: "
        + ", ".join(a.option_strings[0] for a in _serve_all_parser()._actions)
        + " (python -m services.trainer --help describes them); a named service takes its own. "
        "serve http takes --embedder, --trainer, --model NAME=PATH, --model_path ARTIFACT, "
        "--compute-dtype (for an embedder it starts), "
        "--workers N, --max-concurrent-requests and --tls-cert/--tls-key/--tls-client-ca."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tunewire", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from clients.commands import config_commands, predicting, training, visualize

    training.add_train_parser(sub, "train", "fine-tune a model from a config and a data set")
    training.add_train_parser(
        sub, "experiment", "train, then evaluate on the test data (Ludwig's experiment)"
    )
    predicting.add_predict_parsers(sub)
    visualize.add_parser(sub)
    config_commands.add_parsers(sub)

    p = sub.add_parser("embed", help="embed the lines of a text file to a .npy file")
    p.add_argument("-m", "--model", required=True, help="encoder: local directory or Hub id")
    p.add_argument("--input", required=True, help="text file, one text per line")
    p.add_argument("--output", required=True, help="output .npy path")
    p.add_argument(
        "--pooling",
        default="mean",
        choices=["mean", "cls", "last", "max", "sum"],
        help="how token vectors become one",
    )
    p.add_argument(
        *_flag("--max_length"),
        dest="max_length",
        type=int,
        default=0,
        help="tokens kept per text; 0: the model's limit",
    )
    p.add_argument("--normalize", action="store_true", help="unit-length vectors")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float16"], help="vector dtype"
    )
    p.add_argument("--layer", type=int, default=0, help="hidden layer to pool; 0: the last")
    p.add_argument("--instruction", default="", help="prefix for every text")
    p.add_argument("--json", action="store_true", help="end stdout with a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_connection(p, "embedder")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("jobs", help="list, show, watch or cancel jobs")
    p.add_argument("action", choices=["list", "get", "watch", "cancel"], help="what to do")
    p.add_argument("job_id", nargs="?", help="the job (all but list)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_connection(p)
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
    p.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        *_flag("--data_dir"),
        dest="data_dir",
        type=Path,
        default=None,
        help="state directory (env TUNEWIRE_DATA_DIR; default: ./.tunewire)",
    )
    p.epilog_later = _serve_epilog  # made for --help only: it imports the services' flags
    p.set_defaults(func=cmd_serve, passthrough=True)

    from clients.commands import check_install, upload

    upload.add_parser(sub)
    check_install.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Model loaders' own tqdm bars (transformers, huggingface_hub) would interleave with ours;
    # set before they are imported, and inherited by the worker processes.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        # The command's own parser knows its flags, so it can say "did you mean".
        commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    # A run of the program (not a call from Python): its services may freeze what they import
    # out of the cyclic collector's way (clients/embedded.py).
    args.program = argv is None
    if args.command != "serve":
        from tunewire.logging import configure

        level = getattr(args, "logging_level", "warning")
        if getattr(args, "verbose", False) and level == "warning":
            level = "info"
        configure(level=level.upper())
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
    except BrokenPipeError:  # the reader of our output went away (`| head`): end quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        if argv is None:
            # The program ends here. The interpreter's exit would walk every object once more
            # for cycles (~1 s of CPU once torch is imported); frozen, they are skipped, while
            # atexit handlers and module teardown still run.
            gc.freeze()


def exit_program(code: int) -> NoReturn:
    """End the program with `code`, skipping the interpreter's teardown when nothing needs it.

    After `main` the services are stopped and their stores closed; what the interpreter's
    finalization would still do is clear every module (torch's among them) and run C++ static
    destructors, ~0.15 s of a CLI run that has finished its work. When no thread but daemons is
    left (a job the program still runs would be one), the exit handlers run as they would
    (temporary files, the plot worker), the streams are flushed, and the process ends there;
    otherwise it exits as usual, after those threads."""
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # each runs once: they are cleared as they run
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away before the last of the output
        _silence_stdout()
        os._exit(EXIT_BROKEN_PIPE)
    except (OSError, ValueError):  # reported by the usual exit, as before
        sys.exit(code)
    os._exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that nothing left in its buffer fails once more (with
    Python's 'Exception ignored' report) when the process ends."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    exit_program(main())
