"""Regenerate tunewire/v1/*_pb2*.py from protos/ with grpcio-tools.

The generated modules are committed; tests/test_contract.py (test_generated_code_is_fresh)
regenerates them into a temporary directory and fails when the committed copy differs. Import
paths equal the proto package (`tunewire.v1.trainer_pb2`), so no rewriting is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (bundled with grpcio-tools) over every proto; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / "tunewire" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    files = generate(ROOT)
    for f in files:
        print(f.relative_to(ROOT))


if __name__ == "__main__":
    sys.exit(main())
