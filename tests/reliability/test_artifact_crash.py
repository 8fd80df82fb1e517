"""A trainer process killed with SIGKILL in the middle of writing an artifact: nothing under
`artifacts/<job>` looks whole (there is no such directory), the job record still says RUNNING,
and the restarted runner clears the dead staging directory and finishes the job with a whole
artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from services.trainer.admission import Admission
from services.trainer.context import JobContext, JobResult, MetricValue
from services.trainer.datasets import DatasetStore
from services.trainer.job_store import JobStore
from services.trainer.runner import JobRunner

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "input_features": [
        {"name": "text", "type": "text", "encoder": {"pretrained_model_name_or_path": "/m"}}
    ],
    "output_features": [{"name": "label", "type": "binary"}],
}
FILES = 40

# The child: a runner whose recipe writes FILES artifact files slowly, so a kill lands mid-write.
CHILD = """
import sys, time
from pathlib import Path
from services.trainer.context import JobResult, MetricValue
from services.trainer.datasets import DatasetStore
from services.trainer.admission import Admission
from services.trainer.job_store import JobStore
from services.trainer.runner import JobRunner

root = Path(sys.argv[1])

def slow_artifact(ctx):
    ctx.artifact_dir.mkdir(parents=True)
    for i in range({files}):
        (ctx.artifact_dir / f"part-{{i:03d}}.bin").write_bytes(bytes([i]) * 4096)
        sys.stdout.write(f"wrote {{i}}\\n")  # one write: the runner's log lines interleave
        sys.stdout.flush()
        time.sleep(0.05)
    return JobResult([MetricValue("test", "label", "accuracy", 1.0)])

admission = Admission(DatasetStore(root / "datasets"))
runner = JobRunner(JobStore(root / "jobs"), admission, root / "artifacts",
                   dispatcher=lambda _: slow_artifact)
runner.start()
runner.submit({config!r}, dataset_id=sys.argv[2])
time.sleep(60)
"""


def whole_recipe(ctx: JobContext) -> JobResult:
    ctx.artifact_dir.mkdir(parents=True)
    for i in range(FILES):
        (ctx.artifact_dir / f"part-{i:03d}.bin").write_bytes(bytes([i]) * 4096)
    return JobResult([MetricValue("test", "label", "accuracy", 1.0)])


def test_sigkill_mid_artifact_leaves_nothing_that_looks_whole(tmp_path):
    datasets = DatasetStore(tmp_path / "datasets")
    ds = datasets.put(
        [pd.DataFrame({"text": ["a", "b"], "label": ["0", "1"]}).to_csv(index=False).encode()],
        "d.csv",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(files=FILES, config=CONFIG), str(tmp_path), ds.id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for line in child.stdout:  # kill once a third of the files are written
            words = line.split()
            if (
                words[:1] == ["wrote"]
                and words[1:2]
                and words[1].isdigit()
                and int(words[1]) >= FILES // 3
            ):
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    artifacts = tmp_path / "artifacts"
    [job_dir] = list((tmp_path / "jobs").iterdir())
    job_id = job_dir.name
    assert not (artifacts / job_id).exists()
    [staging] = [p for p in artifacts.iterdir()]
    assert staging.name.startswith(".staging-") and 0 < len(list(staging.iterdir())) < FILES
    store = JobStore(tmp_path / "jobs")
    assert store.get(job_id).state == "RUNNING" and store.get(job_id).artifact_path == ""

    runner = JobRunner(store, Admission(datasets), artifacts, dispatcher=lambda _: whole_recipe)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while store.get(job_id).state != "SUCCEEDED":
            assert time.monotonic() < deadline, store.get(job_id).state
            time.sleep(0.05)
    finally:
        runner.stop()
    assert sorted(p.name for p in artifacts.iterdir()) == [job_id]  # the dead staging is gone
    assert len(list((artifacts / job_id).iterdir())) == FILES
    assert store.get(job_id).attempts == 2
