"""Least-privilege roles: each role can do its job through the real store functions, and
nothing else; flags change only through the audited function; NOTIFY carries no content.

Roles are cluster-wide, so every test uses its own prefix and drops its roles at the end,
even when it fails. Most tests connect as the superuser and `SET ROLE`; the ones about
`changed_by` and the real worker log in as the role itself (the roles then get a password).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from aol import Client
from aol import roles as role_setup
from aol.db import store
from aol.db.connect import asyncpg_dsn, connect
from aol.db.migrate import downgrade, head_revision, upgrade
from aol.errors import AolError, ConfigError
from aol.model import ActionId, TickOutcome
from aol.settings import Settings
from aol.worker.runner import EXIT_OK, run_worker
from tests.conftest import scratch_database
from tests.factory import insert_action
from tests.waiting import wait_for
from tests.worker import handlers as h

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
SECRET = "s3cr3t-payload-value-do-not-leak"
_prefixes = itertools.count()


def login_url(url: str, user: str, password: str = PASSWORD) -> str:
    """`url` with its user and password replaced (host, port and query kept)."""
    parts = urlsplit(asyncpg_dsn(url))
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


async def force_drop(db_url: str, names: Iterable[str]) -> None:
    """Last resort when `aol roles drop` failed: nothing of a test may outlive it."""
    conn = await connect(db_url)
    try:
        for name in names:
            with contextlib.suppress(asyncpg.PostgresError):
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
                if exists:
                    await conn.execute(f'DROP OWNED BY "{name}"')
                    await conn.execute(f'DROP ROLE "{name}"')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def cleanup_roles(db_url: str, prefix: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        conn = await connect(db_url)
        try:
            await role_setup.drop_roles(conn, prefix=prefix)
        except AolError:
            await force_drop(db_url, role_setup.role_names(prefix).values())
        finally:
            await conn.close()


@pytest.fixture
async def prefix(db_url: str) -> AsyncIterator[str]:
    """A prefix of this test alone; its roles are dropped afterwards, whatever happened."""
    name = f"aol_t{os.getpid()}_{next(_prefixes)}"
    async with cleanup_roles(db_url, name):
        yield name


@pytest.fixture
async def roles(db_url: str, prefix: str) -> dict[str, str]:
    """The three roles, created with LOGIN and a password: {suffix: role name}."""
    conn = await connect(db_url)
    try:
        states = await role_setup.create_roles(
            conn, prefix=prefix, passwords=dict.fromkeys(role_setup.SUFFIXES, PASSWORD)
        )
    finally:
        await conn.close()
    assert [(s.name, s.created, s.can_login) for s in states] == [
        (f"{prefix}_{suffix}", True, True) for suffix in role_setup.SUFFIXES
    ]
    return {s.suffix: s.name for s in states}


@contextlib.asynccontextmanager
async def as_role(db_url: str, role: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection of the (superuser) test login that has done `SET ROLE role`."""
    conn = await connect(db_url)
    try:
        await conn.execute(f'SET ROLE "{role}"')
        assert await conn.fetchval("SELECT current_user") == role
        yield conn
    finally:
        await conn.close()


async def not_refused(conn: asyncpg.Connection[Any], statements: Iterable[str]) -> list[str]:
    """The statements that did NOT fail with insufficient_privilege (each in a transaction
    that is rolled back, so nothing they might do stays)."""
    wrong: list[str] = []
    for sql in statements:
        try:
            async with conn.transaction():
                await conn.execute(sql)
                raise _Allowed
        except asyncpg.InsufficientPrivilegeError:
            continue
        except _Allowed:
            wrong.append(f"{sql}  -> allowed")
        except asyncpg.PostgresError as exc:
            wrong.append(f"{sql}  -> {type(exc).__name__}: {exc}")
    return wrong


class _Allowed(Exception):
    pass


NEW_ACTION = "INSERT INTO aol.actions (idempotency_key, action_type) VALUES ('x', 'T')"
FLAGS_BY_FUNCTION = "SELECT * FROM aol.set_control_flags(true, NULL, NULL, 'why')"
FLAGS_BY_UPDATE = "UPDATE aol.control_flags SET paused = true"


