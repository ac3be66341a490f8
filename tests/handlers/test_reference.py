"""The generated instruction-type reference (docs/types.md) and the examples it shows."""

from __future__ import annotations

import shlex
from pathlib import Path

import orjson
import pytest

from handlers import BUILTIN_HANDLERS
from handlers.base import Handler
from handlers.reference import examples, markdown, publish_command, type_name

DOCS = Path(__file__).resolve().parents[2] / "docs" / "types.md"


def test_docs_types_md_is_current():
    """docs/types.md is what scripts/types-reference.py makes now: regenerate it if this fails."""
    assert DOCS.read_text(encoding="utf-8") == markdown(BUILTIN_HANDLERS)


@pytest.mark.parametrize("handler", BUILTIN_HANDLERS, ids=lambda h: h.type)
def test_every_type_has_examples_that_validate(handler: Handler):
    """Each shipped type documents at least one payload, and each one is valid."""
    shown = examples(handler)
    assert shown, f"{handler.type} has no example payload"
    for example in shown:
        handler.payload.model_validate(example)


@pytest.mark.parametrize("handler", BUILTIN_HANDLERS, ids=lambda h: h.type)
def test_every_type_is_in_the_reference_with_a_publish_command(handler: Handler):
    """The section, and a command for its queue (`--nonblocking` where it belongs)."""
    text = DOCS.read_text(encoding="utf-8")
    assert f"## `{handler.type}`" in text
    command = publish_command(handler, examples(handler)[0])
    assert command in text
    assert ("--nonblocking" in command) == (handler.queue == "nonblocking")


def test_a_publish_command_survives_the_shell():
    """Quotes inside the payload are escaped so the shell hands the JSON over intact."""
    handler = next(h for h in BUILTIN_HANDLERS if h.type == "notification.email")
    payload = {"to": ["a@b.example"], "subject": "It's here", "text": "Don't \"worry\" $HOME"}
    argv = shlex.split(publish_command(handler, payload))
    assert argv[:4] == ["s2s-queue", "publish", "--nonblocking", "--client"]
    assert orjson.loads(argv[argv.index("--payload") + 1]) == payload


@pytest.mark.parametrize(
    ("prop", "name"),
    [
        ({"type": "string"}, "string"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "integer or null"),
        ({"enum": ["a", "b"]}, '`"a"` or `"b"`'),
        ({"type": "array", "items": {"type": "string"}}, "list of string"),
        ({"type": "object"}, "JSON object"),
        ({}, "any"),
    ],
)
def test_schema_types_read_plainly(prop, name):
    """JSON-schema properties become short readable types."""
    assert type_name(prop) == name
