"""The depth cache's walker (daemon/broker/depths.py) with a fake walk: no broker, no
waiting readers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from structlog.testing import capture_logs

from daemon.broker.depths import DUTY, DepthCache, Depths

pytestmark = pytest.mark.timeout(30)


class FakeWalk:
    """Answers `depths` for the names asked; can be held at its start, or fail."""

    def __init__(self) -> None:
        self.depths: dict[str, int] = {}
        self.asked: list[list[str]] = []
        self.started: list[float] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False
        self.takes = 0.0

    async def __call__(self, names: list[str]) -> Depths:
        self.asked.append(names)
        self.started.append(time.monotonic())
        self.entered.set()
        await self.release.wait()
        await asyncio.sleep(self.takes)
        if self.fail:
            raise ConnectionError("the broker went away")
        return {name: self.depths.get(name) for name in names}


@asynccontextmanager
async def walking(cache: DepthCache) -> AsyncIterator[DepthCache]:
    cache.start()
    try:
        yield cache
    finally:
        await cache.stop()


async def test_before_the_first_walk_ends_every_depth_is_none_and_then_the_walk_answers():
    """A reader gets None at once while the first walk is held, the walk's answers after."""
    walk, clients = FakeWalk(), {"acme": 1, "globex": 2}
    walk.depths = {"acme": 3, "globex": 0}
    walk.release.clear()
    async with walking(DepthCache(lambda: clients, walk, lambda: True, 0.01)) as cache:
        await asyncio.wait_for(walk.entered.wait(), 5)
        held = (cache.get("acme"), dict(cache.depths), cache.walks, cache.walked_at)
        walk.release.set()
        await asyncio.wait_for(cache.refreshed(), 5)
        assert (cache.get("acme"), cache.get("globex"), cache.get("nobody")) == (3, 0, None)
    assert held == (None, {}, 0, None)
    assert walk.asked[0] == ["acme", "globex"]  # sorted, every client


async def test_a_client_added_is_walked_by_the_next_walk():
    """The names are read again at each walk's start."""
    walk, clients = FakeWalk(), {"acme": 1}
    walk.depths = {"acme": 1, "newco": 5}
    async with walking(DepthCache(lambda: clients, walk, lambda: True, 0.01)) as cache:
        await asyncio.wait_for(cache.refreshed(), 5)
        before = cache.get("newco")
        clients["newco"] = 1
        await asyncio.wait_for(cache.refreshed(), 5)
        after = cache.get("newco")
    assert (before, after) == (None, 5)


async def test_a_failed_walk_keeps_the_last_answers_and_the_next_one_replaces_them():
    """The broker went away mid-walk: readers keep the last depths, and it is logged."""
    walk = FakeWalk()
    walk.depths = {"acme": 2}
    with capture_logs() as logs:
        async with walking(DepthCache(lambda: ["acme"], walk, lambda: True, 0.01)) as cache:
            await asyncio.wait_for(cache.refreshed(), 5)
            walks = cache.walks
            walk.fail = True
            asked = len(walk.asked)
            await asyncio.wait_for(_until(lambda: cache.get("acme") is not None
                                          and len(walk.asked) >= asked + 2), 5)
            during = (cache.get("acme"), cache.walks)
            walk.fail, walk.depths = False, {"acme": 7}
            await asyncio.wait_for(cache.refreshed(), 5)
            assert cache.get("acme") == 7
    assert during == (2, walks)
    assert {e["event"] for e in logs if e["log_level"] == "warning"} == {"depths.walk_failed"}


async def test_no_walk_starts_while_not_connected():
    """While the connection is down the walker only waits."""
    walk, connected = FakeWalk(), [False]
    async with walking(DepthCache(lambda: ["acme"], walk, lambda: connected[0], 0.01)):
        await asyncio.sleep(0.1)
        asked_down = len(walk.asked)
        connected[0] = True
        await asyncio.wait_for(_until(lambda: bool(walk.asked)), 5)
    assert asked_down == 0


async def test_walks_are_spaced_by_the_interval_or_duty_times_the_last_walk():
    """A walk of T seconds is followed by at least DUTY * T seconds without one."""
    walk = FakeWalk()
    walk.takes = 0.05
    async with walking(DepthCache(lambda: ["acme"], walk, lambda: True, 0.01)) as cache:
        # a reader reading all the time
        await asyncio.wait_for(_until(lambda: cache.get("acme") is None
                                      and len(walk.started) >= 3), 10)
    gaps = [b - a for a, b in zip(walk.started, walk.started[1:], strict=False)]
    assert min(gaps) >= (1 + DUTY) * walk.takes * 0.95, gaps  # a walk, then DUTY walks' sleep


async def test_nobody_reading_no_walk_and_a_read_wakes_the_next_one():
    """An idle daemon does not walk its queues for nobody (10,000 of them cost a tenth of a
    core every few seconds); the first read after a quiet spell gets the last answers at
    once and brings the next walk."""
    walk = FakeWalk()
    walk.depths = {"acme": 4}
    async with walking(DepthCache(lambda: ["acme"], walk, lambda: True, 0.01)) as cache:
        await asyncio.wait_for(_until(lambda: cache.walks == 1), 5)  # the one at start
        await asyncio.sleep(0.2)  # twenty intervals, nobody reading
        quiet = len(walk.asked)
        walk.depths = {"acme": 9}
        first_read = cache.get("acme")
        await asyncio.wait_for(_until(lambda: cache.walks == 2), 5)
        await asyncio.sleep(0.2)
        after = len(walk.asked)
    assert (quiet, first_read, cache.get("acme"), after) == (1, 4, 9, 2)


async def test_stop_cancels_a_walk_in_progress():
    """Stopping the daemon does not wait for a walk that hangs."""
    walk = FakeWalk()
    walk.release.clear()
    cache = DepthCache(lambda: ["acme"], walk, lambda: True, 0.01)
    cache.start()
    await asyncio.wait_for(walk.entered.wait(), 5)
    await asyncio.wait_for(cache.stop(), 5)
    assert cache.walks == 0


async def _until(predicate) -> None:
    while not predicate():  # noqa: ASYNC110 - a fake's counters, polled for a test
        await asyncio.sleep(0.005)