async def test_the_enqueuer_can_enqueue_and_nothing_else(
    db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str]
) -> None:
    async with as_role(db_url, roles["enqueuer"]) as conn:
        first = await store.enqueue_action(
            conn, action_type="POST_SOCIAL", payload={"content": "hi"}, idempotency_key="e1"
        )
        again = await store.enqueue_action(
            conn, action_type="POST_SOCIAL", payload={}, idempotency_key="e1"
        )
        wrong = await not_refused(
            conn,
            [
                "SELECT count(*) FROM aol.actions",
                NEW_ACTION,
                "UPDATE aol.actions SET status = 'cancelled'",
                "DELETE FROM aol.actions",
                "SELECT count(*) FROM aol.execution_logs",
                "SELECT * FROM aol.control_flags",
                "SELECT * FROM aol.lease",
                FLAGS_BY_UPDATE,
                FLAGS_BY_FUNCTION,
            ],
        )
    assert wrong == []
    assert first == again
    assert await pool.fetchval("SELECT count(*) FROM aol.actions") == 1


async def test_the_worker_claims_and_finishes_through_the_store(
    db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str]
) -> None:
    seeded = [await insert_action(pool, action_type="T") for _ in range(4)]
    async with as_role(db_url, roles["worker"]) as conn:
        assert await store.read_schema_revision(conn) == head_revision()
        assert await store.try_advisory_lock(conn)
        epoch = await store.acquire_lease(conn, owner="w", ttl=30)
        assert await store.renew_lease(conn, owner="w", epoch=epoch, ttl=30) is not None
        assert (await store.read_lease(conn)).owner == "w"
        assert await store.lease_lock_holder(conn) is not None
        assert not (await store.read_flags(conn)).paused
        extra = await store.enqueue_action(
            conn, action_type="T", payload={}, idempotency_key="by-worker"
        )

        claimed = (await store.claim(conn, owner="w", epoch=epoch, limit=4, claim_ttl=30)).actions
        assert sorted(a.id for a in claimed) == seeded
        a, b, c, d = claimed
        common: dict[str, Any] = {"epoch": epoch, "attempt": 1, "tick": 1}
        assert await store.finish_action(
            conn,
            action_id=a.id,
            duration_ms=1.0,
            message="done",
            artifact_ref=None,
            artifact_sha256=None,
            **common,
        )
        assert await store.schedule_retry(
            conn, action_id=b.id, duration_ms=1.0, delay=60, error="later", **common
        )
        assert await store.dead_letter_action(
            conn, action_id=c.id, duration_ms=1.0, error="bad", **common
        )
        assert await store.cancel_running_action(
            conn, action_id=d.id, reason="killed", epoch=epoch, attempt=1, tick=1
        )

        expired = await insert_action(
            pool,
            action_type="T",
            status="running",
            attempts=1,
            claim_epoch=epoch,
            sql_claim_expires_at="now() - interval '1 second'",
        )
        assert await store.rescue_expired_claims(conn, epoch=epoch) == [
            (ActionId(expired), "retry")
        ]
        for _ in range(2):  # the second write of the same tick hits ON CONFLICT DO NOTHING
            await store.record_tick(
                conn, owner="w", epoch=epoch, tick=1, duration_ms=2.0, outcome=TickOutcome.OK
            )
        await store.record_event(conn, event="lease_acquired", message="m", epoch=epoch)
        await store.next_wakeup(conn)
        await store.release_lease(conn, owner="w", epoch=epoch)
        assert await store.advisory_unlock(conn)

        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await store.set_flags(conn, paused=True, reason="the worker may not")
        wrong = await not_refused(
            conn,
            [
                FLAGS_BY_UPDATE,
                FLAGS_BY_FUNCTION,
                NEW_ACTION,
                "DELETE FROM aol.actions",
                # what an action is and how often it may run are the enqueuer's and the
                # operator's: the worker writes only an action's state
                "UPDATE aol.actions SET payload = '{}'",
                "UPDATE aol.actions SET action_type = 'X'",
                "UPDATE aol.actions SET idempotency_key = id::text",
                "UPDATE aol.actions SET priority = 9",
                "UPDATE aol.actions SET max_attempts = 1000",
                "DELETE FROM aol.execution_logs",
                "UPDATE aol.execution_logs SET message = 'rewritten'",
                "SELECT message FROM aol.execution_logs",
                "UPDATE aol.tick_ledger SET outcome = 'ok'",
                "TRUNCATE aol.tick_ledger",
            ],
        )
    assert wrong == []
    statuses = dict(await pool.fetch("SELECT id, status FROM aol.actions"))
    assert [statuses[i] for i in (a.id, b.id, c.id, d.id, expired, extra)] == [
        "succeeded",
        "retry",
        "dead",
        "cancelled",
        "retry",
        "pending",
    ]
    assert await pool.fetchval("SELECT count(*) FROM aol.tick_ledger") == 1


