"""The `aol` command: parse flags, call one function, render the result.

Control commands (pause, resume, kill, proof, dlq retry) go through the same store
functions as everything else, and each records who changed what, and why.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import click

from aol import logs
from aol import roles as role_setup
from aol.client import enqueue as enqueue_action
from aol.db import store
from aol.db.connect import ResolvedDatabase, connect, open_database
from aol.db.revisions import head_revision, is_downgrade
from aol.errors import AolError, LeaseHeld
from aol.eventloop import LoopFactory, loop_factory
from aol.settings import Settings, load_settings

T = TypeVar("T")
NO_REASON = "no reason given (cli)"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_LEASE_HELD = 3


def changed_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    base: dict[str, Any] = dict(ctx.obj or {})
    base.update(flags)
    return load_settings(base)


def _run(coro: Awaitable[T], *, loop: LoopFactory | None = None) -> T:
    try:
        with asyncio.Runner(loop_factory=loop) as runner:
            return runner.run(_as_coroutine(coro))
    except LeaseHeld as exc:
        click.echo(f"aol: {exc}", err=True)
        sys.exit(EXIT_LEASE_HELD)
    except AolError as exc:
        click.echo(f"aol: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except asyncpg.InsufficientPrivilegeError as exc:
        click.echo(
            f"aol: permission denied: {exc}; the database role aol connected as lacks this "
            "right (`aol roles --help` lists the roles and what each may do)",
            err=True,
        )
        sys.exit(EXIT_ERROR)


async def _as_coroutine(aw: Awaitable[T]) -> T:
    return await aw


async def _with_db(settings: Settings, fn: Callable[[ResolvedDatabase], Awaitable[T]]) -> T:
    async with open_database(
        settings.database_url, data_dir=settings.data_dir, embedded_dir=settings.embedded_dir
    ) as db:
        return await fn(db)


async def _with_conn(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    async def inner(db: ResolvedDatabase) -> T:
        conn = await connect(db.url, application_name="aol-cli")
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return await _with_db(settings, inner)


def _json_default(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar=None,
    default=None,
    help="PostgreSQL URL; else AOL_DATABASE_URL, DATABASE_URL, else embedded.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    default=None,
    help="json (default, one object per line) or console (for people).",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, log_format: str | None) -> None:
    """aol: durable, leased, auditable side-effecting actions on PostgreSQL."""
    ctx.obj = {"database_url": database_url, "log_format": log_format}
    try:
        settings = load_settings(ctx.obj)
    except AolError as exc:
        raise click.UsageError(str(exc)) from exc
    logs.configure(settings.log_format)


@cli.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--force", is_flag=True, help="Downgrade even though actions are stored.")
@click.pass_context
def migrate(ctx: click.Context, revision: str, force: bool) -> None:
    """Create or upgrade the aol schema (Alembic); a downgrade that would drop stored
    actions is refused unless --force."""
    settings = _settings(ctx)

    async def go(db: ResolvedDatabase) -> None:
        from aol.db.migrate import downgrade, upgrade  # Alembic: only for this command

        conn = await connect(db.url, application_name="aol-migrate")
        try:
            current = await store.read_schema_revision(conn)
            down = is_downgrade(current, revision)
            stored = sum((await store.count_by_status(conn)).values()) if down else 0
        finally:
            await conn.close()
        if down and stored and not force:
            raise AolError(
                f"refusing to downgrade schema aol from {current} to {revision}: "
                f"{stored} action(s) are stored and a downgrade may drop what they hold; "
                "back them up, then run again with --force"
            )
        if down:
            await downgrade(db.url, revision)
        elif db.embedded_root is None or revision != "head":
            await upgrade(db.url, revision)
        click.echo(f"schema aol is at {revision if revision != 'head' else head_revision()}")

    _run(_with_db(settings, go))


@cli.command()
@click.option(
    "--ticks",
    type=click.IntRange(min=1),
    default=None,
    help="Run N ticks back to back, then exit 0.",
)
@click.option(
    "--standby",
    is_flag=True,
    default=None,
    help="If another worker holds the lease, wait and take over when it frees.",
)
@click.option("--handlers", multiple=True, help="Module(s) that register handlers (repeatable).")
@click.option("--batch-size", type=int, default=None, help="Actions claimed per tick (3).")
@click.option(
    "--max-attempts",
    type=int,
    default=None,
    help="Cap on attempts per action, below its own max_attempts (none).",
)
@click.option("--scan-interval", type=float, default=None, help="Safety-net scan, seconds (30).")
@click.option(
    "--busy-poll",
    type=float,
    default=None,
    help="While a tick finds several actions waiting, claim again after this many seconds "
    "instead of sleeping until notified; 0 turns it off (0.002).",
)
@click.option("--lease-ttl", type=float, default=None, help="Lease TTL, seconds (30).")
@click.option("--heartbeat-interval", type=float, default=None, help="Heartbeat, seconds (5).")
@click.option("--tick-timeout", type=float, default=None, help="Tick timeout, seconds (20).")
@click.option("--action-timeout", type=float, default=None, help="Per-action timeout (15).")
@click.option("--backoff-base", type=float, default=None, help="First retry delay, seconds (5).")
@click.option("--shutdown-grace", type=float, default=None, help="Drain on SIGTERM, s (15).")
@click.option("--owner", default=None, help="Lease owner name (host:pid).")
@click.option("--backoff-max", type=float, default=None, help="Retry delay cap, s (600).")
@click.option(
    "--claim-grace", type=float, default=None, help="Claim validity past the tick timeout (10)."
)
@click.option("--data-dir", default=None, help="Folder for artifacts (AOL_DATA_DIR).")
@click.option(
    "--success-log",
    type=click.Choice(["each", "tick"]),
    default=None,
    help="A JSON line per success (each), or one per tick listing the ids (tick).",
)
@click.option(
    "--health-port",
    type=int,
    default=None,
    help="Serve GET /healthz, /readyz and /metrics on this port (off by default).",
)
@click.option(
    "--event-loop",
    type=click.Choice(["asyncio", "uvloop"]),
    default=None,
    help="The event loop: the standard library's (asyncio) or uvloop, which needs "
    "`pip install 'aol[uvloop]'` (asyncio).",
)
@click.option(
    "--poll-only",
    "listen",
    flag_value=False,
    default=None,
    help="No LISTEN (for poolers): wake on the scan interval and due times only.",
)
@click.pass_context
def run(ctx: click.Context, /, ticks: int | None, **flags: Any) -> None:
    """Run the worker: hold the lease and execute actions."""
    from aol.worker.dispatch import abandoned_handlers
    from aol.worker.runner import run_worker

    flags["handlers"] = tuple(flags.get("handlers") or ())
    try:
        settings = _settings(ctx, **flags)
        make_loop = loop_factory(settings.event_loop)
    except AolError as exc:
        raise click.UsageError(str(exc)) from exc

    async def go(db: ResolvedDatabase) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        code = await run_worker(settings, db.url, ticks=ticks, stop=stop, freeze_heap=True)
        if abandoned_handlers():
            # The runner would wait for handlers that ignore cancellation: leave now.
            sys.stdout.flush()
            os._exit(code)
        return code

    sys.exit(_run(_with_db(settings, go), loop=make_loop))


@cli.command()
@click.option("--host", default=None, help="Address to serve on (127.0.0.1; AOL_DASHBOARD_HOST).")
@click.option("--port", type=int, default=None, help="Port (8080; AOL_DASHBOARD_PORT).")
@click.option("--data-dir", default=None, help="Folder holding the artifacts (AOL_DATA_DIR).")
@click.pass_context
def dashboard(ctx: click.Context, host: str | None, port: int | None, data_dir: str | None) -> None:
    """The operator's web dashboard: lease, flags, ticks, queue, logs, dead letters, and
    controls (with AOL_DASHBOARD_TOKEN set). Beyond loopback it needs the token."""
    from aol.web import auth
    from aol.web.server import serve

    try:
        settings = _settings(ctx, dashboard_host=host, dashboard_port=port, data_dir=data_dir)
        auth.check_bind(settings.dashboard_host, settings.dashboard_token)
    except AolError as exc:
        raise click.UsageError(str(exc)) from exc
    _run(_with_db(settings, lambda db: serve(settings, db.url)))


@cli.command("enqueue")
@click.argument("action_type")
@click.option("--payload", required=True, help="The payload, a JSON object.")
@click.option("--key", "idempotency_key", required=True, help="Idempotency key (unique).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--max-attempts", type=int, default=3, show_default=True)
@click.option("--delay", type=float, default=None, help="Run no sooner than this many seconds.")
@click.pass_context
def enqueue_cmd(
    ctx: click.Context,
    action_type: str,
    payload: str,
    idempotency_key: str,
    priority: int,
    max_attempts: int,
    delay: float | None,
) -> None:
    """Enqueue an action; prints its id (the existing id for a repeated key)."""
    settings = _settings(ctx)
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from exc

    async def go(conn: Any) -> int:
        not_before = None
        if delay is not None:
            not_before = datetime.now(UTC) + timedelta(seconds=delay)
        return await enqueue_action(
            conn,
            action_type,
            body,
            idempotency_key=idempotency_key,
            priority=priority,
            max_attempts=max_attempts,
            not_before=not_before,
        )

    click.echo(_run(_with_conn(settings, go)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Lease owner and TTL, control flags, last tick, counts by status."""
    settings = _settings(ctx)

    async def go(conn: Any) -> dict[str, Any]:
        lease = await store.read_lease(conn)
        flags = await store.read_flags(conn)
        tick = await store.last_tick(conn)
        counts = await store.count_by_status(conn)
        ttl = (lease.expires_at - lease.now).total_seconds() if lease.expires_at else None
        return {
            "lease": {
                "owner": lease.owner,
                "epoch": lease.epoch,
                "heartbeat_at": lease.heartbeat_at,
                "expires_at": lease.expires_at,
                "ttl_s": None if ttl is None else round(ttl, 1),
                "held": ttl is not None and ttl > 0,
            },
            "flags": {
                "paused": flags.paused,
                "killed": flags.killed,
                "proof_mode": flags.proof_mode,
                "changed_by": flags.changed_by,
                "changed_at": flags.changed_at,
                "reason": flags.reason,
            },
            "last_tick": None
            if tick is None
            else {
                "tick": tick.tick,
                "epoch": tick.epoch,
                "outcome": str(tick.outcome),
                "finished_at": tick.finished_at,
                "claimed": tick.claimed,
                "succeeded": tick.succeeded,
                "retried": tick.retried,
                "dead": tick.dead,
            },
            "counts": counts,
        }

    data = _run(_with_conn(settings, go))
    if as_json:
        click.echo(json.dumps(data, default=_json_default))
        return
    lease, flags, tick = data["lease"], data["flags"], data["last_tick"]
    holder = (
        f"{lease['owner']} epoch {lease['epoch']}, expires in {lease['ttl_s']}s"
        if lease["held"]
        else f"nobody (last: {lease['owner'] or '-'}, epoch {lease['epoch']})"
    )
    click.echo(f"lease:  {holder}")
    click.echo(
        f"flags:  paused={flags['paused']} killed={flags['killed']} "
        f"proof_mode={flags['proof_mode']} (by {flags['changed_by']} at "
        f"{_json_default(flags['changed_at'])}: {flags['reason'] or '-'})"
    )
    if tick:
        click.echo(
            f"tick:   #{tick['tick']} epoch {tick['epoch']} {tick['outcome']} at "
            f"{_json_default(tick['finished_at'])} (claimed {tick['claimed']}, "
            f"succeeded {tick['succeeded']}, retried {tick['retried']}, "
            f"dead {tick['dead']})"
        )
    else:
        click.echo("tick:   none yet")
    click.echo("counts: " + " ".join(f"{k}={v}" for k, v in data["counts"].items()))


