"""32 concurrent clients embedding and submitting jobs against real processes (auth on) for a few
seconds: every call is OK or the intended RESOURCE_EXHAUSTED, never anything else.
`bench/load.py` is the same run for longer; its figures are in docs/reliability.md."""

from __future__ import annotations

import pytest

from bench.load import run_load, stack

pytestmark = pytest.mark.slow


def test_32_clients_get_only_ok_or_the_intended_resource_exhausted(tmp_path):
    with stack(tmp_path, max_queued_jobs=2) as (embedder, trainer, model, dataset_id, token):
        result = run_load(
            embedder,
            trainer,
            model,
            dataset_id,
            clients=32,
            seconds=5.0,
            job_clients=4,
            token=token,
        )
    ops = result["operations"]
    assert result["errors"] == [], result["errors"]
    assert all(op["errors"] == 0 for op in ops.values())
    assert ops["Embed"]["ok"] > 20 and ops["CreateJob"]["ok"] >= 1
    # Four clients submitting back to back against a queue of two: the cap is hit, as intended.
    assert ops["CreateJob"]["resource_exhausted"] > 0