async def test_the_operator_reads_everything_and_changes_only_what_it_may(
    db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str]
) -> None:
    dead = await insert_action(pool, status="dead", attempts=3, sql_finished_at="now()")
    async with as_role(db_url, roles["operator"]) as conn:
        assert await store.read_schema_revision(conn) == head_revision()
        await store.read_lease(conn)
        await store.last_tick(conn)
        assert (await store.count_by_status(conn))["dead"] == 1
        assert [r["id"] for r in await store.list_dead(conn)] == [dead]
        assert await store.read_action(conn, action_id=dead) is not None
        await store.list_action_logs(conn, action_id=dead)
        for table in ("actions", "control_flags", "lease", "tick_ledger", "execution_logs"):
            await conn.fetch(f"SELECT * FROM aol.{table}")

        flags = await store.set_flags(conn, paused=True, kill_cancels=True, reason="maintenance")
        assert (flags.paused, flags.kill_cancels, flags.reason) == (True, True, "maintenance")
        moved = await store.retry_dead(conn, ids=[dead], changed_by="op", reason="fixed")
        assert moved == [ActionId(dead)]

        wrong = await not_refused(
            conn,
            [
                FLAGS_BY_UPDATE,
                "DELETE FROM aol.actions",
                "UPDATE aol.actions SET payload = '{}'::jsonb",
                "UPDATE aol.actions SET claim_epoch = 0",
                NEW_ACTION,
                "SELECT aol.enqueue('T', '{}'::jsonb, 'k')",
                "UPDATE aol.lease SET epoch = epoch + 1",
                "DELETE FROM aol.execution_logs",
                "UPDATE aol.execution_logs SET message = 'rewritten'",
                "INSERT INTO aol.tick_ledger (owner, epoch, tick, started_at, duration_ms, "
                "outcome) VALUES ('o', 1, 1, now(), 0, 'ok')",
            ],
        )
    assert wrong == []
    row = await pool.fetchrow("SELECT status, attempts FROM aol.actions WHERE id = $1", dead)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("retry", 3)


async def test_changed_by_is_the_login_not_the_function_owner(
    db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str]
) -> None:
    operator = roles["operator"]
    owner = await pool.fetchval(
        "SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'set_control_flags'"
    )
    assert owner != operator
    conn = await connect(login_url(db_url, operator))
    try:
        flags = await store.set_flags(conn, paused=True, reason="deploy window")
        again = await store.read_flags(conn)
    finally:
        await conn.close()
    assert flags.changed_by == again.changed_by == operator
    assert flags.reason == "deploy window"
    message = await pool.fetchval(
        "SELECT message FROM aol.execution_logs WHERE event = 'flags_changed' "
        "ORDER BY id DESC LIMIT 1"
    )
    assert "paused false -> true" in message
    assert f"by {operator}: deploy window" in message


@pytest.mark.parametrize("reason", ["", "   ", None])
async def test_a_flag_change_without_a_reason_is_refused_and_changes_nothing(
    db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str], reason: str | None
) -> None:
    before = await store.read_flags(pool)
    logged = await pool.fetchval("SELECT count(*) FROM aol.execution_logs")
    async with as_role(db_url, roles["operator"]) as conn:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.fetchrow(
                "SELECT * FROM aol.set_control_flags(true, true, false, $1)", reason
            )
    assert caught.value.sqlstate == "22023"
    assert caught.value.column_name == "reason"
    assert "reason must not be empty" in str(caught.value)
    assert await store.read_flags(pool) == before
    assert await pool.fetchval("SELECT count(*) FROM aol.execution_logs") == logged


async def test_no_notification_carries_action_content(
    db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str]
) -> None:
    listener = await asyncpg.connect(asyncpg_dsn(db_url))
    got: list[str] = []
    await listener.add_listener(store.WAKEUP_CHANNEL, lambda *args: got.append(str(args[3])))
    assert await store.try_advisory_lock(listener, key=store.IDLE_LOCK_KEY)  # a sleeping worker
    try:
        async with as_role(db_url, roles["enqueuer"]) as conn:
            await store.enqueue_action(
                conn,
                action_type="POST_SOCIAL",
                payload={"content": SECRET, "token": SECRET},
                idempotency_key="secret-1",
            )
        dead = await insert_action(
            pool, payload={"content": SECRET}, status="dead", sql_finished_at="now()"
        )
        await insert_action(pool, payload={"content": SECRET})
        async with as_role(db_url, roles["operator"]) as conn:
            await store.retry_dead(conn, ids=[dead], changed_by="op", reason="retry it")
            await store.set_flags(conn, paused=False, reason="resume")

        async def all_arrived() -> bool:
            return len(got) >= 4

        await wait_for(all_arrived, timeout=5.0, what="four notifications")
    finally:
        await listener.close()
    assert all(SECRET not in payload for payload in got), got


