"""One measured window: freeze the child, pre-fill, thaw it, time the drain, read the CPU."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from bench import machine
from bench.broker import client_ids, delete_everything, prefill
from bench.machine import Cpu
from daemon.broker.topology import Topology

START_TIMEOUT_S = 600  # a child attaching its consumers (1,000 quorum queues take seconds)
DISTURBED_CORES = 0.15  # other processes' CPU (in cores) above which a window is marked


class BrokerLost(Exception):
    """Raised when the broker connection dropped during a window (its numbers are void)."""


@dataclass
class Setup:
    """What every window needs: the options, the broker, and whether the broker went away."""

    args: argparse.Namespace
    connection: AbstractRobustConnection
    beam: int | None
    lost: asyncio.Event

    @property
    def topo(self) -> Topology:
        return Topology(self.args.prefix, self.args.queue_type)

    @property
    def ids(self) -> list[str]:
        return client_ids(self.args.clients)

    @property
    def expected(self) -> int:
        """Items in one window."""
        return int(self.args.clients * self.args.items)

    @property
    def registered(self) -> list[str]:
        """The clients the daemon is started with."""
        return self.ids

    async def fill(self) -> None:
        """Pre-fill what the child drains: `--items` noop items to every client queue."""
        await prefill(self.connection, self.topo, self.ids, self.args.items)

    @property
    def others(self) -> list[str]:
        """Names under the prefix that are neither the daemon's nor listed by the broker."""
        return []

    async def clean(self) -> None:
        """Delete everything under the prefix, once the broker is there."""
        async with asyncio.timeout(START_TIMEOUT_S):
            await self.connection.connected.wait()
        await delete_everything(self.connection, self.topo, self.ids, self.others)

    async def clean_quietly(self) -> None:
        """`clean`, in a `finally`: a failure is reported, the next `clean` tries again."""
        try:
            await self.clean()
        except Exception as exc:  # never hide the error being handled
            print(f"  warning: clean-up failed: {type(exc).__name__}: {exc}")


@dataclass
class Window:
    """One side's drain of the pre-filled queues."""

    run: int
    side: str
    items: int
    seconds: float
    cpu: Cpu

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    @property
    def other_cores(self) -> float:
        """CPU that other processes used during the window, in cores."""
        return self.cpu.other / self.seconds

    @property
    def disturbed(self) -> bool:
        """Other processes used the cores during the window: its numbers are doubtful."""
        return self.other_cores > DISTURBED_CORES


def signal_child(pid: int, signum: int) -> None:
    """Signal a child; a child that leads its own process group gets it group-wide.

    A worker with a pool (Celery prefork, Dramatiq's processes) is started in a
    session of its own, so freezing it freezes every process that holds a
    consumer, and thawing it thaws them all.
    """
    if os.getpgid(pid) == pid:
        os.killpg(pid, signum)
    else:
        os.kill(pid, signum)


async def measure(
    setup: Setup, run: int, side: str, pid: int, wait_done: Callable[[], Awaitable[float]],
    fill: Callable[[], Awaitable[Any]] | None = None,
) -> Window:
    """Freeze child `pid`, pre-fill, wait for quiet, thaw it and time the drain.

    `fill` pre-fills (default: `setup.fill`); `wait_done` returns when the last
    item is done, in `time.monotonic()`.
    """
    signal_child(pid, signal.SIGSTOP)
    try:
        await (fill or setup.fill)()
        await machine.wait_quiet(pid, setup.beam)
        setup.lost.clear()
        cpu0 = Cpu.sample(pid, setup.beam)
        start = time.monotonic()
    finally:
        signal_child(pid, signal.SIGCONT)
    end = await until_done_or_lost(setup, wait_done)
    cpu = Cpu.sample(pid, setup.beam) - cpu0
    return Window(run, side, setup.expected, end - start, cpu)


async def until_done_or_lost(setup: Setup, wait_done: Callable[[], Awaitable[float]]) -> float:
    done = asyncio.ensure_future(wait_done())
    lost = asyncio.ensure_future(setup.lost.wait())
    try:
        async with asyncio.timeout(setup.args.timeout):
            await asyncio.wait({done, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (done, lost):
            task.cancel()
    if not done.cancelled() and done.done():
        return done.result()
    raise BrokerLost("the broker connection dropped during the window")


async def stop_child(proc: asyncio.subprocess.Process, grace_s: float = 60) -> int:
    """SIGTERM (if still running) and wait; SIGKILL if it does not exit in time.

    A child leading its own process group is thawed, and if need be killed, group-wide.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            signal_child(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                signal_child(proc.pid, signal.SIGKILL)
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1
