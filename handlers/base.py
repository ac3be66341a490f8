"""The types a handler sees: the validated item and its context.

Handlers know nothing of queues, acks or parking (DESIGN.md "Who may know whom"):
they get an `Item` whose payload is already validated against the handler's
pydantic model, and a `Context` that gives them the client's connections.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from common.mail import SmtpSettings

if TYPE_CHECKING:
    import aiohttp

    from common.clients import ClientConfig, Connection
    from handlers.connectors.http import HttpConnector

P = TypeVar("P", bound=BaseModel)
QueueKind = Literal["blocking", "nonblocking"]

_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(value: str) -> str:
    """`value` if it is one line of text, else ValueError naming the first bad character (pure).

    SKUs, ids, labels, URLs and subjects end up in URL paths, file names, log
    lines, commands and mail headers: a line break there adds a header to a
    mail (`Bcc: ...`) and makes it impossible to build. C0 and C1 controls
    (tab included) and the Unicode line and paragraph separators are refused.
    """
    found = _NOT_ONE_LINE.search(value)
    if found:
        raise ValueError(f"must be one line of text: U+{ord(found.group()):04X} is not allowed")
    return value


class _OneLine:
    """Pydantic metadata: check the string with `one_line` (after any constraints before it)
    and mark its JSON schema `x-one-line`, so the type reference says so."""

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(one_line, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "x-one-line": True}


ONE_LINE = _OneLine()
"""For identifiers, names, URLs and subjects in payload models:
`Annotated[str, StringConstraints(max_length=255), ONE_LINE]`."""


@dataclass(frozen=True, slots=True)
class Item(Generic[P]):
    """One validated queue item, as a handler receives it."""

    message_id: str
    type: str
    client_id: str
    payload: P
    queue: QueueKind
    attempt: int = 1


class HandlerSettings(SmtpSettings, Protocol):
    """The daemon's settings a handler may read (`ctx.settings`); the daemon's `Settings`
    has them all. The SMTP ones (`common.mail.SmtpSettings`) are for `common.mail.send`."""

    @property
    def handler_timeout(self) -> float:
        """Seconds one handler call may take (`S2SQ_HANDLER_TIMEOUT`)."""
        ...

    @property
    def webhook_timeout(self) -> float:
        """Seconds one webhook POST may take (`S2SQ_WEBHOOK_TIMEOUT`)."""
        ...

    @property
    def image_dir(self) -> Path:
        """Where `image.fetch` stores images (`S2SQ_IMAGE_DIR`)."""
        ...

    @property
    def image_max_bytes(self) -> int:
        """The largest image a download takes (`S2SQ_IMAGE_MAX_BYTES`)."""
        ...


class Context(Protocol):
    """What a handler may use; the daemon provides the implementation (handlers/context.py)."""

    @property
    def settings(self) -> HandlerSettings:
        """The daemon's settings: SMTP, image folder and limits, timeouts."""
        ...

    @property
    def http(self) -> aiohttp.ClientSession:
        """The daemon's shared HTTP session (for calls that are not to a client connection)."""
        ...

    @property
    def request_timeout(self) -> aiohttp.ClientTimeout:
        """The default timeout of one HTTP request (shorter than the handler's)."""
        ...

    def client(self, client_id: str) -> ClientConfig:
        """The client's settings from the clients file; PermanentError when it is not there."""
        ...

    def connection(self, client_id: str, section: str) -> Connection:
        """The client's connection settings for `section`; PermanentError when it has none."""
        ...

    def connector(self, client_id: str, section: str) -> HttpConnector:
        """The connector for the client's `section` (channel, catalog, source, warehouse),
        of the connection's kind (`http` or `magento2`); PermanentError when it has none."""
        ...


HandlerFunc = Callable[[Item[Any], Context], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handler:
    """One instruction type: its payload schema, its function and the queue it belongs in."""

    type: str
    payload: builtins.type[BaseModel]  # `type` is the field above inside this class body
    func: HandlerFunc
    queue: QueueKind = "blocking"
    description: str = ""
