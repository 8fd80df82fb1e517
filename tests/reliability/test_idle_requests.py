"""A client stream's idle timeout (tunewire.calls.IdleRequests), on an event loop of its own: a
message that comes in time is read, silence while the handler owes nothing ends the stream with
STREAM_IDLE, silence while it is busy does not, and the read is begun in the caller's own step
(grpc.aio finished a read begun a step later only after the write before it)."""

import asyncio

import pytest

from tunewire.calls import IdleRequests
from tunewire.errors import DeadlineExceeded


class Requests:
    """An async iterator fed by `send`, recording when each read was begun."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.begun = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        self.begun += 1
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


def test_messages_in_time_are_read_and_the_end_ends_it():
    async def main():
        requests = Requests()
        idle = IdleRequests(requests, timeout_s=5.0)
        for item in ("a", "b", None):
            requests.queue.put_nowait(item)
        return [item async for item in idle]

    assert asyncio.run(main()) == ["a", "b"]


def test_silence_while_owing_nothing_ends_the_stream():
    async def main():
        idle = IdleRequests(Requests(), timeout_s=0.05)
        with pytest.raises(DeadlineExceeded) as err:
            await idle.__anext__()
        return err.value

    err = asyncio.run(main())
    assert err.reason == "STREAM_IDLE" and "0.05 s" in err.message


def test_silence_while_busy_waits_on():
    async def main():
        requests = Requests()
        idle = IdleRequests(requests, timeout_s=0.02)
        idle.busy = lambda: True  # still answering earlier requests: no timeout
        asyncio.get_running_loop().call_later(0.15, requests.queue.put_nowait, "late")
        return await idle.__anext__()

    assert asyncio.run(main()) == "late"


def test_the_read_is_begun_in_the_callers_step():
    async def main():
        requests = Requests()
        idle = IdleRequests(requests, timeout_s=5.0)
        read = asyncio.ensure_future(idle.__anext__())
        await asyncio.sleep(0)  # the read's first step has run, and only it
        begun = requests.begun
        requests.queue.put_nowait("x")
        return begun, await read

    assert asyncio.run(main()) == (1, "x")


def test_an_error_of_the_read_itself_passes_through():
    class Failing(Requests):
        async def __anext__(self):
            raise TimeoutError("the read's own")

    async def main():
        await IdleRequests(Failing(), timeout_s=5.0).__anext__()

    with pytest.raises(TimeoutError, match="the read's own"):
        asyncio.run(main())
