"""The broker list (`S2SQ_AMQP_URL`, comma-separated) and connections that fail over along it.

Several URLs name nodes of one RabbitMQ cluster. A connection uses one node
at a time: it starts with the first that answers and, when it loses that
node (a crash, a restart, RabbitMQ's `541 INTERNAL_ERROR … nodedown` close
while a queue leader moves), reconnects to the next one, round the list.

Two kinds of connection do this:

* `connect_robust` — aio-pika's robust connection (channels and consumers
  restored by aio-pika), for the supervisor's main connection and the CLI.
  aio-pika reconnects to the one URL it was given; `FailoverConnection`
  points it at the next URL before each attempt.
* `connect_first` — a plain connection to the first URL that answers,
  starting at a given place: for the consumer pool (daemon/broker/channels.py),
  which recovers its consumers itself.

Passwords never leave this module in text: `censor` writes a URL for logs,
`scrub` takes every password of the list out of an error message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection
from aio_pika.connection import Connection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity
from aio_pika.robust_connection import RobustConnection
from yarl import URL

log = structlog.get_logger()

SCHEMES = ("amqp://", "amqps://")
RESTORE_RETRY_S = 2.0  # a channel whose queue's node is down: how often to try it again

# FailoverConnection reaches into aio-pika's RobustConnection (10.x): it overrides
# the step run before each connection attempt, and reads its channels, its
# each channel's "restored" flag. Fail at import, not silently
# without failover, should a new aio-pika rename them.
_ATTEMPT = "_RobustConnection__connect_transport"
_CHANNELS = "_RobustConnection__channels"
_RESTORED = "_RobustChannel__restored"
assert hasattr(RobustConnection, _ATTEMPT), f"aio-pika no longer has {_ATTEMPT}"


def split_urls(value: str) -> tuple[str, ...]:
    """The URLs of a comma-separated list, stripped, empty entries dropped (pure)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def url_problem(urls: Sequence[str]) -> str | None:
    """Why the list is unusable, without quoting any URL (it may hold a password); or None."""
    if not urls:
        return "needs at least one amqp:// or amqps:// URL"
    for number, url in enumerate(urls, 1):
        which = "the URL" if len(urls) == 1 else f"URL {number} of {len(urls)}"
        if not url.startswith(SCHEMES):
            return f"{which} does not start with amqp:// or amqps://"
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            return f"{which} is malformed (bad port?)"
        if not parts.hostname:
            return f"{which} has no host"
    return None


def censor(url: str) -> str:
    """`url` with its password replaced by `***`, for logs (pure)."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<malformed URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def where(url: str) -> str:
    """host:port of a URL, nothing else (pure)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        return "<malformed URL>"
    return f"{parts.hostname}:{port}"


