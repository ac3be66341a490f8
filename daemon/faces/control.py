"""Control messages on `<prefix>.control` (SPEC section 5).

Every replica binds its own exclusive queue to the fanout exchange and
receives every control message. Each is acted on through `Operations` and,
when `reply_to` and `correlation_id` are set, answered with
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`. The actor is the
broker-validated `user_id` property when set, else the `actor` field; the
audit trail records the face as `via`: `control`, unless the message says
otherwise (the CLI sends `"via": "cli"`; a replica forwarding a retry or
skip to the park's holder sends its own request's).

The answer is published with the daemon's permissions, so `reply_to` must
name a queue the caller made for it: a server-named queue (`amq.gen-...`,
which only the broker can name) or direct reply-to (`amq.rabbitmq.reply-to`).
Any other `reply_to` (the state snapshot pointer, a client's queue) is a
hostile or broken caller: the message is refused unread and logged.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from daemon.broker.leader import Leadership
from daemon.broker.producer import DIRECT_REPLY_TO
from daemon.broker.topology import Topology
from daemon.operations.actions import ACTIONS, Request, perform
from daemon.operations.admin import OperationError, Operations
from daemon.operations.audit import VIAS
from daemon.tasks import Tasks

log = structlog.get_logger()

SERVER_NAMED = "amq.gen-"


def reply_to_allowed(reply_to: str | None) -> bool:
    """Pure: whether the daemon may publish an answer to `reply_to` (None: no answer wanted).

    Names under `amq.` cannot be declared by clients, so `amq.gen-...` is always
    a queue the broker named for its declarer; the broker gives direct
    reply-to's requester the form `amq.rabbitmq.reply-to.<token>`.
    """
    return (not reply_to or reply_to.startswith(SERVER_NAMED)
            or reply_to == DIRECT_REPLY_TO or reply_to.startswith(DIRECT_REPLY_TO + "."))


def parse_control(body: bytes, user_id: str | None) -> tuple[str, dict[str, Any]]:
    """Pure: the action and its keyword arguments, or OperationError saying what is wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OperationError("control message is not valid JSON") from None
    if not isinstance(data, dict):
        raise OperationError("control message is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise OperationError("control message has no action")
    args: dict[str, Any] = {}
    for key in ("client_id", "message_id", "reason", "group"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise OperationError(f"{key} must be a string")
        if value is not None:
            args[key] = value
    client_ids = data.get("client_ids")
    if client_ids is not None:
        if not isinstance(client_ids, list) or not all(isinstance(c, str) for c in client_ids):
            raise OperationError("client_ids must be a list of strings")
        args["client_ids"] = tuple(client_ids)
    actor = user_id or data.get("actor")
    args["actor"] = actor if isinstance(actor, str) and actor else "unknown"
    via = data.get("via", "control")
    if via not in VIAS:
        raise OperationError(f"via must be one of {', '.join(VIAS)}")
    args["via"] = via
    forwarded = data.get("forwarded", False)
    if not isinstance(forwarded, bool):
        raise OperationError("forwarded must be true or false")
    if forwarded:  # sent on by a replica that saw the park held elsewhere (Operations)
        args["forwarded"] = True
    return action, args


class Control:
    """Consumes control messages for one replica and answers them."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: Topology,
        ops: Operations,
        replica: str,
        leadership: Leadership,
    ) -> None:
        self._connection = connection
        self._topo = topo
        self._ops = ops
        self._leadership = leadership
        self._queue_name = f"{topo.control}.{replica}"
        self._channel: AbstractChannel | None = None
        self._tasks = Tasks()  # control messages being carried out

    async def start(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=64)
        queue = await self._channel.declare_queue(
            self._queue_name, exclusive=True, auto_delete=True, durable=False,
            arguments={"x-queue-type": "classic"},
        )
        await queue.bind(self._topo.control)
        await queue.consume(self._on_message)

    async def stop(self) -> None:
        """Stop taking control messages; wait for the ones being carried out."""
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        await self._tasks.stop(timeout=None)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()  # a command: if we die mid-way the caller times out and asks again
        # Every replica gets a copy with the same properties: the same op everywhere, so
        # two replicas that both act on it (two leaders for a moment) do one thing.
        op = message.correlation_id or message.message_id
        with self._tasks.running():
            if not reply_to_allowed(message.reply_to):
                _log_refused_reply_to(message)
                return
            answer = await self.handle(message.body, message.user_id, op)
            if answer is not None:
                await self._reply(message, answer)

    async def handle(self, body: bytes, user_id: str | None,
                     op: str | None = None) -> dict[str, Any] | None:
        """Carry out one control message; the answer, or None when another replica answers."""
        try:
            action, args = parse_control(body, user_id)
        except OperationError as exc:
            return {"ok": False, "error": str(exc)} if self._leadership.is_leader else None
        if op:
            args["op"] = op
        forwarded = args.pop("forwarded", False)
        if not await self._answers(action, args.get("client_id"), forwarded):
            return None
        try:
            result = await self.dispatch(action, args)
        except OperationError as exc:
            log.info("control.refused", error=str(exc))
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control.failed")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        return {"ok": True, **result}

    async def _answers(self, action: str, client_id: str | None,
                       forwarded: bool = False) -> bool:
        """Whether this replica acts on and answers the message (exactly one replica does).

        The replica holding a parked item answers `retry`/`skip` for it; the
        leader answers everything else, and says "not parked" only after
        reading the state log up to now finds no park held elsewhere. A request
        another replica `forwarded` to the holder is the holder's alone: the
        leader, reading the log after the holder acted, would say "not parked"
        beside the holder's answer (and the audit would keep both).
        """
        known = ACTIONS.get(action)
        if known is not None and known.forwarded and client_id:
            if self._ops.holds_park(client_id):
                return True
            if forwarded or not self._leadership.is_leader:
                return False
            await self._ops.sync()
            return not self._ops.parked_anywhere(client_id)
        return self._leadership.is_leader

    async def dispatch(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out the action through the action table (`daemon/operations/actions.py`)."""
        log.info("control.received", action=action, client_id=args.get("client_id"),
                 actor=args["actor"])
        # A retry or skip reached the replica that holds the park, or nobody holds one.
        return await perform(self._ops, action, Request(**args, forward=False))

    async def _reply(self, message: AbstractIncomingMessage, answer: dict[str, Any]) -> None:
        if not message.reply_to or not message.correlation_id or self._channel is None:
            return
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(orjson.dumps(answer), content_type="application/json",
                                 correlation_id=message.correlation_id),
                routing_key=message.reply_to,
                mandatory=False,  # a requester gone before its answer is normal (a CLI's ^C)
            )
        except Exception:
            log.warning("control.reply_failed", exc_info=True)


def _log_refused_reply_to(message: AbstractIncomingMessage) -> None:
    """One warning naming who asked for what, and where the answer was to go."""
    try:
        action, args = parse_control(message.body, message.user_id)
        actor: str = args["actor"]
    except OperationError:
        action, actor = "?", message.user_id or "unknown"
    log.warning("control.reply_to_refused", action=action[:40], actor=actor[:100],
                reply_to=str(message.reply_to)[:255])
