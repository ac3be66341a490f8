"""Blocking-queue throughput: the daemon against a raw aio-pika consumer, same run, same topology.

    .venv/bin/python bench/blocking.py --clients 1000 --items 20 --queue-type quorum

N registered clients each get M `system.noop` items. Both sides drain the
same queues (declared with `daemon.topology`: quorum by default, single
active consumer), with prefetch 1 per consumer and one ack per item:

* raw: bench/raw.py as a child process, one plain aio-pika consumer per
  queue, 100 consumers per channel, a callback that only acks;
* daemon: the real `s2s-queue run` as a child process, in one or more
  configurations (`--variants`: `default` runs the daemon's own defaults; the
  others turn the per-item log line and `item.succeeded` event on or off).

Both are measured the same way, so start-up never counts: the child starts
on empty queues and attaches every consumer (the daemon: until it answers a
`status` control message); then it is frozen with SIGSTOP, every queue is
pre-filled (publisher confirms), and once the machine has been quiet for a
second the child gets SIGCONT and the window opens. It closes at the last ack
(raw: the child's own clock) or when the daemon's last item has succeeded:
its last `item.succeeded` log line (the log file is polled every 25 ms) or,
for a daemon that logs nothing per item, when its CPU time stops growing (the
queues are then checked empty). CPU of the child, the broker (beam.smp), this
script and the rest of the machine is read from /proc over the window.

Everything lives under `--prefix` (default `s2sbench`) and is deleted at the
start (leftovers of an interrupted run), between windows and at the end. A
window that the broker's restart interrupts (someone else's test, say) is
measured again once the broker is back.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`make bench`): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import hashlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import aio_pika
import orjson

from bench import machine
from bench.broker import AMQP_URL, ITEM_TYPE, declare_everything
from bench.daemon_run import DAEMON, ROOT, VARIANTS, run_daemon
from bench.window import DISTURBED_CORES, START_TIMEOUT_S, Setup, Window, measure, stop_child

RAW_WORKER = Path(__file__).resolve().parent / "raw.py"
RAW = "raw aio-pika"
GOAL = 0.8  # daemon items/s over raw items/s, from the issue
RETRIES = 2  # times a window is measured again (broker gone, or cores shared)


# -- raw side ------------------------------------------------------------------------------


async def json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await stream.readline()
    if not line:
        raise RuntimeError("the raw worker exited early (see its stderr above)")
    result: dict[str, Any] = orjson.loads(line)
    return result


async def run_raw(setup: Setup, run: int) -> Window:
    args = setup.args
    await declare_everything(setup.connection, setup.topo, setup.ids)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RAW_WORKER), "--prefix", args.prefix,
        "--queue-type", args.queue_type, "--clients", str(args.clients),
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


# -- report ---------------------------------------------------------------------------------


def share(seconds: float, window: float) -> str:
    """CPU seconds as a share of one core over the window."""
    return f"{seconds / window * 100:.0f}%"


def per_item(seconds: float, items: int) -> str:
    return f"{seconds / items * 1e6:.0f}"


def ratios(windows: list[Window]) -> dict[str, list[float]]:
    """Each daemon side's items/s over the raw items/s of the same run."""
    raw = {w.run: w.rate for w in windows if w.side == RAW}
    out: dict[str, list[float]] = {}
    for w in windows:
        if w.side != RAW and w.run in raw:
            out.setdefault(w.side, []).append(w.rate / raw[w.run])
    return out


