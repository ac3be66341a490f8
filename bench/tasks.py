"""What the Celery and Dramatiq apps share: settings from the environment, and a task counter.

The benchmark (bench/workers.py) starts each worker with the S2SQ_BENCH_*
variables below. Celery and Dramatiq run tasks in pool processes that share no memory with the
benchmark, and neither logs a line per task at its default level. So each task
calls `count_one()`: every process that runs tasks keeps a 64-bit counter in
a file of its own (`<dir>/<pid>`, memory-mapped: no system call per task), and
the benchmark adds the files up (`total`) as it polls for the end of the window.
The directory comes from S2SQ_BENCH_COUNTS.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

COUNTS_ENV = "S2SQ_BENCH_COUNTS"
PREFIX_ENV = "S2SQ_BENCH_PREFIX"
QUEUE_TYPE_ENV = "S2SQ_BENCH_QUEUE_TYPE"
AMQP_URL = os.environ.get("S2SQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE_TYPE = os.environ.get(QUEUE_TYPE_ENV, "quorum")


def queue_name(framework: str) -> str:
    """The framework's task queue: `<prefix>.<framework>`."""
    return f"{os.environ.get(PREFIX_ENV, 's2sbenchnb')}.{framework}"


_lock = threading.Lock()  # Dramatiq runs tasks on threads
_mine: tuple[int, mmap.mmap, ctypes.c_uint64] | None = None


def _open() -> tuple[int, mmap.mmap, ctypes.c_uint64]:
    """This process's counter (a forked pool process opens its own)."""
    path = Path(os.environ[COUNTS_ENV]) / str(os.getpid())
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8)
        mapped = mmap.mmap(fd, 8)
    finally:
        os.close(fd)
    return os.getpid(), mapped, ctypes.c_uint64.from_buffer(mapped)


def count_one() -> None:
    """One more item done in this process."""
    global _mine
    with _lock:
        if _mine is None or _mine[0] != os.getpid():
            _mine = _open()
        _mine[2].value += 1


def total(directory: Path) -> int:
    """Items done so far by every process that counted into `directory`."""
    return sum(int.from_bytes(p.read_bytes()[:8], "little") for p in directory.iterdir())
