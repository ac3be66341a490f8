"""The admin actions, each declared once: what it takes, how each face offers it, and the
operation that carries it out.

Every face reads this table and nothing else to know an action: control
messages dispatch by its names (SPEC section 5), the CLI builds its commands
from `commands`, the HTTP API and the console route `POST .../{action}` to the
entries `on` a client or a failed item, and the console asks for a
confirmation page where `confirm` says so. Adding an action is one entry
here plus its function on `Operations` (docs/architecture.md).

`perform` is the one way in, so it is where the audit trail is written: one
entry per action that `changes` something, after it ran, with its outcome,
refused ones too (daemon/operations/audit.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from daemon.core.parking import OperationError, UnknownClient
from daemon.core.records import Audited
from daemon.operations.admin import HolderSilent, Operations
from daemon.operations.audit import entries_for


@dataclass(frozen=True, slots=True)
class Request:
    """One admin action's arguments, from whichever face asked."""

    actor: str  # a token's name, a validated AMQP user_id, "cli"
    via: str = "control"  # the face that asked: console, api, cli, control (audit.VIAS)
    client_id: str | None = None
    client_ids: tuple[str, ...] = ()
    message_id: str | None = None
    reason: str | None = None
    group: str | None = None  # a group of failed items or parks (daemon/operations/groups.py)
    op: str | None = None  # the check-and-set id: a control message's correlation id
    forward: bool = True  # ask the replica holding the park, if another one does


Arg = Literal["client", "client?", "--client", "clients", "--message-id", "message_id",
              "--reason", "group"]
"""A CLI argument and the request field it fills: a client id (required, optional or an
option), several client ids, a message id (an option or required), a reason."""

FIELD: Mapping[Arg, str] = {
    "client": "client_id", "client?": "client_id", "--client": "client_id",
    "clients": "client_ids", "--message-id": "message_id", "message_id": "message_id",
    "--reason": "reason", "group": "group",
}


@dataclass(frozen=True, slots=True)
class Command:
    """A CLI command that sends the action: its words (`failed retry`) and arguments."""

    words: tuple[str, ...]
    args: tuple[Arg, ...] = ()
    help: str = ""


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    run: Callable[[Operations, Request], Awaitable[dict[str, Any]]]
    needs_client: bool = False  # refused without a client_id
    on: Literal["client", "failed"] | None = None  # POST /clients/{id}/{name}, /failed/{id}/…
    confirm: bool = False  # the console shows a confirmation page first
    forwarded: bool = False  # answered by the replica holding the client's park
    commands: tuple[Command, ...] = ()
    changes: bool = True  # audited: everything but status and the listings


def _failed_name(name: str) -> str:
    return f"{name}_failed"


def _groups(kind: Literal["failed", "parked"], words: str) -> tuple[Action, ...]:
    """List a kind's groups, and retry or skip every item of one (SPEC section 9)."""
    def on_group(how: str) -> Callable[[Operations, Request], Awaitable[dict[str, Any]]]:
        return lambda ops, r: ops.on_group(kind, how, r.group, actor=r.actor,
                                           client_id=r.client_id, reason=r.reason, op=r.op,
                                           via=r.via)
    return (
        Action(f"list_{kind}_groups", lambda ops, r: ops.group_listing(kind, r.client_id),
               changes=False,
               commands=(Command((kind, "groups"), ("--client",), f"list {words} by error"),)),
        *(Action(f"{how}_{kind}_group", on_group(how), confirm=True,
                 commands=(Command((kind, f"{how}-group"), ("group", "--client", "--reason"),
                                   f"{how} every one of a group"),))
          for how in ("retry", "skip")),
    )


def _on_park(how: Literal["retry", "skip"]) -> Action:
    """Retry or skip a client's parked item (on the replica that holds it)."""
    def run(ops: Operations, r: Request) -> Awaitable[dict[str, Any]]:
        act = ops.retry if how == "retry" else ops.skip
        return act(r.client_id or "", actor=r.actor, message_id=r.message_id, reason=r.reason,
                   forward=r.forward, via=r.via)
    return Action(how, run, needs_client=True, on="client", confirm=True, forwarded=True,
                  commands=(Command((how,), ("client", "--message-id", "--reason"),
                                    f"{how} a parked client's item"),))


