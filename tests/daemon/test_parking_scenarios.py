"""Holes 3, 4, 5 and 9 of the release-2 review, step by step, on the real `Parking`.

Each scenario drives the state machine of `test_parking_model.py` through one
fixed sequence of events (the model explores all of them; these are the ones
that broke the code before `daemon/core/parking.py`), checking its invariants after
every step and the outcome at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from daemon.core.parking import Phase
from daemon.core.records import Parked
from tests.daemon.test_parking_model import ParkingMachine


@pytest.fixture
def machine() -> Iterator[ParkingMachine]:
    m = ParkingMachine()
    m.start()
    try:
        yield m
    finally:
        m.teardown()


def check(m: ParkingMachine) -> None:
    m.no_violation_inside_a_task()
    m.a_park_survives()
    m.nothing_is_lost_or_done_twice()
    m.parked_here_means_held_here()
    m.a_held_delivery_always_has_an_owner()
    m.views_are_folds_of_what_they_read()


def park_m0_on_replica_0(m: ParkingMachine) -> None:
    assert m.world.running == {0: 0}
    m.finish(0, ok=False)
    check(m)
    assert m.parkings[0].phase is Phase.PARKED


def test_a_late_park_of_a_replica_that_lost_the_item_is_ignored_and_skip_cannot_touch_a_run(
    machine: ParkingMachine,
):
    """Hole 4: replica 0's park is still on the wire when its channel closes; replica 1
    claims the item and runs it; the late park lands after the claim and is ignored, and
    a skip on either replica is refused while the item runs."""
    m = machine
    m.appends_are_slow(hold=True)
    m.finish(0, ok=False)  # replica 0 syncs (its marker waits on the wire)
    m.land(0)  # the marker: replica 0 writes its park, which waits on the wire
    [(late, _, _)] = m.shared.in_flight
    assert isinstance(late, Parked)
    m.channel_lost(replica=0, at_limit=False)  # m0 goes to replica 1, which claims it
    while len(m.shared.in_flight) > 1:  # everything but the late park lands
        m.land(len(m.shared.in_flight) - 1)
        check(m)
    assert m.world.running == {1: 0}, "replica 1 runs m0 after its claim"
    m.land(0)  # now the late park lands: its epoch is older than the claim's
    check(m)
    assert "acme" not in m.shared.fold().parked
    for replica in (0, 1):
        m.admin_acts(replica=replica, stale=False, how="skip", twice=False)
        check(m)
    assert m.world.archived == []
    assert m.outcomes == ["client 'acme' is not parked"] * 2
    m.appends_are_slow(hold=False)
    m.finish(1, ok=True)
    check(m)
    assert m.world.acked[:1] == [0]


def test_a_retry_cut_off_by_a_lost_channel_is_parked_again_and_resume_does_not_run_it(
    machine: ParkingMachine,
):
    """Hole 3: the retry's run is cancelled with its channel; the redelivery is held as
    parked on the other replica; a pause and resume do not run it; a retry there does."""
    m = machine
    park_m0_on_replica_0(m)
    m.admin_acts(replica=0, stale=False, how="retry", twice=False)
    assert m.world.running == {0: 0}
    m.channel_lost(replica=0, at_limit=False)
    check(m)
    assert m.world.running == {}, "the retry's run was not cancelled with its channel"
    assert m.parkings[1].phase is Phase.PARKED
    m.pause_or_resume(pause=True, replica=1)
    m.pause_or_resume(pause=False, replica=1)
    check(m)
    assert m.world.running == {}
    assert m.world.acked == []
    m.admin_acts(replica=1, stale=False, how="retry", twice=False)
    m.finish(1, ok=True)
    check(m)
    assert m.world.acked[:1] == [0]
    assert "was interrupted" in str(m.outcomes[0])


def test_a_pause_lets_the_running_item_finish(machine: ParkingMachine):
    """SPEC §4 point 7: a pause that comes while an item runs stops the client after it."""
    m = machine
    m.finish(0, ok=True)  # m0 done; m1 delivered to replica 0 and running
    m.finish(0, ok=True)  # m1 done
    m.pause_or_resume(pause=True, replica=0)
    m.finish(0, ok=True)  # m2 was running when the pause came: it finishes
    check(m)
    assert m.world.acked == [0, 1, 2]


def test_the_log_lines_of_a_delivery_carry_its_client_message_id_and_type(
    machine: ParkingMachine,
):
    """Lines logged while a delivery is handled carry its fields, bound once (daemon/logs.py)."""
    m = machine
    m.pause_or_resume(pause=True, replica=0)
    with capture_logs(processors=[merge_contextvars]) as logs:
        m.finish(0, ok=True)  # m0 done; m1 arrives and is held, paused
    [held] = [e for e in logs if e["event"] == "item.held"]
    assert {k: held[k] for k in ("client_id", "message_id", "type", "reason")} == {
        "client_id": "acme", "message_id": "m1", "type": "test.item", "reason": "paused"}


def test_a_paused_item_is_started_once_by_two_resumes(machine: ParkingMachine):
    """Hole 5: paused before m1 arrives; two resumes back to back start m1 once."""
    m = machine
    m.pause_or_resume(pause=True, replica=0)
    m.finish(0, ok=True)  # m0 done; m1 arrives and is held, paused
    check(m)
    assert m.parkings[0].phase is Phase.PAUSED
    m.pause_or_resume(pause=False, replica=0)
    m.pause_or_resume(pause=False, replica=0)
    check(m)
    assert m.world.running == {0: 1}
    m.finish(0, ok=True)
    check(m)
    assert [r for r in m.world.runs if r[1] == 1] == [(0, 1, False)]


def test_a_lost_channel_cancels_the_run_and_the_redelivery_runs_it_once_elsewhere(
    machine: ParkingMachine,
):
    """Hole 9: a run does not outlive its channel: cancelled, then run by the new holder."""
    m = machine
    assert m.world.running == {0: 0}
    m.channel_lost(replica=0, at_limit=False)
    check(m)
    assert m.world.running == {1: 0}
    m.finish(1, ok=True)
    check(m)
    assert m.world.acked[:1] == [0]
    assert [r[:2] for r in m.world.runs[:2]] == [(0, 0), (1, 0)]


def test_a_retry_and_a_skip_are_answered_before_their_reports_which_keep_their_order(
    machine: ParkingMachine,
):
    """Issue 17: an admin waits for the records that decide the outcome, not for the
    events and notifications after them (each a broker round trip); those still go out
    in order, before the ack, and the client counts as busy until they have."""
    m = machine
    park_m0_on_replica_0(m)
    parking = m.parkings[0]
    gate = asyncio.Event()
    reported: list[str] = []

    async def announce(park: Parked) -> bool:
        reported.append(f"announce attempt {park.attempts}")
        await gate.wait()
        return True

    async def skipped(*args: object) -> None:
        reported.append("skipped")

    report = parking._report  # the machine's Report: these two calls are slow or watched
    report.announce = announce  # type: ignore[method-assign]
    report.skipped = skipped  # type: ignore[method-assign,assignment]

    m.admin_acts(replica=0, stale=False, how="retry", twice=False)
    m.finish(0, ok=False)
    check(m)
    assert m.outcomes == [{"outcome": "failed", "error": "HTTP 422", "message_id": "m0"}]
    assert reported == ["announce attempt 2"], "the retry's park is announced after the answer"
    assert m.shared.fold().parked["acme"].attempts == 2

    m.admin_acts(replica=0, stale=False, how="skip", twice=False)
    check(m)
    assert m.outcomes[1] == {"message_id": "m0"}
    assert m.world.archived == [0]
    assert reported == ["announce attempt 2"], "the skip's reports wait for the announce"
    assert m.world.acked == []
    assert parking.busy, "the client is busy until its reports are out"

    gate.set()
    m._settle()
    check(m)
    assert reported == ["announce attempt 2", "skipped"]
    assert m.world.acked[:1] == [0]


def test_a_delivery_during_a_hand_over_waits_unrun_and_runs_once_on_the_next_replica(
    machine: ParkingMachine,
):
    """A hold lets the running item finish; the next delivery waits unrun; the close hands
    it back at the head and the next consumer in line claims it and runs it, once."""
    m = machine
    m.hand_over_begins(0)
    assert m.world.running == {0: 0}, "a hold does not cut the running item"
    m.finish(0, ok=True)
    check(m)
    assert m.world.acked == [0]
    assert m.world.held[0].msg.n == 1, "m1 is delivered to replica 0"
    assert m.world.running == {}, "m1 waits unrun"
    m.end_hand_over(0)
    check(m)
    assert m.world.running == {1: 1}, "replica 1 runs m1 after the close"
    m.finish(1, ok=True)
    check(m)
    assert m.world.acked[:2] == [0, 1]
    assert [(r, n) for r, n, _ in m.world.runs[:2]] == [(0, 0), (1, 1)]


def test_a_hand_over_that_finds_a_park_gives_up_and_the_park_stays_held(
    machine: ParkingMachine,
):
    """An item that parks while its client is held keeps the channel open: the park
    stays on this replica, and after the hold the client is still parked, unrun."""
    m = machine
    m.hand_over_begins(0)
    park_m0_on_replica_0(m)
    m.end_hand_over(0)
    check(m)
    assert m.parkings[0].phase is Phase.PARKED
    assert not m.parkings[0].holding
    assert m.world.held[0].msg.n == 0
    assert m.world.active == 0
    assert [n for _, n, _ in m.world.runs] == [0]
