"""Prometheus metrics of one worker, kept in a registry of its own.

Each worker has its own `CollectorRegistry` (never the process-wide default one), so
several workers in one process keep apart. Three sources feed it:

* Counters and histograms fed by `WorkerMetrics.tick_done`, called once as each tick ends,
  with what it claimed and what became of each attempt. Only writes the database accepted
  count as succeeded, retried, dead or cancelled; a result that was fenced out (the claim
  or the lease had moved on) counts as discarded instead. On the hot path this costs one
  pass over the batch adding to plain dicts and lists: no I/O and no lock.
* The lease gauges, read from the live lease when scraped.
* `DatabaseGauges`: actions by status, queue lag and the lease row's heartbeat age, read
  from the database when `/metrics` is scraped, over a dedicated connection with a short
  statement timeout. When that read fails, `aol_metrics_db_up` is 0 and those gauges are
  left out rather than reported stale; the scrape itself still answers. Succeeded and
  cancelled actions are the history, whose count grows with it: they are counted on a
  connection of their own, kept between scrapes and counted again in the background
  (`aol.db.slowread`), and their age is a gauge; a scrape never waits for a slow count.

Claims and results are both counted when their tick ends, and every claimed attempt ends in
exactly one result, except when the database fails while the tick writes its results (the
claim is rescued later): `aol_actions_claimed_total` minus the result counters is that gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aol.db import store
from aol.db.connect import connect
from aol.db.slowread import RATIO, SlowRead
from aol.logs import get_logger
from aol.model import Action, AttemptResult, MetricsSnapshot, TickOutcome

log = get_logger("aol.metrics")

# The text exposition format every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Attempts run from milliseconds up to the action timeout (15 s by default, more if raised).
ACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60)
# A scrape's database statement gives up after this long; connecting and reading together
# after DB_READ_BUDGET. Either way the scrape answers, with aol_metrics_db_up 0.
DB_STATEMENT_TIMEOUT = 2.0
DB_READ_BUDGET = 3.0
# Counting the finished history runs in the background: it may take long on a large table.
FINISHED_COUNT_TIMEOUT = 600.0

_CLAIMED = "claimed"
_RESULTS: dict[str, tuple[str, str]] = {
    _CLAIMED: (
        "aol_actions_claimed",
        "Attempts this worker claimed (counted when their tick ends)",
    ),
    AttemptResult.SUCCEEDED: ("aol_actions_succeeded", "Attempts written as succeeded"),
    AttemptResult.RETRY: ("aol_actions_retried", "Failed attempts written as retry (to run again)"),
    AttemptResult.DEAD: ("aol_actions_dead", "Attempts that dead-lettered their action"),
    AttemptResult.CANCELLED: ("aol_actions_cancelled", "Attempts cut short by a cancelling kill"),
    AttemptResult.DISCARDED: (
        "aol_actions_discarded",
        "Results not written because the claim or the lease had moved on (fenced out)",
    ),
}


class LeaseView(Protocol):
    """What the lease gauges read from a held (or lost) lease."""

    @property
    def held(self) -> bool: ...

    @property
    def last_renewed(self) -> float: ...


class Timed(Protocol):
    """A finished attempt's outcome: how long its handler ran."""

    @property
    def duration_ms(self) -> float: ...


