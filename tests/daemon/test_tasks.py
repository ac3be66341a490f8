"""Tasks and cancel_and_wait: tasks with an owner, no broker."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from daemon.tasks import Tasks, cancel_and_wait


async def test_a_spawned_task_is_held_until_it_ends_then_forgotten() -> None:
    """The group holds a task while it runs and drops it once it has ended."""
    tasks, go = Tasks(), asyncio.Event()
    task = tasks.spawn(go.wait(), name="waiting")
    assert len(tasks) == 1
    assert task.get_name() == "waiting"
    go.set()
    await task
    await asyncio.sleep(0)  # the done callback
    assert len(tasks) == 0


async def test_a_crash_is_logged_with_the_groups_fields_and_the_others_run_on() -> None:
    """A task that raises is logged as `task.failed`, and cancels nothing else."""
    tasks, go = Tasks(client_id="acme"), asyncio.Event()

    async def crash() -> None:
        raise ValueError("boom")

    other = tasks.spawn(go.wait())
    with capture_logs() as logs:
        crashed = tasks.spawn(crash())
        await asyncio.wait({crashed})
        await asyncio.sleep(0)
    failed = [e for e in logs if e["event"] == "task.failed"]
    assert len(failed) == 1, logs
    assert failed[0]["client_id"] == "acme"
    assert isinstance(failed[0]["exc_info"], ValueError)
    assert not other.done(), "a crash cancelled another task of the group"
    await tasks.stop()


async def test_a_cancelled_task_is_not_logged() -> None:
    """Cancelling is how tasks are stopped: no `task.failed` line."""
    tasks = Tasks()
    with capture_logs() as logs:
        tasks.spawn(asyncio.sleep(60))
        await tasks.stop()
    assert not [e for e in logs if e["event"] == "task.failed"], logs
    assert len(tasks) == 0


async def test_stop_lets_tasks_finish_within_the_timeout_and_cancels_the_rest() -> None:
    """Quick tasks end on their own; those past the timeout are cancelled and awaited."""
    tasks = Tasks()
    quick = tasks.spawn(asyncio.sleep(0.01, "done"))
    slow = tasks.spawn(asyncio.sleep(60))
    await tasks.stop(timeout=0.5)
    assert quick.result() == "done"
    assert slow.cancelled()


async def test_stop_without_a_timeout_waits_for_every_task() -> None:
    """`stop(None)` cancels nothing."""
    tasks = Tasks()
    task = tasks.spawn(asyncio.sleep(0.05, "done"))
    await tasks.stop(timeout=None)
    assert task.result() == "done"


async def test_running_counts_the_current_task_in_while_the_block_runs() -> None:
    """A callback task (not spawned here) is in the group inside `running()`, and waited for."""
    tasks, inside, go = Tasks(), asyncio.Event(), asyncio.Event()

    async def callback() -> None:
        with tasks.running():
            inside.set()
            await go.wait()

    task = asyncio.ensure_future(callback())
    await inside.wait()
    assert len(tasks) == 1
    go.set()
    await tasks.stop(timeout=None)
    assert task.done()
    assert len(tasks) == 0


async def test_cancel_and_wait_unwinds_the_task_and_raises_what_it_ended_with() -> None:
    """A cancelled task is waited for quietly; an error it had ended with comes out."""
    running = asyncio.ensure_future(asyncio.sleep(60))
    await cancel_and_wait(running)
    assert running.cancelled()
    await cancel_and_wait(None)

    async def crash() -> None:
        raise ValueError("boom")

    crashed = asyncio.ensure_future(crash())
    await asyncio.wait({crashed})
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(crashed)
