"""Non-blocking-queue throughput: the daemon against raw aio-pika, Celery and Dramatiq, same run.

    .venv/bin/python bench/nonblocking.py --items 20000 --clients 100 --runs 3

N `system.noop` items (`--items`, round `--clients` client ids) are drained
from a queue of `--queue-type` (quorum by default, as the daemon's) by:

* raw: bench/raw.py as a child process, one aio-pika consumer on
  `<prefix>.nonblocking` (declared with `daemon.broker.topology`), prefetch
  `--prefetch` (32, the daemon's S2SQ_NONBLOCKING_CONCURRENCY), a callback
  that only acks: the baseline (ratio 1.00);
* daemon: the real `s2s-queue run` as a child, its own defaults, no client
  registered (non-blocking items need none): its non-blocking pool, prefetch 32,
  in one process;
* daemon-auto: the same with `S2SQ_PROCESSES=auto`: the pool in one process
  per core (the supervisor and its worker processes, each prefetch 32), CPU
  read over all of them;
* celery: a Celery prefork worker (`--concurrency` processes, acks late,
  prefetch multiplier `--prefetch` / `--concurrency`, results ignored, no
  remote control, gossip, mingle or heartbeat) on `<prefix>.celery`, task
  `bench.noop` (bench/celery_app.py);
* dramatiq: a Dramatiq worker (`--concurrency` processes x `--threads`
  threads, its default middleware; its prefetch is 2 x threads per process)
  on `<prefix>.dramatiq`, actor `noop` (bench/dramatiq_app.py).

Each is measured as bench/blocking.py measures (bench/window.py): the child
starts on an empty queue and attaches its consumers (the daemon: until it
answers `status`; the workers: until a passive declare counts their
consumers); then it is frozen with SIGSTOP (a worker's whole process group),
the queue is pre-filled with publisher confirms (Celery and Dramatiq tasks as
their own libraries encode them), and once the machine has been quiet for a
second the child gets SIGCONT and the window opens. It closes at the last
ack (raw: the child's own clock), at the daemon's last `item.succeeded` log
line, or when the workers' tasks have all run (each adds one to a counter in
shared memory, bench/tasks.py; Celery and Dramatiq log nothing per task at
their default level); the log and the counters are polled every 25 ms. CPU of
the child (with its pool processes), the broker (beam.smp), this script and
the rest of the machine is read from /proc over the window.

Everything lives under `--prefix` (default `s2sbenchnb`) and is deleted at
the start, after each window and at the end. A window that the broker's
restart interrupts, or during which other processes used the cores, is
measured again (bench/harness.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`make bench`): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from importlib import metadata

from bench import machine
from bench.broker import ITEM_TYPE, prefill_nonblocking
from bench.daemon_run import DAEMON, VARIANTS, run_daemon
from bench.harness import RAW, code_version, ensure_workdir, measure_runs, run_and_report, run_raw
from bench.window import Setup, Window
from bench.workers import FRAMEWORKS, run_worker

SIDES = ("raw", "daemon", "daemon-auto", "dramatiq", "celery")
ONE_PROCESS_GOAL = 0.95  # x raw aio-pika, the daemon in one process (issue 15)
AUTO_GOAL = 1.2  # x Dramatiq (--concurrency processes x --threads), daemon with processes=auto


class NonBlockingSetup(Setup):
    """`--items` in all, published to the non-blocking queue; no client registered."""

    @property
    def expected(self) -> int:
        return int(self.args.items)

    @property
    def registered(self) -> list[str]:
        return []

    @property
    def others(self) -> list[str]:
        return [name for f in FRAMEWORKS.values() for name in f.names(self.args.prefix)]

    async def fill(self) -> None:
        await prefill_nonblocking(self.connection, self.topo, self.ids, self.args.items)


def side_windows(setup: Setup, run: int) -> list[tuple[str, Callable[[], Awaitable[Window]]]]:
    """The windows of one run, in `--sides` order: (label, how to measure it)."""
    args = setup.args
    out: list[tuple[str, Callable[[], Awaitable[Window]]]] = []
    for side in args.sides:
        if side == "raw":
            raw_options = ["--shared", "--prefetch", str(args.prefetch)]
            out.append((f"{RAW} consumer", partial(run_raw, setup, run, raw_options)))
        elif side == "daemon":
            out.append(("daemon, default (1 process)",
                        partial(run_daemon, setup, run, VARIANTS["default"])))
        elif side == "daemon-auto":
            out.append((f"daemon, S2SQ_PROCESSES=auto ({len(os.sched_getaffinity(0))})",
                        partial(run_daemon, setup, run, VARIANTS["auto"])))
        else:
            out.append((side, partial(run_worker, setup, run, FRAMEWORKS[side])))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=20_000, help="items in all, per window")
    parser.add_argument("--clients", type=int, default=100,
                        help="client ids the items go round (routing key and header)")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="what to measure, comma-separated, in order, of: " + ", ".join(SIDES))
    parser.add_argument("--concurrency", type=int, default=2,
                        help="Celery and Dramatiq worker processes (default: one per core of 2)")
    parser.add_argument("--threads", type=int, default=8, help="Dramatiq threads per process")
    parser.add_argument("--prefetch", type=int, default=32,
                        help="raw consumer's prefetch, and Celery's in all (the daemon's"
                             " S2SQ_NONBLOCKING_CONCURRENCY default)")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--prefix", default="s2sbenchnb", help="every name used starts with it")
    parser.add_argument("--runs", type=int, default=1, help="rounds of every side to measure")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per window")
    parser.add_argument("--workdir", default=None,
                        help="where daemon and worker logs go (default: a temp dir)")
    parser.add_argument("--daemon-command", default=str(DAEMON),
                        help="how to start the daemon (`run` is appended; default: %(default)s)")
    parser.add_argument("--py-spy", metavar="DIR", default=None,
                        help="profile the daemon's windows with py-spy into DIR (skews them)")
    args = parser.parse_args(argv)
    if min(args.items, args.clients, args.runs, args.concurrency, args.threads,
           args.prefetch) < 1:
        parser.error("every count must be at least 1")
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(args.sides) - set(SIDES):
        parser.error(f"unknown side(s) {', '.join(sorted(unknown))}; use {', '.join(SIDES)}")
    return args


def installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed: pip install -e '.[bench]')"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    beam = machine.broker_pid()
    if beam is None:
        print("note: no local beam.smp: the broker's CPU is not read")
    ensure_workdir(args)
    version = code_version()
    print(f"{args.items} {ITEM_TYPE} items over {args.clients} clients, {args.queue_type} queues,"
          f" prefix {args.prefix!r}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"Celery {installed('celery')} / Dramatiq {installed('dramatiq')}: {args.concurrency}"
          f" processes (Dramatiq: x {args.threads} threads); prefetch {args.prefetch} (raw,"
          f" Celery); Python {sys.version.split()[0]}")
    print(f"code: {version}; daemon: {args.daemon_command}; work dir {args.workdir}")
    measure_all = partial(measure_runs, NonBlockingSetup, side_windows, args, beam)
    versus = [("daemon auto", "dramatiq", AUTO_GOAL), ("daemon default", "dramatiq", None)]
    return run_and_report(measure_all, version, ONE_PROCESS_GOAL, versus)


if __name__ == "__main__":
    sys.exit(main())
