"""Scenario 10, the soak: many actions from concurrent clients while faults are injected.

    python -m tests.faults.soak --actions 100000        # the long run (prints a table + JSON)

`N` actions are enqueued by 8 concurrent `aol.Client`s (each retries a failed call with
the same idempotency key, as a real client must) while a holder + standby pair of
`aol run --standby` processes executes them, and a fault injector, at random intervals,
SIGKILLs the holder (fault 1), terminates the LISTEN connection (fault 4) or restarts
PostgreSQL in fast mode (fault 5). The test is the supervisor: it restarts whichever worker
died, so two are alive again.

At the end the history check proves, from the database and from the handlers' journal
(tests/faults/handlers.py):

* lost = 0: every acknowledged action is `succeeded`;
* every action reached a final state exactly once (one `action_succeeded` or `action_dead`
  row in aol.execution_logs);
* overlaps = 0: no two attempts of one action ran at the same time (an attempt whose
  process was SIGKILLed ends when the test reaped that process);
* duplicate effects, reported, not asserted: attempts beyond the first of an action (the
  handler ran again after a crash mid-action or a discarded result), and how many actions
  completed their effect more than once.

The pytest suite runs a short version (`test_soak.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from aol import Client, EnqueueRejected
from aol.db.connect import asyncpg_dsn
from tests.faults.cluster import FaultCluster
from tests.faults.handlers import JOURNAL_ENV
from tests.faults.harness import (
    Fleet,
    check_history,
    db_now,
    next_completion,
    read_journal,
    run_args,
    soft,
)
from tests.faults.report import REPORT_ENV, Figures, table, write_figures
from tests.process.proc import Procs
from tests.waiting import wait_for

FAULTS = ("kill_holder", "terminate_listener", "restart_fast")


@dataclass
class SoakConfig:
    actions: int = 10_000
    clients: int = 8
    batch_size: int = 3  # the daemon's default
    max_handler_ms: float = 5.0
    fault_interval: tuple[float, float] = (1.0, 3.0)
    max_attempts: int = 25
    seed: int = 1
    recovery_timeout: float = 30.0
    settle_timeout: float = 600.0


@dataclass
class Fault:
    kind: str
    at_s: float  # since the soak began
    recovered_s: float | None = None  # fault over -> next action completed
    note: str = ""


@dataclass
class SoakResult:
    config: SoakConfig
    elapsed_s: float = 0.0
    enqueue_s: float = 0.0
    acknowledged: int = 0
    enqueue_retries: int = 0
    faults: list[Fault] = field(default_factory=list)
    worker_processes: int = 0
    worker_deaths: int = 0
    lease_epochs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    not_final_once: int = 0
    attempts: int = 0
    overlaps: int = 0
    unaccounted: int = 0
    reexecutions: int = 0
    completed_more_than_once: int = 0
    unfinished_attempts: int = 0
    effects_missing: int = 0
    violations: list[str] = field(default_factory=list)

    def figures(self, scenario: str) -> Figures:
        recovered = [f.recovered_s for f in self.faults if f.recovered_s is not None]
        kinds = {k: sum(1 for f in self.faults if f.kind == k) for k in FAULTS}
        return Figures(
            scenario=scenario,
            time_to_recover_s=round(max(recovered), 3) if recovered else None,
            lost=self.lost,
            overlaps=self.overlaps,
            duplicate_effects=self.reexecutions,
            details={
                "measure": "worst fault -> next action completed",
                "actions": self.config.actions,
                "elapsed_s": round(self.elapsed_s, 1),
                "throughput_per_s": round(self.config.actions / self.elapsed_s, 1),
                "recover_median_s": round(statistics.median(recovered), 3) if recovered else None,
                **{f"faults_{k}": n for k, n in kinds.items()},
                **_by_kind(self.faults),
                "completed_more_than_once": self.completed_more_than_once,
                "attempts_cut_by_sigkill": self.unfinished_attempts,
                "not_final_exactly_once": self.not_final_once,
                "lease_epochs": self.lease_epochs,
                "worker_processes": self.worker_processes,
                "enqueue_retries": self.enqueue_retries,
                "batch_size": self.config.batch_size,
                "seed": self.config.seed,
            },
        )


def _by_kind(faults: list[Fault]) -> dict[str, float]:
    """Median and worst recovery per kind of fault."""
    out: dict[str, float] = {}
    for kind in FAULTS:
        seen = [f.recovered_s for f in faults if f.kind == kind and f.recovered_s is not None]
        if seen:
            out[f"recover_median_{kind}_s"] = round(statistics.median(seen), 3)
            out[f"recover_max_{kind}_s"] = round(max(seen), 3)
    return out


# --- the parts ------------------------------------------------------------------------


async def _enqueue_all(
    url: str, cfg: SoakConfig, rng: random.Random, result: SoakResult
) -> set[str]:
    """Each client enqueues its share; a failed call is retried with the same key."""
    acknowledged: set[str] = set()

    async def client(n: int) -> None:
        keys = range(n, cfg.actions, cfg.clients)
        async with Client(url, max_size=1) as c:
            for i in keys:
                key = f"soak-{i}"
                payload = {"ms": round(rng.uniform(0, cfg.max_handler_ms), 2), "i": i}
                while True:
                    try:
                        await c.enqueue(
                            "RECORD", payload, idempotency_key=key, max_attempts=cfg.max_attempts
                        )
                        break
                    except EnqueueRejected:
                        raise
                    except Exception:  # the server is restarting: retry the same key
                        result.enqueue_retries += 1
                        await asyncio.sleep(0.1)
                acknowledged.add(key)

    await asyncio.gather(*(client(n) for n in range(cfg.clients)))
    return acknowledged


async def _inject(
    cfg: SoakConfig,
    cluster: FaultCluster,
    pool: asyncpg.Pool[Any],
    fleet: Fleet,
    rng: random.Random,
    began: float,
    stop: asyncio.Event,
    result: SoakResult,
) -> None:
    cycle: list[str] = []
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(*cfg.fault_interval))
        if stop.is_set():
            return
        if not cycle:  # every kind once per round, in a random order
            cycle = list(FAULTS)
            rng.shuffle(cycle)
        kind = cycle.pop()
        fault = Fault(kind=kind, at_s=round(time.monotonic() - began, 3))
        if kind == "kill_holder":
            holder = await fleet.holder(pool)
            if holder is None:
                fault.note = "no holder at that moment: skipped"
                result.faults.append(fault)
                continue
            await fleet.kill(holder)
            fault.note = f"pid {holder.pid}"
        elif kind == "terminate_listener":
            ended = await soft(
                lambda: pool.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'aol-listen%'"
                )
            )
            fault.note = f"{ended} backend(s)"
        else:
            down = await cluster.restart_async("fast")
            fault.note = f"down {down.seconds_down:.3f}s"
        since = await db_now(pool)
        seen = await next_completion(pool, since, cfg.recovery_timeout)
        if seen is None:
            result.violations.append(f"no recovery within {cfg.recovery_timeout}s after {fault}")
        else:
            fault.recovered_s = seen.seconds
        result.faults.append(fault)


async def _finals(pool: asyncpg.Pool[Any], n: int) -> bool:
    async def q() -> bool:
        done = await pool.fetchval(
            "SELECT count(*) FROM aol.actions WHERE status IN ('succeeded', 'dead')"
        )
        return int(done) >= n

    return bool(await soft(q))


async def _check(
    pool: asyncpg.Pool[Any],
    journal: Path,
    fleet: Fleet,
    acknowledged: set[str],
    result: SoakResult,
) -> None:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM aol.actions GROUP BY status")
    result.statuses = {str(r["status"]): int(r["n"]) for r in rows}
    succeeded = await pool.fetch(
        "SELECT idempotency_key FROM aol.actions WHERE status = 'succeeded'"
    )
    ok_keys = {str(r["idempotency_key"]) for r in succeeded}
    result.lost = len(acknowledged - ok_keys)
    result.not_final_once = int(
        await pool.fetchval(
            "SELECT count(*) FROM aol.actions a WHERE (SELECT count(*) FROM aol.execution_logs l "
            " WHERE l.action_id = a.id AND l.event IN ('action_succeeded', 'action_dead')) <> 1"
        )
    )
    result.lease_epochs = int(await pool.fetchval("SELECT epoch FROM aol.lease"))
    ids = await pool.fetch("SELECT id FROM aol.actions WHERE status = 'succeeded'")
    attempts = read_journal(journal)
    history = check_history(attempts, {d.pid: d.at for d in fleet.deaths})
    result.attempts = history.attempts
    result.overlaps = len(history.overlaps)
    result.unaccounted = len(history.unaccounted)
    result.reexecutions = history.reexecutions
    result.completed_more_than_once = history.completed_more_than_once
    result.unfinished_attempts = history.unfinished
    effected = {a.action_id for a in attempts if a.how == "ok"}
    result.effects_missing = sum(1 for r in ids if int(r["id"]) not in effected)
    result.worker_processes = fleet.started
    result.worker_deaths = len(fleet.deaths)

    if result.lost:
        result.violations.append(f"lost {result.lost} acknowledged action(s)")
    if set(result.statuses) != {"succeeded"}:
        result.violations.append(f"not every action succeeded: {result.statuses}")
    if result.not_final_once:
        result.violations.append(f"{result.not_final_once} action(s) not final exactly once")
    if result.overlaps:
        result.violations.append(
            f"{result.overlaps} overlapping attempt(s): {history.overlaps[:3]}"
        )
    if result.unaccounted:
        result.violations.append(f"{result.unaccounted} attempt(s) never ended in a live process")
    if result.effects_missing:
        result.violations.append(f"{result.effects_missing} succeeded action(s) with no effect")
    if unexpected := fleet.unexpected_exits():
        result.violations.append(f"workers exited on their own: {unexpected}")


async def run_soak(cluster: FaultCluster, url: str, run_dir: Path, cfg: SoakConfig) -> SoakResult:
    """The whole soak against database `url` on `cluster`; `run_dir` gets logs and journal."""
    rng = random.Random(cfg.seed)
    result = SoakResult(config=cfg)
    journal = run_dir / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    procs = Procs(url, run_dir, env={JOURNAL_ENV: str(journal)})
    fleet = Fleet(procs, size=2, args=run_args(batch_size=cfg.batch_size), restart=True)
    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(asyncpg_dsn(url), min_size=0, max_size=4)
    stop = asyncio.Event()
    try:
        await fleet.start()

        async def pair() -> bool:
            return len(fleet.alive) == 2 and await fleet.holder(pool) is not None

        await wait_for(pair, timeout=30, what="a holder and a standby")
        began = time.monotonic()
        injector = asyncio.create_task(
            _inject(cfg, cluster, pool, fleet, rng, began, stop, result), name="injector"
        )
        try:
            acknowledged = await _enqueue_all(url, cfg, rng, result)
            result.enqueue_s = time.monotonic() - began
            result.acknowledged = len(acknowledged)
            await wait_for(
                lambda: _all_final(pool, cfg.actions, injector, fleet),
                timeout=cfg.settle_timeout,
                interval=0.5,
                what=f"all {cfg.actions} actions to be final",
            )
        finally:
            stop.set()
            await injector  # a fault in progress (a restart) completes first
        result.elapsed_s = time.monotonic() - began

        async def settled() -> bool:
            counts = await soft(
                lambda: pool.fetchval(
                    "SELECT count(*) FROM aol.actions WHERE status NOT IN ('succeeded', 'dead')"
                )
            )
            return counts == 0 and await pair()

        await wait_for(settled, timeout=60, what="nothing left running, two workers")
        await fleet.stop()
        await _check(pool, journal, fleet, acknowledged, result)
    finally:
        stop.set()
        fleet.halt()
        await procs.close()
        await asyncio.wait_for(pool.close(), timeout=10)
    return result


async def _all_final(
    pool: asyncpg.Pool[Any], n: int, injector: asyncio.Task[None], fleet: Fleet
) -> bool:
    if injector.done():
        injector.result()  # an injector that crashed fails the run at once
    if fleet.gave_up:
        raise AssertionError(
            f"workers keep dying; the supervisor gave up: {fleet.deaths[-5:]}\n" + fleet.describe()
        )
    return await _finals(pool, n)


# --- the command ----------------------------------------------------------------------


def render(result: SoakResult, scenario: str) -> str:
    figures = result.figures(scenario)
    lines = [table([figures]), ""]
    lines.append(
        f"actions {result.config.actions} from {result.config.clients} clients in "
        f"{result.elapsed_s:.1f}s ({figures.details['throughput_per_s']}/s; enqueue done at "
        f"{result.enqueue_s:.1f}s, {result.enqueue_retries} retried calls); statuses "
        f"{result.statuses}"
    )
    lines.append(
        f"attempts {result.attempts}: re-executions {result.reexecutions}, completed more "
        f"than once {result.completed_more_than_once}, cut by SIGKILL "
        f"{result.unfinished_attempts}; lease epochs {result.lease_epochs}; worker "
        f"processes {result.worker_processes}"
    )
    lines.append(f"faults ({len(result.faults)}):")
    for kind in FAULTS:
        seen = [f.recovered_s for f in result.faults if f.kind == kind]
        done = sorted(x for x in seen if x is not None)
        if done:
            lines.append(
                f"  {kind:<19} x{len(seen):<4} recovered in: median {statistics.median(done):.3f}s"
                f", worst {done[-1]:.3f}s"
            )
    if len(result.faults) <= 40:  # the whole timeline when it is short (always in the JSON)
        for f in result.faults:
            rec = "-" if f.recovered_s is None else f"{f.recovered_s:.3f}s"
            lines.append(f"  t={f.at_s:8.3f}s {f.kind:<19} recovered in {rec:>8}  {f.note}")
    lines.append(
        "violations: " + ("none" if not result.violations else "; ".join(result.violations))
    )
    return "\n".join(lines)


async def _main(cfg: SoakConfig, report: Path, keep: bool) -> int:
    # SIGTERM/SIGINT cancel the run, so the cleanup below still stops the workers and the
    # server (an uncaught SIGTERM would leave them running).
    me = asyncio.current_task()
    assert me is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, me.cancel)
    # The embedded server's own log lines go to stderr: stdout is the table and the JSON.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    cluster = await asyncio.to_thread(FaultCluster.create, "aol-soak-pg-")
    try:
        async with cluster.database("soak", keep=keep) as url:
            result = await run_soak(cluster, url, cluster.top / "run", cfg)
    finally:
        if keep:
            await asyncio.to_thread(cluster.stop, "fast")
            print(f"kept {cluster.top}")  # noqa: T201
        else:
            await asyncio.to_thread(cluster.destroy)
    scenario = f"10 soak ({cfg.actions} actions)"
    print(render(result, scenario))  # noqa: T201
    write_figures(result.figures(scenario), report)
    print(json.dumps({**asdict(result), "figures": asdict(result.figures(scenario))}, default=str))  # noqa: T201
    print(f"results appended to {report}")  # noqa: T201
    return 0 if not result.violations else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    parser.add_argument("--actions", type=int, default=SoakConfig.actions)
    parser.add_argument("--clients", type=int, default=SoakConfig.clients)
    parser.add_argument("--batch-size", type=int, default=SoakConfig.batch_size)
    parser.add_argument("--max-handler-ms", type=float, default=SoakConfig.max_handler_ms)
    parser.add_argument(
        "--fault-interval",
        type=float,
        nargs=2,
        default=SoakConfig.fault_interval,
        metavar=("MIN", "MAX"),
        help="seconds between faults, drawn uniformly",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help=f"results file (JSON lines); default ${REPORT_ENV}, else "
        f"{Path(tempfile.gettempdir()) / 'aol-faults' / 'faults.jsonl'}",
    )
    parser.add_argument("--keep", action="store_true", help="keep the cluster and logs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    cfg = SoakConfig(
        actions=args.actions,
        clients=args.clients,
        batch_size=args.batch_size,
        max_handler_ms=args.max_handler_ms,
        fault_interval=(args.fault_interval[0], args.fault_interval[1]),
        seed=seed,
    )
    report = args.report or Path(
        os.environ.get(REPORT_ENV) or Path(tempfile.gettempdir()) / "aol-faults" / "faults.jsonl"
    )
    try:
        return asyncio.run(_main(cfg, report, args.keep))
    except asyncio.CancelledError:
        print("soak interrupted; workers and server stopped", file=sys.stderr)  # noqa: T201
        return 130


if __name__ == "__main__":
    sys.exit(main())
