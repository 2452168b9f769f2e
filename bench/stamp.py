"""Handler-side timestamps, written the same way by every system's no-op handler.

A handler calls `hit(key)` when it starts. With `BENCH_STAMP_EVERY=1` every call appends
`key<TAB>time.time()` to the file named by `BENCH_STAMP_FILE` (the latency scenario);
otherwise only the first call does (the drain scenario: when processing began). Writing a
line to a local file costs microseconds, far less than a database round trip, and is the
same for every system. The bench process reads the file back with `read_stamps`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TextIO

STAMP_FILE_ENV = "BENCH_STAMP_FILE"
STAMP_EVERY_ENV = "BENCH_STAMP_EVERY"


class Stamper:
    """Appends handler start times to the stamp file (opened lazily, line-buffered)."""

    def __init__(self) -> None:
        self.count = 0
        self._file: TextIO | None = None
        self._path = os.environ.get(STAMP_FILE_ENV)
        self._every = os.environ.get(STAMP_EVERY_ENV) == "1"

    def hit(self, key: str) -> None:
        now = time.time()
        self.count += 1
        if self._path is None or not (self._every or self.count == 1):
            return
        if self._file is None:
            self._file = open(self._path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._file.write(f"{key}\t{now!r}\n")


STAMPER = Stamper()


def read_stamps(path: Path) -> dict[str, float]:
    """key -> first start time seen for it (a key seen twice ran twice: see `duplicates`)."""
    seen: dict[str, float] = {}
    if not path.exists():
        return seen
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, stamp = line.partition("\t")
        if stamp:
            seen.setdefault(key, float(stamp))
    return seen


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line)
