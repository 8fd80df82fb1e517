"""A generative job whose rank dies by a signal says why, not only torchrun's summary."""

from __future__ import annotations

import subprocess
import sys

from services.trainer.recipes.generative.launch import _tail

ABORTING_RANK = "import faulthandler, os\nfaulthandler.enable()\nos.abort()\n"
TORCHRUN_SUMMARY = [
    "[rank1]: ChildFailedError:",
    "  rank      : 1 (local_rank: 1)",
    "  exitcode  : -6 (pid: 5152)",
    "  error_file: <N/A>",
    "  traceback : Signal 6 (SIGABRT) received by PID 5152",
    "======================================================",
]


def test_a_rank_killed_by_sigabrt_leads_the_error_with_its_fatal_lines(tmp_path):
    log = tmp_path / "worker.1.log"
    with log.open("w") as out:  # the worker's log: its ranks' output, then torchrun's summary
        rc = subprocess.run(
            [sys.executable, "-c", ABORTING_RANK], stdout=out, stderr=out
        ).returncode
        out.write("\n".join(TORCHRUN_SUMMARY) + "\n")
    assert rc == -6
    message = _tail(log)
    assert message.startswith("Fatal Python error: Aborted | Current thread")
    assert 'File "<string>", line 3 in <module>' in message  # where it died
    assert message.endswith(" | ".join(TORCHRUN_SUMMARY[-5:]))


def test_a_log_without_a_fatal_line_is_its_tail(tmp_path):
    log = tmp_path / "worker.1.log"
    log.write_text("\n".join(f"line {i}" for i in range(9)) + "\n")
    assert _tail(log) == "line 4 | line 5 | line 6 | line 7 | line 8"
    assert _tail(tmp_path / "missing.log") == "no output"
