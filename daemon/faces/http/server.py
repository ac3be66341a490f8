"""Serving the HTTP face on `http_host:http_port` for as long as the daemon runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from aiohttp import web

from daemon.faces.http.api import build_app
from daemon.faces.http.face import Face

log = structlog.get_logger()


@asynccontextmanager
async def serve(face: Face) -> AsyncIterator[web.AppRunner]:
    """Serve the app on `http_host:http_port` for as long as the block runs."""
    settings = face.settings
    runner = web.AppRunner(build_app(face), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        for address in runner.addresses:
            log.info("http.listening", url=f"http://{address[0]}:{address[1]}/")
        yield runner
    finally:
        await runner.cleanup()
