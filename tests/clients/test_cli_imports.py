"""The CLI talking to a running trainer stays light: building its parser and checking a config
(what `train --trainer ...` does before any upload) import neither torch nor pandas, which were
most of a warm job's time from the command line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import argparse, sys
from clients.cli import build_parser
from clients.commands.training import check_inputs
args = build_parser().parse_args(
    ["train", "-c", "examples/sms_spam.yaml", "--dataset", "examples/sms_spam.yaml"]
)
check_inputs(args)
heavy = sorted({"torch", "pandas", "transformers", "matplotlib"} & set(sys.modules))
print(",".join(heavy))
"""


def _run(script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter on this checkout alone; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_parsing_and_checking_a_config_imports_neither_torch_nor_pandas():
    out = _run(CHECK)
    assert out.stdout.strip() == ""


SERVED = """
import sys
from clients.cli import build_parser
from clients.commands.training import check_inputs
from clients.sdk import TrainerClient
args = build_parser().parse_args(
    ["train", "-c", "examples/sms_spam.yaml", "--dataset", "examples/sms_spam.yaml",
     "--trainer", "127.0.0.1:9"]
)
check_inputs(args)
TrainerClient(args.trainer).close()  # a channel is made, nothing is dialled
heavy = {"numpy", "prometheus_client", "huggingface_hub", "tunewire.server", "tunewire.calls",
         "tunewire.config.llm", "rich"}
assert "structlog" in sys.modules
print(",".join(sorted(heavy & set(sys.modules))))
import services.hub_gateway.app  # the embedded mode's gateway, before any upload
print("huggingface_hub" in sys.modules)
"""


def test_a_train_against_a_running_trainer_imports_no_numpy_nor_the_server_stack():
    """Up to its first call, `train --trainer` needs grpc, the config schema and the trainer's
    stubs: not numpy (the embedder's client), not the server's interceptors and metrics, not
    the llm schema for an ecd config, not huggingface_hub (the gateway imports it per upload),
    not rich (structlog's console tracebacks)."""
    out = _run(SERVED)
    assert out.stdout.split("\n")[:2] == ["", "False"]
