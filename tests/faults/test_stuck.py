"""Stuck workers and stuck handlers, with real `aol run` processes on the real database.

Scenarios (numbered as in the issue):

2. The holder is frozen (SIGSTOP) for longer than the lease TTL: the standby ends the frozen
   holder's lock session once the lease row has expired, takes over at the next epoch,
   rescues the claim and completes it; the frozen holder, resumed, writes nothing and
   exits 4.
3. A handler blocks the event loop (`time.sleep` in an async handler): the watchdog ends
   the process (exit 70), the standby takes over, the action is rescued each time and ends
   `dead` after `max_attempts`, while other actions keep succeeding.
7. A handler swallows cancellation: the attempt is recorded as a timeout and abandoned, and
   the tick ends on time; an isolated handler blocking its own process is killed at the
   action timeout without blocking the worker.
K. The kill switch while an action is in flight: the worker stops at once, the action goes
   back to `retry` (or to `cancelled` with `kill_cancels`), nothing is left `running`.

What happened is proven from the database (the lease row, actions, execution_logs,
tick_ledger, and the `test_effects` rows the handlers write with their pid and the
database clock) and from the workers' JSON logs. The database clock and the log timestamps
are the same host clock, so they are compared with each other.

Each scenario appends one JSON line to `$AOL_FAULTS_REPORT` (default
`<pytest basetemp>/faults.jsonl`): scenario, time_to_recover_s, lost, overlaps,
duplicate_effects, notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol import enqueue
from tests.process.proc import (
    REPO_ROOT,
    Proc,
    Procs,
    action_events,
    action_row,
    action_status_is,
    create_effects_table,
    db_clock,
    effects,
    lease_locks,
    lease_owner_is,
    lease_row,
    open_procs,
    until,
)

HANDLER_MODULES = ("tests.process.handlers", "tests.faults.stuck_handlers")
LEASE_TTL = 4.0
HEARTBEAT_INTERVAL = 1.0
TICK_TIMEOUT = 4.0
ACTION_TIMEOUT = 2.0
SHUTDOWN_GRACE = 5.0
SCAN_INTERVAL = 30.0  # NOTIFY and the claim-expiry wake-ups drive the workers, not the scan
# What aol.worker.watchdog derives from the TTL: the stall limit and its check interval.
WATCHDOG_LIMIT = LEASE_TTL / 2
WATCHDOG_CHECK = max(0.05, min(0.5, WATCHDOG_LIMIT / 4))
EXIT_LEASE_LOST = 4
EXIT_WATCHDOG = 70
# Room for process scheduling, connection set-up and the standby's terminate round trip.
SCHEDULING_SLACK = 1.5
KILL_EXIT_LIMIT = 2.0

REPORT_ENV = "AOL_FAULTS_REPORT"


def stuck_args(*extra: str) -> tuple[str, ...]:
    """`aol --log-format json run` with this module's short timings and handlers."""
    args: list[str] = ["--log-format", "json", "run"]
    for module in HANDLER_MODULES:
        args += ["--handlers", module]
    args += [
        "--lease-ttl",
        f"{LEASE_TTL:g}",
        "--heartbeat-interval",
        f"{HEARTBEAT_INTERVAL:g}",
        "--tick-timeout",
        f"{TICK_TIMEOUT:g}",
        "--action-timeout",
        f"{ACTION_TIMEOUT:g}",
        "--shutdown-grace",
        f"{SHUTDOWN_GRACE:g}",
        "--scan-interval",
        f"{SCAN_INTERVAL:g}",
    ]
    return (*args, *extra)


@pytest.fixture
async def stuck_procs(db_url: str, tmp_path: Path) -> AsyncIterator[Procs]:
    """`aol` processes on the test's database (AOL_CLAIM_GRACE=0.5 comes from Procs)."""
    async with open_procs(db_url, tmp_path) as p:
        yield p


