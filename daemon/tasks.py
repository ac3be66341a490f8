"""Tasks with an owner: kept, their crashes logged, stopped and awaited by it (STYLE.md §4).

A foundation module: every layer may use it, and it imports nothing of the daemon.
Unlike `asyncio.TaskGroup`, one task's crash cancels none of the others, and the
owner decides when the group stops (and how long it may take).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")


class Tasks:
    """The tasks one owner runs: each held until it ends; a crash logged (`task.failed`)."""

    def __init__(self, **context: Any) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._context = context  # fields of the `task.failed` line

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run `coro` in a task of this group; its exception is logged, not lost."""
        task = asyncio.ensure_future(coro)
        if name is not None:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count the current task in (a consumer's callback task) while the block runs."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task.failed", **self._context, exc_info=exc)

    async def stop(self, timeout: float | None = 0.0) -> None:
        """Let the tasks end within `timeout` s (None: however long), cancel the rest; wait.

        Raises nothing: a spawned task's crash was logged when it ended.
        """
        tasks = set(self._tasks)
        if not tasks:
            return
        if timeout is None or timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and wait until it has unwound; an error it ended with is raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
