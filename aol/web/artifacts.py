"""Proof artifacts for the browser: found by execution log id, confined to the artifacts
folder, and verified by recomputing their SHA-256.

A request never names a path: it names an execution log row, whose `artifact_ref` the
worker wrote. Even so the path is resolved (symlinks followed) and refused unless it lies
under `<data folder>/artifacts`, so a row pointing elsewhere cannot make the dashboard read
any other file. Blocking file I/O: call these through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

PREVIEW_BYTES = 256 * 1024
CHUNK = 1024 * 1024


class Verdict(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    MISSING = "missing"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Checked:
    """What the dashboard found at an artifact reference."""

    verdict: Verdict
    path: Path | None
    recorded_sha256: str | None
    actual_sha256: str | None = None
    size: int | None = None
    preview: str | None = None
    truncated: bool = False
    problem: str | None = None


def artifacts_root(data_dir: Path) -> Path:
    return (data_dir / "artifacts").resolve()


def confine(data_dir: Path, ref: str) -> Path | None:
    """The real path of `ref` (relative refs are under the data folder), or None when it
    lies outside `<data folder>/artifacts`."""
    root = artifacts_root(data_dir)
    candidate = Path(ref)
    if not candidate.is_absolute():
        candidate = data_dir / candidate
    real = candidate.resolve()
    return real if real.is_relative_to(root) and real != root else None


def check(data_dir: Path, ref: str, recorded_sha256: str | None) -> Checked:
    """Resolve, confine, hash and preview one artifact."""
    path = confine(data_dir, ref)
    if path is None:
        return Checked(
            Verdict.REFUSED,
            None,
            recorded_sha256,
            problem=f"refused: {ref!r} is outside the artifacts folder {artifacts_root(data_dir)}",
        )
    if not path.is_file():
        return Checked(
            Verdict.MISSING,
            path,
            recorded_sha256,
            problem=f"no file at {path} (deleted, or this dashboard has another data folder)",
        )
    digest = hashlib.sha256()
    head = b""
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            if len(head) < PREVIEW_BYTES:
                head += chunk[: PREVIEW_BYTES - len(head)]
            digest.update(chunk)
            size += len(chunk)
    actual = digest.hexdigest()
    verdict = Verdict.MATCH if recorded_sha256 == actual else Verdict.MISMATCH
    return Checked(
        verdict,
        path,
        recorded_sha256,
        actual_sha256=actual,
        size=size,
        preview=head.decode("utf-8", errors="replace"),
        truncated=size > len(head),
        problem=None
        if verdict is Verdict.MATCH
        else "the file's SHA-256 differs from the one recorded when it was written",
    )
