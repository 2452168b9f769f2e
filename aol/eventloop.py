"""Which asyncio event loop `aol run` runs on: the standard library's (the default), or
uvloop (`pip install 'aol[uvloop]'`), a drop-in loop written in Cython on libuv whose
scheduling and socket I/O cost less per task and per round trip."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable

from aol.errors import ConfigError

EVENT_LOOP_DEFAULT = "asyncio"
EVENT_LOOPS = ("asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(name: str) -> LoopFactory | None:
    """What `asyncio.Runner` should make its loop with (None: the standard one). A loop
    that cannot be loaded here is refused with what to do about it."""
    if name == "asyncio":
        return None
    asked = f"--event-loop {name} (or AOL_EVENT_LOOP)"
    if sys.platform == "win32":
        raise ConfigError(f"{asked}: {name} does not run on Windows; use asyncio")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        raise ConfigError(
            f"{asked}: {name} is not installed here: pip install 'aol[{name}]'"
        ) from None
    except ImportError as exc:
        raise ConfigError(f"{asked}: {name} is installed but cannot be loaded: {exc}") from None
    factory: LoopFactory = module.new_event_loop
    return factory


def running_loop_name() -> str:
    """`asyncio` or `uvloop`: the package of the loop this code runs on."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]
