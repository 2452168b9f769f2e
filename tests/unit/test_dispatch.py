"""run_batch without a database: when handlers end against the deadline, every outcome is
known by the time it returns."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

from aol.actions.context import HandlerContext
from aol.actions.registry import Registry
from aol.settings import load_settings
from aol.worker.dispatch import Outcome, WorkerContext, run_batch
from tests.factory import claimed_action

DEADLINE = 0.05


def context(registry: Registry, data_dir: Path) -> WorkerContext:
    # run_batch reads only the settings, the registry and the data folder.
    return WorkerContext(
        pool=cast(Any, None),
        lease=cast(Any, None),
        settings=load_settings({"action_timeout": DEADLINE}, env={}),
        registry=registry,
        data_dir=data_dir,
    )


async def test_a_handler_that_ends_on_the_deadlines_turn_has_its_outcome_on_return(
    tmp_path: Path,
) -> None:
    """The loop is blocked past both the handler's sleep and the deadline, so both timers
    fire on one turn: the handler's task ends on the next, just before run_batch resumes and
    before the task's done-callback has run. Its result must be noted all the same (else
    the tick would write it as a failure, or not at all)."""

    async def quick(ctx: HandlerContext) -> str | None:
        await asyncio.sleep(DEADLINE / 2)
        return "done"

    registry = Registry()
    registry.register("QUICK", quick)
    action = claimed_action("QUICK")
    asyncio.get_running_loop().call_later(DEADLINE / 10, time.sleep, DEADLINE * 2)
    outcomes: dict[int, Outcome] = {}

    await run_batch(context(registry, tmp_path), [action], proof=True, tick=1, outcomes=outcomes)

    assert list(outcomes) == [action.id]
    assert (outcomes[action.id].error, outcomes[action.id].message) == (None, "done")


async def test_a_handler_past_the_deadline_is_cancelled_and_recorded_as_timed_out(
    tmp_path: Path,
) -> None:
    async def quick(ctx: HandlerContext) -> str | None:
        return "done"

    async def slow(ctx: HandlerContext) -> str | None:
        await asyncio.sleep(10)
        return "late"

    registry = Registry()
    registry.register("QUICK", quick)
    registry.register("SLOW", slow)
    fast, late = claimed_action("QUICK"), claimed_action("SLOW")
    outcomes: dict[int, Outcome] = {}
    started = time.monotonic()

    await run_batch(
        context(registry, tmp_path), [fast, late], proof=True, tick=1, outcomes=outcomes
    )

    assert time.monotonic() - started < 1.0
    assert outcomes[fast.id].message == "done"
    assert str(outcomes[late.id].error) == f"handler timed out after {DEADLINE:g}s"
