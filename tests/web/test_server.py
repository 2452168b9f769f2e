"""`aol dashboard` as a real process: refused beyond loopback without a token, before it
touches the database; served by uvicorn otherwise, and stopped cleanly by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from tests.web.page import TOKEN, attr_text, db_counts
from tests.web.seed import Seeded


def env_for(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AOL_") and k not in ("DATABASE_URL",)
    }
    env.update(AOL_DATABASE_URL=db_url, AOL_DATA_DIR=str(data_dir), **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_public_address_without_a_token_stops_start_up_naming_the_setting(
    tmp_path: Path,
) -> None:
    # The database URL points nowhere: the refusal must come before any connection.
    env = env_for("postgresql://nobody@127.0.0.1:1/none", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "aol", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "AOL_DASHBOARD_TOKEN" in done.stderr
    assert "0.0.0.0" in done.stderr
    assert "cannot connect" not in done.stderr


def test_a_short_token_is_refused_with_its_length(tmp_path: Path) -> None:
    env = env_for("postgresql://nobody@127.0.0.1:1/none", tmp_path, AOL_DASHBOARD_TOKEN="short")
    done = subprocess.run(
        [sys.executable, "-m", "aol", "dashboard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "AOL_DASHBOARD_TOKEN" in done.stderr
    assert "at least 16" in done.stderr


async def fetch(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), answer.read().decode()

    return await asyncio.to_thread(get)


async def test_aol_dashboard_serves_the_database_and_stops_on_sigterm(
    db_url: str, pool: asyncpg.Pool[Any], seeded: Seeded, tmp_path: Path
) -> None:
    port = free_port()
    token_file = tmp_path / "dashboard_token"
    token_file.write_text(TOKEN + "\n")
    env = env_for(
        db_url, tmp_path / "data", AOL_DASHBOARD_TOKEN_FILE=str(token_file), AOL_LOG_FORMAT="json"
    )
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aol", "dashboard", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = await fetch(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
                assert time.monotonic() < deadline, "the dashboard did not start in 20 s"
                await asyncio.sleep(0.1)
        assert status == 200
        status, page = await fetch(f"http://127.0.0.1:{port}/")
        assert status == 200
        counts = await db_counts(pool)
        assert int(attr_text(page, 'data-count="dead"')) == counts["dead"]
        assert "Log in" in page  # the token from the file turned controls on

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, (tmp_path / "dashboard.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "dashboard.log").read_text()
    assert '"event": "dashboard_listening"' in output
    assert TOKEN not in output