REASON_HELP = "Why; recorded with the change, and with the database login that made it."


def _flag_command(name: str, help_text: str, **change: bool) -> None:
    @cli.command(name, help=help_text)
    @click.option("--reason", default=NO_REASON, show_default=True, help=REASON_HELP)
    @click.pass_context
    def command(ctx: click.Context, reason: str) -> None:
        _set_flags(ctx, reason, **change)


def _set_flags(ctx: click.Context, reason: str, **change: bool) -> None:
    if not reason.strip():
        raise click.BadParameter(
            "must not be empty: say why the flags change", param_hint="--reason"
        )
    settings = _settings(ctx)

    async def go(conn: Any) -> Any:
        # The database records the login (session_user) as changed_by.
        return await store.set_flags(conn, reason=reason, **change)

    flags = _run(_with_conn(settings, go))
    click.echo(f"paused={flags.paused} killed={flags.killed} proof_mode={flags.proof_mode}")


_flag_command("pause", "Stop claiming new actions (in-flight ones finish).", paused=True)
_flag_command("resume", "Claim actions again after a pause.", paused=False)


@cli.command()
@click.option("--clear", is_flag=True, help="Lift the kill switch.")
@click.option(
    "--cancel-in-flight",
    is_flag=True,
    help="Cut-short actions end cancelled instead of going back to retry.",
)
@click.option("--reason", default=NO_REASON, show_default=True, help=REASON_HELP)
@click.pass_context
def kill(ctx: click.Context, clear: bool, cancel_in_flight: bool, reason: str) -> None:
    """Kill switch: the worker stops claiming, cuts in-flight actions short and exits 0;
    restarted workers exit at once too, until --clear."""
    if clear and cancel_in_flight:
        raise click.UsageError("--cancel-in-flight goes with a kill, not with --clear")
    _set_flags(ctx, reason, killed=not clear, kill_cancels=cancel_in_flight)