def scrub(text: str, urls: Sequence[str]) -> str:
    """`text` with the password of every URL in `urls` replaced by `***` (pure)."""
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            text = text.replace(password, "***")
    return text


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection, moving to the next URL of its list on each reconnect."""

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        assert urls, "at least one URL"
        super().__init__(URL(urls[0]), **kwargs)
        self.name = str(self.kwargs.get("client_properties", {}).get("connection_name", ""))
        self.urls = tuple(urls)
        self._at = 0
        self._attempts = 0
        self._retries: set[asyncio.Task[None]] = set()

    @property
    def broker(self) -> str:
        """host:port of the node this connection uses, or tries next."""
        return where(self.urls[self._at])

    async def _on_connected(self) -> None:
        """Restore the channels; one whose queue is out of reach no longer blocks the rest.

        aio-pika's RobustConnection gives up the whole connection (and tries
        again, for ever) when some channel cannot be restored because an
        entity is missing. On a cluster that happens when a *classic* queue's
        node is down: `NOT_FOUND - home node … of durable queue … is down or
        inaccessible` (the unrouted watch queue, say). Control, events, the
        state log and the non-blocking pool would all wait for that node.
        Here the connection comes up with every channel that can be restored;
        the others are tried again alone (`_retry_later`) until their queue
        is back. And every channel is reopened
        on a new transport, even one aio-pika wrongly believes restored.
        Otherwise as aio-pika 10.2's RobustConnection._on_connected.
        """
        await Connection._on_connected(self)
        transport = self.transport
        if transport is None:
            raise RuntimeError(f"no transport for connection {self}")
        pending = tuple(getattr(self, _CHANNELS))
        for channel in pending:
            # A new transport: no channel is open on it yet. aio-pika marks a channel
            # restored when its reopen returns, even if the connection died during
            # that reopen (the 541 nodedown close that follows a node's death comes
            # just then), and then skips it on every later reconnect: dead for ever
            # (the state log's tail was, in the cluster tests).
            getattr(channel, _RESTORED).clear()
        try:
            while pending:
                failed, errors = [], []
                for channel in pending:
                    try:
                        await channel.restore()
                    except ChannelNotFoundEntity as exc:
                        failed.append(channel)
                        errors.append(exc)
                if len(failed) == len(pending):
                    log.warning("channel.not_restored", broker=self.broker, channels=len(failed),
                                connection=self.name, error=scrub(str(errors[0]), self.urls))
                    self._retry_later(failed)
                    break
                pending = tuple(failed)
        except Exception as exc:
            await self.close_callbacks(exc)
            await asyncio.gather(transport.connection.close(exc), return_exceptions=True)
            raise
        if self.connection_attempt:
            await self.reconnect_callbacks()
        self.connection_attempt += 1

    def _retry_later(self, channels: Sequence[Any]) -> None:
        """Restore these channels alone, every few seconds, until they are back.

        Not aio-pika's own loop (its restore event): that one also goes over
        every healthy channel each second, and the cluster tests stalled on the
        state log while it ran.
        """
        for channel in channels:
            task = asyncio.ensure_future(self._restore_when_back(channel))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _restore_when_back(self, channel: Any) -> None:
        transport = self.transport
        while not self.is_closed and self.transport is transport:
            await asyncio.sleep(RESTORE_RETRY_S)
            if self.is_closed or self.transport is not transport:
                return  # a new transport restores every channel itself
            try:
                await channel.restore()
            except ChannelNotFoundEntity:
                continue
            except Exception as exc:  # the connection is going: its next one restores it
                log.debug("channel.restore_failed", error=scrub(repr(exc), self.urls))
                return
            log.info("channel.restored", broker=self.broker, connection=self.name)
            return

    async def close(self, exc: Any = asyncio.CancelledError) -> None:
        for task in list(self._retries):
            task.cancel()
        await super().close(exc)

    async def _RobustConnection__connect_transport(self) -> None:
        """Before every attempt but the first: the next URL (the last one failed or was lost)."""
        again = self._attempts > 0
        self._attempts += 1
        if again:
            self._at = (self._at + 1) % len(self.urls)
            self.url = URL(self.urls[self._at])
            log.info("broker.connecting", broker=self.broker, connection=self.name,
                     attempt=self._attempts)
        attempt = getattr(super(), _ATTEMPT)
        await attempt()
        if again:  # not on the first connection: the CLI's stdout is its answer
            log.info("broker.connected", broker=self.broker, connection=self.name)


async def connect_robust(
    urls: Sequence[str], name: str, *, timeout: float | None = None,
    reconnect_interval: float = 1.0,
) -> FailoverConnection:
    """A robust connection to the first node that answers; it fails over along `urls`.

    Each URL is tried once, in order; if none answers, the last error is
    raised. Logs at debug level only: the CLI's stdout is its answer.
    """
    error: BaseException | None = None
    for start in range(len(urls)):
        order = (*urls[start:], *urls[:start])
        connection = FailoverConnection(
            order, client_properties={"connection_name": name},
            reconnect_interval=reconnect_interval,
        )
        try:
            await connection.connect(timeout=timeout)
        except CONNECTION_EXCEPTIONS as exc:
            error = exc
            log.debug("broker.unreachable", broker=where(order[0]),
                      error=scrub(repr(exc), urls))
            await connection.close()
            continue
        return connection
    assert error is not None
    raise error


async def connect_first(
    urls: Sequence[str], start: int, name: str, timeout: float | None = None,
) -> tuple[AbstractConnection, int]:
    """A plain connection to the first URL that answers from `start` on, and that URL's index."""
    error: BaseException | None = None
    for step in range(len(urls)):
        at = (start + step) % len(urls)
        try:
            connection = await aio_pika.connect(
                urls[at], client_properties={"connection_name": name}, timeout=timeout)
        except CONNECTION_EXCEPTIONS as exc:
            error = exc
            log.debug("broker.unreachable", broker=where(urls[at]), connection=name,
                      error=scrub(repr(exc), urls))
            continue
        return connection, at
    assert error is not None
    raise error
