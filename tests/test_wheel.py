"""The built wheel carries its migrations: install it apart from the source tree and migrate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]


async def test_the_wheel_migrates_a_database_from_its_own_files(
    tmp_path: Path, empty_db_url: str
) -> None:
    dist, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(dist.glob("aol-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # PYTHONPATH puts the installed copy ahead of the editable source checkout.
    env = {**os.environ, "PYTHONPATH": str(target), "AOL_DATABASE_URL": empty_db_url}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import aol, aol.db.migrate as m; print(aol.__file__); print(m.migrations_dir())",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    package_file, migrations = probe.stdout.split()
    assert package_file.startswith(str(target))
    assert migrations == str(target / "aol" / "_migrations")
    done = subprocess.run(
        [sys.executable, "-m", "aol", "migrate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('aol.actions')::text") == "aol.actions"
    finally:
        await conn.close()


async def test_the_installed_wheel_runs_the_worker_and_exits_0_on_sigterm(
    tmp_path: Path, db_url: str
) -> None:
    """The environment the image builds: the wheel alone, the `aol` entrypoint, a real
    database; two ticks, then SIGTERM and exit 0."""
    dist, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(next(dist.glob("aol-*.whl"))),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "AOL_DATABASE_URL": db_url,
        "AOL_DATA_DIR": str(tmp_path / "data"),
        "AOL_SCAN_INTERVAL": "0.2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "aol", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    conn: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM aol.tick_ledger") < 2:
            assert worker.poll() is None, worker.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "the worker did not tick twice within 30 s"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output.decode()[-2000:]
        assert b'"event": "worker_stopped"' in output
        released = await conn.fetchval("SELECT released_at IS NOT NULL FROM aol.lease")
        assert released
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        await conn.close()
