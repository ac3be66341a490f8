"""Preference and lines (daemon/broker/replicas.py), pure: no broker."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.broker.channels import Group
from daemon.broker.replicas import Replicas, needs_cycle, preferred
from daemon.broker.topology import Topology

CLIENTS = [f"c{n:04}" for n in range(1000)]


def test_every_replica_computes_the_same_preference_whatever_the_order_it_knows_them_in():
    """Rendezvous hashing depends on the set of replicas, not on their order."""
    replicas = ["host-a", "host-b", "host-c"]
    assert [preferred(c, replicas) for c in CLIENTS] == [
        preferred(c, reversed(replicas)) for c in CLIENTS]


def test_the_clients_are_spread_evenly_over_the_replicas():
    """1,000 clients over 3 replicas: each prefers a third, give or take 15 %."""
    shares = Counter(preferred(c, ["host-a", "host-b", "host-c"]) for c in CLIENTS)
    assert all(280 <= n <= 390 for n in shares.values()), shares


def test_a_replica_that_leaves_moves_only_its_own_clients():
    """The clients of the survivors keep their replica; the leaver's are shared out."""
    before = {c: preferred(c, ["a", "b", "c"]) for c in CLIENTS}
    after = {c: preferred(c, ["a", "b"]) for c in CLIENTS}
    assert all(after[c] == before[c] for c in CLIENTS if before[c] != "c")
    assert {after[c] for c in CLIENTS if before[c] == "c"} == {"a", "b"}


def test_a_group_moves_back_only_for_a_replica_that_placed_since_it_opened():
    """needs_cycle: another replica's newer placement; never our own, never an unplaced one."""
    assert needs_cycle("a", {"b"}, stamp={}, placed={"b": 1})
    assert needs_cycle("a", {"a", "b"}, stamp={"b": 1}, placed={"b": 2})
    assert not needs_cycle("a", {"b"}, stamp={"b": 2}, placed={"b": 2})
    assert not needs_cycle("a", {"b"}, stamp={}, placed={})  # b starting: not placed yet
    assert not needs_cycle("a", {"a"}, stamp={}, placed={"b": 3})


# -- the lines, simulated: a broker's single-active-consumer queues and N replicas --------


@dataclass
class Sim:
    """Each client's line of consumers (registration order; the first is active).

    A replica knows the replicas started before it (or, `settled`, all of them).
    """

    replicas: list[str]
    clients: list[str]
    started: list[str] = field(default_factory=list)
    lines: dict[str, list[str]] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)  # announced placements
    groups: dict[str, list[tuple[str, list[str], dict[str, int]]]] = field(default_factory=dict)

    def place(self, replica: str, clients: list[str]) -> None:
        """Consume `clients` (at the back of their lines), in groups of one label each."""
        stamp = {r: n for r, n in self.placed.items() if r != replica}
        by_label: dict[str, list[str]] = {}
        for client in clients:
            line = self.lines.setdefault(client, [])
            if replica in line:
                line.remove(replica)
            line.append(replica)
            by_label.setdefault(preferred(client, self.live(replica)), []).append(client)
        for label, members in by_label.items():
            self.groups.setdefault(replica, []).append((label, members, stamp))
        if replica in self.placed and replica in by_label:
            self.placed[replica] += 1  # its own clients went back: the others must follow

    def live(self, replica: str) -> list[str]:
        return sorted({*self.started, replica})

    def start(self, replica: str, settled: bool) -> None:
        live = self.replicas if settled else self.live(replica)
        self.started.append(replica)
        mine = [c for c in self.clients if preferred(c, live) == replica]
        self.place(replica, mine)
        self.placed[replica] = 1
        self.place(replica, [c for c in self.clients if c not in mine])

    def rebalance(self, replica: str) -> bool:
        """One pass of daemon.broker.replicas._rebalance_once; True if a group moved."""
        moved = False
        for group in list(self.groups.get(replica, [])):
            _label, members, stamp = group
            prefs = {preferred(c, self.live(replica)) for c in members}
            if needs_cycle(replica, prefs, stamp, self.placed):
                self.groups[replica].remove(group)
                self.place(replica, members)
                moved = True
        return moved


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(["r1", "r2", "r3"]), turns=st.lists(st.integers(0, 2), max_size=8),
       count=st.integers(2, 3), settled=st.booleans())
def test_after_the_moves_settle_every_client_is_active_on_the_replica_it_prefers(
        order, turns, count, settled):
    """Whatever order the replicas start and move in, and whether each knew the others at
    start-up, the lines end with each client's preferred replica first."""
    replicas = sorted(order[:count])
    sim = Sim(replicas, CLIENTS[:60])
    for replica in order[:count]:
        sim.start(replica, settled)
        for turn in turns:  # some moves happen while the others still start
            if replicas[turn % count] in sim.started:
                sim.rebalance(replicas[turn % count])
    for _ in range(10):
        if not any([sim.rebalance(r) for r in replicas]):
            break
    else:
        raise AssertionError("the moves never settled")
    assert all(sim.lines[c][0] == preferred(c, replicas) for c in sim.clients)


# -- the moves, on a fake pool -------------------------------------------------------------


@dataclass(eq=False)
class Member:
    client_id: str
    holds_park: bool = False


@dataclass
class FakePool:
    groups: list[Group]
    give_up: bool = False
    cycled: list[Group] = field(default_factory=list)

    async def cycle(self, group: Group, patience: float) -> bool:
        self.cycled.append(group)
        return not self.give_up


def _replicas_with_b(pool: FakePool) -> Replicas:
    replicas = Replicas(None, Topology("t"), "a", settle=0)  # type: ignore[arg-type]
    replicas._heard["b"] = time.monotonic()  # b is alive and has placed its clients
    replicas._placed["b"] = 1
    replicas._pool = pool
    return replicas


def _group(*members: Member) -> Group:
    return Group(channel=None, parked=False, members=list(members), label="a",  # type: ignore[arg-type]
                 stamp={})


async def test_a_group_holding_a_park_is_not_moved_and_one_that_gave_up_waits():
    """Clients b prefers move behind b, but never a group holding a park; and a group whose
    move gave up (a long run) is left alone for a while instead of being held again."""
    b_client = next(c for c in CLIENTS if preferred(c, ["a", "b"]) == "b")
    parked = _group(Member(b_client, holds_park=True))
    busy = _group(Member(b_client))
    pool = FakePool([parked, busy], give_up=True)
    replicas = _replicas_with_b(pool)
    await replicas._rebalance_once()
    await replicas._rebalance_once()
    assert pool.cycled == [busy]
