"""The daemon's side: `s2s-queue run` as a child, in the configurations worth comparing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika

from bench import machine
from bench.broker import AMQP_URL, clients_toml, items_left
from bench.window import START_TIMEOUT_S, Setup, Window, measure, stop_child
from daemon.broker.producer import NoAnswer, send_control

ROOT = Path(__file__).resolve().parent.parent
DAEMON = ROOT / ".venv" / "bin" / "s2s-queue"
LATE_WORK_S = 0.2  # daemon CPU after an "idle" end: more means it was not the end


@dataclass(frozen=True)
class Variant:
    """A daemon configuration to measure, and how to see its last item succeed."""

    name: str
    env: dict[str, str]
    # "log": count item.succeeded log lines; "idle": the daemon's CPU time stops
    # growing (then the queues are checked empty), for a daemon that logs nothing
    # per item. Neither adds a queue or a consumer to the broker's work.
    done_by: str


EVENTS_ON = {"S2SQ_SUCCEEDED_EVENTS": "true"}
EVENTS_OFF = {"S2SQ_SUCCEEDED_EVENTS": "false"}
NO_ITEM_LOG = {"S2SQ_LOG_LEVEL": "warning"}  # item.succeeded is an info line

VARIANTS = {
    # Whatever the daemon's own defaults are (`S2SQ_*` unset): what production runs.
    "default": Variant("default", {}, "log"),
    # A JSON log line and an item.succeeded event per item.
    "events-log": Variant("events-log", EVENTS_ON, "log"),
    # An item.succeeded event per item, no per-item log line.
    "events": Variant("events", EVENTS_ON | NO_ITEM_LOG, "idle"),
    # A JSON log line per item, no item.succeeded events (the other events stay).
    "log": Variant("log", EVENTS_OFF, "log"),
    # Neither: what the daemon costs beyond the raw consumer when it reports nothing per item.
    "bare": Variant("bare", EVENTS_OFF | NO_ITEM_LOG, "idle"),
    # The defaults without the history of what ran (issue 16): what history costs.
    "no-history": Variant("no-history", {"S2SQ_HISTORY": "false"}, "log"),
    # The defaults, with the non-blocking pool in one process per core (S2SQ_PROCESSES).
    "auto": Variant("auto", {"S2SQ_PROCESSES": "auto"}, "log"),
}


def daemon_env(args: argparse.Namespace, clients_file: Path, variant: Variant) -> dict[str, str]:
    return {
        **os.environ, "S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": args.prefix,
        "S2SQ_QUEUE_TYPE": args.queue_type, "S2SQ_HTTP_PORT": "0",
        "S2SQ_LOG_FORMAT": "json", "S2SQ_LOG_LEVEL": "info",
        "S2SQ_CLIENTS_FILE": str(clients_file), **variant.env,
    }


async def wait_ready(proc: asyncio.subprocess.Process, setup: Setup) -> int:
    """Wait until the daemon answers a `status` control message; returns its client count.

    The control consumer starts after every client consumer, so an answer means
    start-up is over, whatever the log level (`daemon.ready` is an info line).
    """
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} before it was ready")
        try:
            answer = await send_control(setup.connection, setup.topo, {"action": "status"},
                                        timeout=2)
        except NoAnswer:
            continue
        except aio_pika.exceptions.ChannelNotFoundEntity:  # no control exchange yet
            await asyncio.sleep(0.2)
            continue
        return len(answer.get("clients", []))


@contextlib.asynccontextmanager
async def started_daemon(
    setup: Setup, variant: Variant
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """`s2s-queue run`, logging to the work dir, ready; stopped (exit 0) and cleaned after."""
    args = setup.args
    workdir = Path(args.workdir)
    clients_file = workdir / "clients.toml"
    clients_file.write_text(clients_toml(setup.registered))
    log_path = workdir / f"daemon-{args.queue_type}-{variant.name}-{time.strftime('%H%M%S')}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(args.daemon_command), "run", env=daemon_env(args, clients_file, variant),
            stdin=subprocess.DEVNULL, stdout=log_file, cwd=workdir,
            # A group of its own: freezing it freezes its worker processes (S2SQ_PROCESSES)
            # too, and its CPU is read with theirs (bench/window.py, bench/machine.py).
            start_new_session=True,
        )
    print(f"  daemon pid {proc.pid}, log {log_path}")
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            ready = await wait_ready(proc, setup)
        if ready != len(setup.registered):
            raise RuntimeError(f"the daemon is ready with {ready} clients,"
                               f" not {len(setup.registered)}")
        yield proc, log_path
    finally:
        code = await stop_child(proc)
        await setup.clean_quietly()
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code} after SIGTERM (log {log_path})")


class LogCounter:
    """Counts `item.succeeded` lines in the daemon's log file as it grows."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._partial = b""
        self._count = 0

    async def __call__(self) -> int:
        *lines, self._partial = (self._partial + self._file.read()).split(b"\n")
        self._count += sum(1 for line in lines if b'"event":"item.succeeded"' in line)
        return self._count


async def wait_count(count: Callable[[], Awaitable[int]], expected: int) -> float:
    """Poll `count` until it reaches `expected`; returns when, in time.monotonic()."""
    while True:
        if await count() >= expected:
            return time.monotonic()
        await asyncio.sleep(machine.POLL_S)


async def check_drained(pid: int, prefix: str) -> None:
    """After an "idle" end: every item gone, and the daemon did not go on working."""
    cpu = machine.cpu_seconds(pid)
    left = -1
    for _ in range(10):  # quorum counts catch up within seconds
        left = await asyncio.to_thread(items_left, prefix)
        if left == 0:
            break
        await asyncio.sleep(2)
    worked = machine.cpu_seconds(pid) - cpu
    if left or worked > LATE_WORK_S:
        raise RuntimeError(f"the window closed too early: {left} items left, and the daemon"
                           f" used {worked:.2f} s CPU afterwards")


async def run_daemon(setup: Setup, run: int, variant: Variant) -> Window:
    args = setup.args
    async with started_daemon(setup, variant) as (proc, log_path):
        count = LogCounter(log_path)

        async def wait_done() -> float:
            if variant.done_by == "idle":
                return await machine.wait_cpu_idle(proc.pid)
            return await wait_count(count, setup.expected)

        async with profiled(proc.pid, args.py_spy, f"daemon-{args.queue_type}-{variant.name}"):
            window = await measure(setup, run, f"daemon {variant.name}", proc.pid, wait_done)
        if variant.done_by == "idle":
            await check_drained(proc.pid, args.prefix)
        return window


@contextlib.asynccontextmanager
async def profiled(pid: int, out_dir: str | None, name: str) -> AsyncIterator[None]:
    """Sample `pid` with py-spy while the body runs (`--py-spy DIR`); nothing otherwise.

    Collapsed stacks go to DIR/<name>.txt, one `frame;frame;... count` line per
    stack (what flamegraph.pl, inferno or speedscope.app read). py-spy takes CPU
    from the same cores: profiled windows find hot spots; they are not the numbers.
    """
    if out_dir is None:
        yield
        return
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    out = Path(out_dir) / f"{name}.txt"
    spy_proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--nonblocking", "--format", "raw", "-o", str(out),
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy_proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await spy_proc.wait()
        print(f"  profile: {out}")
