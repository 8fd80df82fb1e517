"""The front door's request coalescing: concurrent requests of one key share calls, each gets
its own answer, a lone request goes at once, and one request's bad input fails only that one."""

from __future__ import annotations

import asyncio
import threading

import pytest

from clients.http.coalesce import Coalescer
from tunewire.errors import InvalidArgument, PermissionDenied


class Recorder:
    """A `run` that answers part → part * 10, records each call's parts, and can be held."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_with: dict[int, Exception] = {}  # part → what a call holding it raises

    def __call__(self, key, parts: list[int]) -> list:
        self.calls.append(list(parts))
        self.release.wait(10)
        for part in parts:
            if part in self.fail_with:
                raise self.fail_with[part]
        return [ValueError(f"odd {p}") if p == 13 else p * 10 for p in parts]


async def _gather_with_first_held(coalescer, run: Recorder, parts: list[int], key="k"):
    run.release.clear()
    first = asyncio.ensure_future(coalescer.submit(key, parts[0]))
    second = asyncio.ensure_future(coalescer.submit(key, parts[1]))
    while len(run.calls) < 2:  # both in flight, holding the worker threads
        await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(coalescer.submit(key, p)) for p in parts[2:]]
    await asyncio.sleep(0.05)
    run.release.set()
    return await asyncio.gather(first, second, *rest, return_exceptions=True)


def test_concurrent_requests_share_a_call_and_get_their_own_answers():
    run = Recorder()
    coalescer = Coalescer(run, size=lambda p: 1, max_items=100)
    got = asyncio.run(_gather_with_first_held(coalescer, run, list(range(1, 11))))
    assert got == [p * 10 for p in range(1, 11)]
    # A lone request goes at once, no window (their worker threads may start in either order).
    assert sorted(run.calls[:2]) == [[1], [2]]
    assert sorted(p for call in run.calls[2:] for p in call) == list(range(3, 11))
    assert len(run.calls) <= 4 and coalescer.merged >= 4


def test_a_call_holds_at_most_max_items_and_keys_never_mix():
    run = Recorder()
    coalescer = Coalescer(run, size=lambda p: 1, max_items=3, max_in_flight=1)

    async def go():
        run.release.clear()
        first = asyncio.ensure_future(coalescer.submit("a", 0))
        while not run.calls:
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(coalescer.submit("a", p)) for p in range(1, 8)]
        other = asyncio.ensure_future(coalescer.submit("b", 100))
        await asyncio.sleep(0.05)
        run.release.set()
        return await asyncio.gather(first, *rest, other)

    assert asyncio.run(go()) == [p * 10 for p in range(8)] + [1000]
    assert all(len(call) <= 3 for call in run.calls)
    assert not any(100 in call and len(call) > 1 for call in run.calls)


def test_one_requests_bad_input_fails_only_that_request():
    run = Recorder()
    run.fail_with[5] = InvalidArgument("too long", field="input[0]")
    coalescer = Coalescer(run, size=lambda p: 1, max_items=100)
    got = asyncio.run(_gather_with_first_held(coalescer, run, [1, 2, 3, 4, 5, 6, 13]))
    assert got[:4] == [10, 20, 30, 40] and got[5] == 60
    assert isinstance(got[4], InvalidArgument) and got[4].field == "input[0]"
    assert isinstance(got[6], ValueError)  # a per-part answer that is an error stays its own
    assert [5] in run.calls  # retried alone


def test_a_failure_of_the_whole_call_is_every_merged_requests():
    run = Recorder()
    run.fail_with[4] = PermissionDenied("not yours")
    coalescer = Coalescer(run, size=lambda p: 1, max_items=100)
    got = asyncio.run(_gather_with_first_held(coalescer, run, [1, 2, 3, 4, 5]))
    assert got[:2] == [10, 20]
    assert all(isinstance(g, PermissionDenied) for g in got[2:])
    assert not coalescer._in_flight and not coalescer._queued  # nothing left behind


def test_limits_are_checked():
    with pytest.raises(ValueError):
        Coalescer(Recorder(), size=len, max_items=0)


def test_calls_in_flight_come_from_the_environment_or_are_refused_by_name(monkeypatch):
    from clients.http.backend import CALLS_IN_FLIGHT_ENV, DEFAULT_CALLS_IN_FLIGHT, calls_in_flight

    monkeypatch.delenv(CALLS_IN_FLIGHT_ENV, raising=False)
    assert calls_in_flight() == DEFAULT_CALLS_IN_FLIGHT
    monkeypatch.setenv(CALLS_IN_FLIGHT_ENV, "4")
    assert calls_in_flight() == 4
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(CALLS_IN_FLIGHT_ENV, bad)
        with pytest.raises(InvalidArgument) as info:
            calls_in_flight()
        assert info.value.field == CALLS_IN_FLIGHT_ENV


def test_the_next_call_leaves_before_the_answers_are_written():
    """When a call's answer comes back, the call of the requests queued meanwhile is started
    before those answers' requests resume (writing their responses takes the loop a while)."""
    run = Recorder()
    coalescer = Coalescer(run, size=lambda p: 1, max_items=100, max_in_flight=1)

    calls_when_answered = []

    async def first_request():
        answer = await coalescer.submit("k", 1)
        calls_when_answered.append(coalescer.calls)  # as this request resumes
        return answer

    async def main():
        run.release.clear()
        first = asyncio.ensure_future(first_request())
        while not run.calls:
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(coalescer.submit("k", 2))
        await asyncio.sleep(0.01)
        run.release.set()
        return await first, await queued

    assert asyncio.run(main()) == (10, 20)
    assert calls_when_answered == [2]
