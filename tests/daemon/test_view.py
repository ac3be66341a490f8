"""The fold of the state log (daemon.core.view): fences, check-and-set, the failed store. Pure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from daemon.core.records import (
    Announced,
    Audited,
    Claimed,
    Failed,
    Parked,
    Paused,
    Record,
    Redelivered,
    Registered,
    Released,
    Resumed,
    StoredMessage,
    Unfailed,
    Unparked,
    decode,
    display_payload,
    encode,
)
from daemon.core.view import LOST_BODY, MAX_AUDIT, View


def fold(*records: Record) -> View:
    view = View()
    for offset, record in enumerate(records):
        view.apply(record, offset)
    return view


def park(mid: str | None = "M", epoch: int | None = 0, **fields) -> Parked:
    return Parked(client_id="acme", message_id=mid, digest="d" + str(mid), epoch=epoch,
                  error="HTTP 422", since="T0", failed_at=fields.pop("failed_at", "T0"),
                  **fields)


def claim(mid: str | None = "M") -> Claimed:
    return Claimed(client_id="acme", message_id=mid, digest="d" + str(mid), replica="r2")


def unpark(mid: str | None = "M", epoch: int | None = 0, how: str = "retry") -> Unparked:
    return Unparked(client_id="acme", message_id=mid, digest="d" + str(mid), epoch=epoch,
                    how=how, op=f"op-{how}")


def failed(mid: str = "O1", fid: str = "f1") -> Failed:
    return Failed(message_id=mid, fid=fid, client_id="acme", type="order.add_to_source",
                  error="HTTP 422", failed_at="T0", payload={"order": {"id": mid}},
                  message=StoredMessage(body='{"order":{}}'))


def test_a_park_written_under_the_current_epoch_parks_the_client():
    """The first holder writes epoch 0 (no claim yet): the client is parked."""
    view = fold(park())
    assert view.parked["acme"].message_id == "M"
    assert "acme" in view.clients


def test_a_park_from_a_replica_that_lost_the_item_is_ignored():
    """A claim (someone else received the item again) fences the late park of epoch 0."""
    view = fold(claim(), park(epoch=0))
    assert view.parked == {}


def test_a_claim_of_the_parked_item_adopts_the_park():
    """The new holder's epoch becomes the park's: its retry or skip counts, the old one's not."""
    view = fold(park(epoch=0), claim())
    assert view.parked["acme"].epoch == 1
    assert fold(park(epoch=0), claim(), unpark(epoch=0)).parked != {}
    after = fold(park(epoch=0), claim(), unpark(epoch=1))
    assert after.parked == {}
    assert after.done["acme"] == ("M", "dM")


def test_a_late_claim_from_a_replica_that_lost_the_item_changes_nothing():
    """A claim names the epoch its writer read: one that lands after a newer claim is void,
    so it cannot fence the current holder's park or release out (found by the model)."""
    first = Claimed(client_id="acme", message_id="M", digest="dM", seen=0, claim="a")
    late = Claimed(client_id="acme", message_id="M", digest="dM", seen=0, claim="b")
    view = fold(park(epoch=0), first, late)
    assert (view.epochs["acme"], view.claim_ids["acme"]) == (1, "a")
    assert fold(park(epoch=0), first, late, unpark(epoch=1)).parked == {}


def test_an_operation_acts_once_even_when_its_record_comes_twice():
    """A duplicate of a pause after a resume does not pause again (found by the model)."""
    view = fold(Paused(client_id="a", op="p1"), Resumed(client_id="a", op="r1"),
                Paused(client_id="a", op="p1"))
    assert "a" not in view.paused


def test_a_claim_of_another_item_leaves_the_park_as_it_is():
    """The parked item left the queue: the park stays for the holder to report it gone."""
    view = fold(park(mid="M"), claim(mid="N"))
    assert view.parked["acme"].epoch == 0
    assert view.epochs["acme"] == 1


def test_an_unpark_names_the_item_it_releases():
    """An unpark of another item (a stale screen) changes nothing."""
    assert fold(park(mid="M"), unpark(mid="N")).parked["acme"].message_id == "M"


