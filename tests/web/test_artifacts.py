"""Artifacts open in the browser with their SHA-256 recomputed; a changed file shows a
mismatch; a reference outside the artifacts folder is refused, whatever it looks like."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.web.page import attr_text, attr_value
from tests.web.seed import Seeded, log_row

SECRET = "top secret outside the artifacts folder"


async def test_an_artifact_opens_with_its_sha256_verified(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    answer = await client.get(f"/artifacts/{seeded.artifact_log_id}")

    assert answer.status_code == 200
    assert attr_value(answer.text, "data-verdict") == "match"
    assert attr_text(answer.text, "data-recorded-sha") == seeded.artifact_sha256
    assert attr_text(answer.text, "data-actual-sha") == seeded.artifact_sha256
    assert "Release 1.4 is out" in attr_text(answer.text, "data-content")

    raw = await client.get(f"/artifacts/{seeded.artifact_log_id}/raw")
    assert raw.status_code == 200
    assert hashlib.sha256(raw.content).hexdigest() == seeded.artifact_sha256
    assert raw.headers["content-type"].startswith("text/plain")


async def test_a_changed_artifact_shows_a_mismatch_and_both_digests(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    seeded.artifact_path.write_bytes(b'{"content": "edited after the fact"}\n')
    actual = hashlib.sha256(seeded.artifact_path.read_bytes()).hexdigest()

    answer = await client.get(f"/artifacts/{seeded.artifact_log_id}")

    assert answer.status_code == 200
    assert attr_value(answer.text, "data-verdict") == "mismatch"
    assert "SHA-256 MISMATCH" in answer.text
    assert attr_text(answer.text, "data-recorded-sha") == seeded.artifact_sha256
    assert attr_text(answer.text, "data-actual-sha") == actual
    assert "differs from the one recorded" in attr_text(answer.text, "data-problem")


async def test_a_deleted_artifact_is_reported_missing(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    seeded.artifact_path.unlink()
    answer = await client.get(f"/artifacts/{seeded.artifact_log_id}")
    assert answer.status_code == 404
    assert attr_value(answer.text, "data-verdict") == "missing"


def refs_outside(data_dir: Path, tmp_path: Path) -> list[str]:
    """References that point outside <data>/artifacts: absolute, climbing, via a symlink."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    inside = data_dir / "artifacts" / "2026" / "01" / "01"
    inside.mkdir(parents=True, exist_ok=True)
    link = inside / "innocent.json"
    os.symlink(secret, link)
    return [
        str(secret),
        "/etc/passwd",
        str(data_dir / "artifacts" / ".." / ".." / "secret.txt"),
        "artifacts/../../secret.txt",
        "../secret.txt",
        str(link),
        str(data_dir / "artifacts"),
    ]


async def test_references_outside_the_artifacts_folder_are_refused(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool[Any],
    seeded: Seeded,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    for ref in refs_outside(data_dir, tmp_path):
        log_id = await log_row(
            pool,
            action_id=seeded.first("succeeded"),
            level="info",
            event="action_succeeded",
            artifact_ref=ref,
            artifact_sha256=hashlib.sha256(SECRET.encode()).hexdigest(),
        )
        page = await client.get(f"/artifacts/{log_id}")
        assert page.status_code == 403, ref
        assert attr_value(page.text, "data-verdict") == "refused"
        assert "outside the artifacts folder" in page.text
        assert SECRET not in page.text
        assert "root:" not in page.text

        raw = await client.get(f"/artifacts/{log_id}/raw")
        assert raw.status_code == 403, ref
        assert SECRET not in raw.text


@pytest.mark.parametrize(
    "path", ["/artifacts/..%2F..%2Fetc%2Fpasswd", "/artifacts/../etc/passwd", "/artifacts/-1"]
)
async def test_a_path_in_the_url_names_nothing(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.get(path)
    assert answer.status_code == 404
    assert "root:" not in answer.text


async def test_a_log_row_without_an_artifact_has_no_artifact_page(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    log_id = await log_row(pool, level="info", event="flags_changed", message="m")
    answer = await client.get(f"/artifacts/{log_id}")
    assert answer.status_code == 404
    assert f"no artifact for log row {log_id}" in answer.text
