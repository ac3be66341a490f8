"""parse_item with the real handler registry: valid items, and every kind of bad input (SPEC §3)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from daemon.core.items import BadItem, Parsed, describe_payload_error, parse_item
from handlers import load_handlers
from handlers.base import Handler
from handlers.products import SyncPayload
from handlers.system import NoopPayload

HANDLERS = load_handlers()
KNOWN = (
    "fulfillment.add, image.fetch, image.sync, notification.email, notification.webhook, "
    "order.add_to_source, product.delete, product.sync, system.noop"
)
MAX_BODY = 1000


def parse(**changes: Any) -> Parsed | BadItem:
    """parse_item on a valid system.noop item for client `acme`, with `changes` applied."""
    fields: dict[str, Any] = {
        "body": b"{}",
        "content_type": "application/json",
        "message_id": "m-1",
        "type_": "system.noop",
        "headers": {"client_id": "acme"},
        "client_id": "acme",
        "queue": "blocking",
        "handlers": HANDLERS,
        "max_body_bytes": MAX_BODY,
    }
    return parse_item(**(fields | changes))


def error_of(**changes: Any) -> str:
    """The error of a bad item (fails the test if the item parsed)."""
    result = parse(**changes)
    assert isinstance(result, BadItem), f"expected a BadItem, got {result!r}"
    return result.error


def test_a_valid_noop_item_parses_into_an_item_for_its_handler():
    """Every Item field comes from the message and the queue; attempt starts at 1."""
    result = parse()
    assert isinstance(result, Parsed)
    assert result.handler is HANDLERS["system.noop"]
    item = result.item
    assert (item.message_id, item.type, item.client_id, item.queue, item.attempt) == (
        "m-1", "system.noop", "acme", "blocking", 1
    )
    assert item.payload == NoopPayload(fail=None)


def test_a_valid_product_sync_item_parses_its_payload_with_defaults():
    """The payload is the type's pydantic model, defaults filled in, on the queue it came from."""
    body = b'{"sku": "ABC-1", "product": {"name": "Blue mug"}}'
    result = parse(type_="product.sync", body=body, queue="nonblocking")
    assert isinstance(result, Parsed)
    assert result.handler is HANDLERS["product.sync"]
    assert result.item.type == "product.sync"
    assert result.item.queue == "nonblocking"
    assert result.item.payload == SyncPayload(
        sku="ABC-1", product={"name": "Blue mug"}, target="channel"
    )


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"message_id": None}, "message has no message_id property", id="no-id"),
        pytest.param({"message_id": ""}, "message has no message_id property", id="empty-id"),
        pytest.param(
            {"message_id": "x" * 256}, "message_id is longer than 255 characters", id="long-id"
        ),
        pytest.param({"type_": None}, "message has no type property", id="no-type"),
        pytest.param({"type_": ""}, "message has no type property", id="empty-type"),
        pytest.param(
            {"type_": "product.explode"},
            f"unknown type 'product.explode'; known types: {KNOWN}",
            id="unknown-type",
        ),
        pytest.param(
            {"type_": "t" * 100},
            f"unknown type '{'t' * 80}…'; known types: {KNOWN}",
            id="unknown-type-cut-at-80",
        ),
        pytest.param(
            {"content_type": None},
            "content_type is 'None', expected 'application/json'",
            id="no-content-type",
        ),
        pytest.param(
            {"content_type": "text/plain"},
            "content_type is 'text/plain', expected 'application/json'",
            id="text-plain",
        ),
        pytest.param(
            {"body": b"{}" + b" " * MAX_BODY},
            f"body is {MAX_BODY + 2} bytes, over the limit of {MAX_BODY} (S2SQ_MAX_BODY_BYTES)",
            id="body-too-big",
        ),
        pytest.param(
            {"body": b"\xff\xfe"},
            "body is not valid JSON: expected value at line 1 column 1",
            id="not-utf8",
        ),
        pytest.param(
            {"body": b'{"fail": "\xff"}'},
            "body is not valid JSON: invalid unicode code point at line 1 column 11",
            id="not-utf8-inside-a-string",
        ),
        pytest.param(
            {"body": b"not json"},
            "body is not valid JSON: expected ident at line 1 column 2",
            id="not-json",
        ),
        pytest.param(
            {"body": b""},
            "body is not valid JSON: EOF while parsing a value at line 1 column 0",
            id="empty-body",
        ),
        pytest.param({"body": b"[]"}, "body is not a JSON object", id="list"),
        pytest.param({"body": b'"text"'}, "body is not a JSON object", id="string"),
        pytest.param({"body": b"42"}, "body is not a JSON object", id="number"),
        pytest.param({"body": b"null"}, "body is not a JSON object", id="null"),
        pytest.param(
            {"type_": "product.sync", "body": b'{"product": {}}'},
            "payload is not valid for product.sync: sku: Field required",
            id="missing-sku",
        ),
        pytest.param(
            {"body": b'{"colour": "red"}'},
            "payload is not valid for system.noop: colour: Extra inputs are not permitted",
            id="extra-field",
        ),
        pytest.param(
            {"body": b'{"fail": "sometimes"}'},
            "payload is not valid for system.noop: fail: Input should be 'transient' or"
            " 'permanent'",
            id="wrong-fail-value",
        ),
        pytest.param(
            {"type_": "product.sync", "body": b'{"sku": "", "product": []}'},
            "payload is not valid for product.sync: sku: String should have at least 1"
            " character; product: Input should be an object",
            id="two-errors",
        ),
        pytest.param({"headers": None}, "message has no client_id header", id="no-headers"),
        pytest.param({"headers": {}}, "message has no client_id header", id="no-client-header"),
        pytest.param(
            {"headers": {"client_id": ""}}, "message has no client_id header", id="empty-client"
        ),
        pytest.param(
            {"headers": {"client_id": "globex"}},
            "client_id header 'globex' does not match the client 'acme'",
            id="other-client",
        ),
        pytest.param(
            {"headers": {"client_id": b"globex"}},
            "client_id header 'globex' does not match the client 'acme'",
            id="other-client-bytes",
        ),
        pytest.param(
            {"headers": {"client_id": 42}},
            "client_id header '42' does not match the client 'acme'",
            id="client-not-a-string",
        ),
    ],
)
def test_bad_input_is_a_bad_item_saying_exactly_what_is_wrong(changes, error):
    """Each problem of SPEC §3 gives a BadItem with its own readable error, never an exception."""
    assert error_of(**changes) == error