def test_an_item_without_a_message_id_is_told_apart_by_its_body():
    """Two parked items without message ids differ by digest."""
    parked = Parked(client_id="acme", message_id=None, digest="aaaa", epoch=0,
                    error="no message_id")
    other = Unparked(client_id="acme", message_id=None, digest="bbbb", epoch=0, how="skip")
    same = Unparked(client_id="acme", message_id=None, digest="aaaa", epoch=0, how="skip")
    assert "acme" in fold(parked, other).parked
    assert fold(parked, same).parked == {}


def test_announced_marks_only_the_park_it_names():
    """A late `announced` of an earlier failure of the same item does not mark a newer park."""
    view = fold(park(failed_at="T1"), Announced(client_id="acme", message_id="M",
                                                failed_at="T0"))
    assert not view.parked["acme"].announced
    view.apply(Announced(client_id="acme", message_id="M", failed_at="T1"), 5)
    assert view.parked["acme"].announced


@pytest.mark.parametrize(("records", "paused", "winner"), [
    ([Paused(client_id="a", op="p1", replica="r1")], True, "p1"),
    ([Paused(client_id="a", op="p1", replica="r1"), Paused(client_id="a", op="p2")], True, "p1"),
    ([Resumed(client_id="a", op="r1")], False, None),
    ([Paused(client_id="a", op="p1"), Resumed(client_id="a", op="r1"),
      Resumed(client_id="a", op="r2")], False, "r1"),
])
def test_pause_and_resume_are_check_and_set(records, paused, winner):
    """A second pause, or a resume of a running client, changes nothing and wins nothing."""
    view = fold(*records)
    assert ("a" in view.paused) is paused
    last = records[-1]
    assert (last.op in view.ops) is (winner == last.op)


def test_register_is_recorded_once():
    """Two registrations of one client: the first op wins."""
    view = fold(Registered(client_id="a", op="x", replica="r1"),
                Registered(client_id="a", op="y", replica="r2"))
    assert view.ops == {"x": "r1"}


def test_unfail_moves_only_the_failure_it_names():
    """Check-and-set on the failure id: a double click moves the item once."""
    first = Unfailed(message_id="O1", fid="f1", how="retry", op="a", replica="r1", at="T")
    second = Unfailed(message_id="O1", fid="f1", how="retry", op="b", replica="r2", at="T")
    view = fold(failed(), first, second)
    assert view.failed == {}
    assert set(view.pending) == {"a"}
    assert view.ops == {"a": "r1"}


def test_a_retried_item_that_fails_again_is_not_erased_by_the_late_release():
    """Hole 2: the new failure is kept whatever order `released` and `failed` arrive in."""
    view = fold(failed(fid="f1"), Unfailed(message_id="O1", fid="f1", how="retry", op="a"),
                failed(fid="f2"), Released(message_id="O1", op="a"))
    assert view.failed["O1"].record.fid == "f2"
    assert view.pending == {}


def test_an_unfail_of_an_older_failure_leaves_the_newer_one():
    view = fold(failed(fid="f1"), Unfailed(message_id="O1", fid="f1", how="retry", op="a"),
                failed(fid="f2"), Unfailed(message_id="O1", fid="f1", how="skip", op="b"))
    assert view.failed["O1"].record.fid == "f2"


def test_a_carried_failure_moves_to_its_new_offset():
    """The same failure written again names the newer record; nothing is duplicated."""
    view = fold(failed(), Registered(client_id="x"), failed())
    assert list(view.failed) == ["O1"]
    assert view.failed["O1"].offset == 2


def test_two_items_with_one_message_id_are_both_kept():
    """A producer reusing a message id loses nothing: the second gets its own address."""
    view = fold(failed(fid="f1"), failed(fid="f2" + "0" * 20))
    assert sorted(view.failed) == ["O1", "O1~f20000000000"]


def test_records_of_release_one_still_fold():
    """Old records (no epoch, fid or op) decode and fold as they did."""
    old = [
        b'{"kind":"register","client_id":"acme","actor":"t","replica":"r","at":"T"}',
        b'{"kind":"park","client_id":"acme","message_id":"M","type":"product.sync",'
        b'"error":"boom","attempts":1,"since":"T","failed_at":"T","payload":{}}',
        b'{"kind":"failed","message_id":"O1","client_id":"acme","type":"x","error":"e",'
        b'"errors":[],"attempts":1,"failed_at":"T","payload":null,"message":{"body":"{}",'
        b'"body_encoding":"utf-8","content_type":"application/json","headers":{}}}',
        b'{"kind":"unpark","client_id":"acme","message_id":"M","how":"skip","actor":"a"}',
        b'{"kind":"unfail","message_id":"O1","client_id":"acme","how":"retry","actor":"a"}',
    ]
    records = [decode(body) for body in old]
    assert all(r is not None for r in records)
    view = fold(*[r for r in records if r is not None])
    assert view.clients == {"acme"}
    assert view.parked == {}
    assert view.failed == {}
    assert view.pending == {}


