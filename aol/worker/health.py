"""Health endpoints served by the worker on a port of its own (off by default).

`GET /healthz` answers 200 while the process's event loop runs (a stalled loop cannot
answer, and the watchdog ends it). `GET /readyz` answers 200 when the worker is doing
its job as configured: holding the lease, or waiting as a standby; 503 otherwise (starting,
lease lost, database unreachable). Both return a small JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from aol.logs import get_logger

log = get_logger("aol.health")
READ_TIMEOUT = 5.0


@dataclass(slots=True)
class Readiness:
    """What the run loop reports: `starting`, `holding`, `standby` or `lost`."""

    role: str = "starting"
    owner: str | None = None
    epoch: int | None = None

    @property
    def ready(self) -> bool:
        return self.role in ("holding", "standby")


class HealthServer:
    """A tiny HTTP/1.0 server for orchestrators; `async with HealthServer(host, port, r):`."""

    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health_listening", host=self.host, port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=READ_TIMEOUT)
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            body: dict[str, object]
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body = 405, {"error": "only GET /healthz and GET /readyz"}
            elif path == "/healthz":
                status, body = 200, {"status": "ok"}
            elif path == "/readyz":
                r = self.readiness
                status = 200 if r.ready else 503
                body = {"ready": r.ready, "role": r.role, "owner": r.owner, "epoch": r.epoch}
            else:
                status, body = 404, {"error": f"no such path {path!r}; try /healthz or /readyz"}
            data = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + (data if parts[:1] != ["HEAD"] else b"")
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