def test_a_message_id_of_255_characters_is_fine():
    """255 is the limit, not over it."""
    result = parse(message_id="x" * 255)
    assert isinstance(result, Parsed)
    assert result.item.message_id == "x" * 255


def test_a_body_of_exactly_max_body_bytes_is_fine():
    """The size limit is inclusive."""
    result = parse(body=b"{}" + b" " * (MAX_BODY - 2))
    assert isinstance(result, Parsed)


def test_a_client_id_header_in_bytes_is_decoded():
    """AMQP tables may carry the header as bytes; it matches like a string."""
    result = parse(headers={"client_id": b"acme"})
    assert isinstance(result, Parsed)
    assert result.item.client_id == "acme"


@pytest.mark.parametrize("message_id", [42, b"m-1"], ids=["int", "bytes"])
def test_a_message_id_that_is_not_a_string_is_reported_as_such(message_id):
    """The error names the real problem (not a string), not a length it does not have."""
    error = error_of(message_id=message_id)
    assert "string" in error
    assert "longer" not in error


def test_a_message_id_that_is_not_a_string_is_a_bad_item_without_an_id():
    """A non-string message_id is refused and not kept as the item's id."""
    result = parse(message_id=42)
    assert isinstance(result, BadItem)
    assert result.message_id is None


def test_a_type_that_is_not_a_string_is_a_bad_item_not_an_exception():
    """Whatever arrives as `type`, the result is a BadItem."""
    assert isinstance(parse(type_=["system.noop"]), BadItem)


@pytest.mark.parametrize(
    ("changes", "message_id", "type_"),
    [
        pytest.param({"body": b"[]"}, "m-1", "system.noop", id="both-valid"),
        pytest.param({"type_": "nope"}, "m-1", "nope", id="unknown-type-kept"),
        pytest.param({"message_id": "", "body": b"[]"}, None, "system.noop", id="no-id"),
        pytest.param({"type_": None}, "m-1", None, id="no-type"),
        pytest.param({"message_id": "x" * 256}, "x" * 256, "system.noop", id="long-id-kept"),
    ],
)
def test_a_bad_item_keeps_its_message_id_and_type_when_they_are_usable(changes, message_id, type_):
    """So retry/skip, logs and events can name the item even though it cannot run."""
    result = parse(**changes)
    assert isinstance(result, BadItem)
    assert (result.message_id, result.type) == (message_id, type_)
    assert (result.client_id, result.queue) == ("acme", "blocking")


def test_a_bad_item_on_the_nonblocking_queue_says_so():
    """The queue travels with the bad item, so it goes straight to failed there."""
    result = parse(body=b"[]", queue="nonblocking")
    assert isinstance(result, BadItem)
    assert result.queue == "nonblocking"


def test_the_first_envelope_problem_wins_over_body_problems():
    """An item with several problems reports the envelope's first one."""
    assert error_of(message_id=None, type_=None, body=b"[]") == (
        "message has no message_id property"
    )


class Wide(BaseModel):
    """A payload with many required fields, to get many errors at once."""

    model_config = ConfigDict(extra="forbid")

    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    g: int


