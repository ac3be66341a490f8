"""Queue depths by passive declares: a few channels side by side, walked in the background.

A passive `queue.declare` answers the number of messages *ready* in a queue;
an item delivered and unacked (running, parked, or held while paused) is not
counted. A channel answers one synchronous method at a time (aiormq holds a
lock per channel), 260-440 µs a queue here, so 10,000 client queues one
after another take 3-4.5 s; `CHANNELS` channels side by side took 120-230 µs
a queue on this busy 2-core machine, where the broker is the limit
(`bench/depths.py`, bench/RESULTS.md). `DepthCache` walks every client
queue in a task of its own and waits `interval` seconds between walks, or
`DUTY` times as long as the last walk took if that is longer, so walking the
queues takes at most a fifth of the time; whoever asks (a listing, a page,
a scrape) reads what the last walk found and never waits for one. It walks
only when somebody has read since the last walk began: a walk costs the
daemon about 130 µs of CPU a queue, so walking 10,000 idle clients every few
seconds for nobody would keep a tenth of a core busy (issue 13: idle CPU
≤ 2 %); the first read after a quiet spell sees the last walk's answers and
wakes the next walk.

Trap: a passive declare of a missing queue closes its channel (404). That
queue answers None and the walk goes on with a fresh channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelNotFoundEntity

from daemon.broker.errors import CHANNEL_ERRORS
from daemon.tasks import cancel_and_wait

log = structlog.get_logger()

CHANNELS = 4
MAX_AGE = 5.0  # seconds; quorum queue counts may lag about as long anyway
DUTY = 4  # a walk of T seconds is good for at least DUTY * T seconds
WALK_TIMEOUT = 120.0  # a walk that hangs longer is given up; the next one starts afresh

Depths = dict[str, int | None]


async def queue_depths(
    connection: AbstractConnection, names: Sequence[str], channels: int = CHANNELS
) -> Depths:
    """Messages ready in each queue of `names` (None: no such queue)."""
    out: Depths = {}
    todo = iter(names)  # shared: each reader takes the next name
    async with asyncio.TaskGroup() as group:
        for _ in range(min(channels, len(names))):
            group.create_task(_read(connection, todo, out))
    return out


async def _read(connection: AbstractConnection, todo: Iterator[str], out: Depths) -> None:
    channel = await connection.channel(publisher_confirms=False)
    try:
        for name in todo:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                out[name] = None
                await _close(channel)
                channel = await connection.channel(publisher_confirms=False)
                continue
            out[name] = queue.declaration_result.message_count or 0
    finally:
        await _close(channel)


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        with contextlib.suppress(*CHANNEL_ERRORS):
            await channel.close()


class DepthCache:
    """Every client queue's depth, walked again in the background; readers never wait.

    One task per daemon (`start`/`stop`, owned by the supervisor) walks the
    queues of `clients()` with `read`, then sleeps `interval` seconds, or
    `DUTY` times as long as the walk took if that is longer, then waits for a
    reader: nobody reading, no walk. A listing, the
    console, `status` and /metrics read what the last walk found: a client
    registered since is None until the next walk, and so is everyone before
    the first one ends. While `connected()` is False no walk starts; a walk
    that fails keeps the previous answers and is logged.
    """

    def __init__(self, clients: Callable[[], Collection[str]],
                 read: Callable[[list[str]], Awaitable[Depths]],
                 connected: Callable[[], bool], interval: float = MAX_AGE) -> None:
        self._clients = clients
        self._read = read
        self._connected = connected
        self._interval = interval
        self._depths: Depths = {}
        self._wanted = asyncio.Event()  # read since the last walk began
        self._wanted.set()  # the first walk goes at start, so early readers see depths
        self._task: asyncio.Task[None] | None = None
        self._begun = 0  # walks started
        self._done = 0  # the number of the last walk that ended well
        self._ended = asyncio.Event()  # set and replaced at each walk's end
        self.walks = 0  # walks that ended well: how often the broker was asked for them all
        self.walked_at: float | None = None  # time.monotonic() at the end of the last one
        self.took = 0.0  # seconds the last walk took

    @property
    def depths(self) -> Mapping[str, int | None]:
        """Client id -> items ready in its queue, as the last walk found them."""
        self._wanted.set()
        return self._depths

    def get(self, client_id: str) -> int | None:
        """The client's depth as last walked; None if not walked yet or its queue is gone."""
        self._wanted.set()
        return self._depths.get(client_id)

    def start(self) -> None:
        """Begin walking now, in the background."""
        assert self._task is None, "the depth cache is already running"
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Cancel the walker, and wait for it."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def refreshed(self) -> None:
        """Wait until a walk that begins after this call has ended well (tests, benchmarks)."""
        target = self._begun + 1
        self._wanted.set()
        while self._done < target:
            await self._ended.wait()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            started = time.monotonic()
            if self._connected():
                self._wanted.clear()
                await self._walk()
            took = time.monotonic() - started
            await asyncio.sleep(max(self._interval, DUTY * took))

    async def _walk(self) -> None:
        self._begun += 1
        number, started = self._begun, time.monotonic()
        try:
            async with asyncio.timeout(WALK_TIMEOUT):
                found = await self._read(sorted(self._clients()))
        except Exception as exc:  # the broker went away mid-walk, say: keep the last answers
            log.warning("depths.walk_failed", error=repr(exc))
        else:
            self._depths = found
            self.walks, self._done = self.walks + 1, number
            self.walked_at = time.monotonic()
            self.took = self.walked_at - started
        finally:
            self._ended.set()
            self._ended = asyncio.Event()
