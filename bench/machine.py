"""What the benchmark reads from the machine: CPU time from /proc and the broker's limits."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

FILES_PER_QUEUE = {"quorum": 3, "classic": 1}  # DESIGN.md fact 5
FILES_SPARE = 500
POLL_S = 0.025  # how often the end of a window is looked for
SETTLE_S = 1.0  # the window opens once the machine has been quiet this long
QUIET_CORES = 0.3  # "quiet": less CPU than this (in cores) used besides this script
QUIET_WAIT_S = 300  # measure anyway (with a warning) after waiting this long for quiet
IDLE_S = 0.3  # a child that used no CPU for this long after its last tick is done


def clock_tick() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / clock_tick()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a worker's pool), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                todo.extend(children)
        except OSError:  # exited meanwhile
            continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and of its descendants still running (a pool that stays up)."""
    total = cpu_seconds(pid)
    for each in descendants(pid):
        try:
            total += cpu_seconds(each)
        except OSError:  # exited meanwhile
            continue
    return total


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of all cores since boot, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / clock_tick()


@dataclass(frozen=True)
class Cpu:
    """CPU seconds: the measured child and its pool, the broker, this script, the machine."""

    child: float
    broker: float
    bench: float
    machine: float

    @classmethod
    def sample(cls, child: int, beam: int | None) -> Cpu:
        times = os.times()
        return cls(tree_cpu_seconds(child), cpu_seconds(beam) if beam else 0.0,
                   times.user + times.system, machine_busy_seconds())

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.child - other.child, self.broker - other.broker,
                   self.bench - other.bench, self.machine - other.machine)

    @property
    def other(self) -> float:
        """Everything else on the machine; it must stay near zero for a clean window."""
        return max(0.0, self.machine - self.child - self.broker - self.bench)


async def wait_quiet(child: int, beam: int | None) -> None:
    """Wait until the machine is quiet for SETTLE_S seconds.

    That is: the broker is done with the pre-fill, and nobody else (a test
    suite, say) uses the cores the window is about to measure.
    """
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        before = Cpu.sample(child, beam)
        await asyncio.sleep(SETTLE_S)
        used = Cpu.sample(child, beam) - before
        busy = (used.machine - used.bench) / SETTLE_S
        if busy <= QUIET_CORES:
            return
        if time.monotonic() > deadline:
            print(f"  warning: the machine stays busy ({busy:.0%} of a core besides this script,"
                  f" the broker {used.broker / SETTLE_S:.0%}); measuring anyway")
            return


async def wait_cpu_idle(pid: int) -> float:
    """When `pid` last used CPU (time.monotonic()), once it has used none for IDLE_S."""
    last_cpu, last_busy = cpu_seconds(pid), time.monotonic()
    while True:
        await asyncio.sleep(POLL_S)
        cpu, now = cpu_seconds(pid), time.monotonic()
        if cpu != last_cpu:
            last_cpu, last_busy = cpu, now
        elif now - last_busy >= IDLE_S:
            return last_busy


# -- the broker's process ------------------------------------------------------------------


def broker_pid(port: int | None = None) -> int | None:
    """The Erlang VM of the broker the bench uses (listening on `port`, default that of
    S2SQ_AMQP_URL): the three nodes of scripts/rabbitmq-cluster.sh may run beside it."""
    if port is None:
        port = urlsplit(os.environ.get("S2SQ_AMQP_URL", "amqp://127.0.0.1:5672/")
                        .split(",")[0]).port or 5672
    found = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                           text=True, check=False)
    listening = re.search(r'"beam\.smp",pid=(\d+)', found.stdout)
    if listening:
        return int(listening.group(1))
    for pattern in (["-u", "rabbitmq", "-x", "beam.smp"], ["-f", "beam.smp"]):
        found = subprocess.run(["pgrep", *pattern], capture_output=True, text=True, check=False)
        pids = found.stdout.split()
        if pids:
            return int(pids[0])
    return None


def open_files_limit(pid: int) -> int | None:
    """The soft "Max open files" of a process (None: unlimited or not shown)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None


def files_needed(clients: int, queue_type: str) -> int:
    return clients * FILES_PER_QUEUE[queue_type] + FILES_SPARE


def limit_problem(pid: int, clients: int, queue_type: str) -> str | None:
    """Why the broker cannot hold this many queues, or None (DESIGN.md fact 5).

    A broker short of file handles hangs without a word, so say it up front.
    """
    limit, needed = open_files_limit(pid), files_needed(clients, queue_type)
    if limit is None or limit >= needed:
        return None
    return (f"RabbitMQ's open-files limit is {limit:,}; {clients:,} {queue_type} queues need "
            f"about {needed:,}: run scripts/ensure-rabbitmq.sh (as root), which raises it "
            "and restarts the broker (DESIGN.md fact 5).")
