"""Handlers declared `isolated=True` run in a child process, so a deadline can kill them.

A handler in the event loop can only be cancelled, and a cancellation can be ignored or a
synchronous call can block the loop. An isolated handler runs in `python -m
aol.worker.isolated`: the parent sends the action as JSON on stdin, the child imports the
handler's module, runs it, and answers with one JSON object on stdout. At the deadline the
parent kills the child (SIGKILL) and records a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from aol.actions.artifacts import Artifact
from aol.actions.context import HandlerContext
from aol.actions.registry import Handler
from aol.errors import AolError, HandlerTimeout, PermanentError
from aol.model import Action, ActionId, ActionStatus, Epoch

STDERR_TAIL = 2000


class IsolatedHandlerFailed(AolError):
    """The isolated handler raised an error."""


class IsolatedPermanentError(PermanentError):
    """The isolated handler raised a permanent error."""


async def run_isolated(fn: Handler, hctx: HandlerContext, *, timeout: float) -> str | None:
    """Run `fn` for `hctx` in a child process; kill it at the deadline."""
    request = {
        "module": fn.__module__,
        "qualname": fn.__qualname__,
        "proof": hctx.proof,
        "data_dir": str(hctx.data_dir),
        "action": _action_json(hctx.action),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aol.worker.isolated",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(request).encode()), timeout=timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HandlerTimeout(
            f"handler timed out after {timeout:g}s; its process (pid {proc.pid}) was killed"
        ) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    try:
        answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace")[-STDERR_TAIL:]
        raise IsolatedHandlerFailed(
            f"isolated handler process exited with code {proc.returncode} without an "
            f"answer: {tail.strip() or 'no output'}"
        ) from None
    for item in answer.get("artifacts", []):
        hctx.artifacts.append(
            Artifact(path=Path(item["path"]), sha256=item["sha256"], size=int(item["size"]))
        )
    if answer.get("ok"):
        message = answer.get("message")
        return None if message is None else str(message)
    text = f"{answer.get('error_type')}: {answer.get('error')}"
    if answer.get("permanent"):
        raise IsolatedPermanentError(text)
    raise IsolatedHandlerFailed(text)


def _action_json(action: Action) -> dict[str, Any]:
    return {
        "id": action.id,
        "idempotency_key": action.idempotency_key,
        "action_type": action.action_type,
        "payload": action.payload,
        "status": str(action.status),
        "priority": action.priority,
        "attempts": action.attempts,
        "max_attempts": action.max_attempts,
        "not_before": action.not_before.isoformat(),
        "claim_epoch": action.claim_epoch,
        "created_at": action.created_at.isoformat(),
    }


def _action_from(data: dict[str, Any]) -> Action:
    return Action(
        id=ActionId(int(data["id"])),
        idempotency_key=str(data["idempotency_key"]),
        action_type=str(data["action_type"]),
        payload=dict(data["payload"]),
        status=ActionStatus(data["status"]),
        priority=int(data["priority"]),
        attempts=int(data["attempts"]),
        max_attempts=int(data["max_attempts"]),
        not_before=datetime.fromisoformat(data["not_before"]),
        claim_epoch=None if data["claim_epoch"] is None else Epoch(int(data["claim_epoch"])),
        created_at=datetime.fromisoformat(data["created_at"]),
    )


def _child() -> int:
    """The child side: one request on stdin, one JSON answer on stdout."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    request = json.loads(sys.stdin.read())
    target: Any = importlib.import_module(request["module"])
    for part in request["qualname"].split("."):
        target = getattr(target, part)
    action = _action_from(request["action"])
    hctx = HandlerContext(
        action=action,
        proof=bool(request["proof"]),
        log=structlog.get_logger("aol.isolated").bind(action_id=action.id),
        data_dir=Path(request["data_dir"]),
    )
    answer: dict[str, Any]
    try:
        message = asyncio.run(target(hctx))
        answer = {"ok": True, "message": message}
    except Exception as exc:
        answer = {
            "ok": False,
            "error_type": type(exc).__name__,
            "error": str(exc),
            "permanent": isinstance(exc, PermanentError),
        }
    answer["artifacts"] = [
        {"path": str(a.path), "sha256": a.sha256, "size": a.size} for a in hctx.artifacts
    ]
    sys.stdout.write("\n" + json.dumps(answer, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
