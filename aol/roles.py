"""Least-privilege database roles: `aol roles create` and `aol roles drop`.

Three roles per prefix (default `aol`), NOLOGIN unless given a password, with these rights
in the current database (the statements are the `roles_create` block of db/queries.sql):

* all three: CONNECT on the database (unless they have it already) and USAGE on schema aol.
* `<prefix>_enqueuer`: EXECUTE on `aol.enqueue(...)` and nothing on any table:
  `aol.enqueue` is SECURITY DEFINER (migration 0003), so it inserts on the caller's behalf.
* `<prefix>_worker`: what `aol run` needs. Read and update `actions` and `lease`; read
  `control_flags`; insert into `execution_logs` and `tick_ledger` (and read the columns
  their RETURNING and ON CONFLICT clauses name); execute `aol.enqueue`; read
  `public.aol_alembic_version` (the revision check at start). Advisory locks and LISTEN
  need no grant. Taking over from a frozen holder calls `pg_terminate_backend`, which needs
  membership in `pg_signal_backend` (`--allow-terminate`) and never works against a
  superuser's backend.
* `<prefix>_operator`: read every aol table and the revision table; execute
  `aol.set_control_flags(...)` (flags change only through it: no update right on
  `control_flags`); update only the columns of `actions` that `dlq retry` writes (status,
  not_before, finished_at, updated_at, max_attempts); insert into `execution_logs`.

Passwords come from environment variables, never the command line, and are sent to the
server only as SCRAM-SHA-256 verifiers computed here, as `psql \\password` does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from aol.db import store
from aol.db.revisions import check_revision
from aol.errors import ConfigError, PermissionDenied

SUFFIXES = ("enqueuer", "worker", "operator")
DEFAULT_PREFIX = "aol"
# Role names are at most 63 bytes and "_enqueuer" is the longest suffix.
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,53}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
SCRAM_SALT_BYTES = 16


@dataclass(frozen=True, slots=True)
class RoleState:
    """One role as it is after `create_roles`."""

    suffix: str
    name: str
    exists: bool
    can_login: bool
    can_terminate: bool
    created: bool = False
    elsewhere: tuple[str, ...] = ()  # other databases where it holds rights


@dataclass(frozen=True, slots=True)
class DropResult:
    """What `drop_roles` did: roles dropped, and roles kept because another database still
    grants them rights (name -> those databases); their rights here are gone either way."""

    dropped: list[str]
    kept: dict[str, tuple[str, ...]]


def validate_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ConfigError(
            f"--prefix {prefix!r} is not valid: expected 1 to 54 characters of a-z, 0-9 and _, "
            "not starting with a digit (the roles are <prefix>_enqueuer, _worker, _operator)"
        )
    return prefix


def role_names(prefix: str) -> dict[str, str]:
    """{suffix: role name} for a prefix."""
    validate_prefix(prefix)
    return {suffix: f"{prefix}_{suffix}" for suffix in SUFFIXES}


def passwords_from_env(specs: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """{suffix: password} from `--password-env` values.

    `VAR` gives every role the password held in $VAR; `ROLE=VAR` (ROLE one of enqueuer,
    worker, operator) gives that role its own, and wins over a bare `VAR`.
    """
    shared: str | None = None
    own: dict[str, str] = {}
    for spec in specs:
        role, sep, var = spec.partition("=")
        if not sep:
            role, var = "", spec
        if role and role not in SUFFIXES:
            raise ConfigError(
                f"--password-env {spec!r}: unknown role {role!r}; expected VAR or ROLE=VAR "
                f"with ROLE one of {', '.join(SUFFIXES)}"
            )
        if not _ENV_NAME.match(var):
            raise ConfigError(
                f"--password-env {spec!r}: {var!r} is not an environment variable name"
            )
        value = env.get(var)
        if not value:
            raise ConfigError(
                f"--password-env {spec!r}: environment variable {var} is "
                f"{'empty' if value == '' else 'not set'}; it must hold the password"
            )
        if role:
            if role in own:
                raise ConfigError(f"--password-env names a password for {role} twice")
            own[role] = value
        elif shared is not None:
            raise ConfigError("--password-env gives more than one bare VAR; use ROLE=VAR")
        else:
            shared = value
    passwords: dict[str, str] = {}
    for suffix in SUFFIXES:
        password = own.get(suffix, shared)
        if password:
            passwords[suffix] = password
    return passwords


def saslprep(password: str) -> bytes:
    """The bytes PostgreSQL hashes for `password`: SASLprep (RFC 4013), or the raw UTF-8
    where SASLprep refuses the string, as PostgreSQL's own pg_saslprep does."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if not prepared or any(test(ch) for ch in prepared for test in prohibited):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in prepared) and (
        any(stringprep.in_table_d2(ch) for ch in prepared)
        or not stringprep.in_table_d1(prepared[0])
        or not stringprep.in_table_d1(prepared[-1])
    ):
        return raw
    return prepared.encode("utf-8")


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677)."""
    if not password:
        raise ConfigError("a role password must not be empty")
    salt = secrets.token_bytes(SCRAM_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def describe_roles(db: store.Executor, *, prefix: str) -> list[RoleState]:
    validate_prefix(prefix)
    return [
        RoleState(
            suffix=r["suffix"],
            name=r["role"],
            exists=r["exists"],
            can_login=r["can_login"],
            can_terminate=r["can_terminate"],
            elsewhere=tuple(r["elsewhere"]),
        )
        for r in await store.describe_roles(db, prefix=prefix)
    ]


async def create_roles(
    conn: asyncpg.Connection[Any],
    *,
    prefix: str = DEFAULT_PREFIX,
    passwords: Mapping[str, str] | None = None,
    allow_terminate: bool | None = None,
) -> list[RoleState]:
    """Create the three roles where missing and set their rights in this database.

    Idempotent: a second run changes nothing, except a password given again (set anew).
    A role without a password stays NOLOGIN when new and keeps its login when it exists.
    `allow_terminate` True grants the worker pg_signal_backend, False revokes it, None
    leaves it as it is. All or nothing: one transaction.
    """
    validate_prefix(prefix)
    unknown = set(passwords or {}) - set(SUFFIXES)
    if unknown:
        raise ConfigError(f"passwords for unknown role(s): {', '.join(sorted(unknown))}")
    verifiers = {s: scram_sha256_verifier(p) for s, p in (passwords or {}).items()}
    terminate = "" if allow_terminate is None else "grant" if allow_terminate else "revoke"
    check_revision(await store.read_schema_revision(conn))
    before = {r.suffix: r.exists for r in await describe_roles(conn, prefix=prefix)}
    try:
        async with conn.transaction():
            await store.set_role_parameters(
                conn, prefix=prefix, verifiers=verifiers, terminate=terminate
            )
            await store.create_roles(conn)
    except asyncpg.InsufficientPrivilegeError as exc:
        needs = "CREATEROLE and ownership of schema aol (run it as the role that ran `aol migrate`)"
        if allow_terminate is not None:
            needs += (
                "; --allow-terminate/--no-allow-terminate also need ADMIN OPTION on "
                "pg_signal_backend (a superuser has it)"
            )
        raise PermissionDenied(f"aol roles create needs {needs}: {exc}") from exc
    except asyncpg.DuplicateObjectError as exc:
        raise ConfigError(f"{exc}; {exc.hint or 'choose another --prefix'}") from exc
    return [
        RoleState(
            suffix=r.suffix,
            name=r.name,
            exists=r.exists,
            can_login=r.can_login,
            can_terminate=r.can_terminate,
            created=r.exists and not before[r.suffix],
            elsewhere=r.elsewhere,
        )
        for r in await describe_roles(conn, prefix=prefix)
    ]


async def drop_roles(conn: asyncpg.Connection[Any], *, prefix: str = DEFAULT_PREFIX) -> DropResult:
    """Revoke the roles' rights in this database and drop them; missing ones are skipped.

    A role that still holds rights in another database (created there too) is kept, and
    named with those databases in the result: run the drop there as well. Idempotent.
    """
    validate_prefix(prefix)
    existing = [r.name for r in await describe_roles(conn, prefix=prefix) if r.exists]
    try:
        async with conn.transaction():
            await store.set_role_parameters(conn, prefix=prefix, verifiers={}, terminate="")
            await store.drop_roles(conn)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(
            "aol roles drop needs CREATEROLE and ownership of schema aol (run it as the role "
            f"that ran `aol migrate`; revoking pg_signal_backend needs its ADMIN OPTION): {exc}"
        ) from exc
    after = {r.name: r for r in await describe_roles(conn, prefix=prefix)}
    return DropResult(
        dropped=[name for name in existing if not after[name].exists],
        kept={name: after[name].elsewhere for name in existing if after[name].exists},
    )
