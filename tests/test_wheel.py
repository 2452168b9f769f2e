"""The built wheel carries its migrations: install it apart from the source tree and migrate."""

from __future__ import annotations

import os
import subprocess
import sys
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