async def test_roles_are_nologin_without_a_password_and_create_is_idempotent(
    db_url: str, pool: asyncpg.Pool[Any], prefix: str
) -> None:
    conn = await connect(db_url)
    try:
        first = await role_setup.create_roles(conn, prefix=prefix)
        second = await role_setup.create_roles(conn, prefix=prefix)
        worker_only = await role_setup.create_roles(
            conn, prefix=prefix, passwords={"worker": PASSWORD}
        )
        kept = await role_setup.create_roles(conn, prefix=prefix)
    finally:
        await conn.close()
    assert [(s.created, s.can_login) for s in first] == [(True, False)] * 3
    assert [(s.created, s.can_login) for s in second] == [(False, False)] * 3
    assert [s.can_login for s in worker_only] == [False, True, False]
    assert [s.can_login for s in kept] == [False, True, False]  # a login is never taken away

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="log in"):
        await asyncpg.connect(login_url(db_url, f"{prefix}_enqueuer"))
    worker = await connect(login_url(db_url, f"{prefix}_worker"))
    try:
        assert await worker.fetchval("SELECT session_user") == f"{prefix}_worker"
    finally:
        await worker.close()
    stored = await pool.fetchval(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1", f"{prefix}_worker"
    )
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert PASSWORD not in stored


async def test_create_takes_back_rights_granted_by_hand(
    db_url: str, pool: asyncpg.Pool[Any], prefix: str
) -> None:
    conn = await connect(db_url)
    try:
        await role_setup.create_roles(conn, prefix=prefix)
        await pool.execute(f'GRANT DELETE, INSERT ON aol.actions TO "{prefix}_enqueuer"')
        await role_setup.create_roles(conn, prefix=prefix)
    finally:
        await conn.close()
    async with as_role(db_url, f"{prefix}_enqueuer") as enqueuer:
        assert await not_refused(enqueuer, [NEW_ACTION, "DELETE FROM aol.actions"]) == []


async def test_allow_terminate_lets_the_worker_end_other_backends_but_not_a_superuser(
    db_url: str, roles: dict[str, str], prefix: str
) -> None:
    victim = await connect(login_url(db_url, roles["enqueuer"]))
    superuser = await connect(db_url)
    try:
        victim_pid, superuser_pid = victim.get_server_pid(), superuser.get_server_pid()
        async with as_role(db_url, roles["worker"]) as worker:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await store.terminate_backend(worker, pid=victim_pid, wait_ms=0)

        admin = await connect(db_url)
        try:
            granted = await role_setup.create_roles(admin, prefix=prefix, allow_terminate=True)
            unchanged = await role_setup.create_roles(admin, prefix=prefix)
        finally:
            await admin.close()
        assert [s.can_terminate for s in granted] == [False, True, False]
        assert [s.can_terminate for s in unchanged] == [False, True, False]

        async with as_role(db_url, roles["worker"]) as worker:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"(?i)superuser"):
                await store.terminate_backend(worker, pid=superuser_pid, wait_ms=0)
            assert await store.terminate_backend(worker, pid=victim_pid, wait_ms=5000)
        assert await superuser.fetchval("SELECT 1") == 1  # still alive

        admin = await connect(db_url)
        try:
            revoked = await role_setup.create_roles(admin, prefix=prefix, allow_terminate=False)
        finally:
            await admin.close()
        assert [s.can_terminate for s in revoked] == [False, False, False]
    finally:
        with contextlib.suppress(Exception):
            await victim.close()
        await superuser.close()


async def test_an_existing_role_with_more_power_is_refused(
    db_url: str, pool: asyncpg.Pool[Any], prefix: str
) -> None:
    await pool.execute(f'CREATE ROLE "{prefix}_worker" NOLOGIN CREATEDB')
    conn = await connect(db_url)
    try:
        with pytest.raises(ConfigError, match=f"{prefix}_worker already exists with CREATEDB"):
            await role_setup.create_roles(conn, prefix=prefix)
        states = await role_setup.describe_roles(conn, prefix=prefix)
    finally:
        await conn.close()
    assert [s.exists for s in states] == [False, True, False]  # all or nothing


