"""Fixtures shared by the broker tests: a per-test prefix, the broker, the fake shop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
