"""A TCP proxy in front of the broker, to take it away from a daemon and give it back.

The aio-pika way (tests/test_amqp_robust_proxy.py there; STYLE section 10):
`cut()` closes every link at once, `refusing` turns new ones away, so a test
holds the daemon disconnected for as long as it needs, without timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

from tests.support import AMQP_URL


class BrokerProxy:
    """A TCP proxy in front of the broker that can cut every link and refuse new ones."""

    def __init__(self) -> None:
        self.url = ""
        self.refusing = False
        self.consumes_refused = 0  # how many consumes the broker was made to refuse
        self._refuse = b""  # the start of a Basic.Consume frame of the queue to refuse
        self._refuse_left = 0
        self._links: set[asyncio.StreamWriter] = set()

    def refuse_consumes(self, queue: str, times: int) -> None:
        """Have the broker refuse the next `times` consumes of `queue` (404, channel closed).

        The proxy renames the queue in those Basic.Consume frames, so RabbitMQ
        itself answers NOT_FOUND and closes the channel: as a cluster node does
        while it has no member of a stream, right after another node died.
        """
        name = queue.encode()
        assert 0 < len(name) < 256
        self._refuse = _CONSUME + bytes([len(name)]) + name
        self._refuse_left = times

    def _rewrite(self, data: bytes) -> bytes:
        """Client to broker: a consume to refuse goes to a queue that does not exist."""
        while self._refuse_left and self._refuse in data:
            self._refuse_left -= 1
            self.consumes_refused += 1
            at = data.index(self._refuse) + len(self._refuse) - 1  # the name's last letter
            data = data[:at] + b"~" + data[at + 1:]
        return data

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, upstream: bool = False) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(self._rewrite(data) if upstream else data)
                await writer.drain()
        writer.close()

    async def link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client: pipe both ways to the broker until either side closes."""
        if self.refusing:
            writer.close()
            return
        host, port = _broker_address()
        up_reader, up_writer = await asyncio.open_connection(host, port)
        self._links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, upstream=True),
                             self._pipe(up_reader, writer))
        self._links -= {writer, up_writer}

    def cut(self) -> None:
        """Close every link now (the broker sees its clients vanish)."""
        for writer in list(self._links):
            writer.close()


# A Basic.Consume method frame's payload starts so: class 60, method 20, reserved short 0;
# the queue name follows as a short string.
_CONSUME = b"\x00\x3c\x00\x14\x00\x00"


def _broker_address() -> tuple[str, int]:
    url = urlsplit(AMQP_URL)
    return url.hostname or "127.0.0.1", url.port or 5672


@asynccontextmanager
async def broker_proxy() -> AsyncIterator[BrokerProxy]:
    """A BrokerProxy on a free loopback port; its `url` is AMQP_URL through it."""
    proxy = BrokerProxy()
    server = await asyncio.start_server(proxy.link, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host, broker_port = _broker_address()
    proxy.url = AMQP_URL.replace(f"{host}:{broker_port}", f"127.0.0.1:{port}", 1)
    assert proxy.url != AMQP_URL, f"cannot route {AMQP_URL} through the proxy"
    try:
        yield proxy
    finally:
        server.close()
        proxy.cut()
        await server.wait_closed()
