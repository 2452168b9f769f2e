"""/healthz and /readyz: served by the worker on a port of its own, telling the truth."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import asyncpg

from aol.settings import Settings
from tests.waiting import wait_for
from tests.worker import handlers as h


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body)


async def test_a_holder_is_alive_and_ready_and_says_who_it_is(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    port = free_port()
    async with h.background_worker(settings.with_(health_port=port), db_url, h.registry()):

        async def ready() -> tuple[int, dict[str, Any]] | None:
            try:
                answer = await get(port, "/readyz")
            except OSError:
                return None
            return answer if answer[0] == 200 else None

        answer = await wait_for(ready, timeout=5, what="/readyz to answer 200")
        assert answer is not None
        _, body = answer
        assert body == {"ready": True, "role": "holding", "owner": settings.owner, "epoch": 1}
        assert await get(port, "/healthz") == (200, {"status": "ok"})
        missing, _ = await get(port, "/nope")
        assert missing == 404


async def test_a_standby_waiting_for_the_lease_is_ready(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    port = free_port()
    async with h.background_worker(settings, db_url, h.registry()):
        await wait_for(lambda: h.lease_held(pool), timeout=5, what="the first worker's lease")
        standby = settings.with_(health_port=port, standby=True, owner="standby:1")
        async with h.background_worker(standby, db_url, h.registry()):

            async def answered() -> tuple[int, dict[str, Any]] | None:
                try:
                    return await get(port, "/readyz")
                except OSError:
                    return None

            answer = await wait_for(answered, timeout=5, what="/readyz to answer")
            assert answer is not None
            status, body = answer
            assert (status, body["role"], body["ready"]) == (200, "standby", True)