TABLE: tuple[Action, ...] = (
    Action("status", lambda ops, r: ops.status(r.client_id), changes=False,
           commands=(Command(("status",), ("client?",), "clients and their state"),
                     Command(("clients", "list"), (), "list the clients"))),
    *(_on_park(how) for how in ("retry", "skip")),
    Action("pause", lambda ops, r: ops.pause(r.client_id or "", actor=r.actor, op=r.op),
           needs_client=True, on="client",
           commands=(Command(("pause",), ("client",), "pause a client"),)),
    Action("resume", lambda ops, r: ops.resume(r.client_id or "", actor=r.actor, op=r.op),
           needs_client=True, on="client",
           commands=(Command(("resume",), ("client",), "resume a client"),)),
    Action("resume_all", lambda ops, r: ops.resume_all(r.client_ids, actor=r.actor, op=r.op),
           commands=(Command(("resume-all",), ("clients",), "resume several clients"),)),
    Action("register", lambda ops, r: ops.register(r.client_id or "", r.actor, r.op),
           needs_client=True,
           commands=(Command(("clients", "add"), ("client",), "register a client"),)),
    Action("list_unrouted", lambda ops, r: ops.unrouted(),  # an addition to SPEC section 5
           changes=False, commands=(Command(("unrouted", "list"), (), "list them"),)),
    Action("replay_unrouted", lambda ops, r: ops.replay_unrouted(r.client_id or "",
                                                                 actor=r.actor),
           needs_client=True, commands=(Command(("unrouted", "replay"), ("client",),
                                     "replay a client's, in order"),)),
    Action("list_failed", lambda ops, r: ops.failed_listing(r.client_id),  # addition, too
           changes=False, commands=(Command(("failed", "list"), ("--client",), "list them"),)),
    Action(_failed_name("retry"), lambda ops, r: ops.retry_failed(
        r.message_id, actor=r.actor, op=r.op), on="failed", confirm=True,
           commands=(Command(("failed", "retry"), ("message_id",), "run one again"),)),
    Action(_failed_name("skip"), lambda ops, r: ops.skip_failed(
        r.message_id, actor=r.actor, reason=r.reason, op=r.op), on="failed", confirm=True,
           commands=(Command(("failed", "skip"), ("message_id",), "archive one"),)),
    *_groups("failed", "failed items"),
    *_groups("parked", "parked clients"),
)
ACTIONS: Mapping[str, Action] = {action.name: action for action in TABLE}
GROUPS = {"clients": "register or list clients", "unrouted": "items for unknown clients",
          "failed": "failed non-blocking items",
          "parked": "parked clients, grouped by error"}  # the CLI's words that group commands


def action_on(target: Literal["client", "failed"], name: str) -> Action | None:
    """The action `POST /clients/{id}/{name}` (or `/failed/{id}/{name}`) means, if any."""
    action = ACTIONS.get(_failed_name(name) if target == "failed" else name)
    return action if action is not None and action.on == target else None


async def perform(ops: Operations, name: str, request: Request) -> dict[str, Any]:
    """Carry out the action `name`: the fields of its answer, or OperationError.

    An action that changes something is audited after it ran, refused or not,
    except a retry or skip forwarded to the replica holding the park: that
    replica audits it (under this request's `via`), unless it did not answer;
    and except one whose client, item or group is not found (a 404: it names
    nothing the caller may touch, as a request refused for its token).
    """
    action = ACTIONS.get(name)
    if action is None:
        raise OperationError(f"unknown action {name[:40]!r}")
    if not action.changes:
        return await _run(ops, action, request)
    client_id = request.client_id
    if action.on == "failed" and request.message_id and not client_id:
        item = ops.failed_item(request.message_id)  # whose item it is, while it is there
        client_id = item.client_id if item is not None else None
    if action.forwarded and request.forward and client_id and not ops.holds_park(client_id):
        await ops.sync()  # a park another replica holds may not have been read here yet
    forwarded = action.forwarded and request.forward and bool(client_id) and ops.forwards(
        client_id or "")
    asked = Audited(actor=request.actor, via=request.via, action=name, client_id=client_id,
                    message_id=request.message_id, reason=request.reason)
    try:
        answer = await _run(ops, action, request)
    except OperationError as exc:
        found = not isinstance(exc, UnknownClient)  # UnknownItem and UnknownGroup are ones too
        if found and (not forwarded or isinstance(exc, HolderSilent)):
            await ops.audit(entries_for(asked, error=str(exc)))
        raise
    if not forwarded:
        await ops.audit(entries_for(asked, answer=answer))
    return answer


async def _run(ops: Operations, action: Action, request: Request) -> dict[str, Any]:
    if action.needs_client and not request.client_id:
        raise OperationError(f"{action.name} needs a client_id")
    return await action.run(ops, request)
