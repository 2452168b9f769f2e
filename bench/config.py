"""What a benchmark run does: sizes, durations and each system's throughput profile."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCENARIOS = ("drain", "latency", "concurrent-enqueue", "backlog")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    database_url: str = DEFAULT_DATABASE_URL
    quick: bool = False
    n: int = 20_000
    enqueue_batch: int = 1_000
    latency_jobs: int = 500
    latency_interval: float = 0.005
    latency_warmup: int = 20
    concurrent_clients: tuple[int, ...] = (1, 8, 32)
    concurrent_seconds: float = 5.0
    backlog_finished: tuple[int, ...] = (0, 100_000, 1_000_000)
    backlog_runnable: int = 100_000
    backlog_max_seconds: float = 15.0
    backlog_passes: int = 2
    # A drain of 20,000 lasts about a second on a fast machine: each system drains this many
    # times (each in a fresh database) and keeps its best pass, as the backlog levels do.
    drain_passes: int = 3
    drain_timeout: float = 300.0
    # Best of 50, 100, 200, 400 and 1000 in `python -m bench tune` on this machine.
    aol_batch_size: int = 1000
    aol_scan_interval: float = 1.0
    # One log line per tick for successes (failures still one per attempt); the execution
    # log row per attempt and the tick ledger stay on.
    aol_success_log: str = "tick"
    # uvloop, as PgQueuer's `pgq run` uses: cheaper task scheduling and socket I/O.
    aol_event_loop: str = "uvloop"
    pgqueuer_batch_size: int = 100
    procrastinate_concurrency: int = 10
    # Procrastinate's latency at --concurrency 10 was about 260 ms p50 in trials (it falls
    # behind at 200 jobs/s); its default, 1, gives its best idle latency.
    procrastinate_latency_concurrency: int = 1

    @classmethod
    def quick_preset(cls, **overrides: Any) -> Config:
        base: dict[str, Any] = {
            "quick": True,
            "n": 2_000,
            "latency_jobs": 100,
            "latency_warmup": 10,
            "concurrent_seconds": 1.5,
            "backlog_finished": (0, 10_000, 100_000),
            "backlog_runnable": 5_000,
            "backlog_max_seconds": 5.0,
            "backlog_passes": 1,
            "drain_passes": 1,
            "drain_timeout": 120.0,
        }
        base.update(overrides)
        return cls(**base)


@dataclass
class Run:
    """One invocation: its timestamp, results file and the folder for worker logs."""

    config: Config
    command: str
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    results_dir: Path = RESULTS_DIR
    records: list[dict[str, Any]] = field(default_factory=list)
    _out: TextIO | None = None

    @property
    def jsonl_path(self) -> Path:
        return self.results_dir / f"{self.stamp}.jsonl"

    @property
    def work_dir(self) -> Path:
        return self.results_dir / "work" / self.stamp

    def open(self) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"run": self.stamp, "kind": kind, "at": time.time(), **fields}
        self.records.append(rec)
        if self._out is not None:
            self._out.write(json.dumps(rec, default=str, sort_keys=True) + "\n")
            self._out.flush()
        return rec

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)
