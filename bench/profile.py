"""`python -m bench profile`: py-spy samples of a worker during a drain, summarised.

py-spy (`pip install py-spy`) samples the worker's Python stacks from the start signal to
the end of the drain (it counts a thread only while it is not idle in a system call it
knows, so time blocked in `select` mostly drops out). The summary gives, per function,
the share of busy samples in which it was on the stack (inclusive) or on top (self), and
the self share by package (asyncpg, asyncio, structlog, aol, ...). Samples whose top
frame is a wait (`select`, a thread's `Condition.wait`: aol's watchdog) are left out.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import Config, Run

Say = Callable[[str], None]


def _frame(raw: str) -> tuple[str, str]:
    """`func (path/to/file.py:123)` -> (func, file.py)."""
    name, _, rest = raw.partition(" (")
    path = rest.rsplit(":", 1)[0]
    return name, path.rsplit("/", 1)[-1]


def _package(raw: str) -> str:
    """py-spy names files relative to their sys.path entry: `asyncpg/pool.py` -> asyncpg."""
    _, _, rest = raw.partition(" (")
    path = rest.rsplit(":", 1)[0]
    return path.split("/", 1)[0].removesuffix(".py") or "?"


# Leaves where a thread waits rather than works (py-spy still counts some lock waits).
IDLE_LEAVES = {("Condition.wait", "threading.py"), ("EpollSelector.select", "selectors.py")}


def summarise(path: Path, top: int = 30) -> dict[str, Any]:
    inclusive: Counter[tuple[str, str]] = Counter()
    self_: Counter[tuple[str, str]] = Counter()
    packages: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if _frame(frames[-1]) in IDLE_LEAVES:
            idle += n
            continue
        total += n
        self_[_frame(frames[-1])] += n
        packages[_package(frames[-1])] += n
        for f in {_frame(f) for f in frames}:
            inclusive[f] += n

    def share(c: Counter[Any], k: Any) -> float:
        return round(100 * c[k] / total, 1) if total else 0.0

    # Frames on nearly every stack (the process's entry chain) say nothing.
    chain = {k for k, v in inclusive.items() if total and v / total > 0.85}
    return {
        "samples": total,
        "idle_samples_left_out": idle,
        "inclusive_pct": [
            {"function": f"{k[0]} ({k[1]})", "pct": share(inclusive, k)}
            for k, _ in inclusive.most_common()
            if k not in chain
        ][:top],
        "self_pct": [
            {"function": f"{k[0]} ({k[1]})", "pct": share(self_, k)}
            for k, _ in self_.most_common(top // 2)
        ],
        "self_pct_by_package": [
            {"package": k, "pct": share(packages, k)} for k, _ in packages.most_common(12)
        ],
    }


async def main(args: argparse.Namespace, say: Say) -> int:
    from bench.cli import make_system
    from bench.scenarios import drain

    sizes: dict[str, Any] = {}
    if args.batch_size is not None:
        sizes = {
            "aol_batch_size": args.batch_size,
            "pgqueuer_batch_size": args.batch_size,
            "procrastinate_concurrency": args.batch_size,
        }
    cfg = Config(database_url=args.database_url, n=args.n, **sizes)
    run = Run(config=cfg, command="profile")
    run.open()
    try:
        system = make_system(args.system, cfg)
        out = run.work_dir / f"{system.name}-profile.folded"
        say(f"== {system.name}: drain of {cfg.n} under py-spy")
        result = await drain(system, cfg, run, say, profile=out)
        summary = summarise(out)
        run.record("profile", system=system.name, drain=result, profile=summary)
        say(
            f"  {summary['samples']} busy samples ({summary['idle_samples_left_out']} idle ones "
            "left out: select, the watchdog's wait); inclusive share, entry chain left out:"
        )
        for row in summary["inclusive_pct"]:
            say(f"    {row['pct']:5.1f}%  {row['function']}")
        say("  self share by package:")
        for row in summary["self_pct_by_package"]:
            say(f"    {row['pct']:5.1f}%  {row['package']}")
        say("  self share, top functions:")
        for row in summary["self_pct"]:
            say(f"    {row['pct']:5.1f}%  {row['function']}")
        say(f"results: {run.jsonl_path}; folded stacks: {out}")
    finally:
        run.close()
    return 0
