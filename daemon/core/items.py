"""Parse and validate a queue item (SPEC section 3). Pure: no I/O, no broker.

`parse_item` turns what arrived into either an `Item` ready for its handler or
a `BadItem` whose `error` says exactly what is wrong. Bad input is an item
too: the blocking consumer parks on it, the non-blocking pool sets it aside
as failed; nothing here raises for bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from handlers.base import Handler, Item, QueueKind, one_line

MAX_MESSAGE_ID = 255


@dataclass(frozen=True, slots=True)
class BadItem:
    """An item that cannot run as it is, with the reason in plain words."""

    message_id: str | None
    type: str | None
    client_id: str
    error: str
    queue: QueueKind


@dataclass(frozen=True, slots=True)
class Parsed:
    """A valid item and the handler that runs it."""

    item: Item[Any]
    handler: Handler


def parse_item(
    *,
    body: bytes,
    content_type: str | None,
    message_id: Any,
    type_: Any,
    headers: Mapping[str, Any] | None,
    client_id: str,
    queue: QueueKind,
    handlers: Mapping[str, Handler],
    max_body_bytes: int,
) -> Parsed | BadItem:
    """Validate one delivery; `client_id` is the client the queue or routing key names."""
    mid = message_id if isinstance(message_id, str) and message_id else None
    typ = type_ if isinstance(type_, str) and type_ else None

    def bad(error: str) -> BadItem:
        return BadItem(mid, typ, client_id, error, queue)

    error = _check_envelope(message_id, type_, content_type, headers, client_id, handlers)
    if error:
        return bad(error)
    if len(body) > max_body_bytes:
        return bad(
            f"body is {len(body)} bytes, over the limit of {max_body_bytes}"
            " (S2SQ_MAX_BODY_BYTES)"
        )
    assert mid is not None and typ is not None  # noqa: PT018 - narrowed by _check_envelope
    handler = handlers[typ]
    try:
        payload = handler.payload.model_validate_json(body)
    except ValidationError as exc:
        return bad(describe_payload_error(typ, exc))
    return Parsed(Item(mid, typ, client_id, payload, queue), handler)


def _check_envelope(
    message_id: Any,
    type_: Any,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    client_id: str,
    handlers: Mapping[str, Handler],
) -> str | None:
    """The first problem with the message's properties and headers, if any."""
    if not message_id:
        return "message has no message_id property"
    if not isinstance(message_id, str):
        return "message_id is not a string"
    if len(message_id) > MAX_MESSAGE_ID:
        return f"message_id is longer than {MAX_MESSAGE_ID} characters"
    try:
        one_line(message_id)
    except ValueError as exc:
        return f"message_id {exc}"
    if not type_:
        return "message has no type property"
    if not isinstance(type_, str) or type_ not in handlers:
        known = ", ".join(sorted(handlers))
        return f"unknown type {_quote(type_)}; known types: {known}"
    if (content_type or "").partition(";")[0].strip().lower() != "application/json":
        return f"content_type is {_quote(content_type)}, expected 'application/json'"
    header = (headers or {}).get("client_id")
    if isinstance(header, bytes):
        header = header.decode("utf-8", "replace")
    if header is None or header == "":
        return "message has no client_id header"
    if header != client_id:
        return f"client_id header {_quote(header)} does not match the client {client_id!r}"
    return None


def describe_payload_error(type_: str, exc: ValidationError) -> str:
    """One readable line for a payload that failed its type's schema."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return f"payload is not valid for {type_}"
    first = errors[0]
    if first["type"] == "json_invalid":
        ctx = first.get("ctx") or {}
        return f"body is not valid JSON: {ctx.get('error', first['msg'])}"
    if first["type"] == "model_type" and not first["loc"]:
        return "body is not a JSON object"
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"payload is not valid for {type_}: " + "; ".join(parts) + more


def payload_for_display(body: bytes) -> Any:
    """The body as JSON for people (console, events), or its start as text if not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:2000].decode("utf-8", "replace")


def _quote(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return repr(text[:80] + ("…" if len(text) > 80 else ""))
