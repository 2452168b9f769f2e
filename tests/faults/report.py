"""Figures of one fault scenario: one JSON line each in the results file, and a summary line.

The results file is `$AOL_FAULTS_REPORT`, else `<pytest basetemp>/faults.jsonl` for the
suite and `<tmp>/aol-faults/faults.jsonl` for the soak command (`--report` overrides).
Lines are appended, so one file can collect several runs; each line carries the time it was
written and the host.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORT_ENV = "AOL_FAULTS_REPORT"

RECORDED: list[Figures] = []
"""Every scenario recorded in this process, for the end-of-session table."""
WRITTEN_TO: set[Path] = set()
"""The results files written by this process."""


@dataclass
class Figures:
    """What one scenario measured. `time_to_recover_s` is None when nothing had to recover."""

    scenario: str
    time_to_recover_s: float | None
    lost: int
    overlaps: int
    duplicate_effects: int
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        recover = "-" if self.time_to_recover_s is None else f"{self.time_to_recover_s:.3f}s"
        extra = " ".join(f"{k}={_short(v)}" for k, v in self.details.items() if _scalar(v))
        return (
            f"[faults] {self.scenario}: recover={recover} lost={self.lost} "
            f"overlaps={self.overlaps} duplicate_effects={self.duplicate_effects}"
            + (f" {extra}" if extra else "")
        )


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _short(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def report_path(default: Path) -> Path:
    explicit = os.environ.get(REPORT_ENV)
    return Path(explicit) if explicit else default


def write_figures(figures: Figures, path: Path) -> None:
    """Append one JSON line to `path`, remember the figures, and print the summary line."""
    line = {
        **asdict(figures),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    RECORDED.append(figures)
    WRITTEN_TO.add(path)
    print(figures.summary())  # noqa: T201


def table(rows: list[Figures]) -> str:
    """A Markdown table: scenario, time to recover, lost, overlaps, duplicate effects."""
    lines = [
        "| scenario | time to recover (s) | lost | overlaps | duplicate effects |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in rows:
        recover = "-" if f.time_to_recover_s is None else f"{f.time_to_recover_s:.3f}"
        lines.append(
            f"| {f.scenario} | {recover} | {f.lost} | {f.overlaps} | {f.duplicate_effects} |"
        )
    return "\n".join(lines)
