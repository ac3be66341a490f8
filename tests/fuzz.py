"""Hostile input for the fuzz campaign (tests/e2e/test_fuzz_campaign.py): Hypothesis strategies
for items and control messages, and `draw`, which takes a fixed number of examples from a
strategy with a fixed seed (so CI replays the same campaign every time).

An item is what a producer can put on the wire: an exchange (blocking or non-blocking), a
routing key, a body and AMQP properties, every one of them possibly wrong. A control message
is always malformed in a way the daemon must refuse with a reason (never a valid action on a
real client: the campaign counts on every answer being `ok: false`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from common.clients import CLIENT_ID_RE

TYPES = ["product.sync", "product.delete", "image.sync", "image.fetch", "order.add_to_source",
         "fulfillment.add", "notification.email", "notification.webhook", "system.noop"]
CONTROL_ACTIONS = ["retry", "skip", "pause", "resume", "register", "replay_unrouted",
                   "retry_failed", "skip_failed", "status"]
ANSWERED_OK = ["list_failed", "list_unrouted"]  # never sent: they are right with no argument
CONTROLS = [chr(c) for c in (*range(0, 32), 127, *range(128, 160))]
SHORTSTR = 255  # bytes: the most an AMQP short string (message id, type, routing key) holds


@dataclass(frozen=True)
class Item:
    """One publish: `queue` is "blocking" or "nonblocking"; `registered` says whether the
    routing key is a registered client's id."""

    queue: str
    routing_key: str
    registered: bool
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)


def _fits(limit: int) -> Any:
    return lambda s: len(s.encode("utf-8", "surrogatepass")) <= limit


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- text --------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    st.text(max_size=40),
    st.lists(st.sampled_from([*CONTROLS, "a", "\r\n", "Bcc: x@example.com"]),
             max_size=30).map("".join),
    st.sampled_from(["EVIL\r\nBcc: someone@example.com", "../../etc/passwd", "a/b?c#d",
                     "%2e%2e%2f", "<script>alert(1)</script>", "{{ 7*7 }}", "'; DROP TABLE x;--",
                     "\u202etxt.exe", "\ufeff", "\x00", " ", "", "None", "null"]),
    st.integers(min_value=1_000, max_value=200_000).map(lambda n: "x" * n),
)
"""What a merchant's shop can put in a string field (lone surrogates come from `_json`)."""

shortstr = st.text(max_size=80).filter(_utf8).filter(_fits(SHORTSTR))
"""Text an AMQP short string can carry (pika refuses the rest before it reaches us)."""

json_scalar = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30), hostile_text)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text, inner, max_size=5),
    max_leaves=20)


def _json(value: Any) -> bytes:
    """JSON as a careless producer writes it: NaN/Infinity literals, lone surrogates escaped."""
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def payload_for(draw: st.DrawFn, type_: str) -> dict[str, Any]:
    """A payload of the right shape for `type_` whose values may each be hostile."""
    text, value = hostile_text, json_value
    shapes: dict[str, dict[str, Any]] = {
        "product.sync": {"sku": text, "product": st.dictionaries(text, value, max_size=4),
                         "target": st.sampled_from(["channel", "catalog", "nope"])},
        "product.delete": {"sku": text},
        "image.sync": {"sku": text, "image_id": text,
                       "action": st.sampled_from(["upsert", "delete", "x"]), "url": text},
        "image.fetch": {"sku": text, "urls": st.lists(text, max_size=3)},
        "order.add_to_source": {"order": st.fixed_dictionaries({"id": value | text})},
        "fulfillment.add": {"fulfillment": st.fixed_dictionaries({"id": value | text})},
        "notification.email": {"to": st.lists(text, max_size=3), "subject": text, "text": text},
        "notification.webhook": {"event": text, "data": st.dictionaries(text, value,
                                                                        max_size=3)},
        "system.noop": {"fail": st.sampled_from(["transient", "permanent", "other"])},
    }
    shape = shapes[type_]
    keep = (sorted(shape) if draw(st.integers(0, 9)) < 7  # every field, or any of them
            else draw(st.lists(st.sampled_from(sorted(shape)), unique=True, max_size=len(shape))))
    return {key: draw(shape[key]) for key in keep}


