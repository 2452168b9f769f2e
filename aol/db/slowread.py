"""A read whose cost grows with history (counting finished actions, listing every action
type): kept between requests, and taken again in the background once it is older than
`ratio` times as long as it took.

So a dashboard or a metrics scrape spends at most about 1/`ratio` of one database backend
on it, however large the table and however many pages are open, and never waits for it
once it has a value. A read faster than `fast` seconds is taken again on every call (then
the value is always current, as on a small table).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

from aol.logs import get_logger

log = get_logger("aol.db.slowread")

T = TypeVar("T")

RATIO = 20.0
FAST = 0.05  # seconds


class SlowReadClosed(RuntimeError):
    """The SlowRead was closed: nothing more is read."""


class SlowRead(Generic[T]):
    def __init__(
        self,
        read: Callable[[], Awaitable[T]],
        *,
        name: str,
        ratio: float = RATIO,
        fast: float = FAST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio <= 0 or fast < 0:
            raise ValueError(f"ratio must be positive and fast not negative: {ratio}, {fast}")
        self._read = read
        self.name = name
        self.ratio = ratio
        self.fast = fast
        self._clock = clock
        self._value: T | None = None
        self._have = False
        self._read_at = 0.0  # when the value's read started (clock)
        self._took = 0.0
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def get(self) -> tuple[T, float]:
        """The value and its age in seconds (time since its read started).

        Waits for a read when there is no value yet or the read is fast; otherwise answers
        at once, starting a background read when the value is due. Raises the read's error
        only while there has never been a value, and SlowReadClosed once closed."""
        if self._closed:
            raise SlowReadClosed(f"{self.name}: closed")
        if self._task is None and self._due():
            self._task = asyncio.get_running_loop().create_task(
                self._refresh(), name=f"aol-slowread-{self.name}"
            )
        task = self._task
        if task is not None and (not self._have or self._took < self.fast):
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                caller = asyncio.current_task()
                if caller is not None and caller.cancelling():
                    raise  # the caller is cancelled: let it go
                # The read was cancelled under us (close()): an error, not a cancellation.
                raise SlowReadClosed(f"{self.name}: closed while reading") from None
        if not self._have:
            assert self._error is not None
            raise self._error
        return cast(T, self._value), max(0.0, self._clock() - self._read_at)

    async def close(self) -> None:
        """Stop a read in flight (its connection goes back to its pool); read no more."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _due(self) -> bool:
        if not self._have or self._took < self.fast:
            return True
        return self._clock() - self._read_at >= self.ratio * self._took

    async def _refresh(self) -> None:
        started = self._clock()
        try:
            value = await self._read()
        except Exception as exc:  # kept for a caller with no value; a value in hand stays
            self._error = exc
            if self._have:
                log.warning(
                    "slow_read_failed",
                    read=self.name,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
            # The next try waits as long as after a success (no spinning on a dead server).
            self._read_at = started
        else:
            self._value, self._have, self._error = value, True, None
            self._read_at = started
            self._took = self._clock() - started
        finally:
            self._task = None
