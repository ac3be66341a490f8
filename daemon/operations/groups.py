"""Failed items and parks grouped by what went wrong (SPEC section 9): pure.

An item's group is its queue (`failed` or `parked`), its type and its error
*pattern*: the error with the item's own ids (message id, client id, SKU,
order or image id), ids, numbers and quoted values replaced by placeholders,
so a hundred orders refused for one reason are one group, whoever's they are.
A group's id is a digest of the three, the same on every replica and in every
request while the reason stays: the API and the console act on a group by it.

Two readings of SPEC's words (docs/departures.md): a three-digit HTTP or SMTP
status stays (`HTTP 422` and `HTTP 503` are different troubles), and a quoted
value is a quoted word; quoted text with spaces in it (a shop's message)
keeps its words, with only its ids and numbers replaced.

Groups list biggest first (then by id), and page with `?limit=&after=`, the
cursor being `<count>-<group>` of the last one shown: a group that grows,
shrinks or goes between two pages moves no other group across the cursor.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from common.clients import CLIENT_ID_RE
from daemon.core.parking import UnknownClient
from daemon.operations.listing import CLIENTS_LIMIT, CLIENTS_MAX_LIMIT, BadQuery, page_limit

Kind = Literal["failed", "parked"]
PATTERN_MAX = 500  # characters of a pattern; the rest of a long error does not split a group
EXAMPLE_CLIENTS = 10  # client ids a group names (`client_ids`); `clients` counts them all

_ID_KEYS = ("sku", "image_id", "id")
# A Python repr's quoted word, or any JSON string (a key, a word, or text with spaces)
_QUOTED = re.compile(r"'[^'\s]+'" r'|"(?:[^"\\\n]|\\.)*"')
_PLACEHOLDER = re.compile(r"<\w+>")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")
_MIXED = re.compile(r"(?<![\w<])(?=[\w.-]*\d)(?=[\w.-]*[A-Za-z])"
                    r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?(?![\w>])")
_NUMBER = re.compile(r"(?<!HTTP )(?<!SMTP )(?<![\w<])\d+(?:[.,:]\d+)*(?![\w>])")
_SPACE = re.compile(r"\s+")
_CURSOR = re.compile(r"(\d{1,9})-([0-9a-f]{16})")


class UnknownGroup(UnknownClient):
    """Raised when an action names a group that has no items (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One failed item or one parked client's item, as grouping sees it."""

    client_id: str
    message_id: str
    type: str
    error: str
    at: str  # failed_at, or since for a park
    ids: tuple[str, ...] = ()  # the item's own ids to blank: SKU, order id…


@dataclass(frozen=True, slots=True)
class Group:
    group: str
    type: str
    error_pattern: str
    members: tuple[Member, ...]  # oldest first

    @property
    def count(self) -> int:
        return len(self.members)

    def describe(self) -> dict[str, Any]:
        """The group as the API lists it (SPEC section 9, plus the first `client_ids`)."""
        clients = sorted({m.client_id for m in self.members})
        return {"group": self.group, "type": self.type, "error_pattern": self.error_pattern,
                "count": self.count, "clients": len(clients),
                "client_ids": clients[:EXAMPLE_CLIENTS],
                "first_at": self.members[0].at, "last_at": self.members[-1].at,
                "example_message_id": self.members[0].message_id}


def item_ids(payload: Any) -> tuple[str, ...]:
    """The ids an item's payload names (`sku`, `image_id`, an object's `id`), to blank."""
    if not isinstance(payload, Mapping):
        return ()
    found = [payload.get(key) for key in _ID_KEYS]
    found += [value.get("id") for value in payload.values() if isinstance(value, Mapping)]
    return tuple(str(v) for v in found if isinstance(v, str | int) and str(v))


@lru_cache(maxsize=32768)
def error_pattern(error: str, message_id: str = "", client_id: str = "",
                  ids: tuple[str, ...] = ()) -> str:
    """The error with the item's ids, quoted words, other ids and numbers as placeholders."""
    text = error
    literals = [(v, "<id>") for v in ids] + [(v, "<message_id>") for v in (message_id,) if v]
    literals += [(v, "<client>") for v in (client_id,) if v]  # the first of equals wins
    for value, placeholder in sorted(literals, key=lambda vp: -len(vp[0])):
        text = _blank(text, value, placeholder)
    text = _QUOTED.sub(_quoted, text)
    text = _UUID.sub("<id>", text)
    text = _MIXED.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:PATTERN_MAX]


