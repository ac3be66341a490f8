"""The generic HTTP connector: status classification, error text, URLs and transport errors."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr

from common.clients import Connection
from handlers.connectors import HttpConnector, classify_status, http_error
from handlers.connectors.http import USER_AGENT
from handlers.errors import PermanentError, TransientError

from .conftest import MESSAGE_ID, TOKEN, FakeChannel, Reply


def connector(session: aiohttp.ClientSession, base_url: str, **fields: object) -> HttpConnector:
    conn = Connection.model_validate({"base_url": base_url, "token": TOKEN, **fields})
    return HttpConnector(session, conn, "acme", timeout=5.0)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (100, "permanent"),
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (299, "ok"),
        (301, "permanent"),
        (304, "permanent"),
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (408, "transient"),
        (409, "permanent"),
        (422, "permanent"),
        (429, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (599, "transient"),
        (600, "permanent"),
    ],
)
def test_each_http_status_maps_to_one_outcome(status, outcome):
    """2xx succeed; 408, 429 and 5xx are worth retrying; everything else is permanent."""
    assert classify_status(status) == outcome


def test_an_http_error_quotes_method_path_status_and_body():
    """The message reads `PUT /path → HTTP 422: <body>` and its class follows the status."""
    error = http_error("PUT", "/products/ABC-1", 422, '{"message":"sku invalid"}')
    assert isinstance(error, PermanentError)
    assert str(error) == 'PUT /products/ABC-1 → HTTP 422: {"message":"sku invalid"}'
    assert isinstance(http_error("PUT", "/p", 503, ""), TransientError)


def test_an_http_error_with_an_empty_body_quotes_only_the_status():
    """No dangling colon when the peer sent nothing."""
    assert str(http_error("DELETE", "/p/1", 500, " \n")) == "DELETE /p/1 → HTTP 500"


def test_an_http_error_collapses_whitespace_and_cuts_the_body_at_200_characters():
    """Newlines and runs of spaces become one space; a cut body ends with an ellipsis."""
    body = "line one\n\n   line   two " + "x" * 300
    message = str(http_error("PUT", "/p", 400, body))
    quoted = message.split(": ", 1)[1]
    assert quoted == ("line one line two " + "x" * 300)[:200] + "…"


def test_an_http_error_shows_the_path_only_never_query_or_credentials():
    """Whatever URL it is given, the message shows its path part."""
    message = str(http_error("GET", "https://user:pw@h.example/p/1?token=abc#f", 404, "gone"))
    assert message == "GET /p/1 → HTTP 404: gone"


def test_an_http_error_blanks_out_secrets_echoed_in_the_body():
    """A peer that echoes the Authorization header does not leak the token into the message."""
    message = str(http_error("PUT", "/p", 401, f"bad header Bearer {TOKEN}", secrets=[TOKEN]))
    assert TOKEN not in message
    assert message == "PUT /p → HTTP 401: bad header Bearer ***"


async def test_every_request_carries_the_contract_headers(channel: FakeChannel, session):
    """Bearer token, idempotency key, client id, JSON content type and our user agent."""
    await connector(session, channel.url).post(["orders"], {"id": 7}, message_id=MESSAGE_ID)
    headers = channel.last.headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Idempotency-Key"] == MESSAGE_ID
    assert headers["X-S2S-Client"] == "acme"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("s2s-queue/")


async def test_a_connection_without_a_token_sends_no_authorization(channel, session):
    """No token configured means no Authorization header at all."""
    conn = Connection(base_url=channel.url)
    await HttpConnector(session, conn, "acme", timeout=5.0).delete(["x"], message_id="m")
    assert "Authorization" not in channel.last.headers


async def test_path_segments_are_escaped_and_joined_to_the_base_url(channel, session):
    """Each segment is escaped whole, so `/`, `%`, `?` and `#` stay inside it."""
    api = connector(session, f"{channel.url}/base/")
    await api.delete(["products", "a/b?c#d%e"], message_id="m")
    assert channel.last.raw_path == "/base/products/a%2Fb%3Fc%23d%25e"


@pytest.mark.parametrize("segment", [".", ".."])
async def test_dot_segments_are_refused(channel, session, segment):
    """A SKU of `..` must not address the parent resource."""
    with pytest.raises(PermanentError, match="path segment"):
        await connector(session, channel.url).delete(["products", segment], message_id="m")
    assert channel.requests == []


async def test_a_json_answer_is_returned_decoded(channel, session):
    """The connector returns the peer's JSON body, or None when there is none."""
    channel.reply = Reply(status=201, body='{"id": 42}')
    api = connector(session, channel.url)
    assert await api.post(["orders"], {"id": 1}, message_id="m") == {"id": 42}
    channel.reply = Reply(status=204)
    assert await api.post(["orders"], {"id": 1}, message_id="m") is None
    channel.reply = Reply(status=200, body="not json")
    assert await api.post(["orders"], {"id": 1}, message_id="m") is None


async def test_accepted_statuses_count_as_success(channel, session):
    """A status listed in `accept` does not raise."""
    channel.reply = Reply(status=404, body="no such thing")
    await connector(session, channel.url).delete(["x"], message_id="m", accept=(404,))


async def test_a_redirect_is_not_followed_and_is_permanent(channel, session):
    """A 3xx means base_url is wrong: report it rather than follow it with the token."""
    channel.reply = Reply(status=301, body="moved")
    with pytest.raises(PermanentError, match=r"→ HTTP 301: moved"):
        await connector(session, channel.url).put(["x"], {}, message_id="m")
    assert len(channel.requests) == 1


async def test_a_refused_connection_is_transient_and_says_so(session, closed_port):
    """Nobody listening: retry later, with a message naming the URL."""
    api = connector(session, f"http://127.0.0.1:{closed_port}/api")
    with pytest.raises(TransientError) as info:
        await api.put(["products", "A 1"], {}, message_id="m")
    assert str(info.value) == (
        f"PUT http://127.0.0.1:{closed_port}/api/products/A%201 failed: connection refused"
    )
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)


async def test_a_slow_peer_times_out_as_a_transient_error(channel, session):
    """The connection's own timeout applies, and the message says how long it waited."""
    channel.reply = Reply(delay=30.0)
    api = connector(session, channel.url, timeout=0.2)
    with pytest.raises(TransientError) as info:
        await api.put(["products", "A"], {}, message_id="m")
    assert str(info.value) == f"PUT {channel.url}/products/A failed: timed out after 0.2 s"


async def test_the_repr_shows_no_token(session):
    """Printing a connector for debugging does not leak the token."""
    api = connector(session, "https://shop.example/api")
    assert repr(api) == "HttpConnector(client_id='acme', base_url='https://shop.example/api')"
    assert TOKEN not in repr(api)


def test_a_plain_string_is_not_taken_for_a_list_of_segments():
    """`put("products", ...)` would send one segment per character; it is refused."""
    conn = Connection(base_url="https://shop.example", token=SecretStr(TOKEN))
    api = HttpConnector(None, conn, "acme", timeout=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        api.url("products")
