"""sd_notify without a dependency: READY, STOPPING and WATCHDOG heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator


def notify(state: str) -> None:
    """Send `state` to systemd when run under it with Type=notify; otherwise do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.connect(address)
        sock.sendall(state.encode())


@contextlib.asynccontextmanager
async def watchdog() -> AsyncIterator[None]:
    """Send WATCHDOG=1 at half of WATCHDOG_USEC while the block runs."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        yield
        return

    async def beat() -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(usec / 2_000_000)

    task = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
