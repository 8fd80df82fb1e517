"""`upload hf_hub`: Ludwig's command, with its spellings, done through the hub gateway.

    python clients/cli.py upload hf_hub -r org/name -m runs/42/artifact --private

Ludwig's underscore flags and the dashed ones are both accepted, and `--private` is a real boolean
flag. Without `--hub-gateway` the gateway runs in this process for the command.
"""

from __future__ import annotations

import argparse
import os
import sys

from clients.commands.parsing import boolean
from clients.exit_codes import EXIT_FAILED, EXIT_USAGE, exit_code
from tunewire.errors import TunewireError


def _flags(*names: str) -> list[str]:
    """Each long flag in its given spelling plus the other one (underscores ⇄ dashes)."""
    out: list[str] = []
    for name in names:
        out.append(name)
        if name.startswith("--"):
            alt = name.replace("_", "-") if "_" in name else name.replace("-", "_")
            if alt != name:
                out.append("--" + alt[2:])
    return out


def add_parser(subparsers) -> None:
    """Register `upload hf_hub` on the CLI's subparsers."""
    upload = subparsers.add_parser("upload", help="upload a model artifact to a model hub")
    targets = upload.add_subparsers(dest="hub", required=True, metavar="{hf_hub}")
    p = targets.add_parser(
        "hf_hub", aliases=["hf-hub"], help="upload to a Hugging Face Hub repo in one commit"
    )
    p.add_argument(
        *_flags("-r", "--repo_id"),
        dest="repo_id",
        required=True,
        help="ORG/NAME of the target repo (created if missing)",
    )
    p.add_argument(
        *_flags("-m", "--model_path"),
        dest="model_path",
        default=None,
        help="artifact directory (adapter, full model, or predictive artifact)",
    )
    p.add_argument(
        *_flags("-p", "--private"),
        dest="private",
        nargs="?",
        const=True,
        default=False,
        type=boolean,
        metavar="true|false",
        help="create the repo private: the bare flag, or Ludwig's -p true|false",
    )
    p.add_argument(
        *_flags("-t", "--repo_type"),
        dest="repo_type",
        default="model",
        choices=["model", "dataset", "space"],
        help="the repo's type; the hub gateway uploads model artifacts, so only model is built",
    )
    p.add_argument(*_flags("-c", "--commit_message"), dest="commit_message", default=None)
    p.add_argument(*_flags("-d", "--commit_description"), dest="commit_description", default=None)
    p.add_argument("--revision", default=None, help="target branch (default: main)")
    p.add_argument(
        *_flags("--create_pr"),
        dest="create_pr",
        action="store_true",
        help="open a pull request instead of committing to the branch",
    )
    p.add_argument("--endpoint", default=None, help="Hub endpoint URL (default HF_ENDPOINT)")
    p.add_argument(
        *_flags("--dry_run"),
        dest="dry_run",
        action="store_true",
        help="validate, print the file list and the model card; send nothing",
    )
    p.add_argument(
        "--job",
        dest="job_id",
        default=None,
        help="upload this trainer job's artifact instead of a local path",
    )
    p.add_argument(
        *_flags("--overwrite_model_card"),
        dest="overwrite_model_card",
        action="store_true",
        help="replace the artifact's own README.md",
    )
    p.add_argument(
        *_flags("--hub-gateway"),
        dest="hub_gateway",
        default=os.environ.get("TUNEWIRE_HUB_GATEWAY"),
        help="hub gateway HOST:PORT (env TUNEWIRE_HUB_GATEWAY); default: in-process",
    )
    p.add_argument(
        *_flags("--data_dir"),
        dest="data_dir",
        default=None,
        help="state directory of the in-process services",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show service logs")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    """Run `upload hf_hub`; one line on stderr and a non-zero code on failure."""
    from clients.hub import upload_to_hf_hub

    if not args.model_path and not args.job_id:
        print("error: give -m/--model_path or --job", file=sys.stderr)
        return EXIT_USAGE
    if args.repo_type != "model":
        print(
            f"error: repo_type: tunewire uploads model artifacts; a {args.repo_type} repo is "
            "not built (upload data sets with huggingface_hub's HfApi.upload_file)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    def on_event(event) -> None:
        print(f"[{event.sequence}] {event.message}", file=sys.stderr)

    try:
        upload = upload_to_hf_hub(
            args.repo_id,
            args.model_path,
            private=args.private,
            commit_message=args.commit_message,
            commit_description=args.commit_description,
            revision=args.revision,
            create_pr=args.create_pr,
            endpoint=args.endpoint,
            dry_run=args.dry_run,
            gateway=args.hub_gateway,
            job_id=args.job_id,
            overwrite_model_card=args.overwrite_model_card,
            data_dir=args.data_dir,
            on_event=on_event,
        )
    except TunewireError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.dry_run:
        print(
            f"{upload.artifact_kind} artifact, {len(upload.files)} files, "
            f"{_size(upload.bytes_total)} (dry run: nothing sent)"
        )
        for f in upload.files:
            print(f"  {f.path}  {_size(f.size)}  sha256:{f.sha256[:12]}")
        print("\n--- README.md ---")
        print(upload.model_card)
        return 0
    skipped = sum(1 for f in upload.files if f.skipped)
    print(
        f"uploaded {len(upload.files) - skipped} files ({skipped} unchanged) to "
        f"{args.repo_id}: {upload.commit_url or upload.commit_oid}"
    )
    return 0
