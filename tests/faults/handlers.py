"""Handlers for the fault suite, loaded with `aol run --handlers tests.faults.handlers`.

`RECORD` and `CRASH` append one line per event to a journal file of their own process,
`$AOL_FAULTS_JOURNAL/effects-<pid>.log`, with a plain `write(2)` on an `O_APPEND` file:

    S <pid> <action_id> <attempt> <epoch> <t_ns>          the attempt began
    E <pid> <action_id> <attempt> <epoch> <t_ns> <how>   it ended: ok | cancelled | error

`t_ns` is CLOCK_MONOTONIC, which is one clock for every process on the host, so the test
compares it with the moment it reaped a killed worker. A line that has been written
survives the writer's SIGKILL (it is in the kernel's page cache), and the journal does
not depend on the database being up, which matters while the suite restarts it. An `S`
without its `E` is an attempt whose process died in the middle of it.

`RECORD`'s side effect is the `E ... ok` line: the handler returns right after writing it.
Payload: {"ms": float} (how long the attempt takes; default 0).

`CRASH` is a poison action: it journals its start, then its process kills itself with
SIGKILL, every time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from aol import HandlerContext, handler

JOURNAL_ENV = "AOL_FAULTS_JOURNAL"

_fd: int | None = None


def _journal_fd() -> int:
    global _fd  # one file per process, opened on first use
    if _fd is None:
        folder = Path(os.environ[JOURNAL_ENV])
        path = folder / f"effects-{os.getpid()}.log"
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    return _fd


def journal(kind: str, ctx: HandlerContext, *extra: str) -> None:
    epoch = ctx.action.claim_epoch if ctx.action.claim_epoch is not None else 0
    fields = [
        kind,
        str(os.getpid()),
        str(ctx.action_id),
        str(ctx.attempt),
        str(epoch),
        str(time.clock_gettime_ns(time.CLOCK_MONOTONIC)),
        *extra,
    ]
    os.write(_journal_fd(), (" ".join(fields) + "\n").encode())


@handler("RECORD")
async def record(ctx: HandlerContext) -> str:
    journal("S", ctx)
    how = "error"
    try:
        ms = float(ctx.payload.get("ms", 0))
        if ms > 0:
            await asyncio.sleep(ms / 1000)
        how = "ok"
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        journal("E", ctx, how)
    return "recorded"


@handler("CRASH")
async def crash(ctx: HandlerContext) -> str:
    journal("S", ctx)
    os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(60)  # not reached: SIGKILL cannot be caught
    return "survived SIGKILL"
