"""The markdown report: machine, settings, one table per scenario, and the issue's targets.

Targets are judged only on ratios measured in the same run, as the issue asks.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

Record = dict[str, Any]


def machine_facts(server: dict[str, str]) -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "server": server,
    }


def machine_line(m: dict[str, Any]) -> str:
    s = m["server"]
    return (
        f"machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"load {m['load_average_at_start']}; Python {m['python']}; "
        f"PostgreSQL {s['server_version']} (fsync={s['fsync']}, "
        f"synchronous_commit={s['synchronous_commit']}, shared_buffers={s['shared_buffers']}, "
        f"autovacuum={s['autovacuum']}, max_connections={s['max_connections']})"
    )


def _results(records: list[Record], scenario: str) -> dict[str, Record]:
    return {
        r["system"]: r
        for r in records
        if r.get("kind") == "result" and r.get("scenario") == scenario and "metrics" in r
    }


def _errors(records: list[Record]) -> list[Record]:
    return [r for r in records if r.get("kind") == "result" and "error" in r]


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(records: list[Record]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figures it was judged on."""
    drain = _results(records, "drain")
    lat = _results(records, "latency")
    conc = _results(records, "concurrent-enqueue")
    back = _results(records, "backlog")
    out: list[dict[str, Any]] = []

    def add(
        target: str, measured: str, reference: str, ratio: float | None, met: bool | None
    ) -> None:
        out.append(
            {
                "target": target,
                "measured": measured,
                "reference": reference,
                "ratio": None if ratio is None else round(ratio, 3),
                "met": met,
            }
        )

    a, p = drain.get("aol"), drain.get("pgqueuer")
    if a and p:
        ar, pr = a["metrics"]["processing_rate"], p["metrics"]["processing_rate"]
        ratio = _ratio(ar, pr)
        ok = a["verification"]["ok"]
        add(
            "drain processing rate ≥ 1.5× PgQueuer's, every action's log row written",
            f"aol {_fmt(ar)} jobs/s (log rows verified: {ok})",
            f"PgQueuer {_fmt(pr)} jobs/s",
            ratio,
            bool(ratio is not None and ratio >= 1.5 and ok),
        )
        ae, pe = a["metrics"]["enqueue_rate"], p["metrics"]["enqueue_rate"]
        ratio = _ratio(ae, pe)
        add(
            "batch enqueue rate ≥ PgQueuer's (batches of 1,000)",
            f"aol {_fmt(ae)} jobs/s",
            f"PgQueuer {_fmt(pe)} jobs/s",
            ratio,
            bool(ratio is not None and ratio >= 1.0),
        )
    a, p = lat.get("aol"), lat.get("pgqueuer")
    if a and p:
        a99, p99 = a["metrics"]["p99_ms"], p["metrics"]["p99_ms"]
        ratio = _ratio(a99, p99)
        add(
            "enqueue-to-start p99 ≤ PgQueuer's",
            f"aol p99 {_fmt(a99, 2)} ms",
            f"PgQueuer p99 {_fmt(p99, 2)} ms",
            ratio,
            bool(ratio is not None and ratio <= 1.0),
        )
    if a:
        a99 = a["metrics"]["p99_ms"]
        add(
            "enqueue-to-start p99 < 5 ms on an idle worker",
            f"aol p99 {_fmt(a99, 2)} ms",
            "5 ms",
            _ratio(a99, 5.0),
            bool(a99 < 5.0),
        )
    c = conc.get("aol")
    if c:
        levels = c["metrics"]["levels"]
        top = max(lv["clients"] for lv in levels)
        at = {lv["mode"]: lv for lv in levels if lv["clients"] == top}
        # The target's case: a real worker draining beside the clients, trigger on and off
        # (both pay for the worker). Older runs had one "trigger" mode, every commit notifying.
        pairs = [("trigger, real worker", "no trigger, real worker"), ("trigger", "no trigger")]
        for on_mode, off_mode in pairs:
            on, off = at.get(on_mode), at.get(off_mode)
            if on and off:
                ratio = _ratio(on["commits_per_s"], off["commits_per_s"])
                add(
                    f"single-row enqueue at {top} clients ≥ 80% of the no-trigger insert",
                    f"{on_mode}: {_fmt(on['commits_per_s'])} commits/s",
                    f"{off_mode}: {_fmt(off['commits_per_s'])} commits/s",
                    ratio,
                    bool(ratio is not None and ratio >= 0.8),
                )
                break
    b = back.get("aol")
    if b:
        levels = b["metrics"]["levels"]
        empty = next((lv for lv in levels if lv["finished"] == 0), None)
        big = max(levels, key=lambda lv: lv["finished"])
        if empty and big is not empty:
            ratio = _ratio(big["rate"], empty["rate"])
            add(
                f"claim+complete rate with {big['finished']:,} finished ≥ 80% of empty table",
                f"{_fmt(big['rate'])} /s with {big['finished']:,} finished",
                f"{_fmt(empty['rate'])} /s empty",
                ratio,
                bool(ratio is not None and ratio >= 0.8),
            )
    rss = [
        r["metrics"].get("worker_peak_rss_mb")
        for r in records
        if r.get("kind") == "result" and r.get("system") == "aol" and "metrics" in r
    ]
    rss += [
        lv["worker_peak_rss_mb"]
        for r in records
        if r.get("kind") == "result" and r.get("system") == "aol" and "metrics" in r
        for lv in r["metrics"].get("levels", [])
        if "worker_peak_rss_mb" in lv
    ]
    rss = [x for x in rss if x]
    if rss:
        peak = max(rss)
        add(
            "aol worker peak RSS < 100 MB (every scenario)",
            f"{_fmt(peak, 1)} MB",
            "100 MB",
            _ratio(peak, 100.0),
            bool(peak < 100.0),
        )
    return out