@pytest.fixture(scope="session")
def stuck_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`$AOL_FAULTS_REPORT`, else `<pytest basetemp>/faults.jsonl`."""
    explicit = os.environ.get(REPORT_ENV)
    return Path(explicit) if explicit else tmp_path_factory.getbasetemp() / "faults.jsonl"


def write_figures(
    path: Path,
    *,
    scenario: str,
    time_to_recover_s: float | None,
    lost: int,
    overlaps: int,
    duplicate_effects: int,
    notes: str,
) -> None:
    """Append the scenario's JSON line to the report and print a summary line."""
    line = {
        "scenario": scenario,
        "time_to_recover_s": None if time_to_recover_s is None else round(time_to_recover_s, 3),
        "lost": lost,
        "overlaps": overlaps,
        "duplicate_effects": duplicate_effects,
        "notes": notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")
    print(f"[faults] {json.dumps(line, sort_keys=True)}")  # noqa: T201


def figures_text(free: str, **figures: object) -> str:
    """`k=v; k=v; free text` with floats to the millisecond."""
    parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    return "; ".join([*parts, free])


# --- small probes ---------------------------------------------------------------------------


def seconds_between(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def log_time(event: dict[str, Any]) -> datetime:
    """The timestamp structlog put on a JSON log line (UTC, the host clock)."""
    return datetime.fromisoformat(str(event["timestamp"]))


def find_events(proc: Proc, name: str) -> list[dict[str, Any]]:
    return [e for e in proc.events() if e.get("event") == name]


def first_event(proc: Proc, name: str) -> dict[str, Any]:
    found = find_events(proc, name)
    assert found, f"{proc.name} logged no {name}\n{proc.describe()}"
    return found[0]


async def standby_waiting(pool: asyncpg.Pool[Any]) -> bool:
    """One session holds the lease lock and one waits for it."""
    return await lease_locks(pool) == (1, 1)


async def attempt_started(
    pool: asyncpg.Pool[Any], action_id: int, attempt: int
) -> asyncpg.Record | None:
    for row in await effects(pool, action_id):
        if row["attempt"] == attempt:
            return row
    return None


async def running_count(pool: asyncpg.Pool[Any]) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM aol.actions WHERE status = 'running'"))


def completed_effects(rows: Iterable[asyncpg.Record]) -> list[asyncpg.Record]:
    return [r for r in rows if r["finished_at"] is not None]


async def duplicate_effects(pool: asyncpg.Pool[Any]) -> int:
    """Side effects completed more than once for one action (extra completions counted)."""
    value = await pool.fetchval(
        "SELECT coalesce(sum(n - 1), 0) FROM ("
        "  SELECT count(*) AS n FROM public.test_effects"
        "   WHERE finished_at IS NOT NULL GROUP BY action_id) per_action"
    )
    return int(value)


async def all_succeeded(pool: asyncpg.Pool[Any], ids: list[int]) -> bool:
    n = await pool.fetchval(
        "SELECT count(*) FROM aol.actions WHERE id = ANY($1::bigint[]) AND status = 'succeeded'",
        ids,
    )
    return bool(n == len(ids))


def not_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def stop_all(procs: Iterable[Proc]) -> dict[str, int]:
    """SIGTERM every running process; their exit codes by name."""
    running = [p for p in procs if p.running]
    for p in running:
        p.send(signal.SIGTERM)
    return {p.name: await p.wait(SHUTDOWN_GRACE + 5) for p in running}


# --- 2. the holder frozen (SIGSTOP) for longer than the TTL ----------------------------------


@pytest.mark.faults
async def test_2_sigstopped_holder_is_replaced_and_fenced(
    stuck_procs: Procs, pool: asyncpg.Pool[Any], stuck_report: Path
) -> None:
    """A is frozen mid-action. B (standby) ends A's lock session once A's lease row expired
    on the database clock, takes over at epoch + 1, rescues A's claim and completes it as
    attempt 2. Resumed, A writes nothing and exits 4."""
    await create_effects_table(pool)
    a = await stuck_procs.start(*stuck_args(), name="A")
    held_a = await until(lambda: lease_owner_is(pool, a.owner), what="A's lease", alive=[a])
    epoch_a = int(held_a["epoch"])
    b = await stuck_procs.start(*stuck_args("--standby"), name="B")
    await until(lambda: standby_waiting(pool), what="B to wait on the lock", alive=[a, b])

    # Attempt 1 sleeps 60 s: long enough that it is still asleep when A is resumed, so it
    # cannot complete its side effect late; attempt 2 (the rescue) finishes at once.
    action_id = int(
        await enqueue(
            pool, "SLOW", {"seconds": 60, "later_seconds": 0.1}, idempotency_key="sigstop-1"
        )
    )
    await until(lambda: attempt_started(pool, action_id, 1), what="attempt 1 in A", alive=[a, b])
    a.send(signal.SIGSTOP)
    stopped_at = await db_clock(pool)
    stopped_mono = time.monotonic()

    held_b = await until(
        lambda: lease_owner_is(pool, b.owner),
        what="B to take over",
        timeout=LEASE_TTL + HEARTBEAT_INTERVAL + 10,
        alive=[b],
    )
    takeover_mono = time.monotonic() - stopped_mono
    a_expires_at = held_b["previous_expires_at"]  # A's last expiry, kept by acquire_lease
    a_last_heartbeat = held_b["previous_expires_at"] - (
        held_b["expires_at"] - held_b["acquired_at"]
    )
    takeover_from_stop = seconds_between(held_b["acquired_at"], stopped_at)
    takeover_after_expiry = seconds_between(held_b["acquired_at"], a_expires_at)
    takeover_from_heartbeat = seconds_between(held_b["acquired_at"], a_last_heartbeat)

    done = await until(
        lambda: action_status_is(pool, action_id, "succeeded", "dead"),
        what="B to rescue and complete the action",
        timeout=10,
        alive=[b],
    )
    completed_from_stop = seconds_between(done["finished_at"], stopped_at)
    assert a.running, a.describe()  # still frozen: it never saw any of this

    a.send(signal.SIGCONT)
    resumed_mono = time.monotonic()
    resumed_at = datetime.now(UTC)  # the clock of the log timestamps
    a_code = await a.wait(10)
    a_exit_s = time.monotonic() - resumed_mono
    await asyncio.sleep(0.2)  # anything A might still have had in flight has landed by now

    rows = await effects(pool, action_id)
    events = [(e["event"], e["attempt"], e["epoch"]) for e in await action_events(pool, action_id)]
    after = await action_row(pool, action_id)
    a_names = a.event_names()
    summary = find_events(a, "lease_summary")
    refused = summary[0].get("refused_writes") if summary else None
    after_resume = [str(e["event"]) for e in a.events() if log_time(e) >= resumed_at]
    attempt2 = next((r for r in rows if r["attempt"] == 2), None)
    # A frozen process does nothing, so attempt 2 overlaps attempt 1 only if it began before
    # A was stopped, or if attempt 1 completed its effect after attempt 2 began.
    overlaps = 0
    dupes = max(0, len(completed_effects(rows)) - 1)
    for r in rows:
        if r["attempt"] == 1 and attempt2 is not None:
            overlaps += int(attempt2["started_at"] < stopped_at)
            overlaps += int(
                r["finished_at"] is not None and r["finished_at"] > attempt2["started_at"]
            )
    a_writes_at_epoch_a = [e for e in events if e[2] == epoch_a]
    write_figures(
        stuck_report,
        scenario="2-sigstop-holder-longer-than-ttl",
        time_to_recover_s=takeover_from_stop,
        lost=0 if after["status"] == "succeeded" else 1,
        overlaps=overlaps,
        duplicate_effects=dupes,
        notes=figures_text(
            "time_to_recover_s is B's takeover (lease acquired_at) measured from the SIGSTOP "
            "on the database clock; attempt 1 slept 60 s so it was still asleep at SIGCONT "
            "and was cancelled by A's lost lease, never completing its effect; on resume A's "
            "tick timeout (expired while frozen) may fire before A notices the lost lease, "
            "so A may send its attempt-1 failure at the old epoch: the SQL fence refuses it, "
            "or the lost-lease cancellation cuts it (then a_refused_writes stays 0)",
            takeover_from_sigstop_s=takeover_from_stop,
            takeover_after_a_expires_at_s=takeover_after_expiry,
            takeover_after_a_last_heartbeat_s=takeover_from_heartbeat,
            takeover_seen_by_test_s=takeover_mono,
            action_completed_from_sigstop_s=completed_from_stop,
            epoch_before=epoch_a,
            epoch_after=int(held_b["epoch"]),
            a_exit_code=a_code,
            a_exit_after_sigcont_s=a_exit_s,
            a_refused_writes=refused,
            a_writes_at_old_epoch=len(a_writes_at_epoch_a),
            a_events_after_sigcont=after_resume,
        ),
    )

    limit = LEASE_TTL + HEARTBEAT_INTERVAL + SCHEDULING_SLACK
    assert takeover_from_stop <= limit, (takeover_from_stop, b.describe())
    assert takeover_from_heartbeat <= limit, (takeover_from_heartbeat, b.describe())
    assert takeover_after_expiry <= HEARTBEAT_INTERVAL + SCHEDULING_SLACK, b.describe()
    assert takeover_after_expiry >= 0, "B took over before A's lease expired"
    assert int(held_b["epoch"]) == epoch_a + 1
    assert "lease_holder_terminated" in b.event_names(), b.describe()

    assert (after["status"], after["attempts"], after["claimed_by"], after["claim_epoch"]) == (
        "succeeded",
        2,
        b.owner,
        epoch_a + 1,
    )
    assert after["updated_at"] == done["updated_at"], "A changed the action after SIGCONT"
    # None of A's writes succeeded: no attempt-1 result, nothing at A's epoch at all.
    assert events == [
        ("action_rescued", 1, epoch_a + 1),
        ("action_succeeded", 2, epoch_a + 1),
    ], events
    assert a_writes_at_epoch_a == []
    assert a_code == EXIT_LEASE_LOST, a.describe()
    assert "lease_lost" in a_names or "action_result_discarded" in a_names, a.describe()
    assert "watchdog_fired" not in a_names, a.describe()
    assert [(r["attempt"], r["pid"]) for r in rows] == [(1, a.pid), (2, b.pid)]
    assert attempt2 is not None
    assert attempt2["started_at"] > stopped_at
    assert overlaps == 0
    assert dupes == 0, "attempt 1 completed its side effect after SIGCONT"
    lease = await lease_row(pool)
    assert (lease["owner"], lease["epoch"], lease["released_at"]) == (b.owner, epoch_a + 1, None)
    assert await stop_all([b]) == {"B": 0}, b.describe()


WATCHDOG_SCRIPT = """
import asyncio, sys, time
from aol.worker.watchdog import Watchdog

async def main() -> None:
    limit = float(sys.argv[1])
    fired: list[int] = []
    async with Watchdog(limit, on_fire=fired.append):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(f"after-stops={fired}", flush=True)
        time.sleep(limit * 2.5)  # now block the loop for real: this must still fire
        await asyncio.sleep(0)
    print(f"after-block={fired}", flush=True)

asyncio.run(main())
"""


@pytest.mark.faults
async def test_2_watchdog_does_not_count_time_the_whole_process_was_stopped() -> None:
    """The watchdog measures stalls of the event loop, not of the process: SIGSTOP freezes
    its thread too, and on SIGCONT the loop beats again at once. Before the fix the thread
    often looked first, saw the frozen time as a stall and exited 70, so a frozen holder
    could not report its lost lease (exit 4). A real block afterwards still fires."""
    limit = 0.4
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WATCHDOG_SCRIPT,
        f"{limit:g}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
        assert ready.strip() == b"ready"
        for _ in range(3):
            os.kill(proc.pid, signal.SIGSTOP)
            await asyncio.sleep(limit * 3)
            os.kill(proc.pid, signal.SIGCONT)
            await asyncio.sleep(limit)
        out, _ = await asyncio.wait_for(proc.communicate(b""), timeout=10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().splitlines()
    assert "after-stops=[]" in lines, lines
    assert f"after-block=[{EXIT_WATCHDOG}]" in lines, lines


# --- 3. a handler that blocks the event loop -------------------------------------------------


class KeepTwo:
    """The test's supervisor: one holder and one standby alive; a new standby for each exit."""

    def __init__(self, procs: Procs, first: Proc) -> None:
        self.procs = procs
        self.workers: list[Proc] = [first]
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> list[Proc]:
        return [p for p in self.workers if p.running]

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name="keep-two")

    async def _keep(self) -> None:
        while True:
            while len(self.alive) < 2:
                name = f"w{len(self.workers) + 1}"
                self.workers.append(await self.procs.start(*stuck_args("--standby"), name=name))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Trickle:
    """Enqueues a quick SLOW action every `every` seconds until stopped."""

    def __init__(self, pool: asyncpg.Pool[Any], every: float = 0.4) -> None:
        self.pool = pool
        self.every = every
        self.ids: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def one(self) -> int:
        key = f"quick-{len(self.ids)}"
        action_id = int(await enqueue(self.pool, "SLOW", {"seconds": 0}, idempotency_key=key))
        self.ids.append(action_id)
        return action_id

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trickle")

    async def _run(self) -> None:
        while True:
            await self.one()
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@pytest.mark.faults
async def test_3_loop_blocking_handler_is_ended_by_the_watchdog_until_dead(
    stuck_procs: Procs, pool: asyncpg.Pool[Any], stuck_report: Path
) -> None:
    """`time.sleep(60)` in an async handler: each holder that runs it is ended by its
    watchdog (exit 70) about lease_ttl/2 after the block began; the standby takes over at
    once (the lock frees with the process), rescues the claim once the dead holder's lease
    has expired, and after max_attempts=2 the action is dead. Quick actions enqueued all
    along keep succeeding."""
    await create_effects_table(pool)
    t0 = await db_clock(pool)
    first = await stuck_procs.start(*stuck_args("--standby"), name="w1")
    await until(lambda: lease_owner_is(pool, first.owner), what="w1's lease", alive=[first])
    keeper = KeepTwo(stuck_procs, first)
    keeper.start()
    trickle = Trickle(pool)
    try:
        await until(lambda: standby_waiting(pool), what="a standby to wait", timeout=15)
        warm = await trickle.one()
        await until(
            lambda: action_status_is(pool, warm, "succeeded"), what="w1 to run a quick action"
        )
        trickle.start()
        blocker = int(
            await enqueue(
                pool, "BLOCK_LOOP", {"seconds": 60}, idempotency_key="block-1", max_attempts=2
            )
        )
        dead = await until(
            lambda: action_status_is(pool, blocker, "dead", "succeeded"),
            what="the blocking action to end dead",
            timeout=30,
        )
        await trickle.stop()
        quick = list(trickle.ids)
        await until(
            lambda: all_succeeded(pool, quick), what="every quick action to succeed", timeout=15
        )
        await until(lambda: standby_waiting(pool), what="holder + standby again", timeout=15)
    finally:
        await trickle.stop()
        await keeper.stop()
    workers = list(keeper.workers)
    codes = await stop_all(workers)

    blocks = await effects(pool, blocker)
    by_pid = {p.pid: p for p in workers}
    fired: list[float] = []
    stalls: list[float] = []
    takeovers: list[float] = []
    acquired = {
        int(e["epoch"]): log_time(e) for p in workers for e in find_events(p, "lease_acquired")
    }
    epochs_of = {
        p.pid: [int(e["epoch"]) for e in find_events(p, "lease_acquired")] for p in workers
    }
    for row in blocks:
        proc = by_pid[row["pid"]]
        assert proc.returncode == EXIT_WATCHDOG, proc.describe()
        event = first_event(proc, "watchdog_fired")
        fired.append(seconds_between(log_time(event), row["started_at"]))
        stalls.append(float(event["stalled_s"]))
        nxt = acquired.get(max(epochs_of[proc.pid]) + 1)
        assert nxt is not None, f"no holder after {proc.name}"
        takeovers.append(seconds_between(nxt, log_time(event)))
    exits = {p.name: p.returncode for p in workers}
    quick_rows = await pool.fetch(
        "SELECT id, status, attempts FROM aol.actions WHERE id = ANY($1::bigint[])", quick
    )
    collateral = sum(1 for r in quick_rows if r["attempts"] > 1)
    lost = sum(1 for r in quick_rows if r["status"] != "succeeded")
    dupes = await duplicate_effects(pool)
    # When did each attempt's process stop acting? A finished effect ends at finished_at; an
    # unfinished one in a worker the watchdog ended, at its watchdog_fired.
    died = {
        p.pid: log_time(first_event(p, "watchdog_fired"))
        for p in workers
        if p.returncode == EXIT_WATCHDOG
    }
    per_action: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for r in await effects(pool):
        per_action[int(r["action_id"])].append(r)
    overlaps = 0
    dup_actions: list[int] = []
    dup_completed_in_dead_worker = 0
    for action_id, rows in per_action.items():
        for earlier, later in itertools.pairwise(rows):
            end = earlier["finished_at"] or died.get(earlier["pid"])
            overlaps += int(end is None or later["started_at"] < end)
        done_rows = completed_effects(rows)
        if len(done_rows) > 1:
            dup_actions.append(action_id)
            # Every completion but the last happened in a worker that died (blocked by its
            # sibling) before it could record the result.
            dup_completed_in_dead_worker += sum(1 for r in done_rows[:-1] if r["pid"] in died)
    total_s = seconds_between(dead["updated_at"], blocks[0]["started_at"]) if blocks else None
    events = [(e["event"], e["attempt"], e["epoch"]) for e in await action_events(pool, blocker)]
    write_figures(
        stuck_report,
        scenario="3-handler-blocks-event-loop",
        time_to_recover_s=max(takeovers) if takeovers else None,
        lost=lost + int(dead["status"] != "dead"),
        overlaps=overlaps,
        duplicate_effects=dupes,
        notes=figures_text(
            "time_to_recover_s is the longest gap from a watchdog_fired to the next holder's "
            "lease_acquired; fire delays are from the blocked attempt's start (database "
            "clock) to watchdog_fired (log clock, same host); quick actions claimed in the "
            "same batch as the blocker were stuck with it and rescued (collateral attempts); "
            "a collateral action whose effect completed just before its sibling blocked the "
            "loop was never recorded, so its rescue ran it again: a duplicate effect, the "
            "at-least-once case the README documents (not an overlap: the first process was "
            "dead before the second attempt began)",
            watchdog_fire_delays_s=[round(x, 3) for x in fired],
            watchdog_stalled_s=stalls,
            takeover_after_fire_s=[round(x, 3) for x in takeovers],
            block_start_to_dead_s=total_s,
            worker_exit_codes=exits,
            quick_actions=len(quick),
            quick_with_extra_attempts=collateral,
            duplicate_effect_actions=dup_actions,
            blocker_events=events,
            scenario_s=seconds_between(await db_clock(pool), t0),
        ),
    )

    assert (dead["status"], dead["attempts"], dead["max_attempts"]) == ("dead", 2, 2), dict(dead)
    assert "expired" in (dead["last_error"] or ""), dead["last_error"]
    assert [r["attempt"] for r in blocks] == [1, 2]
    assert completed_effects(blocks) == []
    assert len({r["pid"] for r in blocks}) == 2, "each attempt ran in its own worker"
    assert [e[0] for e in events] == ["action_rescued", "action_rescued"], events
    for delay, stalled in zip(fired, stalls, strict=True):
        # The stall counts from the loop's last beat, which came about one beat interval
        # (= the check interval) or less before the block began (more if the loop was busy
        # just before), and the watchdog looks once per check interval.
        assert delay >= WATCHDOG_LIMIT / 2, fired
        assert delay <= WATCHDOG_LIMIT + WATCHDOG_CHECK + 0.5, fired
        assert WATCHDOG_LIMIT <= stalled <= WATCHDOG_LIMIT + WATCHDOG_CHECK + 0.5, stalls
    for gap in takeovers:
        assert gap <= SCHEDULING_SLACK, takeovers
    assert sum(1 for c in exits.values() if c == EXIT_WATCHDOG) == 2, exits
    assert all(c == 0 for c in codes.values()), codes
    assert lost == 0, [dict(r) for r in quick_rows]
    assert overlaps == 0, "an attempt began while an earlier one's process still ran"
    assert blocker not in dup_actions
    # Duplicates only come from collateral actions, completed in a worker that then died.
    assert dupes <= collateral
    assert dup_completed_in_dead_worker == dupes
    assert await running_count(pool) == 0


# --- 7. a handler that swallows cancellation; an isolated handler that blocks -------------


@pytest.mark.faults
async def test_7_cancellation_swallowing_handler_is_abandoned_and_the_tick_ends_on_time(
    stuck_procs: Procs, pool: asyncpg.Pool[Any], stuck_report: Path
) -> None:
    """The handler catches every CancelledError and goes back to sleep. At the action
    timeout it is cancelled, abandoned after the grace, and recorded as a HandlerTimeout
    that "ignored cancellation"; the tick ends on time and later ticks still run actions.
    The worker still stops promptly on SIGTERM."""
    await create_effects_table(pool)
    w = await stuck_procs.start(*stuck_args(), name="W")
    await until(lambda: lease_owner_is(pool, w.owner), what="W's lease", alive=[w])
    stuck = int(
        await enqueue(
            pool, "SWALLOW_CANCEL", {"seconds": 60}, idempotency_key="swallow-1", max_attempts=1
        )
    )
    dead = await until(
        lambda: action_status_is(pool, stuck, "dead", "retry", "succeeded"),
        what="the swallowing handler's attempt to be recorded",
        timeout=ACTION_TIMEOUT + 5,
        alive=[w],
    )
    started = await attempt_started(pool, stuck, 1)
    assert started is not None

    later = [
        int(await enqueue(pool, "SLOW", {"seconds": 0}, idempotency_key=f"after-{i}"))
        for i in range(3)
    ]
    await until(
        lambda: all_succeeded(pool, later),
        what="the actions enqueued after the abandoned one",
        timeout=10,
        alive=[w],
    )

    async def stuck_ticked() -> dict[str, Any] | None:
        ticks = [e for e in find_events(w, "tick_finished") if e.get("claimed") and e.get("dead")]
        return ticks[0] if ticks else None

    stuck_tick = await until(stuck_ticked, what="the stuck tick's tick_finished", alive=[w])
    later_ticks = await pool.fetch(
        "SELECT DISTINCT tick FROM aol.execution_logs WHERE action_id = ANY($1::bigint[]) "
        "AND event = 'action_succeeded'",
        later,
    )
    names = w.event_names()
    swallowed = len(find_events(w, "cancellation_swallowed"))
    row = await effects(pool, stuck)
    abandoned_still_running = bool(row) and row[0]["finished_at"] is None

    term_mono = time.monotonic()
    w.send(signal.SIGTERM)
    code = await w.wait(SHUTDOWN_GRACE + 15)
    stop_s = time.monotonic() - term_mono
    write_figures(
        stuck_report,
        scenario="7-handler-swallows-cancellation",
        time_to_recover_s=float(stuck_tick["duration_ms"]) / 1000,
        lost=0,
        overlaps=0,
        duplicate_effects=await duplicate_effects(pool),
        notes=figures_text(
            "time_to_recover_s is the duration of the tick that ran the swallowing handler "
            "(its tick_finished duration_ms); the abandoned task stays in the worker's loop",
            tick_duration_ms=float(stuck_tick["duration_ms"]),
            limit_ms=(ACTION_TIMEOUT + 1) * 1000,
            last_error=dead["last_error"],
            cancellations_swallowed=swallowed,
            later_actions_succeeded=len(later),
            later_ticks=sorted(int(r["tick"]) for r in later_ticks),
            stuck_tick=int(stuck_tick["tick"]),
            sigterm_exit_code=code,
            sigterm_exit_s=stop_s,
        ),
    )

    assert dead["status"] == "dead", dict(dead)
    error = dead["last_error"] or ""
    assert "HandlerTimeout" in error, error
    assert "ignored cancellation" in error, error
    assert float(stuck_tick["duration_ms"]) <= (ACTION_TIMEOUT + 1) * 1000, stuck_tick
    assert "handler_abandoned" in names, w.describe()
    assert swallowed >= 1, w.describe()
    assert abandoned_still_running  # its effect never completed: it was left behind
    assert all(int(r["tick"]) > int(stuck_tick["tick"]) for r in later_ticks)
    assert "watchdog_fired" not in names
    assert code == 0, w.describe()
    assert stop_s < SHUTDOWN_GRACE, f"SIGTERM took {stop_s:.3f}s\n{w.describe()}"


@pytest.mark.faults
async def test_7_isolated_blocking_handler_is_killed_at_the_action_timeout(
    stuck_procs: Procs, pool: asyncpg.Pool[Any], stuck_report: Path
) -> None:
    """An `isolated=True` handler doing `time.sleep(60)` blocks only its child process: the
    worker kills it at the action timeout, records a HandlerTimeout naming the killed
    process, keeps heartbeating meanwhile, runs its sibling in the same tick, and its
    watchdog never fires."""
    await create_effects_table(pool)
    # Enqueued before the worker starts, so its first tick claims both together.
    blocker = int(
        await enqueue(
            pool,
            "BLOCK_ISOLATED",
            {"seconds": 60},
            idempotency_key="isolated-1",
            max_attempts=1,
            priority=1,
        )
    )
    sibling = int(await enqueue(pool, "SLOW", {"seconds": 0.3}, idempotency_key="sibling-1"))
    w = await stuck_procs.start(*stuck_args(), name="W")
    dead = await until(
        lambda: action_status_is(pool, blocker, "dead", "retry", "succeeded"),
        what="the isolated handler to be recorded",
        timeout=ACTION_TIMEOUT + 10,
        alive=[w],
    )
    sib = await until(
        lambda: action_status_is(pool, sibling, "succeeded"), what="the sibling", alive=[w]
    )
    lease = await lease_row(pool)
    blocks = await effects(pool, blocker)
    error = dead["last_error"] or ""
    match = re.search(r"its process \(pid (\d+)\) was killed", error)
    child_pid = int(match.group(1)) if match else None

    async def both_ticked() -> dict[str, Any] | None:
        ticks = [e for e in find_events(w, "tick_finished") if e.get("claimed", 0) == 2]
        return ticks[0] if ticks else None

    tick = await until(both_ticked, what="the tick of both actions to finish", alive=[w])
    sibling_effect = (await effects(pool, sibling))[0]
    heartbeat_after_block = (
        seconds_between(lease["heartbeat_at"], blocks[0]["started_at"]) if blocks else None
    )
    await asyncio.sleep(0.5)  # a watchdog would have had time to fire by now, had it stalled
    names = w.event_names()
    write_figures(
        stuck_report,
        scenario="7-isolated-handler-blocks-its-process",
        time_to_recover_s=float(tick["duration_ms"]) / 1000,
        lost=0,
        overlaps=0,
        duplicate_effects=await duplicate_effects(pool),
        notes=figures_text(
            "time_to_recover_s is the duration of the tick that ran the isolated handler; "
            "its child process was SIGKILLed at the action timeout",
            tick_duration_ms=float(tick["duration_ms"]),
            last_error=error,
            child_pid=child_pid,
            sibling_finished_before_kill_s=seconds_between(
                dead["updated_at"], sibling_effect["finished_at"]
            ),
            lease_heartbeat_after_block_start_s=heartbeat_after_block,
            worker_running=w.running,
        ),
    )

    assert dead["status"] == "dead", dict(dead)
    assert "HandlerTimeout" in error, error
    assert "was killed" in error, error
    assert child_pid is not None
    assert [r["pid"] for r in blocks] == [child_pid], "the handler ran in the killed child"
    assert completed_effects(blocks) == []
    assert not_alive(child_pid), f"child {child_pid} still alive"
    assert float(tick["duration_ms"]) <= (ACTION_TIMEOUT + 1) * 1000, tick
    assert sib["attempts"] == 1
    assert sibling_effect["pid"] == w.pid
    assert sibling_effect["finished_at"] < dead["updated_at"], "the sibling waited for the kill"
    assert heartbeat_after_block is not None
    assert heartbeat_after_block > 0, lease
    assert w.running, w.describe()
    assert "watchdog_fired" not in names, w.describe()
    assert await lease_owner_is(pool, w.owner) is not None
    assert await stop_all([w]) == {"W": 0}, w.describe()


# --- the kill switch with an action in flight ------------------------------------------------


async def _kill_in_flight(
    procs: Procs, pool: asyncpg.Pool[Any], *, cancels: bool
) -> dict[str, Any]:
    """Start a worker (batch size 1) on a 30 s SLOW action with a second one queued behind
    it, pull the kill switch once attempt 1 is under way, and measure the worker's exit."""
    await create_effects_table(pool)
    in_flight = int(
        await enqueue(pool, "SLOW", {"seconds": 30}, idempotency_key="inflight", priority=1)
    )
    queued = int(await enqueue(pool, "SLOW", {"seconds": 0}, idempotency_key="queued"))
    w = await procs.start(*stuck_args("--batch-size", "1"), name="W")
    await until(lambda: attempt_started(pool, in_flight, 1), what="attempt 1", alive=[w])
    kill_mono = time.monotonic()
    if cancels:
        await pool.execute(
            "UPDATE aol.control_flags SET killed = true, kill_cancels = true, "
            "changed_by = 'test_stuck', reason = 'runaway agent', changed_at = now()"
        )
        flag_set_mono = time.monotonic()
    else:
        cli = await procs.run("kill", "--reason", "runaway agent", name="kill")
        assert cli.returncode == 0, cli.describe()
        flag_set_mono = time.monotonic()
    code = await w.wait(10)
    exit_after_flag = time.monotonic() - flag_set_mono
    return {
        "worker": w,
        "code": code,
        "exit_after_flag_s": exit_after_flag,
        "exit_after_command_start_s": time.monotonic() - kill_mono,
        "in_flight": await action_row(pool, in_flight),
        "queued": await action_row(pool, queued),
        "events": [
            (e["event"], e["attempt"], e["epoch"]) for e in await action_events(pool, in_flight)
        ],
        "effects": await effects(pool, in_flight),
        "running": await running_count(pool),
        "last_tick": await pool.fetchrow(
            "SELECT outcome, claimed FROM aol.tick_ledger ORDER BY id DESC LIMIT 1"
        ),
        "lease": await lease_row(pool),
    }


def _assert_killed_promptly(got: dict[str, Any]) -> None:
    w: Proc = got["worker"]
    assert got["code"] == 0, w.describe()
    assert got["exit_after_flag_s"] < KILL_EXIT_LIMIT, (got["exit_after_flag_s"], w.describe())
    names = w.event_names()
    assert "worker_interrupted" in names, w.describe()
    assert "worker_killed" in names, w.describe()
    queued = got["queued"]
    assert (queued["status"], queued["attempts"]) == ("pending", 0), "claimed after the kill"
    assert got["running"] == 0, "an action was left in running"
    assert completed_effects(got["effects"]) == [], "the killed attempt completed its effect"
    assert got["last_tick"]["outcome"] == "killed"
    assert got["lease"]["released_at"] is not None


@pytest.mark.faults
async def test_kill_with_an_action_in_flight_returns_it_to_retry(
    stuck_procs: Procs, pool: asyncpg.Pool[Any], stuck_report: Path
) -> None:
    """`aol kill`: the worker stops claiming, cancels the in-flight handler and exits 0 at
    once; the action goes back to retry, its last error naming the operator's kill."""
    got = await _kill_in_flight(stuck_procs, pool, cancels=False)
    row = got["in_flight"]
    write_figures(
        stuck_report,
        scenario="kill-in-flight-retry",
        time_to_recover_s=got["exit_after_flag_s"],
        lost=got["running"],
        overlaps=0,
        duplicate_effects=len(completed_effects(got["effects"])),
        notes=figures_text(
            "time_to_recover_s is from `aol kill` returning (flag committed) to the worker's "
            "exit; duplicate_effects counts killed attempts that completed their effect",
            exit_after_kill_command_start_s=got["exit_after_command_start_s"],
            status=row["status"],
            last_error=row["last_error"],
            queued_status=got["queued"]["status"],
        ),
    )
    _assert_killed_promptly(got)
    assert (row["status"], row["attempts"]) == ("retry", 1), dict(row)
    assert "killed by operator" in (row["last_error"] or ""), row["last_error"]
    assert [e[0] for e in got["events"]] == ["action_retry_scheduled"], got["events"]


@pytest.mark.faults
async def test_kill_with_kill_cancels_cancels_the_action_in_flight(
    stuck_procs: Procs, pool: asyncpg.Pool[Any], stuck_report: Path
) -> None:
    """The kill flag with kill_cancels (set by a plain UPDATE; the table's trigger
    NOTIFYs): the in-flight action ends cancelled instead of going back to retry."""
    got = await _kill_in_flight(stuck_procs, pool, cancels=True)
    row = got["in_flight"]
    write_figures(
        stuck_report,
        scenario="kill-in-flight-cancel",
        time_to_recover_s=got["exit_after_flag_s"],
        lost=got["running"],
        overlaps=0,
        duplicate_effects=len(completed_effects(got["effects"])),
        notes=figures_text(
            "time_to_recover_s is from the committed UPDATE of aol.control_flags to the "
            "worker's exit",
            status=row["status"],
            last_error=row["last_error"],
            queued_status=got["queued"]["status"],
        ),
    )
    _assert_killed_promptly(got)
    assert (row["status"], row["attempts"]) == ("cancelled", 1), dict(row)
    assert "killed by operator" in (row["last_error"] or ""), row["last_error"]
    assert [e[0] for e in got["events"]] == ["action_cancelled"], got["events"]
