"""Fixtures shared by the tests: a per-test prefix, the broker, and the real loopback peers
(fake shop, fake Magento, image host, SMTP server, webhook receiver)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.peers import FakeMagento, ImageHost, fake_magento, image_host
from tests.sinks import HOOK_SECRET, HookSink, MailSink, hook_sink, mail_sink
from tests.support import Broker, FakeShop, broker, fake_shop, unique_prefix


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A topology prefix of this test alone, so runs never see each other's queues."""
    return unique_prefix(request.node.nodeid)


@pytest.fixture
async def amqp(prefix: str) -> AsyncIterator[Broker]:
    """The test's own broker connection, watching every event; purges the prefix afterwards."""
    async with broker(prefix) as b:
        yield b


@pytest.fixture
async def shop() -> AsyncIterator[FakeShop]:
    """A fake sales channel on loopback."""
    async with fake_shop() as s:
        yield s


@pytest.fixture
async def magento() -> AsyncIterator[FakeMagento]:
    """A fake Magento 2 store (REST API) on loopback."""
    async with fake_magento() as store:
        yield store


@pytest.fixture
async def images() -> AsyncIterator[ImageHost]:
    """An image host on loopback (also reachable as `localhost`: a host clients do not allow)."""
    async with image_host() as host:
        yield host


@pytest.fixture
async def smtp() -> AsyncIterator[MailSink]:
    """A real SMTP server on loopback that keeps every mail."""
    async with mail_sink() as sink:
        yield sink


@pytest.fixture
async def hooks() -> AsyncIterator[HookSink]:
    """A webhook receiver checking each signature with HOOK_SECRET."""
    async with hook_sink(HOOK_SECRET) as sink:
        yield sink