async def test_drop_revokes_here_and_keeps_roles_another_database_still_uses(
    server_url: str, template_db: str, db_url: str, prefix: str
) -> None:
    names = [f"{prefix}_{s}" for s in role_setup.SUFFIXES]
    async with (
        scratch_database(server_url, "aol_r", template_db) as other_url,
        cleanup_roles(other_url, prefix),
    ):
        for url in (db_url, other_url):
            conn = await connect(url)
            try:
                await role_setup.create_roles(conn, prefix=prefix)
            finally:
                await conn.close()
        conn = await connect(other_url)
        try:
            first = await role_setup.drop_roles(conn, prefix=prefix)
        finally:
            await conn.close()
        assert first == role_setup.DropResult(
            dropped=[], kept={name: (urlsplit(db_url).path.lstrip("/"),) for name in names}
        )
        async with as_role(other_url, f"{prefix}_enqueuer") as enqueuer:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await store.enqueue_action(
                    enqueuer, action_type="T", payload={}, idempotency_key="k"
                )
        async with as_role(db_url, f"{prefix}_enqueuer") as enqueuer:  # untouched here
            await store.enqueue_action(enqueuer, action_type="T", payload={}, idempotency_key="k")

    conn = await connect(db_url)
    try:
        dropped = (await role_setup.drop_roles(conn, prefix=prefix)).dropped
        again = await role_setup.drop_roles(conn, prefix=prefix)
        states = await role_setup.describe_roles(conn, prefix=prefix)
    finally:
        await conn.close()
    assert dropped == names
    assert again == role_setup.DropResult(dropped=[], kept={})
    assert not any(s.exists for s in states)


async def test_the_real_worker_runs_as_the_worker_role(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any], roles: dict[str, str]
) -> None:
    async with Client(login_url(db_url, roles["enqueuer"])) as client:
        action_id = await client.enqueue(h.OK, {"n": 1}, idempotency_key="as-roles")
    worker_url = login_url(db_url, roles["worker"])
    code = await run_worker(settings, worker_url, ticks=1, registry=h.registry())
    assert code == EXIT_OK
    assert (await h.action(pool, action_id))["status"] == "succeeded"
    assert await h.outcomes(pool) == ["ok"]
    assert (await store.read_lease(pool)).epoch == 1


