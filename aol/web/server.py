"""Run the dashboard under uvicorn on one pool until a signal stops it (`aol dashboard`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Generator

import uvicorn

from aol.db.connect import create_pool
from aol.logs import get_logger
from aol.settings import Settings
from aol.web import auth
from aol.web.app import create_app

log = get_logger("aol.dashboard")
# Every refresh reads in one transaction on one connection; a few viewers need few.
POOL_MAX_SIZE = 5


async def serve(settings: Settings, url: str, *, started: asyncio.Event | None = None) -> None:
    """Serve on settings.dashboard_host:dashboard_port; refuses a non-loopback address
    without a token before touching the database."""
    auth.check_bind(settings.dashboard_host, settings.dashboard_token)
    pool = await create_pool(
        url, min_size=1, max_size=POOL_MAX_SIZE, application_name="aol-web", custom_plans=True
    )
    try:
        app = create_app(settings, pool)
        config = uvicorn.Config(
            app,
            host=settings.dashboard_host,
            port=settings.dashboard_port,
            log_config=None,
            access_log=False,
            log_level="warning",
            lifespan="off",
            server_header=False,
        )
        try:
            await _Server(config, settings, started).serve()
        finally:
            await app.state.dashboard.slow_reads.close()
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the address once it listens."""

    def __init__(
        self, config: uvicorn.Config, settings: Settings, started: asyncio.Event | None
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.started_event = started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Stop on SIGINT or SIGTERM and return normally (uvicorn's own handling raises the
        signal again afterwards), so the pool and an embedded server are closed and
        `aol dashboard` exits 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        ports = [sock.getsockname()[1] for s in self.servers for sock in s.sockets]
        log.info(
            "dashboard_listening",
            host=self.settings.dashboard_host,
            port=ports[0] if ports else self.settings.dashboard_port,
            controls="on" if self.settings.dashboard_token else "off (no AOL_DASHBOARD_TOKEN)",
        )
        if self.started_event is not None:
            self.started_event.set()