@cli.command()
@click.argument("mode", type=click.Choice(["on", "off"]))
@click.option("--reason", default=NO_REASON, show_default=True, help=REASON_HELP)
@click.pass_context
def proof(ctx: click.Context, mode: str, reason: str) -> None:
    """Proof (dry-run) mode: handlers write artifacts instead of acting."""
    _set_flags(ctx, reason, proof_mode=mode == "on")


@cli.group()
def dlq() -> None:
    """The dead-letter queue."""


@dlq.command("list")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def dlq_list(ctx: click.Context, limit: int) -> None:
    """List dead actions, newest first."""
    settings = _settings(ctx)
    rows = _run(_with_conn(settings, lambda c: store.list_dead(c, limit=limit)))
    if not rows:
        click.echo("no dead actions")
    for r in rows:
        click.echo(
            f"{r['id']}\t{r['action_type']}\t{r['idempotency_key']}\t"
            f"attempts {r['attempts']}/{r['max_attempts']}\t{r['last_error']}"
        )


@dlq.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Retry every dead action.")
@click.option("--reason", default=None, help="Why; recorded with the change.")
@click.pass_context
def dlq_retry(ctx: click.Context, ids: tuple[int, ...], all_: bool, reason: str | None) -> None:
    """Return dead actions to retry (by id, or --all)."""
    if bool(ids) == all_:
        raise click.UsageError("give action ids or --all (not both)")
    settings = _settings(ctx)
    moved = _run(
        _with_conn(
            settings,
            lambda c: store.retry_dead(
                c, ids=None if all_ else list(ids), changed_by=changed_by(), reason=reason
            ),
        )
    )
    missing = sorted(set(ids) - set(moved))
    click.echo(f"retrying {len(moved)} action(s): {' '.join(map(str, moved)) or '-'}")
    if missing:
        click.echo(f"not dead (left alone): {' '.join(map(str, missing))}", err=True)


