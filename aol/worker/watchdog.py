"""The watchdog: a thread outside the event loop that ends the process if the loop stalls.

A handler that blocks the event loop (a synchronous call, a busy loop) stops the heartbeat,
but the lock connection stays open, so the lease would stay held. The loop beats a
timestamp a few times a second; the thread checks it and, when the loop has not beaten for
longer than half the lease TTL, logs `watchdog_fired` and exits the process at once
(`os._exit`), which closes the lock session and lets a standby take over.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable

from aol.logs import get_logger

log = get_logger("aol.watchdog")
EXIT_WATCHDOG = 70


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


class Watchdog:
    """`async with Watchdog(limit):` guards the block it wraps."""

    def __init__(self, limit: float, *, on_fire: Callable[[int], None] = _exit_now) -> None:
        self.limit = limit
        self.interval = max(0.05, min(0.5, limit / 4))
        self.on_fire = on_fire
        self.fired = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aol-watchdog", daemon=True)
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watchdog:
        self._last = time.monotonic()
        self._beat = asyncio.create_task(self._beat_forever(), name="aol-watchdog-beat")
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.cancel()
        await asyncio.to_thread(self._thread.join, 5)

    async def _beat_forever(self) -> None:
        while True:
            self._last = time.monotonic()
            await asyncio.sleep(self.interval)

    def _watch(self) -> None:
        # The stall is counted on this thread's own checks. A check that comes far later than
        # asked means the whole process did not run (SIGSTOP, a paused VM): that gap is not
        # the loop's doing and counts as one interval, so a resumed process sees its loop
        # beat (or its lost lease) instead of exiting 70 at once on SIGCONT.
        checked = time.monotonic()
        stalled = 0.0
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            gap = now - checked
            credited = gap if gap <= 2 * self.interval else self.interval
            last = self._last
            stalled = min(now - last, credited) if last > checked else stalled + credited
            checked = now
            if stalled > self.limit:
                self.fired = True
                log.critical("watchdog_fired", stalled_s=round(stalled, 3), limit_s=self.limit)
                self.on_fire(EXIT_WATCHDOG)
                return