def _blank(text: str, value: str, placeholder: str) -> str:
    """`value` replaced wherever it stands as a whole word (no id character either side).

    str.find rather than a regex per item: compiling one would cost more than the rest.
    """
    parts, start = [], 0
    while (at := text.find(value, start)) >= 0:
        end = at + len(value)
        if _edge(text, at - 1) and _edge(text, end):
            parts += [text[start:at], placeholder]
            start = end
        else:
            parts.append(text[start:at + 1])
            start = at + 1
    return "".join(parts) + text[start:]


def _edge(text: str, index: int) -> bool:
    return not 0 <= index < len(text) or not (text[index].isalnum() or text[index] in "_-")


def _quoted(match: re.Match[str]) -> str:
    """A quoted word becomes `<value>`; a JSON key, quoted text and placeholders stay."""
    quoted, inner = match.group(), match.group()[1:-1]
    is_key = match.string[match.end():].lstrip().startswith(":")
    if is_key or _PLACEHOLDER.fullmatch(inner) or any(c.isspace() for c in inner):
        return quoted
    return f"{quoted[0]}<value>{quoted[0]}"


def group_id(kind: Kind, type_: str, pattern: str) -> str:
    """A group's id: the same for the same queue, type and pattern, everywhere."""
    return hashlib.sha256(f"{kind}\0{type_}\0{pattern}".encode()).hexdigest()[:16]


def group(kind: Kind, members: Iterable[Member]) -> list[Group]:
    """Members grouped by type and error pattern: biggest group first, then by id."""
    found: dict[str, tuple[str, str, list[Member]]] = {}
    for member in members:
        pattern = error_pattern(member.error, member.message_id, member.client_id, member.ids)
        key = group_id(kind, member.type, pattern)
        found.setdefault(key, (member.type, pattern, []))[2].append(member)
    groups = [Group(key, type_, pattern, tuple(sorted(ms, key=lambda m: (m.at, m.message_id))))
              for key, (type_, pattern, ms) in found.items()]
    return sorted(groups, key=_order)


def _order(g: Group) -> tuple[int, str]:
    return -g.count, g.group


@dataclass(frozen=True, slots=True)
class GroupsQuery:
    """Which groups to list: one client's (None: all), up to `limit`, after a cursor."""

    client_id: str | None = None
    limit: int = CLIENTS_LIMIT
    after: tuple[int, str] | None = None  # (count, group) of the last one shown


def groups_query(query: Mapping[str, str]) -> GroupsQuery:
    """`?client_id=&limit=&after=` read and checked; raises BadQuery saying which is wrong."""
    client_id = query.get("client_id") or None
    if client_id is not None and not CLIENT_ID_RE.fullmatch(client_id):
        raise BadQuery("client_id must be a client id (1 to 64 characters from A-Z a-z 0-9 _ -)")
    limit = page_limit(query, CLIENTS_LIMIT, CLIENTS_MAX_LIMIT)
    after = query.get("after") or None
    cursor = None
    if after is not None:
        match = _CURSOR.fullmatch(after)
        if match is None:
            raise BadQuery("after must be the next of the previous page (count-group)")
        cursor = (int(match.group(1)), match.group(2))
    return GroupsQuery(client_id, limit, cursor)


def page(groups: Sequence[Group], query: GroupsQuery) -> dict[str, Any]:
    """One page of groups (in `group`'s order): `{"groups", "next"}`."""
    start = 0
    if query.after is not None:
        count, key = query.after
        start = next((i for i, g in enumerate(groups) if _order(g) > (-count, key)),
                     len(groups))
    shown = groups[start:start + query.limit]
    more = start + query.limit < len(groups)
    last = shown[-1] if shown and more else None
    return {"groups": [g.describe() for g in shown],
            "next": None if last is None else f"{last.count}-{last.group}"}


def find(groups: Iterable[Group], key: str) -> Group | None:
    return next((g for g in groups if g.group == key), None)
