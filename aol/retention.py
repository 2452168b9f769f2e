"""Retention: delete finished actions (with their execution log rows) and old tick ledger
rows in small batches, each its own short transaction, so history stops growing.

Dead actions are kept unless asked for: an operator may still need to retry them. Deleting
an action frees its idempotency key, so an enqueue with that key afterwards creates a new
action: keep actions at least as long as a caller may repeat an enqueue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aol.db import store
from aol.errors import ConfigError

FINISHED = ("succeeded", "cancelled")
BATCH_DEFAULT = 1000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s' or plain seconds, to seconds; ConfigError otherwise."""
    match = _AGE.match(text)
    if match is None:
        raise ConfigError(
            f"age {text!r} is not understood: give a number with s, m, h or d (such as 30d)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"age {text!r} must be more than zero")
    return seconds


@dataclass(frozen=True, slots=True)
class PruneReport:
    actions: int
    ticks: int
    statuses: tuple[str, ...]
    dry_run: bool = False


async def prune(
    db: store.Executor,
    *,
    older_than_s: float,
    include_dead: bool = False,
    batch: int = BATCH_DEFAULT,
    dry_run: bool = False,
) -> PruneReport:
    """Delete, batch by batch, what finished more than `older_than_s` seconds ago."""
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    statuses = (*FINISHED, "dead") if include_dead else FINISHED
    if dry_run:
        counts = await store.count_prunable(db, statuses=statuses, older_than_s=older_than_s)
        return PruneReport(sum(counts.values()), 0, statuses, dry_run=True)
    actions = ticks = 0
    while n := await store.prune_actions(
        db, statuses=statuses, older_than_s=older_than_s, batch=batch
    ):
        actions += n
    while n := await store.prune_ticks(db, older_than_s=older_than_s, batch=batch):
        ticks += n
    return PruneReport(actions, ticks, statuses)
