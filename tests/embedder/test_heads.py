"""Heads kept warm for online prediction: a job's head is fetched per caller (the trainer decides
who may read it), kept in an LRU by bytes, and a local artifact only under the artifact roots."""

from __future__ import annotations

import shutil

import pytest

from services.embedder.heads import HEAD_FILES, HeadCache
from tests.e2e.test_online import mixed_artifact
from tunewire.auth import Principal, _as_caller, acting_for_name
from tunewire.errors import NotFound, PermissionDenied

ALICE, BOB = Principal("alice", "embed"), Principal("bob", "embed")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return mixed_artifact(tmp_path_factory.mktemp("a") / "artifact", "/models/minilm")


def test_a_jobs_head_is_fetched_for_each_caller_and_kept(artifact):
    calls = []

    def fetch(job_id, token, files, dest):
        calls.append((job_id, acting_for_name(), token))
        if acting_for_name() == "bob":  # the trainer: bob does not own this job
            raise NotFound("no job", field="model")
        assert set(files) == set(HEAD_FILES)
        for name in files:
            shutil.copy(artifact / name, dest / name)

    heads = HeadCache(fetch=fetch)
    with _as_caller(ALICE):
        first = heads.get("job-000000000001", "alice-token")
        assert heads.get("job-000000000001", "alice-token") is first  # warm: no second fetch
    assert calls == [("job-000000000001", "alice", "alice-token")]
    with _as_caller(BOB), pytest.raises(NotFound):
        heads.get("job-000000000001", "bob-token")  # never served from alice's fetch
    assert len(calls) == 2 and heads.stats()[0] == 1


def test_local_artifacts_only_under_the_roots_and_the_lru_is_by_bytes(artifact, tmp_path):
    with pytest.raises(PermissionDenied):
        HeadCache(roots=[tmp_path]).get(str(artifact), None)
    other = shutil.copytree(artifact, tmp_path / "other")
    one = HeadCache(roots=[artifact.parent, tmp_path]).get(str(artifact), None)
    heads = HeadCache(roots=[artifact.parent, tmp_path], max_bytes=one.nbytes + 1)
    heads.get(str(artifact), None)
    heads.get(str(other), None)
    assert heads.stats() == (1, one.nbytes)  # the older one evicted


def test_failed_loads_leave_nothing_behind(artifact):
    """Each refused job id (a caller probing ids it does not own) used to leave its loading lock
    in the cache forever: memory that grew with every such request."""

    def fetch(job_id, token, files, dest):
        raise NotFound("no job", field="model")

    heads = HeadCache(fetch=fetch)
    with _as_caller(BOB):
        for i in range(50):
            with pytest.raises(NotFound):
                heads.get(f"job-{i:012d}", "bob-token")
    assert heads._loading == {} and heads.stats() == (0, 0)
