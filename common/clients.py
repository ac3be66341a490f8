"""The clients file (SPEC §8): per-client settings and connections, as TOML.

    [clients.acme]              -> ClientConfig
    [clients.acme.channel]      -> Connection (also catalog, source, warehouse)

`load_clients_file` reads and validates the whole file or raises
`ClientsFileError` with one readable line naming the file and the problem, so
a reload (SIGHUP) with a typo can be refused while the old settings stay in
force.  Unknown keys are errors, not silently ignored.  Secrets are `SecretStr`
and error messages are built from pydantic's messages without the offending
input, so neither a repr nor an error ever shows a token.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    PositiveFloat,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SECTIONS = ("channel", "catalog", "source", "warehouse")
"""The connection sections a client may have, in the order the file documents them."""

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHOWN_ID_CHARS = 80


class InvalidClientId(ValueError):
    """Raised when a client id does not match `CLIENT_ID_RE`."""


class ClientsFileError(Exception):
    """Raised when the clients file is missing, is not TOML, or does not validate."""


def validate_client_id(client_id: str) -> str:
    """Return `client_id` unchanged if it is valid, else raise `InvalidClientId`.

    The id is quoted in the message truncated and with control characters
    escaped, because it comes from outside (an AMQP header, a URL, a file).
    `fullmatch` matters: with `match`, `$` would accept a trailing newline.
    """
    if CLIENT_ID_RE.fullmatch(client_id):
        return client_id
    raise InvalidClientId(
        f"invalid client id '{_shown(client_id)}': use 1 to 64 characters from A-Z a-z 0-9 _ -"
    )


def _shown(text: str) -> str:
    """`text` cut to 80 characters with anything unprintable (and `'`, `\\`) escaped."""
    shown = "".join(_escape(c) for c in text[:_SHOWN_ID_CHARS])
    return shown + ("…" if len(text) > _SHOWN_ID_CHARS else "")


def _escape(char: str) -> str:
    if char == "'":
        return "\\'"
    return char if char.isprintable() and char != "\\" else repr(char)[1:-1]


def check_email(address: str) -> str:
    """`address` if it looks like `ops@acme.example` (no spaces, line breaks or other control
    characters: it goes into a mail header), else ValueError."""
    local, at, domain = address.partition("@")
    if not (local and at and domain) or not address.isprintable() or " " in address:
        raise ValueError("each entry must be an email address like ops@acme.example")
    return address


def split_host_port(entry: str) -> tuple[str, int | None]:
    """An `allowed_image_hosts` entry as (host, port or None) (pure).

    `cdn.acme.example`, `cdn.acme.example:8080`, `10.0.0.5`, `[::1]:8080` and
    `::1`; the host lower-cased, an IPv6 address without brackets.
    ValueError when it is not one of these (a URL, say).
    """
    text = entry.strip().lower()
    wrong = ValueError("each entry must be a host name like cdn.acme.example, or host:port, "
                       "not a URL")
    if not text or "/" in text or "@" in text or not text.isprintable() or " " in text:
        raise wrong
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise wrong
        port = _port(rest[1:], wrong) if rest else None
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, wrong)
    if not host:
        raise wrong
    return host, port


def _port(text: str, wrong: ValueError) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise wrong
    return int(text)


def host_entry(host: str, port: int | None) -> str:
    """`host` or `host:port` as an `allowed_image_hosts` entry is written (pure)."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _check_http_url(value: str, *, plain: bool, credentials: str) -> str:
    """Check `value` is an http(s) URL with a host and no credentials (`credentials` says where
    they belong instead); `plain` also refuses queries.

    Messages never quote the URL: it may hold credentials. Credentials in a URL
    are refused rather than hidden: every error about a call quotes its URL's
    origin, and a password there would reach logs, events, mails and pages.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"must not contain credentials: {credentials}")
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        raise ValueError("has a port outside 1-65535") from None
    if plain and (parts.query or parts.fragment):
        raise ValueError("must not have a query string or fragment")
    return value


class Connection(BaseModel):
    """Where and how to reach one of a client's systems (`[clients.<id>.channel]` and co.)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["http", "magento2"] = "http"
    base_url: str
    token: SecretStr | None = None
    timeout: PositiveFloat | None = None
    """Seconds per request; the daemon's default when unset."""

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        return _check_http_url(value, plain=True, credentials="put the token in `token`")


