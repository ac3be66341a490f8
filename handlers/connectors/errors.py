"""What a failed HTTP call becomes for a handler: `TransientError` or `PermanentError`.

    http_error(...)         pure: the error for a non-2xx response, by `classify_status`
    transport_errors(...)   aiohttp's connection-level failures -> one `TransientError`

The one place they are mapped (STYLE 6): the connectors (connectors/http.py and
its subclasses) and image downloads (connectors/images.py) both go through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from common.http import classify_status, display_url, quote_body
from handlers.errors import HandlerError, PermanentError, TransientError


def http_error(
    method: str, url_path: str, status: int, body_text: str, *, secrets: Iterable[str] = ()
) -> HandlerError:
    """The error for a non-2xx response: `PUT /products/ABC-1 → HTTP 422: {"message":…}`.

    `url_path` is reduced to its path, so a query string or credentials passed
    by mistake are not shown; each of `secrets` found in the body is blanked.
    """
    path = urlsplit(url_path).path or "/"
    snippet = quote_body(body_text, secrets)
    message = f"{method} {path} → HTTP {status}" + (f": {snippet}" if snippet else "")
    error = TransientError if classify_status(status) == "transient" else PermanentError
    return error(message)


@contextmanager
def transport_errors(method: str, url: URL, timeout: aiohttp.ClientTimeout) -> Iterator[None]:
    """Turn aiohttp's connection-level failures into one readable `TransientError`.

    The one place they are mapped (STYLE 6): every request a connector or
    handler makes goes through it.
    """
    try:
        yield
    except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        reason = _reason(exc, timeout)
        raise TransientError(f"{method} {display_url(url)} failed: {reason}") from exc


def _reason(exc: BaseException, timeout: aiohttp.ClientTimeout) -> str:
    """A few plain words for a connection-level failure."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout.total:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        os_error = exc.os_error
        return f"cannot connect: {os_error.strerror or os_error or type(os_error).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return f"{type(exc).__name__}: {exc}"
