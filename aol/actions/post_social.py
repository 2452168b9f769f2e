"""The built-in POST_SOCIAL adapter: publish a post, or in proof mode write what it would post.

Payload: {"platform": str, "content": str, "audience": "public" | "followers" | "private"}.
No real integration ships with aol: with proof mode off, the action is dead-lettered at once
with `RealRunNotConfigured`, without burning retries. Register your own handler for
POST_SOCIAL (with `replace=True`) to post for real.
"""

from __future__ import annotations

import difflib

from aol.actions.context import HandlerContext
from aol.actions.registry import default_registry
from aol.errors import InvalidPayload, RealRunNotConfigured
from aol.model import JSONObject

ACTION_TYPE = "POST_SOCIAL"
AUDIENCES = ("public", "followers", "private")
FIELDS = ("platform", "content", "audience")
CONTENT_MAX_CHARS = 10_000
PLATFORM_MAX_CHARS = 64


def validate(payload: JSONObject) -> tuple[str, str, str]:
    """Return (platform, content, audience) or raise InvalidPayload naming the field."""
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise InvalidPayload(
            f"{ACTION_TYPE} payload has unknown field(s) {', '.join(unknown)}; "
            f"expected {', '.join(FIELDS)}"
        )
    values: list[str] = []
    for name in FIELDS:
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            shown = "missing" if name not in payload else f"{type(value).__name__} {value!r}"
            raise InvalidPayload(
                f"{ACTION_TYPE} payload field {name!r} must be a non-empty string, got {shown}"
            )
        values.append(value)
    platform, content, audience = values
    if len(platform) > PLATFORM_MAX_CHARS:
        raise InvalidPayload(
            f"{ACTION_TYPE} payload field 'platform' is longer than {PLATFORM_MAX_CHARS}"
        )
    if len(content) > CONTENT_MAX_CHARS:
        raise InvalidPayload(
            f"{ACTION_TYPE} payload field 'content' has {len(content)} characters; "
            f"the limit is {CONTENT_MAX_CHARS}"
        )
    if audience not in AUDIENCES:
        close = difflib.get_close_matches(audience, AUDIENCES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidPayload(
            f"{ACTION_TYPE} payload field 'audience' is {audience!r}; "
            f"expected one of {', '.join(AUDIENCES)}{hint}"
        )
    return platform, content, audience


@default_registry.handler(ACTION_TYPE)
async def post_social(ctx: HandlerContext) -> str:
    platform, content, audience = validate(ctx.payload)
    if not ctx.proof:
        raise RealRunNotConfigured(
            f"{ACTION_TYPE} real run not configured: aol ships no integration for platform "
            f"{platform!r}; turn proof mode on (`aol proof on`) or register a real handler "
            f"for {ACTION_TYPE}"
        )
    artifact = ctx.write_artifact(
        {
            "action_type": ACTION_TYPE,
            "action_id": ctx.action_id,
            "idempotency_key": ctx.action.idempotency_key,
            "attempt": ctx.attempt,
            "proof": True,
            "would_post": {"platform": platform, "audience": audience, "content": content},
        }
    )
    return (
        f"proof: would post {len(content)} characters to {platform} ({audience}); {artifact.path}"
    )
