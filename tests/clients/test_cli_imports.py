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


def test_parsing_and_checking_a_config_imports_neither_torch_nor_pandas():
    out = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
