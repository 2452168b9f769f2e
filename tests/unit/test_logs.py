"""Every event name the code logs is in the catalogue, and the catalogue has no dead names."""

from __future__ import annotations

import re
from pathlib import Path

from aol.logs import EVENTS

SOURCE = Path(__file__).resolve().parents[2] / "aol"
CALL = re.compile(r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z_]+)\"")


def logged_events() -> set[str]:
    names: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        names |= set(CALL.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_logged_event_is_catalogued() -> None:
    missing = logged_events() - set(EVENTS)
    assert not missing, f"events logged but not in aol/logs.py EVENTS: {sorted(missing)}"


def test_event_names_are_snake_case() -> None:
    assert all(re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", name) for name in EVENTS)
