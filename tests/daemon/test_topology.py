"""Topology names and queue arguments: pure, derived from the prefix (SPEC §2)."""

from __future__ import annotations

import pytest

from daemon.broker.topology import Topology


@pytest.mark.parametrize("prefix", ["s2s", "test-42_a"])
@pytest.mark.parametrize(
    ("attribute", "suffix"),
    [
        ("blocking", "blocking"),
        ("unrouted", "unrouted"),
        ("nonblocking", "nonblocking"),
        ("control", "control"),
        ("events", "events"),
        ("state", "state"),
        ("archive", "archive"),
        ("deadletter", "deadletter"),
    ],
)
def test_every_name_derives_from_the_prefix(prefix, attribute, suffix):
    """Two deployments with different prefixes never share a name."""
    assert getattr(Topology(prefix), attribute) == f"{prefix}.{suffix}"


@pytest.mark.parametrize(
    ("prefix", "client_id", "queue"),
    [
        ("s2s", "acme", "s2s.blocking.acme"),
        ("s2s", "42", "s2s.blocking.42"),
        ("run-7", "Globex_Corp-1", "run-7.blocking.Globex_Corp-1"),
    ],
)
def test_a_client_queue_is_named_after_the_blocking_exchange_and_the_client(
    prefix, client_id, queue
):
    """`<prefix>.blocking.<client_id>`."""
    assert Topology(prefix).client_queue(client_id) == queue


def test_quorum_client_queues_have_a_delivery_limit_and_dead_letter_to_the_prefix():
    """Single active consumer, a high delivery limit, and `<p>.deadletter` past it."""
    assert Topology("p1").client_queue_arguments() == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-delivery-limit": 1000,
        "x-dead-letter-exchange": "p1.deadletter",
    }


def test_the_delivery_limit_is_the_one_configured():
    """`delivery_limit` goes straight into the quorum queue's arguments."""
    args = Topology("s2s", "quorum", delivery_limit=7).client_queue_arguments()
    assert args["x-delivery-limit"] == 7


def test_classic_client_queues_have_single_active_consumer_and_no_delivery_limit():
    """Classic queues know no delivery limit; nothing quorum-only is sent."""
    assert Topology("s2s", "classic").client_queue_arguments() == {
        "x-queue-type": "classic",
        "x-single-active-consumer": True,
    }


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_shared_queues_follow_the_configured_queue_type(queue_type):
    """Non-blocking, dead-letter and archive queues use S2SQ_QUEUE_TYPE."""
    assert Topology("s2s", queue_type).shared_queue_arguments() == {"x-queue-type": queue_type}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_the_unrouted_queue_is_classic_whatever_the_queue_type(queue_type):
    """Browsing it must keep the original order, which only classic queues promise."""
    assert Topology("s2s", queue_type).unrouted_queue_arguments() == {"x-queue-type": "classic"}


def test_the_state_log_is_a_stream_kept_a_week_in_small_segments():
    """Every replica reads it non-destructively; retention by age drops whole segments."""
    assert Topology("s2s").state_stream_arguments() == {
        "x-queue-type": "stream",
        "x-max-age": "7D",
        "x-stream-max-segment-size-bytes": 8_000_000,
    }


def test_the_snapshot_queue_keeps_only_the_latest_snapshot():
    """A new snapshot pushes the previous one out."""
    assert Topology("s2s").snapshot_queue_arguments() == {
        "x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "drop-head"}


def test_the_defaults_are_quorum_with_a_limit_of_1000():
    """SPEC §1: quorum is the default queue type."""
    topo = Topology("s2s")
    assert (topo.queue_type, topo.delivery_limit) == ("quorum", 1000)


def test_without_a_group_size_the_broker_chooses_the_replicas():
    """Unset (the default), no quorum queue carries x-quorum-initial-group-size."""
    topo = Topology("s2s")
    every = [topo.client_queue_arguments(), topo.shared_queue_arguments(),
             topo.delay_queue_arguments(10), topo.leader_queue_arguments(),
             topo.notify_queue_arguments(), topo.snapshot_queue_arguments()]
    assert not [args for args in every if "x-quorum-initial-group-size" in args]


def test_the_group_size_goes_on_every_quorum_queue():
    """S2SQ_QUORUM_INITIAL_GROUP_SIZE: client, shared, delay, leader, notify and snapshot queues."""
    topo = Topology("s2s", quorum_initial_group_size=3)
    every = [topo.client_queue_arguments(), topo.shared_queue_arguments(),
             topo.delay_queue_arguments(10), topo.leader_queue_arguments(),
             topo.notify_queue_arguments(), topo.snapshot_queue_arguments()]
    assert [args["x-quorum-initial-group-size"] for args in every] == [3] * 6


def test_the_group_size_is_not_sent_for_classic_queues_or_the_stream():
    """Classic queues have no replicas; the stream and the unrouted queues are left alone."""
    topo = Topology("s2s", "classic", quorum_initial_group_size=3)
    assert topo.client_queue_arguments() == {"x-queue-type": "classic",
                                             "x-single-active-consumer": True}
    quorum = Topology("s2s", quorum_initial_group_size=3)
    for args in (quorum.state_stream_arguments(), quorum.unrouted_queue_arguments(),
                 quorum.unrouted_watch_arguments()):
        assert "x-quorum-initial-group-size" not in args