def test_a_failed_record_from_a_replica_that_lost_the_copy_is_void():
    """A redelivered copy is claimed; a failure written under the older count (a late
    record of the replica that held the copy before) never reaches the store."""
    claim = Redelivered(message_id="O1", seen=0, claim="c")
    late = replace(failed(), count=0)
    assert fold(claim, late).failed == {}
    assert list(fold(claim, replace(late, count=1)).failed) == ["O1"]
    assert list(fold(late, claim).failed) == ["O1"]


def test_every_copy_that_failed_is_remembered_by_its_generation():
    """The producer's copy failed (generation ""), then the copy a retry sent: both are
    remembered after they leave the store, so a late redelivery of either is not run."""
    first = replace(failed(fid="f1"), generation="")
    again = replace(failed(fid="f2"), generation="f1")
    view = fold(first, Unfailed(message_id="O1", fid="f1", how="retry", op="a"),
                Released(message_id="O1", op="a"), again)
    assert set(view.spent) == {("O1", ""), ("O1", "f1")}
    assert view.spent[("O1", "")][0] == "f1"


def test_what_json_cannot_carry_is_written_as_text():
    """Hole 1: a payload with an integer past 64 bits is still recorded."""
    wide = replace(failed(), payload={"order": {"id": "x", "ref": 10**20}})
    decoded = decode(encode(wide, "r", "T"))
    assert isinstance(decoded, Failed)
    assert decoded.payload == {"order": {"id": "x", "ref": str(10**20)}}


def test_a_payload_is_shown_as_the_producer_sent_it():
    """Issue 12 hole 9: no defaults filled in; a wide integer keeps its digits, NaN and
    nesting too deep to follow are shown, not refused."""
    assert display_payload(b'{"sku": "X", "product": {}}') == {"sku": "X", "product": {}}
    assert display_payload(b'{"ref": 100000000000000000000, "x": NaN}') == {
        "ref": "100000000000000000000", "x": "nan"}
    deep = b"[" * 5000 + b"]" * 5000
    assert display_payload(deep) == deep[:2000].decode()
    assert display_payload(b"not json \xff") == "not json \ufffd"


def test_a_snapshot_names_bodies_it_cannot_find_as_lost():
    """Start-up after retention took a failed item's record: listed, with the reason."""
    view = fold(failed())
    rebuilt = View.from_entries(list(view.to_entries()), bodies={})
    entry = rebuilt.failed["O1"]
    assert (entry.record.client_id, entry.record.error, entry.record.message) == (
        "acme", LOST_BODY, None)



def test_the_audit_trail_keeps_the_newest_entries_in_log_order():
    """Past MAX_AUDIT entries the oldest is dropped; each keeps the offset it was read at."""
    entries = [Audited(actor="admin", via="api", action="pause", client_id=f"c{i}",
                       outcome="ok") for i in range(MAX_AUDIT + 5)]
    view = fold(park(), *entries)
    kept = list(view.audit)
    assert len(kept) == MAX_AUDIT
    assert (kept[0][0], kept[0][1].client_id) == (6, "c5")
    assert (kept[-1][0], kept[-1][1].client_id) == (MAX_AUDIT + 5, f"c{MAX_AUDIT + 4}")
    assert view.parked["acme"].message_id == "M"  # an announcement: it changes nothing else


def test_the_audit_trail_survives_a_snapshot():
    """A view rebuilt from its entries lists the same audit entries, offsets and all."""
    view = fold(Audited(actor="admin", via="cli", action="register", client_id="acme",
                        outcome="ok", at="T1"),
                Audited(actor="ops", via="control", action="skip", client_id="acme",
                        message_id="M", reason="bad, \"data\"", outcome="no park"))
    rebuilt = View.from_entries(list(view.to_entries()), {})
    assert list(rebuilt.audit) == list(view.audit)
