"""`python -m bench`: run the scenarios for the systems, print and save the results.

    python -m bench [run] --scenarios drain,latency,concurrent-enqueue,backlog \\
        --systems aol,pgqueuer,procrastinate --n 20000
    python -m bench --quick                  # a smoke run, about a minute
    python -m bench tune --batch-sizes 50,200,1000  # aol drain rate per batch size
    python -m bench probe                    # aol's claim/finish statements, timed
    python -m bench profile                  # py-spy samples of aol's worker in a drain
    python -m bench history                  # dashboard, /metrics and prune on a long history
    python -m bench cleanup                  # drop aol_bench_* databases left behind
    python -m bench report bench/results/<timestamp>.jsonl   # the table again
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import shutil
import sys
import time
import traceback
from typing import Any

from bench import db, history, payload, probe, profile, report
from bench.config import DEFAULT_DATABASE_URL, RESULTS_DIR, SCENARIOS, Config, Run
from bench.scenarios import SCENARIO_FUNCS
from bench.systems import SYSTEM_NAMES, Aol, PgQueuer, Procrastinate, System


def say(text: str) -> None:
    print(text, flush=True)


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})"
        )
    return items


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="server to benchmark on; aol_bench_* databases are created and dropped there "
        f"(default {DEFAULT_DATABASE_URL})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmark of aol, PgQueuer and Procrastinate.",
    )
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the scenarios (the default command)")
    _common(run)
    run.add_argument(
        "--scenarios",
        type=lambda v: _csv(v, SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)",
    )
    run.add_argument(
        "--systems",
        type=lambda v: _csv(v, SYSTEM_NAMES, "system"),
        default=list(SYSTEM_NAMES),
        help=f"comma-separated, from {','.join(SYSTEM_NAMES)} (default: all)",
    )
    run.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    run.add_argument("--n", type=int, default=None, help="drain size (20000; quick 2000)")
    run.add_argument("--latency-jobs", type=int, default=None, help="(500; quick 100)")
    run.add_argument(
        "--latency-interval-ms", type=float, default=None, help="between latency jobs (5)"
    )
    run.add_argument(
        "--clients", type=_ints, default=None, help="concurrent-enqueue levels (1,8,32)"
    )
    run.add_argument(
        "--concurrent-seconds", type=float, default=None, help="per level (5; quick 1.5)"
    )
    run.add_argument(
        "--backlog-finished",
        type=_ints,
        default=None,
        help="finished rows per backlog level (0,100000,1000000; quick 0,10000,100000)",
    )
    run.add_argument("--backlog-runnable", type=int, default=None, help="(100000; quick 5000)")
    run.add_argument(
        "--backlog-seconds",
        type=float,
        default=None,
        help="stop measuring a backlog level after this long (15; quick 5)",
    )
    run.add_argument(
        "--drain-passes",
        type=int,
        default=None,
        help="drains per system, each in a fresh database; best pass kept (3; quick 1)",
    )
    run.add_argument(
        "--backlog-passes",
        type=int,
        default=None,
        help="passes over the backlog levels, alternating order; best per level (2; quick 1)",
    )
    run.add_argument(
        "--aol-batch-size", type=int, default=None, help="aol --batch-size for the run (1000)"
    )
    run.add_argument(
        "--aol-success-log",
        choices=["each", "tick"],
        default=None,
        help="aol --success-log for the run (tick)",
    )
    run.add_argument(
        "--aol-event-loop",
        choices=["asyncio", "uvloop"],
        default=None,
        help="aol --event-loop for the run (uvloop)",
    )
    run.add_argument(
        "--pgqueuer-batch-size", type=int, default=None, help="pgq run --batch-size (100)"
    )
    run.add_argument(
        "--procrastinate-concurrency",
        type=int,
        default=None,
        help="procrastinate worker --concurrency (10)",
    )
    run.add_argument("--keep-work", action="store_true", help="keep worker logs and stamp files")

    tune = sub.add_parser("tune", help="aol drain rate for several batch sizes")
    _common(tune)
    tune.add_argument("--batch-sizes", type=_ints, default=(50, 100, 200, 400, 1000))
    tune.add_argument("--n", type=int, default=10_000)
    tune.add_argument("--system", choices=SYSTEM_NAMES, default="aol", help="which system to tune")

    pr = sub.add_parser("probe", help="time aol's hot-path statements client-side")
    _common(pr)
    pr.add_argument("--n", type=int, default=10_000, help="actions to claim and finish")
    pr.add_argument(
        "--big-batch", type=int, default=200, help="batched variants again at this size (0: no)"
    )
    pr.add_argument("--batch-size", type=int, default=50)
    pr.add_argument("--finished", type=int, default=1_000_000, help="for the EXPLAIN check")
    pr.add_argument(
        "--churn", type=int, default=20_000, help="claimed+finished before the last EXPLAIN"
    )
    pr.add_argument(
        "--variants",
        default="per-action finish,per-action finish; no pool reset,batched finish,"
        "batched finish; no pool reset,batched finish + ledger in one transaction",
        help="hot-path variants to run (comma-separated)",
    )

    prof = sub.add_parser("profile", help="py-spy samples of a worker during a drain")
    _common(prof)
    prof.add_argument("--system", choices=SYSTEM_NAMES, default="aol")
    prof.add_argument("--n", type=int, default=20_000)
    prof.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size (or procrastinate concurrency); default: the run's profile",
    )

    pay = sub.add_parser("payload", help="aol's claim and finish times by payload size, per schema")
    _common(pay)
    payload.add_arguments(pay)

    hist = sub.add_parser(
        "history", help="aol's dashboard, /metrics and prune with 0 to 1,000,000 finished rows"
    )
    _common(hist)
    history.add_arguments(hist)

    clean = sub.add_parser("cleanup", help="drop aol_bench_* databases left behind")
    _common(clean)

    rep = sub.add_parser("report", help="render the markdown table of a results file again")
    rep.add_argument("jsonl", help="bench/results/<timestamp>.jsonl")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    if not argv or argv[0] not in {
        "run",
        "tune",
        "probe",
        "profile",
        "payload",
        "history",
        "cleanup",
        "report",
        "-h",
        "--help",
    }:
        argv = ["run", *argv]
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {"database_url": args.database_url}
    pairs = {
        "n": args.n,
        "latency_jobs": args.latency_jobs,
        "latency_interval": None
        if args.latency_interval_ms is None
        else args.latency_interval_ms / 1000,
        "concurrent_clients": args.clients,
        "concurrent_seconds": args.concurrent_seconds,
        "backlog_finished": args.backlog_finished,
        "backlog_runnable": args.backlog_runnable,
        "backlog_max_seconds": args.backlog_seconds,
        "backlog_passes": args.backlog_passes,
        "drain_passes": args.drain_passes,
        "aol_batch_size": args.aol_batch_size,
        "aol_success_log": args.aol_success_log,
        "aol_event_loop": args.aol_event_loop,
        "pgqueuer_batch_size": args.pgqueuer_batch_size,
        "procrastinate_concurrency": args.procrastinate_concurrency,
    }
    overrides.update({k: v for k, v in pairs.items() if v is not None})
    return Config.quick_preset(**overrides) if args.quick else Config(**overrides)


def for_scenario(system: System, scenario: str, cfg: Config) -> System:
    """The profile a system runs a scenario with (printed beside its figures)."""
    if scenario == "latency" and isinstance(system, Procrastinate):
        return dataclasses.replace(system, concurrency=cfg.procrastinate_latency_concurrency)
    return system


def make_system(name: str, cfg: Config) -> System:
    if name == "aol":
        return Aol(
            batch_size=cfg.aol_batch_size,
            scan_interval=cfg.aol_scan_interval,
            success_log=cfg.aol_success_log,
            event_loop=cfg.aol_event_loop,
        )
    if name == "pgqueuer":
        return PgQueuer(batch_size=cfg.pgqueuer_batch_size)
    return Procrastinate(concurrency=cfg.procrastinate_concurrency)


async def run_benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = config_from(args)
    command = "python -m bench " + shlex.join(argv)
    run = Run(config=cfg, command=command)
    run.open()
    started = time.monotonic()
    failures = 0
    try:
        admin = await db.connect(cfg.database_url)
        try:
            server = await db.server_facts(admin)
        finally:
            await admin.close()
        machine = report.machine_facts(server)
        systems = [make_system(name, cfg) for name in args.systems]
        run.record(
            "run",
            command=command,
            config=run.config_dict(),
            machine=machine,
            systems={
                s.name: {"version": s.version, "settings": s.settings(), "notes": s.notes()}
                for s in systems
            },
        )
        say(f"# {command}")
        say(report.machine_line(machine))
        for s in systems:
            say(f"{s.name} {s.version}: " + "; ".join(f"{k}={v}" for k, v in s.settings().items()))
        for scenario in args.scenarios:
            for base in systems:
                if scenario == "backlog" and not isinstance(base, Aol):
                    continue
                system = for_scenario(base, scenario, cfg)
                say(f"== {scenario}: {system.name}")
                t = time.monotonic()
                try:
                    result = await SCENARIO_FUNCS[scenario](system, cfg, run, say)
                except Exception as exc:
                    failures += 1
                    say(f"  {system.name}: FAILED: {type(exc).__name__}: {exc}")
                    run.record(
                        "result",
                        scenario=scenario,
                        system=system.name,
                        error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(),
                    )
                    continue
                run.record(
                    "result",
                    scenario=scenario,
                    system=system.name,
                    version=system.version,
                    settings=system.settings(),
                    seconds=round(time.monotonic() - t, 1),
                    **result,
                )
        elapsed = time.monotonic() - started
        text = report.render(run.records, elapsed=elapsed)
        say("")
        say(text)
        (RESULTS_DIR / "latest.md").write_text(text, encoding="utf-8")
        say(f"results: {run.jsonl_path}  table: {RESULTS_DIR / 'latest.md'}")
    finally:
        run.close()
        if not args.keep_work and failures == 0:
            shutil.rmtree(run.work_dir, ignore_errors=True)
    return 1 if failures else 0


async def run_tune(args: argparse.Namespace) -> int:
    from bench.scenarios import drain

    base = Config(database_url=args.database_url, n=args.n)
    run = Run(config=base, command="tune")
    run.open()
    try:
        for size in args.batch_sizes:
            if args.system == "aol":
                cfg = Config(database_url=args.database_url, n=args.n, aol_batch_size=size)
            elif args.system == "pgqueuer":
                cfg = Config(database_url=args.database_url, n=args.n, pgqueuer_batch_size=size)
            else:
                cfg = Config(
                    database_url=args.database_url, n=args.n, procrastinate_concurrency=size
                )
            system = make_system(args.system, cfg)
            say(f"== {args.system} batch/concurrency {size}")
            result = await drain(system, cfg, run, say)
            run.record("tune", system=args.system, size=size, **result)
    finally:
        run.close()
        shutil.rmtree(run.work_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.command == "report":
        with open(args.jsonl, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        say(report.render(records))
        return 0
    if args.command == "cleanup":
        dropped = asyncio.run(db.drop_leftovers(args.database_url))
        say(f"dropped {len(dropped)} database(s): {', '.join(dropped) or '-'}")
        return 0
    if args.command == "tune":
        return asyncio.run(run_tune(args))
    if args.command == "probe":
        return asyncio.run(probe.main(args, say))
    if args.command == "profile":
        return asyncio.run(profile.main(args, say))
    if args.command == "payload":
        return asyncio.run(payload.main(args, say))
    if args.command == "history":
        return asyncio.run(history.main(args, say))
    return asyncio.run(run_benchmark(args, argv))
