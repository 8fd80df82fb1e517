"""Data sets that end: DeleteDataset by their owner, and the retention of those no job needs."""

from __future__ import annotations

import os
import time

import pytest

from services.trainer.dataset_retention import DatasetLifecycle, Retention
from services.trainer.datasets import DatasetStore
from tunewire.auth import LOCAL, Principal, _as_caller
from tunewire.errors import FailedPrecondition, NotFound

ALICE, BOB = Principal("alice", "train"), Principal("bob", "train")
ADMIN = Principal("root", "admin")


def put(store: DatasetStore, text: str, who: Principal = LOCAL) -> str:
    with _as_caller(who):
        return store.put([f"text,label\n{text},1\n".encode()], "d.csv").id


def lifecycle(store, referenced=(), active=(), **kw) -> DatasetLifecycle:
    return DatasetLifecycle(store, lambda: referenced, lambda: active, Retention(**kw))


def test_only_the_owner_or_admin_deletes_and_never_under_a_running_job(tmp_path):
    store = DatasetStore(tmp_path)
    life = lifecycle(store)
    mine, again = put(store, "hello", ALICE), put(store, "again", ALICE)
    with pytest.raises(NotFound):
        life.delete(mine, BOB)  # as for a missing id
    with pytest.raises(FailedPrecondition):
        lifecycle(store, active={mine}).delete(mine, ALICE)
    life.delete(mine, ALICE)
    with pytest.raises(NotFound):
        store.get(mine, ALICE)
    with pytest.raises(NotFound):
        life.delete(mine, ALICE)
    life.delete(again, ADMIN)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("ds-", ".deleting"))]


def test_retention_removes_unreferenced_data_sets_past_the_ttl_then_beyond_the_cap(tmp_path):
    store = DatasetStore(tmp_path)
    old, kept, new1, new2 = (put(store, t) for t in ("old", "kept", "new one", "new two"))
    now = time.time()
    for i, ds in enumerate((old, kept)):
        os.utime(tmp_path / ds / "meta.json", (now - 1000 - i, now - 1000 - i))
    os.utime(tmp_path / new1 / "meta.json", (now - 10, now - 10))
    assert lifecycle(store, referenced={kept}, ttl_s=500, max_bytes=0).sweep(now) == [old]
    size = sum(f.stat().st_size for f in (tmp_path / new2).iterdir())
    # Over the cap: the least recently used unreferenced one goes (new1, used 10 s ago).
    cap = lifecycle(store, referenced={kept}, ttl_s=0, max_bytes=size + size // 2)
    assert cap.sweep(now) == [new1]
    assert store.get(new2, LOCAL).id == new2 and store.get(kept, LOCAL).id == kept
    # Reading a data set marks it used: past the TTL no more.
    os.utime(tmp_path / new2 / "meta.json", (now - 1000, now - 1000))
    store.load(new2, LOCAL)
    assert lifecycle(store, referenced={kept}, ttl_s=500, max_bytes=0).sweep() == []
