"""The action table (daemon/operations/actions.py): one entry per action, and what the faces
read from it, without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.core.records import Audited
from daemon.faces.cli import build_parser, control_request
from daemon.operations.actions import ACTIONS, TABLE, Request, action_on, perform
from daemon.operations.admin import OperationError, Operations


def test_every_action_is_declared_once_and_every_command_names_one():
    """No two entries share a name, no two commands share their words."""
    assert len(ACTIONS) == len(TABLE)
    words = [c.words for a in TABLE for c in a.commands]
    assert len(words) == len(set(words))


def test_every_command_sends_the_action_that_declares_it():
    """The CLI's control message names the entry whose command was typed."""
    for action in TABLE:
        for command in action.commands:
            argv = [*command.words, *(["acme"] if "client" in command.args else []),
                    *(["m-1"] if "message_id" in command.args else []),
                    *(["a", "b"] if "clients" in command.args else []),
                    *(["0123456789abcdef"] if "group" in command.args else [])]
            assert control_request(build_parser().parse_args(argv))["action"] == action.name


def test_the_routes_find_only_the_actions_on_their_target():
    """POST /clients/{id}/{action} and /failed/{id}/{action} reach exactly these."""
    on_client = [a.name for a in TABLE if action_on("client", a.name)]
    on_failed = [n for n in ("retry", "skip", "pause", "status") if action_on("failed", n)]
    assert on_client == ["retry", "skip", "pause", "resume"]
    assert on_failed == ["retry", "skip"]
    assert action_on("client", "register") is None
    assert action_on("client", "retry_failed") is None


def test_retry_and_skip_are_alike_for_parked_and_failed_items():
    """Both ask for a confirmation in the console; only a park is forwarded to its holder."""
    for parked, failed in (("retry", "retry_failed"), ("skip", "skip_failed")):
        assert (ACTIONS[parked].confirm, ACTIONS[failed].confirm) == (True, True)
        assert (ACTIONS[parked].forwarded, ACTIONS[failed].forwarded) == (True, False)


def test_a_group_command_sends_its_group_client_and_reason():
    """`s2s-queue parked retry-group G --client acme --reason r` names all three."""
    args = build_parser().parse_args(["parked", "retry-group", "g1", "--client", "acme",
                                      "--reason", "fixed"])
    assert control_request(args) == {"action": "retry_parked_group", "group": "g1",
                                     "client_id": "acme", "reason": "fixed"}
    assert [a.name for a in TABLE if a.name.endswith("_group") and a.confirm] == [
        "retry_failed_group", "skip_failed_group", "retry_parked_group", "skip_parked_group"]


class AuditOnly:
    """Operations that can only take audit entries: any operation would raise AttributeError."""

    def __init__(self) -> None:
        self.audited: list[Audited] = []

    async def audit(self, entries: list[Audited]) -> None:
        self.audited.extend(entries)


@pytest.mark.parametrize(
    ("name", "request_", "error", "audited"),
    [
        ("explode", Request(actor="a"), "unknown action 'explode'", False),
        ("x" * 100, Request(actor="a"), f"unknown action {'x' * 40!r}", False),
        ("pause", Request(actor="a"), "pause needs a client_id", True),
        ("retry", Request(actor="a", message_id="m-1"), "retry needs a client_id", True),
    ],
)
async def test_a_request_the_table_refuses_never_reaches_an_operation(
    name: str, request_: Request, error: str, audited: bool
):
    """The same error text from every face (control, API, console, CLI); a known action's
    refusal is audited with it, an unknown name is not an action at all."""
    fake: Any = AuditOnly()
    ops: Operations = fake
    with pytest.raises(OperationError) as info:
        await perform(ops, name, request_)
    assert str(info.value) == error
    assert [(e.action, e.actor, e.via, e.outcome) for e in fake.audited] == (
        [(name, "a", "control", error)] if audited else [])


def test_listings_change_nothing_so_they_leave_no_audit_entry():
    """status and every list_* action are read-only: `perform` audits only what changes."""
    readers = [a.name for a in TABLE if not a.changes]
    assert readers == ["status", "list_unrouted", "list_failed", "list_failed_groups",
                       "list_parked_groups"]
