"""Properties of the fold, over any sequence of records (Hypothesis).

* A view rebuilt from a snapshot (its entries, and the `failed` records they
  name) equals the view folded from every record, and folding on from there
  gives the same view as folding everything.
* A record survives its wire form: decode(encode(r)) folds like r.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.records import (
    Announced,
    Audited,
    Claimed,
    DigestAdded,
    DigestSent,
    Failed,
    Marker,
    Notified,
    Parked,
    Paused,
    Record,
    Redelivered,
    Registered,
    Released,
    Resumed,
    SnapshotPart,
    StoredMessage,
    Unfailed,
    Unparked,
    decode,
    encode,
)
from daemon.core.state import Loader, Pointer, pack
from daemon.core.view import View

clients = st.sampled_from(["a", "b"])
mids = st.sampled_from(["M1", "M2", None])
digests = st.sampled_from(["", "d1", "d2"])
epochs = st.sampled_from([None, 0, 1, 2])
ops = st.sampled_from(["", "op1", "op2", "op3"])
fids = st.sampled_from(["f1", "f2", "f3", ""])
times = st.sampled_from(["T0", "T1"])
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6,
)

records: st.SearchStrategy[Record] = st.one_of(
    st.builds(Registered, client_id=clients, op=ops, replica=st.sampled_from(["r1", "r2"])),
    st.builds(Claimed, client_id=clients, message_id=mids, digest=digests,
              seen=st.sampled_from([None, 0, 1, 2]), claim=st.sampled_from(["", "k1", "k2"])),
    st.builds(Parked, client_id=clients, message_id=mids, digest=digests, epoch=epochs,
              error=st.sampled_from(["e1", "e2"]), since=times, failed_at=times,
              payload=json_values, gone=st.booleans()),
    st.builds(Announced, client_id=clients, message_id=mids, failed_at=times),
    st.builds(Unparked, client_id=clients, message_id=mids, digest=digests, epoch=epochs,
              how=st.sampled_from(["retry", "skip"]), op=ops),
    st.builds(Paused, client_id=clients, op=ops, replica=st.sampled_from(["r1", "r2"])),
    st.builds(Resumed, client_id=clients, op=ops),
    st.builds(Failed, message_id=st.sampled_from(["O1", "O2"]), fid=fids, client_id=clients,
              error=st.sampled_from(["e1", "e2"]), failed_at=times, payload=json_values,
              message=st.just(StoredMessage(body="{}")), at=times,
              generation=st.sampled_from(["", "f1"]), count=st.sampled_from([None, 0, 1])),
    st.builds(Redelivered, message_id=st.sampled_from(["O1", "O2"]),
              seen=st.sampled_from([0, 1]), claim=st.sampled_from(["c1", "c2"])),
    st.builds(Unfailed, message_id=st.sampled_from(["O1", "O2", "O1~f3"]), fid=fids,
              how=st.sampled_from(["retry", "skip"]), op=ops, at=times),
    st.builds(Released, message_id=st.sampled_from(["O1", "O2"]), op=ops),
    st.builds(Notified, client_id=clients, id=st.sampled_from(["n1", "n2"]),
              t=st.sampled_from([1.0, 2.0]), parked_mail=st.sampled_from([None, 1.0])),
    st.builds(DigestAdded, client_id=clients, id=st.sampled_from(["n1", "n3"]),
              t=st.sampled_from([1.0, 2.0]), entry=st.just({"type": "x", "error": "e"})),
    st.builds(DigestSent, client_id=clients, t=st.just(3.0), window_until=st.just(4.0)),
    st.builds(Audited, at=times, actor=st.sampled_from(["admin", "client:a"]),
              via=st.sampled_from(["api", "console"]), action=st.sampled_from(["retry", "pause"]),
              client_id=st.sampled_from(["a", None]), message_id=mids,
              reason=st.sampled_from([None, "why, \"quoted\""]),
              outcome=st.sampled_from(["ok", "failed"])),
    st.builds(Marker, id=st.just("m")),
)


def fold(log: list[Record], view: View | None = None, start: int = 0) -> View:
    view = view or View()
    for offset, record in enumerate(log[start:], start):
        view.apply(record, offset)
    return view


def restore(log: list[Record], covers: int) -> View:
    """What start-up builds from a snapshot written after `covers`: through the Loader."""
    view = fold(log[: covers + 1])
    parts = pack(list(view.to_entries()), limit=300)
    start = min([*view.body_offsets(), covers + 1])
    loader = Loader(Pointer("s", covers, start, len(parts)))
    for offset in range(start, covers + 1):
        loader.take(log[offset], offset)
    for index, chunk in enumerate(parts):
        loader.take(_part(index, len(parts), covers, chunk), covers + 1 + index)
    assert loader.complete
    return loader.view()


def _part(index: int, parts: int, covers: int, entries: list[list[Any]]) -> Record:
    """A snapshot part as start-up reads it: through its wire form."""
    part = SnapshotPart(snapshot="s", index=index, parts=parts, covers=covers, entries=entries)
    decoded = decode(encode(part, "r1", "T"))
    assert decoded is not None
    return decoded


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=40), st.data())
def test_a_view_rebuilt_from_a_snapshot_equals_the_fold_of_every_record(log, data):
    """Snapshot at any offset, then fold on: the same view as folding the whole log."""
    covers = data.draw(st.integers(0, len(log) - 1))
    whole = fold(log)
    rebuilt = restore(log, covers)
    assert rebuilt == fold(log[: covers + 1])
    assert fold(log, rebuilt, covers + 1) == whole


@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=30))
def test_records_fold_the_same_after_their_wire_form(log):
    """Encoding then decoding every record changes nothing the fold can see."""
    wired = []
    for record in log:
        decoded = decode(encode(record, "r9", "T9"))
        assert decoded is not None, record
        wired.append(decoded)
    plain, after = fold(log), fold(wired)
    # The envelope fills `replica` and `at`; everything else is equal.
    assert after.parked == plain.parked
    assert after.paused.keys() == plain.paused.keys()
    assert after.failed.keys() == plain.failed.keys()
    assert after.pending.keys() == plain.pending.keys()
    assert (after.clients, after.epochs, after.done, after.notify) == (
        plain.clients, plain.epochs, plain.done, plain.notify)
    assert [(o, replace(a, at="")) for o, a in after.audit] == [
        (o, replace(a, at="")) for o, a in plain.audit]
    assert all(a.at == "T9" for _, a in after.audit)