async def aol(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m aol *args`; (exit code, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AOL_")}
    base.pop("DATABASE_URL", None)
    base["PYTHONPATH"] = str(REPO_ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aol",
        "--log-format",
        "json",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
        env={**base, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_creates_roles_and_pause_records_the_operator(
    db_url: str, pool: asyncpg.Pool[Any], prefix: str
) -> None:
    code, out, err = await aol(
        "--database-url",
        db_url,
        "roles",
        "create",
        "--prefix",
        prefix,
        "--password-env",
        "operator=TEST_OPERATOR_PW",
        "--password-env",
        "TEST_SHARED_PW",
        env={"TEST_OPERATOR_PW": PASSWORD, "TEST_SHARED_PW": "other " + PASSWORD},
    )
    assert code == 0, err
    assert f"{prefix}_operator: created, LOGIN" in out
    assert PASSWORD not in out + err

    operator_url = login_url(db_url, f"{prefix}_operator")
    code, out, err = await aol("--database-url", operator_url, "pause", "--reason", "window")
    assert code == 0, err
    flags = await store.read_flags(pool)
    assert (flags.paused, flags.changed_by, flags.reason) == (True, f"{prefix}_operator", "window")

    code, out, err = await aol("--database-url", operator_url, "resume")
    assert code == 0, err
    assert (await store.read_flags(pool)).reason == "no reason given (cli)"

    code, out, err = await aol("--database-url", operator_url, "kill", "--reason", " ")
    assert code == 2
    assert "--reason" in err
    assert "must not be empty" in err

    enqueuer_url = login_url(db_url, f"{prefix}_enqueuer", "other " + PASSWORD)
    code, out, err = await aol("--database-url", enqueuer_url, "pause", "--reason", "no")
    assert code == 1
    assert "permission denied" in err
    assert "Traceback" not in err
    assert not (await store.read_flags(pool)).paused

    code, out, err = await aol("--database-url", db_url, "roles", "drop", "--prefix", prefix)
    assert code == 0, err
    assert out.strip() == f"dropped: {prefix}_enqueuer {prefix}_worker {prefix}_operator"


async def test_roles_create_refuses_a_missing_password_variable(db_url: str) -> None:
    code, _, err = await aol(
        "--database-url", db_url, "roles", "create", "--password-env", "AOL_TEST_NOT_SET_PW"
    )
    assert code == 2
    assert "AOL_TEST_NOT_SET_PW is not set" in err


@pytest.mark.parametrize("prefix", ["", "1aol", "Aol", "a-b", "a" * 55, 'x"; DROP ROLE y; --'])
def test_a_bad_prefix_is_refused_naming_the_rule(prefix: str) -> None:
    with pytest.raises(ConfigError, match="1 to 54 characters of a-z, 0-9 and _"):
        role_setup.validate_prefix(prefix)


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ((), {}),
        (("ALL",), {"enqueuer": "a", "worker": "a", "operator": "a"}),
        (("worker=W",), {"worker": "w"}),
        (("ALL", "worker=W"), {"enqueuer": "a", "worker": "w", "operator": "a"}),
    ],
)
def test_password_env_takes_a_shared_and_per_role_variables(
    specs: tuple[str, ...], expected: dict[str, str]
) -> None:
    assert role_setup.passwords_from_env(specs, {"ALL": "a", "W": "w", "E": ""}) == expected


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        (("boss=W",), "unknown role 'boss'"),
        (("E",), "E is empty"),
        (("NOPE",), "NOPE is not set"),
        (("worker=1X",), "not an environment variable name"),
        (("worker=W", "worker=W"), "for worker twice"),
        (("ALL", "W"), "more than one bare VAR"),
    ],
)
def test_password_env_mistakes_are_named(specs: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        role_setup.passwords_from_env(specs, {"ALL": "a", "W": "w", "E": ""})


@pytest.mark.parametrize(
    "password",
    [
        PASSWORD,
        "p\u00e4ssw\u00f6rd",  # NFKC leaves it as it is
        "non\u00a0breaking",  # SASLprep maps the no-break space to a space
        "\u210cilbert\u00ad",  # NFKC folds the H; the soft hyphen maps to nothing
        "bell\u0007\u00e9",  # a prohibited character: the raw bytes are hashed
    ],
)
async def test_the_scram_verifier_matches_what_postgresql_computes(
    pool: asyncpg.Pool[Any], prefix: str, password: str
) -> None:
    name = f"{prefix}_scram"
    async with pool.acquire() as conn:
        try:
            await conn.execute("SET password_encryption = 'scram-sha-256'")
            # The server hashes a plain password itself; ours must give the same verifier.
            await conn.execute(f'CREATE ROLE "{name}" PASSWORD {quote_literal(password)}')
            stored = await conn.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1", name
            )
        finally:
            await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
            await conn.execute("RESET password_encryption")
    iterations, salt = stored.split("$")[1].split(":")
    ours = role_setup.scram_sha256_verifier(
        password, salt=base64.b64decode(salt), iterations=int(iterations)
    )
    assert ours == stored


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def test_downgrade_to_0002_gives_back_the_old_functions_exactly(
    empty_db_url: str,
) -> None:
    await upgrade(empty_db_url, "0002")
    before = await function_security(empty_db_url)
    await upgrade(empty_db_url)
    after = await function_security(empty_db_url)
    await downgrade(empty_db_url, "0002")
    assert await function_security(empty_db_url) == before

    enqueue, *_ = (row for row in after if row[0].startswith("aol.enqueue("))
    assert enqueue[1:] == (True, ["search_path=pg_catalog, aol, pg_temp"], False)
    flags, *_ = (row for row in after if row[0].startswith("aol.set_control_flags("))
    assert flags[1:] == (True, ["search_path=pg_catalog, aol, pg_temp"], False)
    assert all(row[2] == ["search_path=pg_catalog, aol, pg_temp"] for row in after)
    assert not any(row[3] for row in after)  # PUBLIC may execute none of them
    assert all(not row[1] and row[2] is None and row[3] for row in before)


async def function_security(url: str) -> list[tuple[str, bool, list[str] | None, bool]]:
    """(function, SECURITY DEFINER, its settings, may PUBLIC execute it) for schema aol."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS fn, p.prosecdef, p.proconfig, "
            "       has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute "
            "  FROM pg_proc p WHERE p.pronamespace = 'aol'::regnamespace ORDER BY 1"
        )
    finally:
        await conn.close()
    return [(r["fn"], r["prosecdef"], r["proconfig"], r["public_execute"]) for r in rows]
