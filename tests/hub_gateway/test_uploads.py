"""UploadManager without gRPC: durable records, resuming after a restart, live watching."""

from __future__ import annotations

import threading

from services.hub_gateway.hub_client import HubClient
from services.hub_gateway.uploads import SUCCEEDED, UploadManager, UploadSpec
from tests.hub_gateway.conftest import TOKEN


class Crash(BaseException):
    """Ends a worker thread the way a killed process would: no FAILED record written."""


def dying_upload(root, hub, model, repo_id: str):
    """An upload whose gateway "dies" mid-run: (manager, record, release); the worker thread
    waits, RUNNING, until `release` is set, then ends without a record."""
    started, release = threading.Event(), threading.Event()

    def dying_hub() -> HubClient:
        started.set()
        release.wait(30)
        raise Crash()

    manager = UploadManager(root, dying_hub, hub.endpoint)
    rec = manager.create(UploadSpec(repo_id=repo_id), model, owned=False)
    assert started.wait(10)
    return manager, rec, release


def test_unfinished_upload_resumes_after_a_restart(tmp_path, hub, adapter_model):
    first, rec, release = dying_upload(tmp_path / "gw", hub, adapter_model, "org/resume")
    assert first.get(rec.id).state == "RUNNING"

    # "restart": a new manager on the same data dir, with a working Hub client
    second = UploadManager(tmp_path / "gw", lambda: HubClient(hub.endpoint, TOKEN), hub.endpoint)
    events = list(second.watch(rec.id))
    release.set()
    first.close()
    second.close()
    assert events[-1].state == SUCCEEDED and second.get(rec.id).commit_oid
    assert "resumed after a gateway restart" in [e.message for e in events]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert hub.count("commits") == 1


def test_watch_follows_live_events(tmp_path, hub, adapter_model):
    gate = threading.Event()

    def slow_hub() -> HubClient:
        gate.wait(30)
        return HubClient(hub.endpoint, TOKEN)

    manager = UploadManager(tmp_path / "gw", slow_hub, hub.endpoint)
    rec = manager.create(UploadSpec(repo_id="org/live"), adapter_model, owned=False)
    seen = []

    def follow() -> None:
        for event in manager.watch(rec.id):
            seen.append(event)

    watcher = threading.Thread(target=follow)
    watcher.start()
    watcher.join(0.5)
    assert watcher.is_alive() and [e.state for e in seen] == ["PENDING", "RUNNING"]
    gate.set()
    watcher.join(30)
    manager.close()
    assert seen[-1].state == SUCCEEDED and seen[-1].files_done == seen[-1].files_total == 5


def test_a_torn_last_event_does_not_hide_later_events_after_restart(tmp_path, hub, adapter_model):
    """A gateway killed mid-append leaves half a line; what the next process appends must
    still be there after another restart."""
    first, rec, release = dying_upload(tmp_path / "gw", hub, adapter_model, "org/torn")
    with (tmp_path / "gw" / "uploads" / rec.id / "events.jsonl").open("a") as fh:
        fh.write('{"upload_id": "' + rec.id + '", "sequ')  # the crash
    second = UploadManager(tmp_path / "gw", lambda: HubClient(hub.endpoint, TOKEN), hub.endpoint)
    assert list(second.watch(rec.id))[-1].state == SUCCEEDED
    release.set()
    first.close()
    second.close()
    third = UploadManager(tmp_path / "gw", lambda: HubClient(hub.endpoint, TOKEN), hub.endpoint)
    events = list(third.watch(rec.id))
    third.close()
    assert events[-1].state == SUCCEEDED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
