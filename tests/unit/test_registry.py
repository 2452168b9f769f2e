"""The handler registry: registration, unknown types with close matches, module loading."""

from __future__ import annotations

import pytest

from aol.actions.context import HandlerContext
from aol.actions.registry import Registry, default_registry, load_modules
from aol.errors import ConfigError, UnknownActionType


async def noop(ctx: HandlerContext) -> None:
    return None


def test_unknown_type_names_the_type_the_known_ones_and_a_close_match() -> None:
    reg = Registry()
    reg.register("POST_SOCIAL", noop)
    with pytest.raises(UnknownActionType) as caught:
        reg.get("POST_SOCAIL")
    message = str(caught.value)
    assert "'POST_SOCAIL'" in message
    assert "did you mean 'POST_SOCIAL'" in message


def test_registering_a_second_handler_for_a_type_is_refused() -> None:
    reg = Registry()
    reg.register("A", noop)

    async def other(ctx: HandlerContext) -> None:
        return None

    with pytest.raises(ConfigError, match="already has a handler"):
        reg.register("A", other)
    reg.register("A", other, replace=True)
    assert reg.get("A") is other


@pytest.mark.parametrize("name", ["", "1ABC", "has space", "x" * 200])
def test_bad_type_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not valid"):
        Registry().register(name, noop)


def test_builtin_post_social_is_registered_on_load() -> None:
    load_modules(())
    assert "POST_SOCIAL" in default_registry


def test_a_missing_handler_module_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="--handlers 'no_such_module_xyz' cannot be imported"):
        load_modules(["no_such_module_xyz"])


def test_a_plain_function_is_refused_at_registration_naming_it() -> None:
    def not_async(ctx: HandlerContext) -> str:
        return "ran already"

    reg = Registry()
    with pytest.raises(ConfigError, match=r"'SYNC' .*not_async\) is not an async function"):
        reg.register("SYNC", not_async)  # type: ignore[arg-type]
    with pytest.raises(UnknownActionType):
        reg.get("SYNC")


def test_an_object_with_an_async_call_is_a_handler() -> None:
    class Handler:
        async def __call__(self, ctx: HandlerContext) -> str:
            return "ok"

    reg = Registry()
    handler = Handler()
    reg.register("OBJ", handler)
    assert reg.get("OBJ") is handler
