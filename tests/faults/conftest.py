"""Fixtures of the fault suite: its own PostgreSQL cluster, a migrated database per test,
the `aol run` processes of a test, and the results file.

The cluster is never the suite-wide server of `tests/conftest.py` (nor
`AOL_TEST_DATABASE_URL`): the scenarios stop, crash and restart it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol.db import embedded
from aol.db.connect import asyncpg_dsn
from tests.faults.cluster import FaultCluster
from tests.faults.handlers import JOURNAL_ENV
from tests.faults.harness import Fleet
from tests.faults.report import (
    RECORDED,
    WRITTEN_TO,
    Figures,
    report_path,
    table,
    write_figures,
)
from tests.process.proc import Procs


@pytest.fixture(scope="session")
def fault_cluster() -> Iterator[FaultCluster]:
    """A throwaway cluster for the whole session; stopped (immediate) and deleted at the end."""
    if not embedded.is_available():
        pytest.skip("the fault suite needs the embedded PostgreSQL: pip install 'aol[embedded]'")
    cluster = FaultCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def faults_db(fault_cluster: FaultCluster) -> AsyncIterator[str]:
    """A new database on the fault cluster, migrated with `aol.db.migrate.upgrade`."""
    await asyncio.to_thread(fault_cluster.start)  # up again if an earlier test left it down
    async with fault_cluster.database() as url:
        yield url


@pytest.fixture
async def faults_pool(faults_db: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    # min_size=0: after a server restart the pool reconnects on demand, silently.
    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
        asyncpg_dsn(faults_db), min_size=0, max_size=40
    )
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "journal"
    folder.mkdir()
    return folder


@pytest.fixture
async def procs(faults_db: str, tmp_path: Path, journal_dir: Path) -> AsyncIterator[Procs]:
    """Starts `python -m aol` processes for one test; kills the leftovers at the end."""
    p = Procs(faults_db, tmp_path, env={JOURNAL_ENV: str(journal_dir)})
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def make_fleet(procs: Procs) -> AsyncIterator[Callable[..., Fleet]]:
    """`make_fleet(size=2, restart=True, ...)`: a supervised group of workers. At teardown
    every fleet stops restarting before `procs` kills what is left."""
    made: list[Fleet] = []

    def make(**options: Any) -> Fleet:
        fleet = Fleet(procs, **options)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            fleet.halt()


@pytest.fixture(scope="session")
def faults_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`$AOL_FAULTS_REPORT`, else `<pytest basetemp>/faults.jsonl`."""
    return report_path(tmp_path_factory.getbasetemp() / "faults.jsonl")


@pytest.fixture
def record(faults_report: Path) -> Callable[[Figures], None]:
    """Append a scenario's figures to the results file and print its summary line."""

    def write(figures: Figures) -> None:
        write_figures(figures, faults_report)

    return write


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECORDED:
        return
    terminalreporter.section("fault-injection figures")
    terminalreporter.write_line(table(RECORDED))
    for figures in RECORDED:
        terminalreporter.write_line(figures.summary())
    for path in sorted(WRITTEN_TO):
        terminalreporter.write_line(f"figures appended to {path}")
