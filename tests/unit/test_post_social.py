"""POST_SOCIAL payload validation names the field that is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from aol.actions.post_social import validate
from aol.errors import InvalidPayload

GOOD = {"platform": "mastodon", "content": "hi", "audience": "public"}


def test_a_good_payload_passes() -> None:
    assert validate(dict(GOOD)) == ("mastodon", "hi", "public")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"platform": None}, "'platform' must be a non-empty string"),
        ({"content": ""}, "'content' must be a non-empty string"),
        ({"content": 5}, "got int 5"),
        ({"audience": "pubic"}, "did you mean 'public'"),
        ({"extra": 1}, "unknown field(s) extra"),
        ({"content": "x" * 10_001}, "the limit is 10000"),
    ],
)
def test_bad_payloads_name_the_field(change: dict[str, Any], fragment: str) -> None:
    payload: dict[str, Any] = {**GOOD, **change}
    payload = {k: v for k, v in payload.items() if v is not None}
    with pytest.raises(InvalidPayload) as caught:
        validate(payload)
    assert fragment in str(caught.value)
