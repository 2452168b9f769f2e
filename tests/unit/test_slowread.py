"""SlowRead: when a kept value is read again, and who waits for it (a hand-driven clock)."""

from __future__ import annotations

import asyncio

import pytest

from aol.db.slowread import SlowRead, SlowReadClosed


class Source:
    """Counts its reads; each read 'takes' `took` seconds on the clock, or fails."""

    def __init__(self, took: float) -> None:
        self.now = 0.0
        self.took = took
        self.reads = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    def clock(self) -> float:
        return self.now

    async def read(self) -> int:
        if self.gate is not None:
            await self.gate.wait()
        self.now += self.took
        if self.fail is not None:
            raise self.fail
        self.reads += 1
        return self.reads


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_fast_read_is_taken_again_on_every_call() -> None:
    src = Source(took=0.001)
    cached = SlowRead(src.read, name="t", clock=src.clock)
    assert (await cached.get())[0] == 1
    assert (await cached.get())[0] == 2
    assert src.reads == 2


async def test_a_slow_read_is_kept_until_it_is_older_than_ratio_times_its_cost() -> None:
    src = Source(took=2.0)
    cached = SlowRead(src.read, name="t", ratio=20.0, clock=src.clock)
    assert await cached.get() == (1, 2.0)  # the first read is waited for

    src.now += 30.0  # 32 s old: less than 20 x 2 s
    assert await cached.get() == (1, 32.0)
    await settle()
    assert src.reads == 1

    src.now += 10.0  # 42 s old: due; answered at once with the old value, read behind
    assert await cached.get() == (1, 42.0)
    await settle()
    assert src.reads == 2
    value, age = await cached.get()
    assert value == 2
    assert age == pytest.approx(2.0)


async def test_callers_share_one_read_in_flight() -> None:
    src = Source(took=2.0)
    src.gate = asyncio.Event()
    cached = SlowRead(src.read, name="t", clock=src.clock)
    waiting = [asyncio.create_task(cached.get()) for _ in range(3)]
    await settle()
    src.gate.set()
    assert [v for v, _ in await asyncio.gather(*waiting)] == [1, 1, 1]
    assert src.reads == 1


async def test_a_failing_read_raises_until_there_is_a_value_then_the_value_stays() -> None:
    src = Source(took=2.0)
    src.fail = ConnectionError("server gone")
    cached = SlowRead(src.read, name="t", clock=src.clock)
    with pytest.raises(ConnectionError, match="server gone"):
        await cached.get()

    src.fail = None
    assert (await cached.get())[0] == 1
    src.fail = ConnectionError("gone again")
    src.now += 100.0
    assert (await cached.get())[0] == 1  # due: the background read fails
    await settle()
    assert (await cached.get())[0] == 1  # the value stays, and no read is started at once
    await settle()
    assert src.now == pytest.approx(106.0)  # three reads of 2 s each: no spinning


async def test_close_stops_a_read_in_flight_and_any_later_one() -> None:
    src = Source(took=2.0)
    src.gate = asyncio.Event()
    cached = SlowRead(src.read, name="t", clock=src.clock)
    waiting = asyncio.create_task(cached.get())
    await settle()
    await cached.close()
    # The waiter was not cancelled itself: it gets an error it can catch as one.
    with pytest.raises(SlowReadClosed, match="closed while reading"):
        await waiting
    with pytest.raises(SlowReadClosed):
        await cached.get()
    src.gate.set()
    await settle()
    assert src.reads == 0


async def test_a_cancelled_caller_is_cancelled_and_the_shared_read_goes_on() -> None:
    src = Source(took=2.0)
    src.gate = asyncio.Event()
    cached = SlowRead(src.read, name="t", clock=src.clock)
    first = asyncio.create_task(cached.get())
    second = asyncio.create_task(cached.get())
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    src.gate.set()
    assert (await second)[0] == 1
