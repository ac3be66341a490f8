"""What every benchmark script shares: the raw side, retries, the report and the main loop."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from bench.broker import AMQP_URL, declare_everything
from bench.daemon_run import ROOT
from bench.window import DISTURBED_CORES, START_TIMEOUT_S, Setup, Window, measure, stop_child

RAW_WORKER = Path(__file__).resolve().parent / "raw.py"
RAW = "raw aio-pika"
RETRIES = 2  # times a window is measured again (broker gone, or cores shared)


# -- raw side ------------------------------------------------------------------------------


async def json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await stream.readline()
    if not line:
        raise RuntimeError("the raw worker exited early (see its stderr above)")
    result: dict[str, Any] = orjson.loads(line)
    return result


async def run_raw(setup: Setup, run: int, options: Sequence[str]) -> Window:
    """bench/raw.py with `options` (which queues, what prefetch) as the measured child."""
    args = setup.args
    await declare_everything(setup.connection, setup.topo, setup.registered)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RAW_WORKER), "--prefix", args.prefix,
        "--queue-type", args.queue_type, *options,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None
    assert stdout is not None
    try:
        stdin.write(f"{setup.expected}\n".encode())
        await stdin.drain()
        async with asyncio.timeout(START_TIMEOUT_S):
            await json_line(stdout)  # ready

        async def wait_done() -> float:
            return float((await json_line(stdout))["last"])

        return await measure(setup, run, RAW, proc.pid, wait_done)
    finally:
        stdin.close()
        await stop_child(proc)
        await setup.clean_quietly()


async def with_retries(setup: Setup, window: Callable[[], Awaitable[Window]]) -> Window:
    """Measure a window, again if the broker went away or other processes used the cores.

    At most RETRIES times more; of disturbed windows, the least disturbed one is kept
    (also when the broker goes away during the last try).
    """
    best: Window | None = None
    for attempt in range(RETRIES + 1):
        try:
            measured = await window()
        except Exception as exc:
            if not setup.lost.is_set() or (attempt == RETRIES and best is None):
                raise
            then = ("keeping the (disturbed) window measured before" if attempt == RETRIES
                    else "measuring again once it is back")
            print(f"  the broker went away ({type(exc).__name__}); {then}")
            await setup.clean()
            continue
        if best is None or measured.other_cores < best.other_cores:
            best = measured
        if not measured.disturbed:
            break
        if attempt < RETRIES:
            print(f"  other processes used {measured.other_cores:.0%} of a core meanwhile;"
                  " measuring again")
    if best is None:
        raise RuntimeError("no window measured")
    return best


# -- report ---------------------------------------------------------------------------------


def share(seconds: float, window: float) -> str:
    """CPU seconds as a share of one core over the window."""
    return f"{seconds / window * 100:.0f}%"


def per_item(seconds: float, items: int) -> str:
    return f"{seconds / items * 1e6:.0f}"


def ratios(windows: list[Window]) -> dict[str, list[float]]:
    """Each other side's items/s over the raw items/s of the same run."""
    raw = {w.run: w.rate for w in windows if w.side == RAW}
    out: dict[str, list[float]] = {}
    for w in windows:
        if w.side != RAW and w.run in raw:
            out.setdefault(w.side, []).append(w.rate / raw[w.run])
    return out


# (side, other side, the ratio side/other that is the goal, if any)
Versus = tuple[str, str, float | None]


def report(windows: list[Window], goal: float | None = None,
           versus: Sequence[Versus] = ()) -> None:
    """One table: throughput, ratio to raw, and who used the CPU (% of one core, µs per item);
    then each side's medians, and the `versus` ratios between two sides of the same run.

    `goal`: the ratio to raw the daemon should reach, if there is one.
    """
    raw = {w.run: w.rate for w in windows if w.side == RAW}
    head = (f"{'run':<4}{'side':<20}{'items/s':>8}{'ratio':>7}{'window s':>10}"
            f"{'child':>7}{'µs/item':>9}{'broker':>8}{'µs/item':>9}{'bench':>7}{'other':>7}")
    print(head)
    print("-" * len(head))
    for w in windows:
        c = w.cpu
        ratio = f"{w.rate / raw[w.run]:.2f}" if w.run in raw else "-"
        broker = ("-", "-")
        if c.broker:
            broker = (share(c.broker, w.seconds), per_item(c.broker, w.items))
        print(f"{w.run:<4}{w.side:<20}{w.rate:>8.0f}{ratio:>7}{w.seconds:>10.2f}"
              f"{share(c.child, w.seconds):>7}{per_item(c.child, w.items):>9}"
              f"{broker[0]:>8}{broker[1]:>9}"
              f"{share(c.bench, w.seconds):>7}{share(c.other, w.seconds):>7}"
              f"{' !' if w.disturbed else ''}")
    print("child/broker/bench/other: CPU over the window as % of one core (the machine has"
          f" {os.cpu_count()}); µs/item: CPU per item")
    if any(w.disturbed for w in windows):
        print(f"!: other processes used over {DISTURBED_CORES:.0%} of a core during the window;"
              " measure again on a quiet machine")
    for side, values in sorted(ratios(windows).items()):
        median = statistics.median(values)
        verdict = ""
        if goal is not None and side.startswith("daemon"):
            verdict = (f", meets the goal of {goal}" if median >= goal
                       else f", below the goal of {goal}")
        print(f"{side}: {median:.2f} x raw (median of {len(values)} runs){verdict}")
    medians(windows)
    for side, other, want in versus:
        compare(windows, side, other, want)