def validation_error(data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Wide.model_validate(data)
    return info.value


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(
            {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8},
            "payload is not valid for wide: h: Extra inputs are not permitted",
            id="one",
        ),
        pytest.param(
            {"a": 1, "b": 2},
            "payload is not valid for wide: c: Field required; d: Field required;"
            " e: Field required; f: Field required; g: Field required",
            id="five",
        ),
        pytest.param(
            {"a": 1},
            "payload is not valid for wide: b: Field required; c: Field required;"
            " d: Field required; e: Field required; f: Field required (and 1 more)",
            id="six",
        ),
        pytest.param(
            {},
            "payload is not valid for wide: a: Field required; b: Field required;"
            " c: Field required; d: Field required; e: Field required (and 2 more)",
            id="seven",
        ),
    ],
)
def test_describe_payload_error_shows_at_most_five_errors(data, error):
    """Past five, the rest are counted, so the line stays readable."""
    assert describe_payload_error("wide", validation_error(data)) == error


def test_a_body_with_many_errors_is_summarised_through_parse_item():
    """The cap applies to real items too: two missing fields and seven extras."""
    body = b'{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}'
    assert error_of(type_="product.sync", body=body) == (
        "payload is not valid for product.sync: sku: Field required; product: Field required;"
        " a: Extra inputs are not permitted; b: Extra inputs are not permitted;"
        " c: Extra inputs are not permitted (and 4 more)"
    )


def test_parse_item_uses_the_registry_it_is_given():
    """A type known only to the given mapping parses; the builtins are not consulted."""
    only = {"wide": Handler(type="wide", payload=Wide, func=HANDLERS["system.noop"].func)}
    body = b'{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}'
    assert isinstance(parse(type_="wide", body=body, handlers=only), Parsed)
    assert error_of(handlers=only) == "unknown type 'system.noop'; known types: wide"


ONE_LINE = "must be one line of text: U+000D is not allowed"


@pytest.mark.parametrize(
    ("type_", "payload", "where"),
    [
        ("product.sync", {"sku": "EVIL\r\nBcc: someone@example.com", "product": {}}, "sku"),
        ("product.delete", {"sku": "A\r1"}, "sku"),
        ("image.sync", {"sku": "A\r1", "image_id": "front", "action": "delete"}, "sku"),
        ("image.sync", {"sku": "A-1", "image_id": "front", "action": "upsert",
                        "url": "https://cdn.example/a.png", "label": "Front\r"}, "label"),
        ("image.sync", {"sku": "A-1", "image_id": "front", "action": "upsert",
                        "url": "https://cdn.example/a.png", "roles": ["image\r"]}, "roles.0"),
        ("image.sync", {"sku": "A-1", "image_id": "front", "action": "upsert",
                        "url": "https://cdn.example/a\r.png"}, "url"),
        ("image.fetch", {"sku": "A\r1", "urls": ["https://cdn.example/a.png"]}, "sku"),
        ("image.fetch", {"sku": "A-1", "urls": ["https://cdn.example/a\r.png"]}, "urls.0"),
        ("order.add_to_source", {"order": {"id": "SO-1\r"}}, "order"),
        ("fulfillment.add", {"fulfillment": {"id": "F-1\r"}}, "fulfillment"),
        ("notification.email", {"to": ["a@b.example"], "subject": "Hi\r", "text": "x"},
         "subject"),
    ],
)
def test_a_one_line_field_with_a_control_character_is_bad_input_naming_the_field(
    type_, payload, where
):
    """SKUs, ids, labels, URLs and subjects end up in paths, file names and mail headers: a
    line break (or any C0/C1 control) there is refused before the handler runs."""
    error = error_of(type_=type_, body=orjson.dumps(payload))
    if where in ("order", "fulfillment"):
        assert error == (f"payload is not valid for {type_}: {where}: its 'id' {ONE_LINE}")
    else:
        assert error == f"payload is not valid for {type_}: {where}: {ONE_LINE}"


@pytest.mark.parametrize("char", ["\n", "\x00", "\x1b", "\x7f", "\x85", "\u2028"])
def test_every_control_character_and_line_separator_is_refused_in_a_sku(char):
    """Not only CR and LF: NUL, ESC, DEL, C1 controls and Unicode line separators too."""
    body = orjson.dumps({"sku": f"A{char}1", "product": {}})
    error = error_of(type_="product.sync", body=body)
    assert error == (
        f"payload is not valid for product.sync: sku: must be one line of text: "
        f"U+{ord(char):04X} is not allowed"
    )


def test_a_message_id_with_a_line_break_is_bad_input():
    """The message id is an identifier shown in mails, commands and pages: one line only."""
    assert error_of(message_id="m-1\r\nBcc: x@example.com") == (
        "message_id must be one line of text: U+000D is not allowed"
    )


@pytest.mark.parametrize("address", ["a\x00@b.example", "a@b.example\r\nBcc: x@y.example"])
def test_an_email_address_with_a_control_character_is_bad_input(address):
    """Recipients go into the To header: NUL or a line break there is refused like a space."""
    body = orjson.dumps({"to": [address], "subject": "Hi", "text": "x"})
    assert error_of(type_="notification.email", body=body) == (
        "payload is not valid for notification.email: to.0: each entry must be an email "
        "address like ops@acme.example"
    )
