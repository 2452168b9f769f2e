"""Fault scenario 9: bad input, from SQL and from Python.

Every refusal must be a clear error (`aol.EnqueueRejected` from Python, a named SQLSTATE
from SQL), every acceptance must store exactly what was given, and nothing already stored
may change: the table is snapshotted (row count and an md5 over every row) around each
call. At the end a worker runs the accepted actions: an unknown type is dead-lettered with
a message naming it, everything else succeeds.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from aol import EnqueueRejected, enqueue
from tests.faults.harness import run_args
from tests.faults.report import Figures
from tests.process.proc import Procs, until

pytestmark = pytest.mark.faults
Record = Callable[[Figures], None]

SNAPSHOT = (
    "SELECT count(*) AS n, md5(coalesce(string_agg(a::text, '|' ORDER BY a.id), '')) AS md5 "
    "FROM aol.actions a WHERE a.id < $1"
)
EVERYTHING = 2**62

# jsonb renders {"a": "<n x's>"} as n + 9 bytes of text: the limit is 65536 bytes.
AT_LIMIT = 65536 - 9
OVER_LIMIT = AT_LIMIT + 1
ONE_MB = 1024 * 1024

META = [
    "'; DROP TABLE aol.actions; --",
    "$$; SELECT pg_sleep(5); $$",
    "Robert'); DELETE FROM aol.actions WHERE ('1' = '1",
    "$tag$ \\' \\\\ -- /* */ %s %L $1 ;",
]


@dataclass
class Tally:
    refused: int = 0
    accepted: int = 0
    idempotent: int = 0
    cases: list[str] = field(default_factory=list)


async def snapshot(pool: asyncpg.Pool[Any], below: int = EVERYTHING) -> tuple[int, str]:
    row = await pool.fetchrow(SNAPSHOT, below)
    assert row is not None
    return int(row["n"]), str(row["md5"])


def literal(text: str) -> str:
    """An SQL string literal, as a person writing SQL by hand would quote it."""
    return "'" + text.replace("'", "''") + "'"


async def sql_refused(
    pool: asyncpg.Pool[Any],
    tally: Tally,
    case: str,
    sql: str,
    sqlstate: str,
    constraint: str | None,
) -> None:
    before = await snapshot(pool)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await pool.fetchval(sql)
    err = caught.value
    assert (err.sqlstate, getattr(err, "constraint_name", None)) == (sqlstate, constraint), (
        case,
        err.sqlstate,
        str(err),
    )
    assert await snapshot(pool) == before, f"{case}: the table changed"
    tally.refused += 1
    tally.cases.append(f"sql:{case}")


async def py_refused(
    pool: asyncpg.Pool[Any],
    tally: Tally,
    case: str,
    call: Callable[[], Awaitable[object]],
    *,
    field_: str | None = None,
    constraint: str | None = None,
    sqlstate: str | None = None,
) -> EnqueueRejected:
    before = await snapshot(pool)
    with pytest.raises(EnqueueRejected) as caught:
        await call()
    err = caught.value
    assert str(err), case
    if field_ is not None:
        assert err.field == field_, (case, err.field, str(err))
    if constraint is not None:
        assert err.constraint == constraint, (case, err.constraint, str(err))
    if sqlstate is not None:
        assert getattr(err.__cause__, "sqlstate", None) == sqlstate, (case, err.__cause__)
    assert await snapshot(pool) == before, f"{case}: the table changed"
    tally.refused += 1
    tally.cases.append(f"py:{case}")
    return err


async def accepted(
    pool: asyncpg.Pool[Any],
    tally: Tally,
    case: str,
    call: Callable[[], Awaitable[object]],
    *,
    action_type: str,
    payload: dict[str, Any],
    key: str,
) -> int:
    """The call returns a new id; the row holds exactly the input; older rows are unchanged."""
    before_all = await snapshot(pool)
    count = before_all[0]
    action_id = int(str(await call()))
    row = await pool.fetchrow(
        "SELECT action_type, idempotency_key, payload::text AS payload, status "
        "FROM aol.actions WHERE id = $1",
        action_id,
    )
    assert row is not None, case
    assert (row["action_type"], row["idempotency_key"], row["status"]) == (
        action_type,
        key,
        "pending",
    ), case
    assert json.loads(row["payload"]) == payload, case
    assert await snapshot(pool, action_id) == before_all, f"{case}: an older row changed"
    assert (await snapshot(pool))[0] == count + 1, case
    tally.accepted += 1
    tally.cases.append(f"ok:{case}")
    return action_id


async def test_9_bad_input_from_sql_and_python_is_refused_clearly_or_stored_verbatim(
    procs: Procs, faults_pool: asyncpg.Pool[Any], record: Record
) -> None:
    pool = faults_pool
    tally = Tally()
    # Something already stored, which nothing below may change.
    for i in range(5):
        await enqueue(pool, "RECORD", {"ms": 0, "i": i}, idempotency_key=f"existing-{i}")
    await pool.execute("UPDATE aol.actions SET not_before = now() + interval '1 hour'")

    # --- non-object payloads ----------------------------------------------------------
    for text in ("[1]", '"text"', "42", "null"):
        await sql_refused(
            pool,
            tally,
            f"payload {text}",
            f"SELECT aol.enqueue('RECORD', {literal(text)}, 'k-nonobject')",
            "22023",
            "actions_payload_is_object",
        )
    await sql_refused(
        pool,
        tally,
        "payload SQL NULL",
        "SELECT aol.enqueue('RECORD', NULL, 'k-null')",
        "22023",
        "actions_payload_is_object",
    )
    await sql_refused(
        pool,
        tally,
        "INSERT payload [1]",
        "INSERT INTO aol.actions (idempotency_key, action_type, payload) "
        "VALUES ('k-insert', 'RECORD', '[1]')",
        "23514",
        "actions_payload_is_object",
    )
    for value in ([1], "text", 42, None):
        await py_refused(
            pool,
            tally,
            f"payload {value!r}",
            lambda v=value: enqueue(pool, "RECORD", v, idempotency_key="k-nonobject"),  # type: ignore[misc]
            field_="payload",
            constraint="actions_payload_is_object",
        )
    await py_refused(
        pool,
        tally,
        "payload with a set",
        lambda: enqueue(pool, "RECORD", {"a": {1}}, idempotency_key="k-set"),
        field_="payload",
    )
    await py_refused(
        pool,
        tally,
        "payload with NaN",
        lambda: enqueue(pool, "RECORD", {"a": float("nan")}, idempotency_key="k-nan"),
        sqlstate="22P02",
    )
    await sql_refused(
        pool,
        tally,
        "malformed JSON",
        "SELECT aol.enqueue('RECORD', '{nope', 'k-json')",
        "22P02",
        None,
    )

    # --- sizes: 8 KB+ and exactly 64 KiB accepted; 64 KiB + 1 and 1 MB refused -----------
    ids: dict[str, int] = {}
    for size in (9000, AT_LIMIT):
        payload = {"a": "x" * size}
        key = f"sql-size-{size}"
        ids[key] = await accepted(
            pool,
            tally,
            f"sql payload of {size + 9} bytes",
            lambda p=payload, k=key: pool.fetchval(  # type: ignore[misc]
                f"SELECT aol.enqueue('RECORD', {literal(json.dumps(p))}, {literal(k)})"
            ),
            action_type="RECORD",
            payload=payload,
            key=key,
        )
        key = f"py-size-{size}"
        ids[key] = await accepted(
            pool,
            tally,
            f"python payload of {size + 9} bytes",
            lambda p=payload, k=key: enqueue(pool, "RECORD", p, idempotency_key=k),  # type: ignore[misc]
            action_type="RECORD",
            payload=payload,
            key=key,
        )
    for size in (OVER_LIMIT, ONE_MB):
        await sql_refused(
            pool,
            tally,
            f"payload of {size + 9} bytes",
            f"SELECT aol.enqueue('RECORD', jsonb_build_object('a', repeat('x', {size})), 'k-big')",
            "22023",
            "actions_payload_too_large",
        )
        await py_refused(
            pool,
            tally,
            f"payload of {size + 9} bytes",
            lambda s=size: enqueue(pool, "RECORD", {"a": "x" * s}, idempotency_key="k-big"),  # type: ignore[misc]
            field_="payload",
            constraint="actions_payload_too_large",
        )
    await sql_refused(
        pool,
        tally,
        "INSERT payload of 1 MB",
        "INSERT INTO aol.actions (idempotency_key, action_type, payload) "
        f"VALUES ('k-big', 'RECORD', jsonb_build_object('a', repeat('x', {ONE_MB})))",
        "23514",
        "actions_payload_too_large",
    )

    # --- unknown action type: accepted now, dead-lettered by the worker ----------------
    ids["sql-unknown"] = await accepted(
        pool,
        tally,
        "sql unknown type",
        lambda: pool.fetchval("SELECT aol.enqueue('NO_SUCH_TYPE', '{}', 'sql-unknown')"),
        action_type="NO_SUCH_TYPE",
        payload={},
        key="sql-unknown",
    )
    ids["py-unknown"] = await accepted(
        pool,
        tally,
        "python unknown type",
        lambda: enqueue(pool, "NO_SUCH_TYPE_EITHER", {"x": 1}, idempotency_key="py-unknown"),
        action_type="NO_SUCH_TYPE_EITHER",
        payload={"x": 1},
        key="py-unknown",
    )

    # --- NUL bytes and invalid UTF-8 ---------------------------------------------------
    await sql_refused(
        pool,
        tally,
        "\\u0000 in JSON",
        "SELECT aol.enqueue('RECORD', '{\"a\": \"x\\u0000y\"}', 'k-nul')",
        "22P05",
        None,
    )
    for column, args in (
        ("action_type", "convert_from('\\x5200'::bytea, 'UTF8'), '{}', 'k-nul'"),
        ("idempotency_key", "'RECORD', '{}', convert_from('\\x6b00'::bytea, 'UTF8')"),
    ):
        await sql_refused(
            pool, tally, f"NUL byte in {column}", f"SELECT aol.enqueue({args})", "22021", None
        )
    for column, args in (
        ("action_type", "convert_from('\\xff'::bytea, 'UTF8'), '{}', 'k-utf8'"),
        ("idempotency_key", "'RECORD', '{}', convert_from('\\x6bc3'::bytea, 'UTF8')"),
        (
            "payload",
            "'RECORD', jsonb_build_object('a', convert_from('\\xe282'::bytea, 'UTF8')), 'k-utf8'",
        ),
    ):
        await sql_refused(
            pool, tally, f"invalid UTF-8 in {column}", f"SELECT aol.enqueue({args})", "22021", None
        )
    await py_refused(
        pool,
        tally,
        "NUL in payload",
        lambda: enqueue(pool, "RECORD", {"a": "x\x00y"}, idempotency_key="k-nul"),
        sqlstate="22P05",
    )
    await py_refused(
        pool,
        tally,
        "NUL in idempotency_key",
        lambda: enqueue(pool, "RECORD", {}, idempotency_key="k\x00nul"),
        sqlstate="22021",
    )
    await py_refused(
        pool,
        tally,
        "NUL in action_type",
        lambda: enqueue(pool, "REC\x00ORD", {}, idempotency_key="k-nul"),
        sqlstate="22021",
    )

    # --- SQL metacharacters in every text field: stored verbatim -----------------------
    for n, meta in enumerate(META):
        meta_payload: dict[str, Any] = {"ms": 0, "note": meta, meta: meta}
        key = f"sql-meta-{n}-{meta}"
        ids[key] = await accepted(
            pool,
            tally,
            f"sql metacharacters {n} in key and payload",
            lambda p=meta_payload, k=key: pool.fetchval(  # type: ignore[misc]
                f"SELECT aol.enqueue('RECORD', {literal(json.dumps(p))}, {literal(k)})"
            ),
            action_type="RECORD",
            payload=meta_payload,
            key=key,
        )
        key = f"sql-meta-type-{n}"
        ids[key] = await accepted(
            pool,
            tally,
            f"sql metacharacters {n} in action_type",
            lambda m=meta, k=key: pool.fetchval(  # type: ignore[misc]
                f"SELECT aol.enqueue({literal(m)}, '{{}}', {literal(k)})"
            ),
            action_type=meta,
            payload={},
            key=key,
        )
        key = f"py-meta-{n}-{meta}"
        ids[key] = await accepted(
            pool,
            tally,
            f"python metacharacters {n} in key and payload",
            lambda p=meta_payload, k=key: enqueue(pool, "RECORD", p, idempotency_key=k),  # type: ignore[misc]
            action_type="RECORD",
            payload=meta_payload,
            key=key,
        )
        key = f"py-meta-type-{n}"
        ids[key] = await accepted(
            pool,
            tally,
            f"python metacharacters {n} in action_type",
            lambda m=meta, k=key: enqueue(pool, m, {}, idempotency_key=k),  # type: ignore[misc]
            action_type=meta,
            payload={},
            key=key,
        )
    meta = META[0]
    cli_payload: dict[str, Any] = {"ms": 0, "note": meta, meta: meta}
    cli_key = f"cli-meta-{meta}"

    async def cli_enqueue() -> int:
        done = await procs.run(
            "enqueue", "RECORD", "--payload", json.dumps(cli_payload), "--key", cli_key
        )
        assert done.returncode == 0, done.describe()
        return int(done.stdout().strip())

    ids[cli_key] = await accepted(
        pool,
        tally,
        "aol enqueue (CLI) metacharacters",
        cli_enqueue,
        action_type="RECORD",
        payload=cli_payload,
        key=cli_key,
    )

    # --- one idempotency key, 32 concurrent enqueuers ----------------------------------
    async def storm(label: str, one: Callable[[int], Awaitable[object]]) -> list[object]:
        gate = asyncio.Barrier(32)

        async def enqueuer(i: int) -> object:
            await gate.wait()
            try:
                return await one(i)
            except asyncpg.PostgresError as exc:
                return exc.sqlstate

        before = await snapshot(pool)
        outcomes = await asyncio.gather(*(enqueuer(i) for i in range(32)))
        after = await snapshot(pool)
        assert after[0] == before[0] + 1, label
        return outcomes

    async def sql_rc(i: int) -> object:
        async with pool.acquire() as conn, conn.transaction():
            return await conn.fetchval(
                "SELECT aol.enqueue('RECORD', $1::jsonb, 'dup-sql')", json.dumps({"i": i})
            )

    async def py_one(i: int) -> object:
        return await enqueue(pool, "RECORD", {"i": i}, idempotency_key="dup-py")

    async def sql_rr(i: int) -> object:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            await conn.fetchval("SELECT 1")  # the snapshot is taken before the race
            await asyncio.sleep(0.05)
            return await conn.fetchval(
                "SELECT aol.enqueue('RECORD', $1::jsonb, 'dup-rr')", json.dumps({"i": i})
            )

    dup_rows = 0
    serialization_failures = 0
    for label, one, key in (
        ("sql read committed", sql_rc, "dup-sql"),
        ("python", py_one, "dup-py"),
        ("sql repeatable read", sql_rr, "dup-rr"),
    ):
        outcomes = await storm(label, one)
        [stored] = await pool.fetch(
            "SELECT id, payload::text AS payload FROM aol.actions WHERE idempotency_key = $1", key
        )
        if label == "sql repeatable read":
            # Under REPEATABLE READ a loser cannot see the winner's row: a named SQLSTATE,
            # 40001 (serialization_failure), tells it to retry its transaction.
            assert set(outcomes) <= {stored["id"], "40001"}, outcomes
            assert stored["id"] in outcomes, outcomes
            serialization_failures = outcomes.count("40001")
        else:
            assert set(outcomes) == {stored["id"]}, outcomes  # every caller: the same id
        assert json.loads(stored["payload"]) in [{"i": i} for i in range(32)]
        # Enqueuing the key again with another payload returns the id and changes nothing.
        before = await snapshot(pool)
        again = await enqueue(pool, "RECORD", {"other": True}, idempotency_key=key)
        assert again == stored["id"]
        assert await snapshot(pool) == before
        dup_rows += int(
            await pool.fetchval("SELECT count(*) FROM aol.actions WHERE idempotency_key = $1", key)
        )
        ids[key] = int(stored["id"])
        tally.idempotent += 32
        tally.cases.append(f"dup:{label}")

    # --- the worker runs what was accepted ---------------------------------------------
    existing = await snapshot(pool, min(ids.values()))
    worker = await procs.start(*run_args(standby=False), name="worker")

    async def finals() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT id, action_type, status, attempts, last_error FROM aol.actions "
            "WHERE id = ANY($1) ORDER BY id",
            list(ids.values()),
        )
        return list(rows) if all(r["status"] in ("succeeded", "dead") for r in rows) else None

    rows = await until(finals, what="the accepted actions to finish", alive=[worker], timeout=30)
    worker.send(signal.SIGTERM)
    assert await worker.wait(10) == 0, worker.describe()
    unexpected: list[dict[str, Any]] = []
    for r in rows:
        if r["action_type"] == "RECORD":
            ok = (r["status"], r["attempts"]) == ("succeeded", 1)
        else:  # no handler: dead at once, with a message naming the type
            ok = (
                (r["status"], r["attempts"]) == ("dead", 1)
                and "unknown action type" in (r["last_error"] or "")
                and repr(r["action_type"]) in (r["last_error"] or "")
            )
        if not ok:
            unexpected.append(dict(r))
    assert await snapshot(pool, min(ids.values())) == existing, "the older rows changed"

    record(
        Figures(
            scenario="9 bad input from SQL and Python",
            time_to_recover_s=None,
            lost=len(unexpected),
            overlaps=0,
            duplicate_effects=dup_rows - 3,
            details={
                "refused": tally.refused,
                "accepted": tally.accepted,
                "idempotent_calls": tally.idempotent,
                "cases": len(tally.cases),
                "repeatable_read_40001": serialization_failures,
            },
        )
    )
    assert unexpected == []
    assert dup_rows == 3


@pytest.mark.parametrize("where", ["payload", "idempotency_key", "action_type"])
async def test_9b_python_text_that_is_not_valid_utf8_is_refused_with_enqueue_rejected(
    where: str, faults_pool: asyncpg.Pool[Any]
) -> None:
    pool = faults_pool
    bad = "x\ud800y"  # a lone surrogate: no UTF-8 encoding exists
    before = await snapshot(pool)
    action_type = bad if where == "action_type" else "RECORD"
    payload = {"a": bad} if where == "payload" else {}
    key = bad if where == "idempotency_key" else "k-surrogate"
    try:
        with pytest.raises(EnqueueRejected):
            await enqueue(pool, action_type, payload, idempotency_key=key)
    finally:
        assert await snapshot(pool) == before