def medians(windows: list[Window]) -> None:
    """Each side's median items/s and CPU per item (child and broker) over its runs."""
    print(f"{'medians':<28}{'items/s':>8}{'child µs/item':>15}{'broker µs/item':>16}")
    for side in dict.fromkeys(w.side for w in windows):
        mine = [w for w in windows if w.side == side]
        rate = statistics.median(w.rate for w in mine)
        child = statistics.median(w.cpu.child / w.items * 1e6 for w in mine)
        broker = statistics.median(w.cpu.broker / w.items * 1e6 for w in mine)
        print(f"{side:<28}{rate:>8.0f}{child:>15.0f}{broker:>16.0f}")


def compare(windows: list[Window], side: str, other: str, want: float | None) -> None:
    """`side`'s items/s over `other`'s, run by run, and their median against `want`."""
    rates = {(w.side, w.run): w.rate for w in windows}
    runs = sorted({w.run for w in windows})
    values = [rates[side, r] / rates[other, r] for r in runs
              if (side, r) in rates and (other, r) in rates]
    if not values:
        return
    median = statistics.median(values)
    verdict = "" if want is None else (f", meets the goal of {want}" if median >= want
                                       else f", below the goal of {want}")
    each = ", ".join(f"{v:.2f}" for v in values)
    print(f"{side} / {other}: {median:.2f} (median of {len(values)} runs: {each}){verdict}")


# -- the main loop ----------------------------------------------------------------------------


def ensure_workdir(args: argparse.Namespace) -> None:
    """`--workdir`, made if missing; a new temp dir when not given."""
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix=f"{args.prefix}-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)


def code_version() -> str:
    """The commit measured, and which daemon/handlers files differ from it (others edit them)."""

    def git(*argv: str) -> str:
        out = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True,
                             check=False, timeout=30)
        return out.stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = git("status", "--porcelain", "--", "daemon", "handlers").splitlines()
    if not changed:
        return commit
    diff = hashlib.sha256(git("diff", "HEAD", "--", "daemon", "handlers").encode()).hexdigest()
    files = ", ".join(sorted(line[3:] for line in changed))
    return f"{commit} + uncommitted {files} (diff {diff[:8]})"


MeasureAll = Callable[[list[Window]], Awaitable[None]]
# One run's windows, in order: (label, how to measure it).
Plan = Callable[[Setup, int], list[tuple[str, Callable[[], Awaitable[Window]]]]]


async def measure_runs(
    setup_class: type[Setup], plan: Plan, args: argparse.Namespace, beam: int | None,
    windows: list[Window],
) -> None:
    """Connect, clean the prefix, and measure `plan`'s windows of every run into `windows`."""
    connection = await aio_pika.connect_robust(
        AMQP_URL, client_properties={"connection_name": "bench"}
    )
    lost = asyncio.Event()
    connection.close_callbacks.add(lambda *_: lost.set())
    setup = setup_class(args, connection, beam, lost)
    async with connection:
        await setup.clean()
        for run in range(1, args.runs + 1):
            for label, window in plan(setup, run):
                print(f"run {run}: {label}")
                windows.append(await with_retries(setup, window))
                print(f"  {windows[-1].rate:.0f} items/s")


async def until_sigterm(measure_all: MeasureAll, windows: list[Window]) -> None:
    """Measure every window into `windows` (kept by the caller if a later one fails).

    SIGTERM cancels the run, so the children are stopped and the queues deleted.
    """
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def on_sigterm() -> None:
        terminated.set()
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await measure_all(windows)
    except asyncio.CancelledError:
        if terminated.is_set():
            raise
        raise RuntimeError("cancelled from inside, not by SIGTERM (a bug here?)") from None


def run_and_report(measure_all: MeasureAll, version: str, goal: float | None = None,
                   versus: Sequence[Versus] = ()) -> int:
    """Run `measure_all`, then report what was measured, even after a failure; the exit code."""
    windows: list[Window] = []
    code = 0
    try:
        asyncio.run(until_sigterm(measure_all, windows))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted: children stopped, queues deleted", file=sys.stderr)
        code = 130
    except Exception as exc:  # report the windows measured so far, then the error
        traceback.print_exc()
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    if windows:
        print()
        report(windows, goal, versus)
    if code_version() != version:
        print(f"warning: the code changed during the run (now {code_version()}): the windows"
              " may have measured different daemons")
    return code