@cli.command()
@click.option("--older-than", required=True, help="Age by finished time: 30d, 12h, 90m or seconds.")
@click.option("--include-dead", is_flag=True, help="Delete dead actions too (kept otherwise).")
@click.option("--batch", type=int, default=1000, show_default=True, help="Rows per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.pass_context
def prune(
    ctx: click.Context, older_than: str, include_dead: bool, batch: int, dry_run: bool
) -> None:
    """Delete finished actions (with their log rows) and tick ledger rows older than an age.

    Succeeded and cancelled actions go; dead ones stay unless --include-dead. A deleted
    action's idempotency key is free again. Run it from cron, or as a compose job.
    """
    from aol import retention

    settings = _settings(ctx)
    try:
        age = retention.parse_age(older_than)
    except AolError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    report = _run(
        _with_conn(
            settings,
            lambda c: retention.prune(
                c, older_than_s=age, include_dead=include_dead, batch=batch, dry_run=dry_run
            ),
        )
    )
    kinds = "/".join(report.statuses)
    if report.dry_run:
        click.echo(
            f"would delete {report.actions} {kinds} action(s) finished over {older_than} ago"
        )
    else:
        click.echo(
            f"deleted {report.actions} {kinds} action(s) and {report.ticks} tick ledger row(s) "
            f"older than {older_than}"
        )


PREFIX_HELP = "The roles are <prefix>_enqueuer, <prefix>_worker and <prefix>_operator."


@cli.group()
def roles() -> None:
    """Least-privilege database roles for this database: <prefix>_enqueuer (may only call
    aol.enqueue), <prefix>_worker (what `aol run` needs) and <prefix>_operator (reads
    everything, changes flags only through the audited aol.set_control_flags, retries dead
    actions). Run these as the role that ran `aol migrate`, with CREATEROLE.
    """


@roles.command("create")
@click.option("--prefix", default=role_setup.DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
@click.option(
    "--password-env",
    "password_env",
    multiple=True,
    metavar="[ROLE=]VAR",
    help="Give roles LOGIN with the password held in environment variable VAR: bare VAR for "
    "all three, ROLE=VAR (enqueuer, worker, operator) for one. Repeatable. Without it a new "
    "role is NOLOGIN (grant it to a login role) and an existing role keeps its login.",
)
@click.option(
    "--allow-terminate/--no-allow-terminate",
    default=None,
    help="Grant (or revoke) the worker pg_signal_backend, which taking over from a frozen "
    "lease holder needs (pg_terminate_backend; never works on a superuser's backend). "
    "Needs ADMIN OPTION on pg_signal_backend (a superuser). Left as it is when not given.",
)
@click.pass_context
def roles_create(
    ctx: click.Context, prefix: str, password_env: tuple[str, ...], allow_terminate: bool | None
) -> None:
    """Create the roles where missing and set their rights in this database (idempotent)."""
    settings = _settings(ctx)
    try:
        role_setup.validate_prefix(prefix)
        passwords = role_setup.passwords_from_env(password_env, os.environ)
    except AolError as exc:
        raise click.UsageError(str(exc)) from exc

    async def go(conn: Any) -> list[role_setup.RoleState]:
        return await role_setup.create_roles(
            conn, prefix=prefix, passwords=passwords, allow_terminate=allow_terminate
        )

    for role in _run(_with_conn(settings, go)):
        click.echo(
            f"{role.name}: {'created' if role.created else 'rights set'}, "
            f"{'LOGIN' if role.can_login else 'NOLOGIN'}"
            + (", may terminate backends (pg_signal_backend)" if role.can_terminate else "")
        )


@roles.command("drop")
@click.option("--prefix", default=role_setup.DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
@click.pass_context
def roles_drop(ctx: click.Context, prefix: str) -> None:
    """Revoke the roles' rights in this database and drop them (missing ones are skipped)."""
    settings = _settings(ctx)
    try:
        role_setup.validate_prefix(prefix)
    except AolError as exc:
        raise click.UsageError(str(exc)) from exc
    result = _run(_with_conn(settings, lambda c: role_setup.drop_roles(c, prefix=prefix)))
    if result.dropped:
        click.echo(f"dropped: {' '.join(result.dropped)}")
    for name, databases in result.kept.items():
        click.echo(
            f"kept {name}: its rights here are revoked, but it still holds rights in "
            f"database(s) {', '.join(databases) or '(unknown)'}; run `aol roles drop "
            f"--prefix {prefix}` there too",
            err=True,
        )
    if not result.dropped and not result.kept:
        click.echo("no such roles: nothing to drop")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration (flags, AOL_* environment, defaults), secrets masked."""
    try:
        view = _settings(ctx).masked()
    except AolError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(view))
        return
    width = max(map(len, view))
    for name, value in view.items():
        click.echo(f"{name.ljust(width)}  {value}")


@cli.command()
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.pass_context
def demo(ctx: click.Context, timeout: float) -> None:
    """Enqueue a few POST_SOCIAL actions (one bad) and run the worker until they are done."""
    from aol.demo import run_demo

    settings = _settings(ctx)
    if ctx.obj.get("log_format") is None:
        logs.configure("console")
    sys.exit(_run(_with_db(settings, lambda db: run_demo(settings, db, timeout=timeout))))


def main() -> None:
    cli(prog_name="aol")


if __name__ == "__main__":  # pragma: no cover
    main()
