"""Every rendering's trainer bounds its jobs: a wall-clock limit and a queue cap, given as
flags its own parser takes (without them a job of `epochs: 1e12` ran, and jobs queued, forever)."""

from __future__ import annotations

import pytest

from services.trainer.__main__ import build_parser
from tests.k8s.manifests import SERVICE_LAYERS, find, rendered


@pytest.mark.parametrize("name", SERVICE_LAYERS)
def test_the_trainer_bounds_job_time_and_queue(name):
    trainer = find(rendered(name), "StatefulSet", "trainer")
    container = trainer["spec"]["template"]["spec"]["containers"][0]
    args = ["from-env" if "$(" in a else a for a in container["args"]]
    parsed, _ = build_parser().parse_known_args(args)
    assert 0 < parsed.max_job_seconds <= 7 * 86400
    assert 0 < parsed.max_queued_jobs <= 1024