class _Buckets:
    """One histogram series in plain Python: a count per bucket (the last is +Inf), a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket `le` holds value <= le
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), float(running)))
        return out


class WorkerMetrics(Collector):
    """The in-process metrics of one worker, and the registry `/metrics` renders.

    The tallies are plain dicts and lists without locks, which prometheus_client's own
    metrics take on every increment (over a microsecond each, per action, on the drain's
    hot path): ticks and scrapes both run on the worker's event loop thread, so a scrape
    never sees a tick half counted.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lease: LeaseView | None = None
        # result ("claimed" or an AttemptResult) -> action type -> count
        self._counts: dict[str, dict[str, int]] = {key: {} for key in _RESULTS}
        self._durations: dict[str, _Buckets] = {}
        self._ticks = dict.fromkeys(TickOutcome, 0)
        self._tick_seconds = _Buckets(TICK_BUCKETS)
        self._rescued = 0
        self.registry.register(self)
        self.registry.register(_LeaseGauges(self))

    def tick_done(
        self,
        outcome: TickOutcome,
        started: float,
        claimed: Sequence[Action],
        outcomes: Mapping[int, Timed],
        results: Mapping[int, AttemptResult],
        rescued: int = 0,
    ) -> None:
        """Count one finished tick (`started` on the monotonic clock) and its attempts."""
        self._tick_seconds.observe(time.monotonic() - started)
        self._ticks[outcome] += 1
        self._rescued += rescued
        counts, claims, durations = self._counts, self._counts[_CLAIMED], self._durations
        for action in claimed:
            kind = action.action_type
            claims[kind] = claims.get(kind, 0) + 1
            result = results.get(action.id)
            if result is None:
                continue  # the database failed before this result could be written
            tally = counts[result]
            tally[kind] = tally.get(kind, 0) + 1
            done = outcomes.get(action.id)
            if done is not None and result is not AttemptResult.DISCARDED:
                series = durations.get(kind)
                if series is None:
                    series = durations[kind] = _Buckets(ACTION_BUCKETS)
                series.observe(done.duration_ms / 1000)

    def render(self) -> bytes:
        """The registry in the text exposition format (see `CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def describe(self) -> Iterable[Metric]:
        return self._families(described=True)

    def collect(self) -> Iterable[Metric]:
        return self._families(described=False)

    def _families(self, *, described: bool) -> list[Metric]:
        families: list[Metric] = []
        for key, (name, doc) in _RESULTS.items():
            family = CounterMetricFamily(name, doc, labels=["action_type"])
            for kind, n in [] if described else sorted(self._counts[key].items()):
                family.add_metric([kind], n)
            families.append(family)
        families.append(
            CounterMetricFamily(
                "aol_actions_rescued",
                "Expired claims this worker returned to retry or dead",
                value=None if described else self._rescued,
            )
        )
        durations = HistogramMetricFamily(
            "aol_action_duration_seconds",
            "How long handlers ran, for attempts whose result was written",
            labels=["action_type"],
        )
        for kind, series in [] if described else sorted(self._durations.items()):
            durations.add_metric([kind], series.cumulative(), series.total)
        ticks = CounterMetricFamily(
            "aol_ticks", "Ticks this worker ran, by outcome", labels=["outcome"]
        )
        tick_seconds = HistogramMetricFamily(
            "aol_tick_duration_seconds", "How long ticks took, from start to ledger row"
        )
        if not described:
            for outcome, n in self._ticks.items():
                ticks.add_metric([str(outcome)], n)
            series = self._tick_seconds
            tick_seconds.add_metric([], series.cumulative(), series.total)
        return [*families, durations, ticks, tick_seconds]


class _LeaseGauges(Collector):
    """This worker's hold on the lease, read from the live lease when scraped."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._metrics.lease)

    @staticmethod
    def _families(lease: LeaseView | None) -> list[Metric]:
        held = lease is not None and lease.held
        age = GaugeMetricFamily(
            "aol_lease_heartbeat_age_seconds",
            "Seconds since this worker last renewed the lease; only while it holds it",
        )
        if lease is not None and held:
            age.add_metric([], time.monotonic() - lease.last_renewed)
        return [
            GaugeMetricFamily(
                "aol_lease_held", "1 while this worker holds the lease", value=float(held)
            ),
            age,
        ]


