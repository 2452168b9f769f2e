"""Structured logging: one JSON object per line on stdout, and the catalogue of event names.

The `event` key of every log line is one of the names in `EVENTS`; treat them as an API.
Standard keys: owner, epoch, tick, action_id, action_type, attempt, duration_ms,
error_type, error. Payload contents never go into info logs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final

import structlog

EVENTS: Final[dict[str, str]] = {
    "worker_starting": "aol run is starting: settings (masked)",
    "schema_checked": "the schema revision matches this aol",
    "lease_acquired": "this worker holds the advisory lock; epoch bumped",
    "lease_waiting": "standby: another worker holds the lease; waiting for it",
    "lease_holder_terminated": "standby: the lease expired with its lock held; holder ended",
    "lease_takeover_refused": "standby: not allowed to end a stuck holder's backend",
    "lease_lost": "the lock connection failed or the lease row moved on; stop claiming",
    "lease_summary": "a lease term ended: how many result writes were refused or dropped",
    "lease_released": "the lock was released on shutdown",
    "lease_release_failed": "the lease was not released cleanly; the lock ends with the session",
    "heartbeat_failed": "a heartbeat could not renew the lease",
    "listener_started": "LISTEN is active on the wake-up channel",
    "listener_lost": "the LISTEN connection dropped",
    "listener_reconnected": "LISTEN is active again; a full scan follows",
    "tick_finished": "one canonical line per tick: outcome and counts",
    "tick_timeout": "a tick overran its timeout",
    "tick_failed": "a tick raised an unexpected error",
    "action_succeeded": "an attempt succeeded",
    "actions_succeeded": "a tick's successes in one line (--success-log tick): their ids",
    "action_retry_scheduled": "an attempt failed and will be retried",
    "action_dead": "an action was dead-lettered",
    "action_cancelled": "a kill with kill_cancels cut an attempt short; the action is cancelled",
    "action_rescued": "expired claims were returned to retry (or dead)",
    "action_result_discarded": "a result was not written: the claim or lease is gone",
    "artifact_written": "a proof artifact was written",
    "watchdog_fired": "the event loop stalled past half the lease TTL; the process exits",
    "handler_abandoned": "a handler ignored cancellation; its task is left behind",
    "worker_interrupted": "a kill or a lost lease cut the running tick short",
    "listener_probe_failed": "the LISTEN connection did not hear its own NOTIFY; reconnecting",
    "health_listening": "the /healthz, /readyz and /metrics endpoints are served",
    "metrics_read_failed": "a /metrics scrape could not read the database; it reports db_up 0",
    "slow_read_failed": "a background read of history (finished counts, action types) failed; "
    "the last value stays",
    "worker_paused": "the pause flag is set; nothing is claimed",
    "worker_killed": "the kill flag is set; the worker exits",
    "worker_stopping": "a signal asked the worker to stop; draining",
    "worker_stopped": "the worker has exited its loop",
    "embedded_postgres_started": "the embedded PostgreSQL was started",
    "embedded_postgres_reused": "an embedded PostgreSQL already running was reused",
    "embedded_postgres_stopped": "the embedded PostgreSQL was stopped",
    "embedded_binaries_copied": "server binaries were copied where the server user can run them",
    "migrations_applied": "the schema was migrated to head",
    "flags_changed": "a control flag was changed",
    "dashboard_listening": "aol dashboard serves on host:port; controls on or off",
    "dashboard_login": "an operator logged in to the dashboard",
    "dashboard_login_refused": "a dashboard login gave a wrong token",
    "dashboard_control": "an operator's change from the dashboard was applied",
    "dashboard_control_refused": "a dashboard change was refused (auth, CSRF, bad input)",
}


def configure(fmt: str = "json", *, level: int = logging.INFO) -> None:
    """Configure structlog for `json` (machines) or `console` (people) output on stdout."""
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "aol") -> Any:
    """A structlog logger; `Any` because structlog's bound loggers are dynamically typed."""
    return structlog.get_logger(name)
