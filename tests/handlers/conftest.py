"""Fixtures for handler tests: a fake sales channel on a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel

from common.clients import ClientConfig
from daemon.settings import Settings
from handlers.base import Item
from handlers.context import HandlerContext

TOKEN = "tok-S3CRET-7f3a9c"
"""The channel's bearer token; no error message may ever contain it."""
MESSAGE_ID = "msg-0001"


@dataclass(frozen=True)
class Recorded:
    """One request the fake channel received, as it arrived on the wire."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Reply:
    """What the fake channel answers; `delay` holds the answer back (for timeouts)."""

    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    delay: float = 0.0


@dataclass
class FakeChannel:
    """A sales channel that records every request and answers with `reply`."""

    url: str = ""
    reply: Reply = field(default_factory=Reply)
    requests: list[Recorded] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(request.method, request.raw_path, CIMultiDict(request.headers), body)
        )
        reply = self.reply
        if reply.delay:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), reply.delay)
        if not reply.body:
            return web.Response(status=reply.status)
        return web.Response(status=reply.status, text=reply.body, content_type=reply.content_type)

    @property
    def last(self) -> Recorded:
        assert self.requests, "the fake channel received no request"
        return self.requests[-1]


@pytest.fixture
async def channel() -> AsyncIterator[FakeChannel]:
    """A running fake channel on 127.0.0.1 and a free port."""
    fake = FakeChannel()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    fake.released.set()  # let held-back answers finish so cleanup does not wait for them
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The daemon's shared HTTP client session."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def clients(channel: FakeChannel) -> dict[str, ClientConfig]:
    """Client `acme` with a channel (with token) and a catalog (without) on the fake server."""
    return {
        "acme": ClientConfig.model_validate(
            {
                "name": "Acme Ltd",
                "channel": {"kind": "http", "base_url": f"{channel.url}/api/", "token": TOKEN},
                "catalog": {"base_url": f"{channel.url}/catalog"},
            }
        ),
        "bare": ClientConfig(),
    }


@pytest.fixture
def ctx(clients: dict[str, ClientConfig], session: aiohttp.ClientSession) -> HandlerContext:
    """A handler context reading `clients`, with a 5 s default request timeout."""
    return HandlerContext(lambda: clients, session, default_timeout=5.0, settings=Settings())


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_item(type_: str, payload: BaseModel, client_id: str = "acme") -> Item[Any]:
    """A validated item as the consumers hand it to a handler."""
    return Item(
        message_id=MESSAGE_ID, type=type_, client_id=client_id, payload=payload, queue="blocking"
    )