def _ledger_line(r: Record | None, what: str) -> str | None:
    t = (r or {}).get("metrics", {}).get("tick_ledger")
    if not t:
        return None
    return (
        f"aol's tick ledger in {what}: {int(t['working_ticks'] or 0):,} ticks that claimed "
        f"work, {_fmt(t['claimed_per_tick'], 1)} actions per such tick, tick duration "
        f"p50 {_fmt(t['tick_ms_p50'], 1)} ms / p99 {_fmt(t['tick_ms_p99'], 1)} ms."
    )


def render(records: list[Record], elapsed: float | None = None) -> str:
    run = next((r for r in records if r.get("kind") == "run"), {})
    lines: list[str] = []
    lines.append(f"Run `{run.get('run', '?')}`: `{run.get('command', '?')}`")
    if elapsed is not None:
        lines[-1] += f" ({elapsed:.0f} s)"
    lines.append("")
    if run.get("machine"):
        lines.append(machine_line(run["machine"]))
        lines.append("")
    systems: dict[str, Any] = run.get("systems", {})
    if systems:
        lines.append("| system | version | settings |")
        lines.append("|---|---|---|")
        for name, info in systems.items():
            settings = "; ".join(f"{k}: {v}" for k, v in info["settings"].items())
            lines.append(f"| {name} | {info['version']} | {settings} |")
        lines.append("")

    drain = _results(records, "drain")
    if drain:
        lines.append("**drain** (no-op jobs, enqueued in batches of 1,000, then drained)")
        lines.append("")
        lines.append(
            "| system | enqueue jobs/s | processing jobs/s (best pass) | every pass "
            "| worker CPU s / 1k jobs "
            "| DB backends CPU s / 1k jobs | worker peak RSS MB | every job ran once |"
        )
        lines.append("|---|--:|--:|---|--:|--:|--:|---|")
        for name, r in drain.items():
            m = r["metrics"]
            once = "yes" if r["verification"]["ok"] else "NO"
            every = ", ".join(
                _fmt(x) for x in m.get("processing_rates_all_passes", [m["processing_rate"]])
            )
            lines.append(
                f"| {name} | {_fmt(m['enqueue_rate'])} | {_fmt(m['processing_rate'])} "
                f"| {every} "
                f"| {_fmt(m['worker_cpu_s_per_1k'], 3)} "
                f"| {_fmt(m['db_backend_cpu_s_per_1k'], 3)} "
                f"| {_fmt(m['worker_peak_rss_mb'], 1)} | {once} |"
            )
        lines.append("")
        ledger = _ledger_line(drain.get("aol"), "the drain")
        if ledger:
            lines.extend([ledger, ""])

    lat = _results(records, "latency")
    if lat:
        first = next(iter(lat.values()))["metrics"]
        lines.append(
            f"**latency** (idle worker; {first['jobs']} single jobs {first['interval_ms']:g} ms "
            "apart; handler start − client time after commit)"
        )
        lines.append("")
        lines.append(
            "| system | p50 ms | p95 ms | p99 ms | max ms | started | enqueue round trip p50 ms "
            "| worker peak RSS MB | settings |"
        )
        lines.append("|---|--:|--:|--:|--:|--:|--:|--:|---|")
        for name, r in lat.items():
            m = r["metrics"]
            extra = r.get("settings", {}).get("concurrency")
            note = f"concurrency {extra}" if extra else "as above"
            lines.append(
                f"| {name} | {_fmt(m['p50_ms'], 2)} | {_fmt(m['p95_ms'], 2)} "
                f"| {_fmt(m['p99_ms'], 2)} | {_fmt(m['max_ms'], 2)} | {m['started']}/{m['jobs']} "
                f"| {_fmt(m['enqueue_round_trip']['p50_ms'], 2)} "
                f"| {_fmt(m['worker_peak_rss_mb'], 1)} | {note} |"
            )
        lines.append("")
        ledger = _ledger_line(lat.get("aol"), "the latency run")
        if ledger:
            lines.extend([ledger, ""])

    conc = _results(records, "concurrent-enqueue")
    if conc:
        levels_all = sorted({lv["clients"] for r in conc.values() for lv in r["metrics"]["levels"]})
        lines.append(
            "**concurrent-enqueue** (commits/s; each client enqueues single jobs, one "
            "transaction each; commit p99 ms in brackets)"
        )
        lines.append("")
        lines.append(
            "| system | wake-up trigger | "
            + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in levels_all)
            + " |"
        )
        lines.append("|---|---|" + "--:|" * len(levels_all))
        for name, r in conc.items():
            modes: dict[str, dict[int, Record]] = {}
            for lv in r["metrics"]["levels"]:
                modes.setdefault(lv["mode"], {})[lv["clients"]] = lv
            for mode, by in modes.items():
                cells = []
                for c in levels_all:
                    lv = by.get(c)
                    cells.append(
                        f"{_fmt(lv['commits_per_s'])} ({_fmt(lv['commit']['p99_ms'], 1)})"
                        if lv
                        else "–"
                    )
                label = {"trigger": "on", "no trigger": "off (ALTER TABLE … DISABLE TRIGGER)"}.get(
                    mode, mode
                )
                lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
        lines.append("")

    back = _results(records, "backlog")
    if back:
        r = back["aol"]
        lines.append(
            "**backlog** (aol only: the real worker claiming and completing runnable actions "
            "with finished actions, and their log rows, already in the table; measured for at "
            "most the configured seconds per level; levels in alternating order per pass)"
        )
        lines.append("")
        lines.append(
            "| finished rows | runnable | processed (best pass) | claims+completions /s "
            "(best pass) | every pass | vs empty | aol.actions size before "
            "| worker peak RSS MB | every action's log row |"
        )
        lines.append("|--:|--:|--:|--:|---|--:|--:|--:|---|")
        for lv in r["metrics"]["levels"]:
            every = ", ".join(_fmt(x) for x in lv.get("rates_all_passes", [lv["rate"]]))
            lines.append(
                f"| {lv['finished']:,} | {lv['runnable']:,} | {lv['processed']:,} "
                f"| {_fmt(lv['rate'])} | {every} | {_fmt(lv['ratio_to_empty'], 2)} "
                f"| {lv['table_size_before']} | {_fmt(lv['worker_peak_rss_mb'], 1)} "
                f"| {'yes' if lv['verified'] else 'NO'} |"
            )
        lines.append("")

    tg = targets(records)
    if tg:
        lines.append("**targets** (ratios from this run)")
        lines.append("")
        lines.append("| target | aol | reference | ratio | met |")
        lines.append("|---|---|---|--:|---|")
        for t in tg:
            met = "met" if t["met"] else "missed"
            lines.append(
                f"| {t['target']} | {t['measured']} | {t['reference']} "
                f"| {_fmt(t['ratio'], 2)} | {met} |"
            )
        lines.append("")

    notes = [n for info in systems.values() for n in info.get("notes", [])]
    notes += [
        f"{name} batch enqueue in this run: {r['metrics']['enqueue_via']}."
        for name, r in drain.items()
        if r["metrics"].get("enqueue_via")
    ]
    errors = _errors(records)
    if notes or errors:
        lines.append("Notes:")
        lines.append("")
        for n in notes:
            lines.append(f"* {n}")
        for e in errors:
            lines.append(f"* {e['system']} / {e['scenario']} FAILED: {e['error']}")
        lines.append("")
    return "\n".join(lines)