@st.composite
def body_for(draw: st.DrawFn, type_: str, max_body: int) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice <= 4:
        return _json(draw(payload_for(type_)))
    if choice == 5:
        return _json(draw(json_value))
    if choice == 6:  # deep nesting
        depth = draw(st.sampled_from([50, 500, 5_000, 50_000]))
        return b'{"sku": ' + b"[" * depth + b"]" * depth + b"}"
    if choice == 7:  # not UTF-8, or not JSON
        return draw(st.sampled_from([b'{"sku": "\xff\xfe"}', b"\xff", b"", b" ", b"null",
                                     b'{"sku": 1e999}', b'{"sku": NaN}', b'{"sku": "x"',
                                     b'{"sku": "\\ud800"}', b"[]", b'"x"']))
    if choice == 8:  # the body limit, either side of it
        over = draw(st.sampled_from([-1, 0, 1, 100]))
        return b'{"sku": "' + b"x" * (max_body - 11 + over) + b'"}'
    return draw(st.binary(max_size=200))


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any] | None:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return None
    wrong = st.one_of(st.integers(-(2**63), 2**63 - 1), shortstr, st.binary(max_size=20),
                      st.booleans(), st.lists(st.integers(0, 9), max_size=3), st.none(),
                      st.dictionaries(shortstr, shortstr, max_size=2))  # pika sends no floats
    chosen: dict[str, Any] = {}
    for key in ("client_id", "x-s2s-attempt", "x-s2s-errors", "x-s2s-generation"):
        if draw(st.booleans()):
            chosen[key] = draw(wrong)
    if choice == 5:  # a big header table (the frame holds 128 KiB)
        chosen |= {f"h{n}": "v" * 1000 for n in range(draw(st.integers(1, 60)))}
    return chosen


def item_strategy(clients: list[str], max_body: int) -> st.SearchStrategy[Item]:
    @st.composite
    def build(draw: st.DrawFn) -> Item:
        queue = draw(st.sampled_from(["blocking", "nonblocking"]))
        registered = draw(st.integers(0, 9)) < 7
        routing_key = (draw(st.sampled_from(clients)) if registered
                       else draw(shortstr.filter(lambda s: s not in clients)))
        type_ = draw(st.sampled_from(TYPES))
        if draw(st.integers(0, 9)) < 7:  # properties as a producer should set them
            extra = draw(headers()) or {}
            props: dict[str, Any] = {
                "type": type_, "message_id": draw(shortstr.filter(bool)),
                "content_type": "application/json",
                "headers": {**extra, "client_id": routing_key}}
        else:  # any of them missing or wrong
            props = {}
            if draw(st.integers(0, 9)) < 8:
                props["type"] = type_ if draw(st.integers(0, 9)) < 8 else draw(shortstr)
            if draw(st.integers(0, 9)) < 8:
                props["message_id"] = draw(shortstr)
            if draw(st.booleans()):
                props["content_type"] = draw(st.sampled_from(
                    ["application/json", "text/plain", "application/octet-stream"]) | shortstr)
            props["headers"] = draw(headers())
        return Item(queue, routing_key, registered, draw(body_for(type_, max_body)), props)

    return build()


@st.composite
def control_message(draw: st.DrawFn, clients: list[str]) -> bytes:
    """A control message that must be refused (`ok: false` and why)."""
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return draw(st.binary(max_size=100).filter(lambda b: not _is_json(b)))
    if choice == 1:
        return _json(draw(json_value.filter(lambda v: not isinstance(v, dict))))
    if choice == 2:  # no action, or not a string
        return _json({"action": draw(st.none() | st.integers() | st.lists(st.integers())
                                     | st.just("")), "client_id": draw(hostile_text)})
    if choice == 3:  # an action nobody has
        action = draw(hostile_text.filter(
            lambda a: a not in [*CONTROL_ACTIONS, *ANSWERED_OK] and a != ""))
        return _json({"action": action, "client_id": draw(st.sampled_from(clients))})
    action = draw(st.sampled_from(CONTROL_ACTIONS))
    if choice == 4:  # a field of the wrong type
        key = draw(st.sampled_from(["client_id", "message_id", "reason"]))
        return _json({"action": action, "client_id": "x", key: draw(
            st.integers() | st.lists(st.integers(), max_size=2) | st.booleans()
            | st.dictionaries(shortstr, shortstr, max_size=1))})
    # a real action on no client: not registered, not a client id, or an unknown failed item
    stranger = draw(hostile_text.filter(lambda c: c not in clients and c != ""))
    if action in ("retry_failed", "skip_failed"):
        return _json({"action": action, "message_id": "nope-" + draw(hostile_text)})
    if action == "register":
        stranger = draw(hostile_text.filter(lambda c: not CLIENT_ID_RE.fullmatch(c)))
    return _json({"action": action, "client_id": stranger})


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return True


def draw(strategy: st.SearchStrategy[Any], count: int, at: int) -> list[Any]:
    """`count` examples of `strategy`, the same ones for the same seed `at`."""
    out: list[Any] = []

    @seed(at)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out
