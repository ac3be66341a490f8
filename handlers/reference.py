"""The instruction-type reference, made from the handlers themselves (pure).

`markdown(handlers)` renders every type with its queue, what it does, its
payload fields (from the pydantic model's JSON schema: type, required or
default, limits, description) and, for each example in the model's
`json_schema_extra`, the payload and an `s2s-queue publish` command.
`scripts/types-reference.py` writes it to docs/types.md, and a test checks
that file is current, so the reference never drifts from the code.
"""

from __future__ import annotations

import html
import inspect
import shlex
from collections.abc import Iterable
from typing import Any

import orjson

from handlers.base import Handler

_RANGES = (("minLength", "maxLength", "characters"), ("minItems", "maxItems", "entries"),
           ("minimum", "maximum", ""))


def markdown(handlers: Iterable[Handler]) -> str:
    """The whole reference as Markdown."""
    handlers = list(handlers)
    index = "\n".join(
        f"| [`{h.type}`](#{_anchor(h.type)}) | {h.queue} | {html.escape(h.description)} |"
        for h in handlers)
    parts = [
        "# Instruction types\n\n"
        "Generated from the handlers: `scripts/types-reference.py` writes docs/types.md (the\n"
        "builtins; do not edit it by hand), `s2s-queue types --markdown` prints it for the\n"
        "installed types, plug-ins included.\n\n"
        "Payloads are JSON objects; unknown fields are refused, and a payload that does not\n"
        "fit parks the client (blocking) or fails the item (non-blocking) with an error\n"
        "naming the field.\n\n"
        "| type | queue | does |\n| --- | --- | --- |\n" + index + "\n",
        *(_section(h) for h in handlers),
    ]
    return "\n".join(parts)


def _section(handler: Handler) -> str:
    schema = handler.payload.model_json_schema()
    doc = inspect.getdoc(handler.func) or ""
    lines = [f"## `{handler.type}`", "",
             f"Queue: **{handler.queue}**. {schema.get('description', '')}", ""]
    if doc:
        lines += [doc, ""]
    lines += _fields(schema)
    for example in examples(handler):
        lines += ["", "```json", orjson.dumps(example).decode(), "```", "",
                  "```sh", publish_command(handler, example), "```"]
    return "\n".join(lines) + "\n"


def examples(handler: Handler) -> list[dict[str, Any]]:
    """The payload model's examples, in the order written (the JSON schema sorts keys)."""
    extra = handler.payload.model_config.get("json_schema_extra")
    found = extra.get("examples") if isinstance(extra, dict) else None
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _fields(schema: dict[str, Any]) -> list[str]:
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return ["Payload: `{}` (no fields)."]
    required = set(schema.get("required", []))
    rows = ["| field | type | | limits and meaning |", "| --- | --- | --- | --- |"]
    for name, prop in props.items():
        need = "required" if name in required else f"default `{_json(prop.get('default'))}`"
        notes = "; ".join(filter(None, (_limits(prop), prop.get("description", ""))))
        rows.append(f"| `{name}` | {type_name(prop)} | {need} | {notes} |")
    return rows


def type_name(prop: dict[str, Any]) -> str:
    """A short type for one JSON-schema property: `string`, `list of string`, `"a" or "b"`…"""
    if "anyOf" in prop:
        return " or ".join(type_name(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " or ".join(f"`{_json(v)}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {type_name(prop.get('items', {}))}"
    return "JSON object" if kind == "object" else str(kind)


def _limits(prop: dict[str, Any]) -> str:
    found = [_range(prop.get(low), prop.get(high), unit) for low, high, unit in _RANGES]
    if prop.get("x-one-line"):
        found.append("one line (no control characters)")
    if "pattern" in prop:
        found.append("matches `{}`".format(prop["pattern"].replace("|", "\\|")))
    for inner in prop.get("anyOf", []):
        found.append(_limits(inner))
    if "items" in prop:
        found.append(_limits(prop["items"]))
    return ", ".join(filter(None, found))


def _range(low: Any, high: Any, unit: str) -> str:
    """`1-255 characters` (with an en dash), `at least 1 entries`, `≥ 0`, or nothing."""
    unit = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"{low}–{high}{unit}"
    if low is not None:
        return f"at least {low}{unit}" if unit else f"≥ {low}"
    if high is not None:
        return f"at most {high}{unit}" if unit else f"≤ {high}"
    return ""


def publish_command(handler: Handler, payload: dict[str, Any]) -> str:
    """`s2s-queue publish ...` for `payload`, quoted for a POSIX shell."""
    queue = " --nonblocking" if handler.queue == "nonblocking" else ""
    body = shlex.quote(orjson.dumps(payload).decode())
    return f"s2s-queue publish{queue} --client acme --type {handler.type} --payload {body}"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _anchor(type_: str) -> str:
    return type_.replace(".", "")
