"""Handlers that run in a child process (`isolated=True`); importable by module path."""

from __future__ import annotations

import time

from aol.actions.context import HandlerContext
from aol.errors import InvalidPayload


async def blocks_forever(ctx: HandlerContext) -> str:
    time.sleep(60)  # blocks its own (child) event loop: only a kill ends it
    return "never"


async def writes_proof(ctx: HandlerContext) -> str:
    artifact = ctx.write_artifact({"isolated": True, "key": ctx.action.idempotency_key})
    return f"wrote {artifact.path}"


async def rejects_payload(ctx: HandlerContext) -> str:
    raise InvalidPayload("field 'x' is missing")
