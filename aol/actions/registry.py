"""The registry: action type -> async handler; loading user modules; "did you mean".

Register a handler with the `@handler("TYPE")` decorator in your own module, then start
the worker with `aol run --handlers mypkg.module` (or `AOL_HANDLERS=mypkg.module`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable

from aol.actions.context import HandlerContext
from aol.errors import ConfigError, UnknownActionType

Handler = Callable[[HandlerContext], Awaitable[str | None]]
"""An async function of a HandlerContext; it may return a short message for the log."""

_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$")
BUILTIN_MODULES = ("aol.actions.post_social",)


class Registry:
    """Maps action types to handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._isolated: set[str] = set()

    def register(
        self, action_type: str, fn: Handler, *, replace: bool = False, isolated: bool = False
    ) -> None:
        """Register `fn` for `action_type`. With `isolated=True` each call runs in a child
        process that is killed at the action timeout (the function must be importable by
        its module and qualified name)."""
        if not _TYPE_NAME.match(action_type):
            raise ConfigError(
                f"action type {action_type!r} is not valid: use letters, digits and _.:- "
                "(at most 128 characters), starting with a letter"
            )
        if not (
            inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        ):
            raise ConfigError(
                f"the handler for {action_type!r} ({_name(fn)}) is not an async function: "
                "define it with `async def`"
            )
        existing = self._handlers.get(action_type)
        if existing is not None and existing is not fn and not replace:
            raise ConfigError(
                f"action type {action_type!r} already has a handler ({_name(existing)})"
            )
        self._handlers[action_type] = fn
        if isolated:
            self._isolated.add(action_type)
        else:
            self._isolated.discard(action_type)

    def handler(self, action_type: str, *, isolated: bool = False) -> Callable[[Handler], Handler]:
        def decorate(fn: Handler) -> Handler:
            self.register(action_type, fn, isolated=isolated)
            return fn

        return decorate

    def is_isolated(self, action_type: str) -> bool:
        return action_type in self._isolated

    def get(self, action_type: str) -> Handler:
        try:
            return self._handlers[action_type]
        except KeyError:
            raise UnknownActionType(self.unknown_message(action_type)) from None

    def unknown_message(self, action_type: str) -> str:
        close = difflib.get_close_matches(action_type, list(self._handlers), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._handlers)) or "none"
        return (
            f"unknown action type {action_type!r}: no handler is registered for it "
            f"(known: {known}){hint}"
        )

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, action_type: object) -> bool:
        return action_type in self._handlers


default_registry = Registry()


def handler(action_type: str, *, isolated: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: register an async handler for `action_type` in the default registry.

    `isolated=True` runs each call in a child process that a deadline can kill."""
    return default_registry.handler(action_type, isolated=isolated)


def load_modules(modules: Iterable[str]) -> None:
    """Import the built-in adapters and the user's handler modules (which register on import)."""
    for name in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"--handlers {name!r} cannot be imported: {exc}; "
                "check the module name and that it is on PYTHONPATH"
            ) from exc


def _name(fn: object) -> str:
    module = getattr(fn, "__module__", "?")
    qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
    return f"{module}.{qualname}"
