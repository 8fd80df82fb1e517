"""`python -m services.embedder`: parse settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.embedder.app import Settings, start
from services.embedder.batching import DEFAULT_MAX_BATCH_TOKENS
from services.embedder.service import CACHE_SCOPES
from tunewire.compute_dtype_flag import add_compute_dtype_flag
from tunewire.errors import InvalidArgument
from tunewire.logging import configure
from tunewire.model_names import add_model_flag, models_from_args
from tunewire.model_roots import add_model_root_flags, roots_from_args
from tunewire.server_flags import (
    add_security_flags,
    export_peer_token,
    security_from_args,
    serve,
)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The embedder's options; pass a parser (e.g. a CLI subcommand's) to add them to it.
    Defaults fall back to TUNEWIRE_HOST / TUNEWIRE_PORT / TUNEWIRE_DATA_DIR."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m services.embedder", description="tunewire embedder service"
    )
    defaults = Settings()
    parser.add_argument("--host", default=os.environ.get("TUNEWIRE_HOST", defaults.host))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("TUNEWIRE_PORT", defaults.port))
    )
    parser.add_argument("--data-dir", type=Path, default=defaults.data_dir)
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=DEFAULT_MAX_BATCH_TOKENS,
        help="padded tokens per forward pass",
    )
    parser.add_argument("--max-loaded-models", type=int, default=defaults.max_loaded_models)
    parser.add_argument(
        "--max-texts", type=int, default=defaults.max_texts, help="texts per request"
    )
    parser.add_argument(
        "--device",
        default=defaults.device,
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--preload",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="models (local dirs or Hub ids) to load before reporting SERVING",
    )
    parser.add_argument(
        "--cache-max-size",
        type=int,
        default=defaults.cache_max_size,
        help="bytes the LMDB cache may grow to (at least its initial 1 GiB map); past it "
        "writes fail with RESOURCE_EXHAUSTED (CACHE_FULL)",
    )
    parser.add_argument(
        "--no-varlen",
        dest="varlen",
        action="store_false",
        help="pad every batch instead of packing texts (padding-free attention)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=defaults.compile,
        help="torch.compile each model's blocks at load, checked against eager "
        "(default: on for a GPU, off for a CPU)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=defaults.cuda_graphs,
        help="on a GPU, replay packed batches as CUDA graphs per shape bucket, checked against "
        "plain launches at load (no effect on a CPU)",
    )
    add_compute_dtype_flag(parser)
    parser.add_argument(
        "--switch-interval-ms",
        type=_positive_ms,
        # argparse converts a string default with `type`: a bad env value is a usage error.
        default=os.environ.get("TUNEWIRE_SWITCH_INTERVAL_MS") or defaults.switch_interval_ms,
        help="the interpreter's thread switch interval in ms (default: Python's, 5): how long "
        "a GPU launch may wait for the GIL at each op (env TUNEWIRE_SWITCH_INTERVAL_MS)",
    )
    parser.add_argument(
        "--max-text-bytes",
        type=int,
        default=defaults.max_text_bytes,
        help="longest text (UTF-8 bytes) before INVALID_ARGUMENT",
    )
    parser.add_argument(
        "--max-instruction-bytes",
        type=int,
        default=defaults.max_instruction_bytes,
        help="longest instruction (UTF-8 bytes, put before every text) before INVALID_ARGUMENT",
    )
    parser.add_argument(
        "--hot-answer-bytes",
        type=int,
        default=defaults.hot_answer_bytes,
        help="memory for whole answers kept as sent, for replays (0: none)",
    )
    parser.add_argument(
        "--cache-scope",
        choices=CACHE_SCOPES,
        default=os.environ.get("TUNEWIRE_CACHE_SCOPE", defaults.cache_scope),
        help="shared: one embedding cache for every principal (a hit tells a caller that someone "
        "embedded the text); principal: each principal hits only what it embedded itself "
        "(env TUNEWIRE_CACHE_SCOPE)",
    )
    add_model_flag(parser)
    parser.add_argument(
        "--trainer",
        default=os.environ.get("TUNEWIRE_TRAINER", ""),
        help="trainer address HOST:PORT that PredictRows fetches a job's head from, with the "
        "caller's token (env TUNEWIRE_TRAINER)",
    )
    parser.add_argument(
        "--artifact-root",
        dest="artifact_roots",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="directory PredictRows may read artifacts under (repeatable)",
    )
    parser.add_argument(
        "--head-cache-bytes",
        type=int,
        default=defaults.head_cache_bytes,
        help="memory for predictive heads kept warm (least recently used evicted)",
    )
    add_model_root_flags(parser)
    parser.add_argument(
        "--hot-vector-bytes",
        type=int,
        default=defaults.hot_vector_bytes,
        help="memory for vectors kept by text, for text-by-text reads (0: none)",
    )
    add_security_flags(parser, calls_peers=True)
    return parser


def _positive_ms(value: str) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not ms > 0:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds > 0, not {value!r}")
    return ms


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        max_batch_tokens=args.max_batch_tokens,
        max_loaded_models=args.max_loaded_models,
        max_texts=args.max_texts,
        device=args.device,
        preload=list(args.preload),
        max_text_bytes=args.max_text_bytes,
        max_instruction_bytes=args.max_instruction_bytes,
        cache_max_size=args.cache_max_size,
        varlen=args.varlen,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        compute_dtype=args.compute_dtype,
        switch_interval_ms=args.switch_interval_ms,
        hot_answer_bytes=args.hot_answer_bytes,
        cache_scope=args.cache_scope,
        trainer=args.trainer,
        models=models_from_args(args),
        artifact_roots=list(args.artifact_roots),
        head_cache_bytes=args.head_cache_bytes,
        model_roots=roots_from_args(args, args.data_dir),
        hub_models=args.hub_models,
        hot_vector_bytes=args.hot_vector_bytes,
        security=security_from_args(args),
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cache_scope not in CACHE_SCOPES:  # argparse checks a flag's choices, not its env
        parser.error(f"TUNEWIRE_CACHE_SCOPE must be one of {', '.join(CACHE_SCOPES)}")
    try:
        settings = settings_from_args(args)
    except (ValueError, InvalidArgument) as exc:  # one line and exit 2, like any bad flag
        parser.error(str(exc))
    export_peer_token(args)
    configure()
    # Progress bars are for terminals; a server's log is structured lines only.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    serve("embedder", args, start, settings, lambda app: app.close())


if __name__ == "__main__":
    main()
