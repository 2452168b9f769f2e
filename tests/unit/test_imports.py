"""What importing aol costs a worker or a process that only runs handlers: no SQLAlchemy,
no Alembic, no web stack.

The child process of every isolated handler imports aol and the handler's module, and its
start-up counts against the action timeout; SQLAlchemy alone took a third of a second."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "starlette", "uvicorn", "jinja2")


def imported_after(*modules: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    heavy: list[str] = json.loads(done.stdout)
    return heavy


def test_an_isolated_handlers_process_imports_nothing_heavy() -> None:
    assert imported_after("aol", "aol.worker.isolated") == []


def test_the_client_imports_nothing_heavy() -> None:
    assert imported_after("aol.client") == []


def test_the_worker_and_the_cli_import_no_migration_machinery() -> None:
    """`aol run` checks the schema revision without Alembic (aol.db.revisions)."""
    assert imported_after("aol.cli", "aol.worker.runner") == []
