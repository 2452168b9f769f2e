"""A worker in a child process: started at a starting line, sampled with psutil, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil  # type: ignore[import-untyped]

from bench.launch import READY_FILE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
RSS_SAMPLE_INTERVAL = 0.05
READY_TIMEOUT = 60.0


class WorkerFailed(RuntimeError):
    pass


@dataclass
class RssSampler:
    """Samples a process's resident set size every 50 ms in a thread; keeps the peak."""

    pid: int
    interval: float = RSS_SAMPLE_INTERVAL
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                self.samples += 1
                self._stop.wait(self.interval)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


@dataclass
class Worker:
    """`python -m bench.launch SYSTEM ARGS...` with its output in `log_path`."""

    system: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    started_at: float = 0.0
    cpu_at_go: float = 0.0
    _log: IO[bytes] | None = None

    async def start(self) -> None:
        """Spawn the child and wait until it has imported everything (not yet working)."""
        ready = self.log_path.with_suffix(".ready")
        self._spawn(ready)
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None:
                raise WorkerFailed(f"{self.system} worker exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise WorkerFailed(f"{self.system} worker not ready in {READY_TIMEOUT:g}s")
            await asyncio.sleep(0.02)
        ready.unlink(missing_ok=True)

    def _spawn(self, ready: Path) -> None:
        ready.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        env[READY_FILE_ENV] = str(ready)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.launch", self.system, *self.args],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
        self.sampler = RssSampler(self.proc.pid)
        self.sampler.start()

    def go(self) -> None:
        """The start signal: the child runs the system's own command line now."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.cpu_at_go = self.cpu_seconds_total()
        self.started_at = time.time()
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def cpu_seconds_total(self) -> float:
        assert self.proc is not None
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except psutil.NoSuchProcess:
            return self.cpu_at_go
        return float(t.user + t.system)

    def cpu_seconds(self) -> float:
        """CPU (user + system) used by the worker since the start signal."""
        return self.cpu_seconds_total() - self.cpu_at_go

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise WorkerFailed(
                f"{self.system} worker exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    @property
    def peak_rss_mb(self) -> float:
        return round((self.sampler.peak if self.sampler else 0) / 2**20, 1)

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self._wait_or_kill, timeout)
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def _wait_or_kill(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        if self._log is not None:
            with contextlib.suppress(ValueError):
                self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""