class ClientConfig(BaseModel):
    """One `[clients.<id>]` table: who to tell about failures and where the client's systems are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    notify_emails: list[str] = []
    console_token_sha256: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    allowed_image_hosts: list[str] = []
    channel: Connection | None = None
    catalog: Connection | None = None
    source: Connection | None = None
    warehouse: Connection | None = None

    @field_validator("name")
    @classmethod
    def _name_is_one_line(cls, value: str) -> str:
        if not value.isprintable():  # it goes into mail subjects
            raise ValueError("must be one line of printable text")
        return value

    @field_validator("notify_emails")
    @classmethod
    def _emails_look_like_emails(cls, value: list[str]) -> list[str]:
        for email in value:
            check_email(email)
        return value

    @field_validator("console_token_sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not _SHA256_RE.fullmatch(value):
            raise ValueError("must be 64 hex digits: the sha256 of the client's console token")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_http_url(value, plain=False,
                               credentials="webhooks are signed with webhook_secret")

    @field_validator("allowed_image_hosts")
    @classmethod
    def _bare_hosts(cls, value: list[str]) -> list[str]:
        return [host_entry(*split_host_port(entry)) for entry in value]

    @model_validator(mode="after")
    def _magento_sells(self) -> ClientConfig:
        for section in ("source", "warehouse"):
            conn = self.connection(section)
            if conn is not None and conn.kind == "magento2":
                raise ValueError(f"{section}.kind: magento2 is a sales channel or catalog kind; "
                                 f"the {section} speaks the generic API (kind = \"http\")")
        return self

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> ClientConfig:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("webhook_url needs webhook_secret: webhooks are always signed")
        return self

    def connection(self, section: str) -> Connection | None:
        """The connection in `section` (one of `SECTIONS`), or None when the file has none."""
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}: expected one of {', '.join(SECTIONS)}")
        conn: Connection | None = getattr(self, section)
        return conn


def load_clients_file(path: Path) -> dict[str, ClientConfig]:
    """Read and validate the clients file; `{client_id: ClientConfig}` in file order.

    Raises:
        ClientsFileError: one line naming the file and what is wrong with it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientsFileError(f"clients file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ClientsFileError(f"clients file {path}: cannot read it: {reason}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientsFileError(f"clients file {path}: not valid TOML: {exc}") from exc
    try:
        return parse_clients(data)
    except ValueError as exc:
        raise ClientsFileError(f"clients file {path}: {exc}") from exc


def parse_clients(data: dict[str, Any]) -> dict[str, ClientConfig]:
    """Validate the parsed TOML document; ValueError with a readable message when invalid."""
    unknown = sorted(set(data) - {"clients"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting (only [clients.<id>] tables belong here)")
    tables = data.get("clients", {})
    if not isinstance(tables, dict):
        raise ValueError("clients: must be a table of [clients.<id>] tables")
    clients: dict[str, ClientConfig] = {}
    for client_id, table in tables.items():
        validate_client_id(client_id)
        if not isinstance(table, dict):
            raise ValueError(f"clients.{client_id}: must be a table")
        try:
            clients[client_id] = ClientConfig.model_validate(table)
        except ValidationError as exc:
            raise ValueError(_describe(exc, prefix=f"clients.{client_id}")) from None
    return clients


def _describe(exc: ValidationError, *, prefix: str) -> str:
    """Pydantic errors as `clients.acme.channel.base_url: reason; ...`, never quoting the input."""
    return "; ".join(
        f"{_location(prefix, err['loc'])}: {_reason(err['type'], err['msg'])}"
        for err in exc.errors(include_input=False, include_url=False)
    )


def _location(prefix: str, loc: tuple[int | str, ...]) -> str:
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _reason(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown setting (misspelt?)"
    if kind == "missing":
        return "required"
    return msg.removeprefix("Value error, ")
