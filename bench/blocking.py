"""Blocking-queue throughput: the daemon against a raw aio-pika consumer, same run, same topology.

    .venv/bin/python bench/blocking.py --clients 1000 --items 20 --queue-type quorum

N registered clients each get M `system.noop` items. Both sides drain the
same queues (declared with `daemon.broker.topology`: quorum by default, single
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
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from bench import machine
from bench.broker import ITEM_TYPE
from bench.daemon_run import DAEMON, VARIANTS, run_daemon
from bench.harness import RAW, code_version, ensure_workdir, measure_runs, run_and_report, run_raw
from bench.window import Setup, Window

GOAL = 0.8  # daemon items/s over raw items/s, from the issue


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


def local_broker(args: argparse.Namespace) -> int | None:
    """The local broker's pid; exits 2 if it cannot hold the queues (it would hang)."""
    beam = machine.broker_pid()
    if beam is None:
        print("note: no local beam.smp: the broker's open-files limit and CPU are not read")
    elif problem := machine.limit_problem(beam, args.clients, args.queue_type):
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    return beam


def plan(setup: Setup, run: int) -> list[tuple[str, Callable[[], Awaitable[Window]]]]:
    """One run's windows: raw, then each daemon variant."""
    args = setup.args
    out: list[tuple[str, Callable[[], Awaitable[Window]]]] = []
    if not args.skip_raw:
        raw_options = ["--clients", str(args.clients)]
        out.append((f"{RAW} consumer", partial(run_raw, setup, run, raw_options)))
    for name in [] if args.skip_daemon else args.variants:
        out.append((f"daemon, {name}", partial(run_daemon, setup, run, VARIANTS[name])))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    beam = local_broker(args)
    ensure_workdir(args)
    version = code_version()
    print(f"{args.clients} clients x {args.items} {ITEM_TYPE} items, {args.queue_type} queues, "
          f"prefix {args.prefix!r}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"code: {version}; daemon: {args.daemon_command}; work dir {args.workdir}")
    measure_all = partial(measure_runs, Setup, plan, args, beam)
    return run_and_report(measure_all, version, GOAL)


if __name__ == "__main__":
    sys.exit(main())
