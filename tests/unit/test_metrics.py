"""The worker's metrics without a database: tick counting, lease gauges, a failed read."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import prometheus_client
import pytest

from aol.model import AttemptResult, TickOutcome
from aol.worker.health import HealthServer, Readiness
from aol.worker.metrics import CONTENT_TYPE, DatabaseGauges, WorkerMetrics
from tests.factory import claimed_action as claimed
from tests.promtext import Scraped, parse

_ids = itertools.count(1)
# Nothing listens on port 1: a connection there is refused at once.
NOWHERE = "postgresql://postgres@127.0.0.1:1/aol"


@dataclass
class Finished:
    duration_ms: float


@dataclass
class FakeLease:
    held: bool
    last_renewed: float


def scraped(metrics: WorkerMetrics) -> Scraped:
    return parse(metrics.render().decode())


def test_a_tick_counts_each_result_by_action_type_and_claims_all_attempts() -> None:
    metrics = WorkerMetrics()
    a, b, c, d, e, f = (claimed(t) for t in ("A", "A", "A", "B", "B", "B"))
    results: dict[int, AttemptResult] = {
        a.id: AttemptResult.SUCCEEDED,
        b.id: AttemptResult.SUCCEEDED,
        c.id: AttemptResult.RETRY,
        d.id: AttemptResult.DEAD,
        e.id: AttemptResult.DISCARDED,
        # f: the database failed before its result was written
    }
    outcomes: dict[int, Finished] = {x.id: Finished(duration_ms=200.0) for x in (a, b, c, d, e, f)}

    metrics.tick_done(TickOutcome.OK, time.monotonic(), [a, b, c, d, e, f], outcomes, results, 2)

    s = scraped(metrics)
    assert s.by_label("aol_actions_claimed_total", "action_type") == {"A": 3, "B": 3}
    assert s.by_label("aol_actions_succeeded_total", "action_type") == {"A": 2}
    assert s.by_label("aol_actions_retried_total", "action_type") == {"A": 1}
    assert s.by_label("aol_actions_dead_total", "action_type") == {"B": 1}
    assert s.by_label("aol_actions_discarded_total", "action_type") == {"B": 1}
    assert s.by_label("aol_actions_cancelled_total", "action_type") == {}
    assert s.value("aol_actions_rescued_total") == 2
    # Durations of written results only: not the discarded one, not the unwritten one.
    count = s.by_label("aol_action_duration_seconds_count", "action_type")
    assert count == {"A": 3, "B": 1}
    assert s.value("aol_action_duration_seconds_bucket", action_type="A", le="0.1") == 0
    assert s.value("aol_action_duration_seconds_bucket", action_type="A", le="0.25") == 3
    assert s.value("aol_action_duration_seconds_sum", action_type="A") == pytest.approx(0.6)
    ticks = s.by_label("aol_ticks_total", "outcome")
    assert ticks == {str(o): (1.0 if o is TickOutcome.OK else 0.0) for o in TickOutcome}
    assert s.value("aol_tick_duration_seconds_count") == 1


def test_counts_add_up_over_ticks_and_an_empty_tick_counts_only_itself() -> None:
    metrics = WorkerMetrics()
    for _ in range(3):
        x = claimed("A")
        metrics.tick_done(
            TickOutcome.OK,
            time.monotonic(),
            [x],
            {x.id: Finished(1.0)},
            {x.id: AttemptResult.SUCCEEDED},
        )
    metrics.tick_done(TickOutcome.IDLE, time.monotonic(), [], {}, {})
    metrics.tick_done(TickOutcome.PAUSED, time.monotonic(), [], {}, {})

    s = scraped(metrics)
    assert s.by_label("aol_actions_claimed_total", "action_type") == {"A": 3}
    assert s.by_label("aol_actions_succeeded_total", "action_type") == {"A": 3}
    assert s.value("aol_ticks_total", outcome="ok") == 3
    assert s.value("aol_ticks_total", outcome="idle") == 1
    assert s.value("aol_ticks_total", outcome="paused") == 1
    assert s.value("aol_tick_duration_seconds_count") == 5
    assert s.value("aol_actions_rescued_total") == 0


def test_a_cancelled_attempt_counts_as_cancelled_without_a_duration() -> None:
    metrics = WorkerMetrics()
    x = claimed("A")
    metrics.tick_done(
        TickOutcome.KILLED, time.monotonic(), [x], {}, {x.id: AttemptResult.CANCELLED}
    )

    s = scraped(metrics)
    assert s.by_label("aol_actions_cancelled_total", "action_type") == {"A": 1}
    assert s.by_label("aol_action_duration_seconds_count", "action_type") == {}
    assert s.value("aol_ticks_total", outcome="killed") == 1


def test_the_lease_gauges_follow_the_live_lease() -> None:
    metrics = WorkerMetrics()
    s = scraped(metrics)
    assert s.value("aol_lease_held") == 0
    assert s.value("aol_lease_heartbeat_age_seconds") is None  # no lease: no age

    lease = FakeLease(held=True, last_renewed=time.monotonic() - 2.0)
    metrics.lease = lease
    s = scraped(metrics)
    assert s.value("aol_lease_held") == 1
    age = s.value("aol_lease_heartbeat_age_seconds")
    assert age is not None
    assert 2.0 <= age < 3.0

    lease.held = False  # lost or released
    s = scraped(metrics)
    assert s.value("aol_lease_held") == 0
    assert s.value("aol_lease_heartbeat_age_seconds") is None


def test_each_worker_has_its_own_registry_and_none_uses_the_global_one() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    x = claimed("A")
    first.tick_done(TickOutcome.OK, time.monotonic(), [x], {}, {x.id: AttemptResult.SUCCEEDED})

    assert scraped(first).value("aol_actions_succeeded_total", action_type="A") == 1
    assert scraped(second).value("aol_actions_succeeded_total", action_type="A") is None
    assert b"aol_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_the_metric_names_follow_the_prometheus_conventions() -> None:
    families = scraped(WorkerMetrics()).types
    names = {n for n in families if not n.endswith("_created")}
    assert all(n.startswith("aol_") for n in names)
    counters = {n for n in names if families[n] == "counter"}
    assert counters == {
        "aol_actions_claimed",
        "aol_actions_succeeded",
        "aol_actions_retried",
        "aol_actions_dead",
        "aol_actions_cancelled",
        "aol_actions_discarded",
        "aol_actions_rescued",
        "aol_ticks",
    }
    histograms = {n for n in names if families[n] == "histogram"}
    assert histograms == {"aol_action_duration_seconds", "aol_tick_duration_seconds"}


async def test_a_database_that_cannot_be_reached_is_reported_as_down() -> None:
    gauges = DatabaseGauges(NOWHERE)
    started = time.monotonic()
    await gauges.refresh()
    elapsed = time.monotonic() - started
    s = parse(prometheus_client.generate_latest(gauges).decode())

    assert elapsed < 3.0
    assert s.value("aol_metrics_db_up") == 0
    assert s.by_label("aol_actions", "status") == {}
    assert s.value("aol_queue_lag_seconds") is None
    await gauges.close()


async def test_the_metrics_endpoint_answers_with_the_database_down() -> None:
    readiness = Readiness(owner="unit:1")
    async with HealthServer("127.0.0.1", 0, readiness, NOWHERE) as server:
        status, headers, body = await request(server.port, "GET /metrics HTTP/1.1")
        missing, _, error = await request(server.port, "GET /nope HTTP/1.0")
        head_status, _, head_body = await request(server.port, "HEAD /metrics HTTP/1.0")

    assert (status, headers["content-type"]) == (200, CONTENT_TYPE)
    s = parse(body.decode())
    assert s.value("aol_metrics_db_up") == 0
    assert s.value("aol_lease_held") == 0
    assert s.value("aol_ticks_total", outcome="ok") == 0
    assert missing == 404
    assert b"/metrics" in error
    assert (head_status, head_body) == (200, b"")
    # Closing the server closes its registry's database collector too.
    assert b"aol_metrics_db_up" not in readiness.metrics.render()


async def request(port: int, line: str) -> tuple[int, dict[str, str], bytes]:
    """Send one request as a scraper would (with headers) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{line}\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    return int(first.split()[1]), headers, body