class DatabaseGauges(Collector):
    """Gauges read from the database at scrape time: `await refresh()`, then render.

    The read runs on a dedicated connection (never the worker's pool, so a scrape cannot
    take a connection from the ticks), opened on the first scrape and again after a failure.
    """

    def __init__(
        self,
        url: str,
        *,
        application_name: str = "aol-metrics",
        statement_timeout: float = DB_STATEMENT_TIMEOUT,
        budget: float = DB_READ_BUDGET,
    ) -> None:
        self.url = url
        self.application_name = application_name
        self.statement_timeout = statement_timeout
        self.budget = budget
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()
        self._snapshot: MetricsSnapshot | None = None
        self._read_seconds = 0.0
        self._count_conn: asyncpg.Connection[Any] | None = None
        self._finished = SlowRead(self._count_finished, name="finished_counts")

    async def refresh(self) -> None:
        """Read the database once; on failure or timeout, remember that it failed."""
        async with self._lock:  # one connection: concurrent scrapes take turns
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.budget):
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await connect(self.url, application_name=self.application_name)
                        await store.set_statement_timeout(
                            self._conn, seconds=self.statement_timeout
                        )
                    self._snapshot = await store.read_metrics(self._conn)
            except Exception as exc:  # a scrape reports the database as down, never fails
                self._snapshot = None
                self._drop_connection()
                log.warning(
                    "metrics_read_failed",
                    error=str(exc) or "timed out",
                    error_type=type(exc).__name__,
                )
            else:
                left = self.budget - (time.monotonic() - started)
                self._snapshot = await self._with_finished(self._snapshot, left)
            self._read_seconds = time.monotonic() - started

    async def _with_finished(self, snap: MetricsSnapshot, budget: float) -> MetricsSnapshot:
        """The snapshot with the finished counts, when there are some to give in time."""
        try:
            async with asyncio.timeout(max(0.0, budget)):
                finished, age = await self._finished.get()
        except Exception:  # still counting (the count goes on), or failing: left out
            return snap
        return dataclasses.replace(
            snap, by_status={**snap.by_status, **finished}, finished_age_s=age
        )

    async def _count_finished(self) -> dict[str, int]:
        """On a connection of its own, kept (SlowRead runs one count at a time)."""
        try:
            if self._count_conn is None or self._count_conn.is_closed():
                self._count_conn = await connect(
                    self.url, application_name=f"{self.application_name} counts"
                )
                await store.set_statement_timeout(self._count_conn, seconds=FINISHED_COUNT_TIMEOUT)
            return await store.count_finished(self._count_conn)
        except BaseException:
            _terminate(self._count_conn)
            self._count_conn = None
            raise

    async def close(self) -> None:
        await self._finished.close()
        async with self._lock:
            for conn in (self._conn, self._count_conn):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=5)
            self._conn = self._count_conn = None

    def _drop_connection(self) -> None:
        _terminate(self._conn)
        self._conn = None

    def describe(self) -> Iterable[Metric]:
        return _database_families(None, 0.0)

    def collect(self) -> Iterable[Metric]:
        return _database_families(self._snapshot, self._read_seconds)


def _terminate(conn: asyncpg.Connection[Any] | None) -> None:
    """Drop a connection whose state, after a failed or cancelled statement, is not worth
    trusting."""
    if conn is not None and not conn.is_closed():
        conn.terminate()


def _database_families(snap: MetricsSnapshot | None, read_seconds: float) -> list[Metric]:
    by_status = GaugeMetricFamily(
        "aol_actions", "Actions in the database by status, read at scrape time", labels=["status"]
    )
    lag = GaugeMetricFamily(
        "aol_queue_lag_seconds",
        "Age of the oldest due pending or retry action (database clock); 0 when none waits",
    )
    heartbeat = GaugeMetricFamily(
        "aol_lease_row_heartbeat_age_seconds",
        "Seconds since the lease row's last heartbeat, whoever holds it; absent when released",
    )
    finished_age = GaugeMetricFamily(
        "aol_actions_finished_count_age_seconds",
        "Age of the succeeded and cancelled counts in aol_actions (counted again in the "
        f"background once older than {RATIO:g} times their counting time); absent until "
        "counted",
    )
    if snap is not None:
        for status, n in snap.by_status.items():
            by_status.add_metric([status], n)
        lag.add_metric([], snap.queue_lag_s)
        if snap.lease_heartbeat_age_s is not None:
            heartbeat.add_metric([], snap.lease_heartbeat_age_s)
        if snap.finished_age_s is not None:
            finished_age.add_metric([], snap.finished_age_s)
    return [
        GaugeMetricFamily(
            "aol_metrics_db_up",
            "1 when this scrape read the database; 0 when the read failed or timed out "
            "(the database gauges are then left out)",
            value=float(snap is not None),
        ),
        GaugeMetricFamily(
            "aol_metrics_db_read_seconds",
            "How long this scrape's database read took",
            value=read_seconds,
        ),
        by_status,
        lag,
        heartbeat,
        finished_age,
    ]