def report(windows: list[Window]) -> None:
    """One table: throughput, ratio to raw, and who used the CPU (% of one core, µs per item)."""
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
        verdict = "meets the goal of 0.8" if median >= GOAL else f"below the goal of {GOAL}"
        print(f"{side}: {median:.2f} x raw (median of {len(values)} runs), {verdict}")


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20, help="items per client")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--prefix", default="s2sbench", help="every name used starts with it")
    parser.add_argument("--runs", type=int, default=1, help="raw + daemon rounds to measure")
    parser.add_argument("--variants", default="default",
                        help="daemon configurations to measure, comma-separated, of: "
                             + ", ".join(VARIANTS))
    parser.add_argument("--skip-raw", action="store_true")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per window")
    parser.add_argument("--workdir", default=None,
                        help="where the clients file and daemon logs go (default: a temp dir)")
    parser.add_argument("--daemon-command", default=str(DAEMON),
                        help="how to start the daemon (`run` is appended): measure a patched"
                             " build before changing the code (default: %(default)s)")
    parser.add_argument("--py-spy", metavar="DIR", default=None,
                        help="profile the daemon's windows with py-spy into DIR (skews the"
                             " numbers: the profiler shares the machine's cores)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.items < 1 or args.runs < 1:
        parser.error("--clients, --items and --runs must be at least 1")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; use {', '.join(VARIANTS)}")
    return args


async def with_retries(setup: Setup, window: Callable[[], Awaitable[Window]]) -> Window:
    """Measure a window, again if the broker went away or other processes used the cores.

    At most RETRIES times more; of disturbed windows, the least disturbed one is kept.
    """
    best: Window | None = None
    for attempt in range(RETRIES + 1):
        try:
            measured = await window()
        except Exception as exc:
            if not setup.lost.is_set() or attempt == RETRIES:
                raise
            print(f"  the broker went away ({type(exc).__name__}); measuring again once it is"
                  " back")
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


def local_broker(args: argparse.Namespace) -> int | None:
    """The local broker's pid; exits 2 if it cannot hold the queues (it would hang)."""
    beam = machine.broker_pid()
    if beam is None:
        print("note: no local beam.smp: the broker's open-files limit and CPU are not read")
    elif problem := machine.limit_problem(beam, args.clients, args.queue_type):
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    return beam


async def bench(args: argparse.Namespace, beam: int | None, windows: list[Window]) -> None:
    """Measure every run's windows into `windows` (kept by the caller if a later one fails)."""
    # SIGTERM cancels the run, so the children are stopped and the queues deleted.
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def on_sigterm() -> None:
        terminated.set()
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await measure_all(args, beam, windows)
    except asyncio.CancelledError:
        if terminated.is_set():
            raise
        raise RuntimeError("cancelled from inside, not by SIGTERM (a bug here?)") from None


async def measure_all(args: argparse.Namespace, beam: int | None, windows: list[Window]) -> None:
    connection = await aio_pika.connect_robust(
        AMQP_URL, client_properties={"connection_name": "bench"}
    )
    lost = asyncio.Event()
    connection.close_callbacks.add(lambda *_: lost.set())
    setup = Setup(args, connection, beam, lost)
    async with connection:
        await setup.clean()
        for run in range(1, args.runs + 1):
            if not args.skip_raw:
                print(f"run {run}: {RAW} consumer")
                windows.append(await with_retries(setup, partial(run_raw, setup, run)))
                print(f"  {windows[-1].rate:.0f} items/s")
            for name in [] if args.skip_daemon else args.variants:
                print(f"run {run}: daemon, {name}")
                window = partial(run_daemon, setup, run, VARIANTS[name])
                windows.append(await with_retries(setup, window))
                print(f"  {windows[-1].rate:.0f} items/s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    beam = local_broker(args)
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix=f"{args.prefix}-")
    version = code_version()
    print(f"{args.clients} clients x {args.items} {ITEM_TYPE} items, {args.queue_type} queues, "
          f"prefix {args.prefix!r}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"code: {version}; daemon: {args.daemon_command}; work dir {args.workdir}")
    windows: list[Window] = []
    code = 0
    try:
        asyncio.run(bench(args, beam, windows))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted: children stopped, queues deleted", file=sys.stderr)
        code = 130
    except Exception as exc:  # report the windows measured so far, then the error
        traceback.print_exc()
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    if windows:
        print()
        report(windows)
    if code_version() != version:
        print(f"warning: the code changed during the run (now {code_version()}): the windows"
              " may have measured different daemons")
    return code


if __name__ == "__main__":
    sys.exit(main())
