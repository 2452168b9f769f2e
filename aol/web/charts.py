"""The page's two small charts, laid out as SVG shapes: no chart library, no script.

Input is the tick ledger in one-minute buckets (`store.tick_history`); output is plain
coordinates that the template writes as inline SVG. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

WIDTH = 600
HEIGHT = 120
PAD_TOP = 8
MINUTES = 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Shapes in a WIDTH x HEIGHT box: bars, polylines (point strings) and a y-axis top."""

    title: str
    unit: str
    y_max: float
    bars: tuple[Bar, ...] = ()
    lines: tuple[tuple[str, str], ...] = ()  # (css class, "x,y x,y ...")
    empty: bool = True
    width: int = WIDTH
    height: int = HEIGHT


def _nice_max(value: float) -> float:
    """A round axis top at or above value (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value * 10:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10  # pragma: no cover - the loop always returns


def _slots(
    buckets: Sequence[Mapping[str, Any]], now: datetime
) -> list[tuple[datetime, Mapping[str, Any] | None]]:
    """The last MINUTES minutes, oldest first, each with its bucket or None."""
    current = now.replace(second=0, microsecond=0)
    by_minute = {b["minute"]: b for b in buckets}
    minutes = [current - timedelta(minutes=MINUTES - 1 - i) for i in range(MINUTES)]
    return [(m, by_minute.get(m)) for m in minutes]


def _y(value: float, top: float) -> float:
    return round(HEIGHT - (value / top) * (HEIGHT - PAD_TOP), 1)


def throughput_chart(buckets: Sequence[Mapping[str, Any]], now: datetime) -> Chart:
    """Actions finished per minute: succeeded, and failed (retried or dead) stacked on top."""
    slots = _slots(buckets, now)
    peak = max(
        (int(b["succeeded"]) + int(b["retried"]) + int(b["dead"]) for _, b in slots if b),
        default=0,
    )
    top = _nice_max(float(peak))
    slot = WIDTH / MINUTES
    bars: list[Bar] = []
    for i, (minute, b) in enumerate(slots):
        if not b:
            continue
        ok, failed = int(b["succeeded"]), int(b["retried"]) + int(b["dead"])
        label = f"{minute:%H:%M} UTC: {ok} succeeded, {failed} failed, {int(b['ticks'])} ticks"
        x = round(i * slot + 1, 1)
        y_ok = _y(ok, top)
        bars.append(Bar(x, y_ok, round(slot - 2, 1), round(HEIGHT - y_ok, 1), "ok", label))
        if failed:
            y_failed = _y(ok + failed, top)
            bars.append(
                Bar(x, y_failed, round(slot - 2, 1), round(y_ok - y_failed, 1), "failed", label)
            )
    return Chart(
        title="Throughput: actions finished per minute",
        unit="/min",
        y_max=top,
        bars=tuple(bars),
        empty=not bars,
    )


def duration_chart(buckets: Sequence[Mapping[str, Any]], now: datetime) -> Chart:
    """Tick duration per minute: the average as a line, the longest as a fainter line."""
    slots = _slots(buckets, now)
    peak = max((float(b["max_ms"]) for _, b in slots if b), default=0.0)
    top = _nice_max(peak)
    slot = WIDTH / MINUTES
    lines: list[tuple[str, str]] = []
    for css, key in (("max", "max_ms"), ("avg", "avg_ms")):
        # A minute without ticks breaks the line, so a gap is visible as a gap.
        segment: list[str] = []
        for i, (_, b) in enumerate(slots):
            if b is None:
                if segment:
                    lines.append((css, " ".join(segment)))
                segment = []
                continue
            # Each minute is a level step across its slot, so a lone minute shows too.
            y = _y(float(b[key]), top)
            segment.append(f"{round(i * slot, 1)},{y} {round((i + 1) * slot, 1)},{y}")
        if segment:
            lines.append((css, " ".join(segment)))
    bars: list[Bar] = []
    for i, (minute, b) in enumerate(slots):
        if b is not None:
            # An invisible hit area per minute, so hovering shows the figures.
            label = (
                f"{minute:%H:%M} UTC: {int(b['ticks'])} ticks, avg {float(b['avg_ms']):.1f} ms, "
                f"max {float(b['max_ms']):.1f} ms"
            )
            bars.append(Bar(round(i * slot, 1), 0, round(slot, 1), HEIGHT, "hit", label))
    return Chart(
        title="Tick duration (average, and longest) per minute",
        unit="ms",
        y_max=top,
        bars=tuple(bars),
        lines=tuple(lines),
        empty=not lines,
    )
