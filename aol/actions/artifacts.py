"""Proof artifacts: files under the data directory, each with its SHA-256.

An artifact is what a handler in proof mode writes instead of touching the outside world.
It is named by UTC time and idempotency key, written atomically, and never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
KEY_CHARS_IN_NAME = 64


@dataclass(frozen=True, slots=True)
class Artifact:
    """A written artifact: its absolute path and the SHA-256 of its bytes."""

    path: Path
    sha256: str
    size: int


def artifact_name(*, now: datetime, idempotency_key: str, attempt: int, suffix: str) -> str:
    """`20261129T081500.123456Z_<key>_a<attempt><suffix>`; the key made safe for a file name."""
    safe = _UNSAFE.sub("_", idempotency_key).strip("._")[:KEY_CHARS_IN_NAME] or "key"
    digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}_{safe}-{digest}_a{attempt}{suffix}"


def write_artifact(
    root: Path,
    *,
    idempotency_key: str,
    attempt: int,
    content: bytes,
    suffix: str = ".json",
    now: datetime | None = None,
) -> Artifact:
    """Write `content` under `root/artifacts/YYYY/MM/DD/` and return its path and digest."""
    now = now or datetime.now(UTC)
    folder = (root / "artifacts" / now.strftime("%Y/%m/%d")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / artifact_name(
        now=now, idempotency_key=idempotency_key, attempt=attempt, suffix=suffix
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "xb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return Artifact(path=path, sha256=hashlib.sha256(content).hexdigest(), size=len(content))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
