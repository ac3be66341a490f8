"""The HTTP face: health, readiness and the JSON API, in the daemon's process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from daemon.faces.http.api import build_app

if TYPE_CHECKING:
    from daemon.supervisor import Supervisor

log = structlog.get_logger()


@asynccontextmanager
async def serve(supervisor: Supervisor) -> AsyncIterator[web.AppRunner]:
    """Serve the app on `http_host:http_port` for as long as the block runs."""
    settings = supervisor.settings
    runner = web.AppRunner(build_app(supervisor), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        for address in runner.addresses:
            log.info("http.listening", url=f"http://{address[0]}:{address[1]}/")
        yield runner
    finally:
        await runner.cleanup()
