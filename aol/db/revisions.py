"""The schema's revision chain, read from the migration files without Alembic.

The worker checks the database's revision at start-up; importing Alembic for that brings
SQLAlchemy with it (about 28 MB of a worker's memory, and a third of a second). Each
migration file names its `revision` and `down_revision` as plain string constants; this
module reads them with `ast` and gives the chain oldest first. Running migrations stays
with Alembic (`aol.db.migrate`); `tests/db/test_migrations.py` checks that both read the
same chain.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from aol.errors import ConfigError, SchemaMismatch

_PACKAGE = Path(__file__).resolve().parent.parent


def migrations_dir() -> Path:
    """`migrations/` beside the package in a source tree, else `aol/_migrations` in a wheel."""
    for candidate in (_PACKAGE.parent / "migrations", _PACKAGE / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError(
        f"cannot find the migrations folder (looked in {_PACKAGE / '_migrations'} and "
        f"{_PACKAGE.parent / 'migrations'}); reinstall aol"
    )


@cache
def chain() -> tuple[str, ...]:
    """Every revision of this aol, oldest first."""
    return read_chain(migrations_dir() / "versions")


def read_chain(versions: Path) -> tuple[str, ...]:
    """The revisions of the migration files in `versions`, oldest first; ConfigError for a
    chain that branches, repeats a revision or leaves one unreachable from base."""
    down_of: dict[str, str | None] = {}
    for path in sorted(versions.glob("*.py")):
        revision, down = _names(path)
        if revision in down_of:
            raise ConfigError(f"revision {revision} is defined twice (again in {path.name})")
        down_of[revision] = down
    up_of: dict[str | None, str] = {}
    for revision, down in down_of.items():
        if down in up_of:
            raise ConfigError(
                f"revisions {up_of[down]} and {revision} both follow {down or 'base'}: "
                "the chain branches"
            )
        up_of[down] = revision
    ordered: list[str] = []
    step: str | None = None
    while step in up_of:
        step = up_of[step]
        ordered.append(step)
    if len(ordered) != len(down_of):
        loose = sorted(set(down_of) - set(ordered))
        raise ConfigError(f"revisions not reachable from base: {', '.join(loose)}")
    if not ordered:
        raise ConfigError("the migrations folder has no revisions")
    return tuple(ordered)


def _names(path: Path) -> tuple[str, str | None]:
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("revision", "down_revision")
        ):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:  # not a constant: refused below
                found[node.targets[0].id] = node
    revision, down = found.get("revision"), found.get("down_revision")
    if not isinstance(revision, str) or not (down is None or isinstance(down, str)):
        raise ConfigError(
            f'{path.name}: expected `revision = "..."` and `down_revision = "..."` (or '
            "None) as plain constants"
        )
    return revision, down


def head_revision() -> str:
    return chain()[-1]


def known_revisions() -> set[str]:
    return set(chain())


def check_revision(current: str | None) -> None:
    """Refuse a database this aol cannot serve, naming both revisions."""
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch(
            "the database has no aol schema; run `aol migrate` first "
            f"(this aol expects revision {head})"
        )
    if current not in known_revisions():
        raise SchemaMismatch(
            f"the database schema is at revision {current}, which this aol (head {head}) "
            "does not know: it was migrated by a newer aol; upgrade aol"
        )
    raise SchemaMismatch(
        f"the database schema is at revision {current} but this aol needs {head}; run `aol migrate`"
    )


def is_downgrade(current: str | None, target: str) -> bool:
    """Whether migrating from `current` to `target` goes down (and may drop data)."""
    known = chain()
    if target == "head" or current is None:
        return False
    if target == "base":
        return True
    if target not in known:
        raise ConfigError(
            f"--revision {target!r} is not a revision of this aol; use head, base or one of "
            f"{', '.join(known)}"
        )
    if current not in known:
        check_revision(current)  # names both revisions and the fix
    return known.index(target) < known.index(current)
