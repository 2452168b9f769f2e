"""Which asyncio event loop `aol run` runs on: the standard library's (the default), or
uvloop (`pip install 'aol[uvloop]'`), a drop-in loop written in Cython on libuv whose
scheduling and socket I/O cost less per task and per round trip."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable

EVENT_LOOP_DEFAULT = "asyncio"
EVENT_LOOPS = ("asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def installed(name: str) -> bool:
    """Whether the loop `name` can be used here (asyncio always can)."""
    return name == "asyncio" or importlib.util.find_spec(name) is not None


def loop_factory(name: str) -> LoopFactory | None:
    """What `asyncio.Runner` should make its loop with (None: the standard one)."""
    if name == "asyncio":
        return None
    module = importlib.import_module(name)
    factory: LoopFactory = module.new_event_loop
    return factory


def running_loop_name() -> str:
    """`asyncio` or `uvloop`: the package of the loop this code runs on."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]
