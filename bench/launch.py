"""Start a system's own worker command in a child process, held at the starting line.

`python -m bench.launch SYSTEM ARG...` imports the system's CLI and the benchmark's handler
module, creates the file named by `BENCH_READY_FILE`, waits for one line on stdin (the
start signal), then runs the system's real
command line as its users would (`aol ...`, `pgq ...`, `procrastinate ...`). The import
cost (about a second of CPU on this machine) is thereby paid before the start signal, so
the CPU time the benchmark charges to a worker is the time it spends working; the
resident memory it reports includes those imports, as it would in production.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

READY_FILE_ENV = "BENCH_READY_FILE"


def _aol(args: list[str]) -> None:
    import aol.cli
    import aol.worker.runner  # what `aol run` imports lazily
    import bench.noop  # noqa: F401

    _wait()
    sys.argv = ["aol", *args]
    aol.cli.main()


def _pgqueuer(args: list[str]) -> None:
    # `pgq run` itself fails here before starting (PgQueuer 1.6.0 with typer 0.29: its
    # --log-level parser hands a str where an enum is expected), so this does what that
    # command does, through PgQueuer's documented `pgqueuer.run` API: its log set-up, then
    # the supervisor on uvloop. Arguments: FACTORY --batch-size N.
    from datetime import timedelta

    import uvloop
    from pgqueuer import run
    from pgqueuer.core import logconfig

    import bench.pgq_app  # noqa: F401

    factory, flag, batch = args
    if flag != "--batch-size":
        raise SystemExit(f"usage: pgqueuer FACTORY --batch-size N, got {args}")
    _wait()
    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)
    uvloop.run(run(factory, batch_size=int(batch), dequeue_timeout=timedelta(seconds=30)))


def _procrastinate(args: list[str]) -> None:
    from procrastinate import cli

    import bench.procrastinate_app  # noqa: F401

    _wait()
    sys.argv = ["procrastinate", *args]
    cli.main()  # type: ignore[no-untyped-call]


def _wait() -> None:
    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        Path(ready).write_text(str(os.getpid()), encoding="utf-8")
    sys.stdin.readline()


LAUNCHERS = {"aol": _aol, "pgqueuer": _pgqueuer, "procrastinate": _procrastinate}


def main() -> None:
    system, *args = sys.argv[1:]
    LAUNCHERS[system](args)


if __name__ == "__main__":
    main()
