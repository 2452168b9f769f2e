"""Health endpoints served by the worker on a port of its own (off by default).

`GET /healthz` answers 200 while the process's event loop runs (a stalled loop cannot
answer, and the watchdog ends it). `GET /readyz` answers 200 when the worker is doing
its job as configured: holding the lease, or waiting as a standby; 503 otherwise (starting,
lease lost, database unreachable). Both return a small JSON body. `GET /metrics` answers
200 with the worker's metrics in the Prometheus text format (see `aol.worker.metrics`),
reading the database gauges at that moment; a failed read is reported in the body
(`aol_metrics_db_up 0`), never as a failed scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

from aol.logs import get_logger
from aol.worker.metrics import CONTENT_TYPE, DatabaseGauges, WorkerMetrics

log = get_logger("aol.health")
READ_TIMEOUT = 5.0
# Request header lines read (and ignored) before answering; a scraper sends a handful.
MAX_HEADER_LINES = 100
HEADER_TIMEOUT = 1.0
JSON = "application/json"


@dataclass(slots=True)
class Readiness:
    """What the run loop reports: its role (`starting`, `holding`, `standby` or `lost`),
    and its metrics."""

    role: str = "starting"
    owner: str | None = None
    epoch: int | None = None
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    @property
    def ready(self) -> bool:
        return self.role in ("holding", "standby")


class HealthServer:
    """A tiny HTTP/1.0 server for orchestrators; `async with HealthServer(host, port, r):`.

    With `database_url`, `/metrics` also reports what the database holds (by status, queue
    lag, lease row), read on each scrape; without it, only this process's own metrics.
    """

    def __init__(
        self, host: str, port: int, readiness: Readiness, database_url: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self._server: asyncio.Server | None = None
        self._database = (
            None
            if database_url is None
            else DatabaseGauges(database_url, application_name=f"aol-metrics {readiness.owner}")
        )

    async def __aenter__(self) -> HealthServer:
        if self._database is not None:
            self.readiness.metrics.registry.register(self._database)
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health_listening", host=self.host, port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        if self._database is not None:
            self.readiness.metrics.registry.unregister(self._database)
            await self._database.close()

    async def scrape(self) -> bytes:
        """The `/metrics` body: read the database gauges now, then render the registry."""
        if self._database is not None:
            await self._database.refresh()
        return self.readiness.metrics.render()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=READ_TIMEOUT)
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            await self._skip_headers(reader, parts)
            body: dict[str, object] | bytes
            content_type = JSON
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body = 405, {"error": "only GET /healthz, /readyz and /metrics"}
            elif path == "/healthz":
                status, body = 200, {"status": "ok"}
            elif path == "/readyz":
                r = self.readiness
                status = 200 if r.ready else 503
                body = {"ready": r.ready, "role": r.role, "owner": r.owner, "epoch": r.epoch}
            elif path == "/metrics":
                status, body, content_type = 200, await self.scrape(), CONTENT_TYPE
            else:
                status, body = (
                    404,
                    {"error": f"no such path {path!r}; try /healthz, /readyz or /metrics"},
                )
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
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

    @staticmethod
    async def _skip_headers(reader: asyncio.StreamReader, request_line: list[str]) -> None:
        """Read an HTTP/1.x request's header lines up to the blank one, so closing the socket
        after the answer does not reset a client (a Prometheus scraper) still sending them."""
        if len(request_line) < 3:
            return  # HTTP/0.9 style: no headers follow
        with contextlib.suppress(TimeoutError):  # a client that never ends them gets its answer
            for _ in range(MAX_HEADER_LINES):
                header = await asyncio.wait_for(reader.readline(), timeout=HEADER_TIMEOUT)
                if header in (b"\r\n", b"\n", b""):
                    return
