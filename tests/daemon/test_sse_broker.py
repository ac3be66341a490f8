"""GET /api/v1/events/stream on a real daemon: Server-Sent Events, resumable, per client."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.tasks import cancel_and_wait
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

PATH = "/api/v1/events/stream"
ADMIN = "admin-token"
ACME = "acme-console-token"
UNAUTHORIZED = {"ok": False, "error": "missing or wrong bearer token"}


@dataclass
class EventStream:
    """What one SSE connection got so far: messages (their fields) and comment lines."""

    response: aiohttp.ClientResponse
    messages: list[dict[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False

    @property
    def events(self) -> list[dict[str, str]]:
        return [m for m in self.messages if "event" in m]

    def seen(self) -> list[tuple[str, Any]]:
        """(event, client_id) of each event, from its `data:`."""
        return [(m["event"], orjson.loads(m["data"])["client_id"]) for m in self.events]

    async def read(self) -> None:
        fields: dict[str, str] = {}
        async for raw in self.response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if fields:
                    self.messages.append(fields)
                fields = {}
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        self.ended = True


@asynccontextmanager
async def event_stream(base: str, token: str | None = ADMIN, last_id: str | None = None,
                       http: aiohttp.ClientSession | None = None,
                       since: int | None = None) -> AsyncIterator[EventStream]:
    """An open stream, read in the background; the answer must be 200 and an event stream."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    path = PATH if since is None else f"{PATH}?since={since}"
    async with _session(http) as client, client.get(base + path, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        stream = EventStream(response)
        task = asyncio.ensure_future(stream.read())
        try:
            await wait_until(lambda: bool(stream.messages), 10, "the stream's retry line")
            yield stream
        finally:
            await cancel_and_wait(task)


@asynccontextmanager
async def _session(http: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if http is not None:
        yield http
        return
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as own:
        yield own


async def get(base: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(base + path, **kwargs) as response:
        return response.status, await response.json()


@pytest.fixture
def sse_settings(prefix, tmp_path, shop: FakeShop):
    digest = hashlib.sha256(ACME.encode()).hexdigest()
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex"],
                                 acme=f'console_token_sha256 = "{digest}"'))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                        admin_token=ADMIN)


def _base(settings: Any) -> str:
    return f"http://127.0.0.1:{settings.http_port}"


async def _act(amqp: Broker, *steps: tuple[str, str]) -> None:
    """Pause or resume clients by control message, one after the other."""
    for action, client in steps:
        answer = await amqp.control(action=action, client_id=client)
        assert answer["ok"], answer


async def test_each_event_arrives_with_its_id_name_and_json(sse_settings, amqp: Broker):
    """`id:` an offset, `event:` the SPEC §6 name, `data:` the event's JSON; a keep-alive
    comment on an idle stream; the browser is told to reconnect after 2 s."""
    settings = sse_settings.model_copy(update={"events_keepalive": 0.2})
    async with running(settings), event_stream(_base(settings)) as stream:
        await _act(amqp, ("pause", "acme"))
        await wait_until(lambda: len(stream.events) == 1, 10, "the pause's event")
        await wait_until(lambda: "keep-alive" in stream.comments, 5, "a keep-alive comment")
    assert stream.messages[0] == {"retry": "2000"}
    [paused] = stream.events
    assert paused["event"] == "client.paused"
    assert re.fullmatch(r"\d+", paused["id"])
    data = orjson.loads(paused["data"])
    [tapped] = amqp.named("client.paused", "acme")
    assert data == tapped
    assert (data["client_id"], data["actor"]) == ("acme", "tester")


async def test_last_event_id_resumes_without_loss_or_duplicates(sse_settings, amqp: Broker):
    """A stream reopened with the id of its second event gets the third and every event
    published while it was closed, each once, in order."""
    base = _base(sse_settings)
    async with running(sse_settings):
        async with event_stream(base) as first:
            await _act(amqp, ("pause", "acme"), ("resume", "acme"), ("pause", "globex"))
            await wait_until(lambda: len(first.events) == 3, 10, "three events")
        await _act(amqp, ("resume", "globex"), ("pause", "acme"), ("resume", "acme"))
        await amqp.wait_event("client.resumed", "acme", count=2)
        async with event_stream(base, last_id=first.events[1]["id"]) as second:
            await wait_until(lambda: len(second.events) >= 4, 10, "the four events after it")
    assert first.seen() == [("client.paused", "acme"), ("client.resumed", "acme"),
                            ("client.paused", "globex")]
    assert second.seen() == [("client.paused", "globex"), ("client.resumed", "globex"),
                             ("client.paused", "acme"), ("client.resumed", "acme")]
    assert second.events[0] == first.events[2]
    ids = [int(e["id"]) for e in second.events]
    assert ids == sorted(set(ids))


async def test_since_starts_at_the_first_event_from_that_second_and_last_event_id_wins(
    sse_settings, amqp: Broker
):
    """`?since=` (what a console page passes: a second before it was rendered) gets the
    events published from then on, before the stream opened too, and not the ones before;
    a reconnect's Last-Event-ID wins over it."""
    base = _base(sse_settings)
    async with running(sse_settings):
        await _act(amqp, ("pause", "acme"))
        await amqp.wait_event("client.paused", "acme")
        since = int(time.time()) + 2  # a whole second after acme's pause, whatever its ms
        await wait_until(lambda: time.time() >= since, 5, "the clock to pass `since`")
        await _act(amqp, ("pause", "globex"))
        await amqp.wait_event("client.paused", "globex")
        async with event_stream(base, since=since) as stream:
            await wait_until(lambda: len(stream.events) >= 1, 10, "globex's pause")
            await _act(amqp, ("resume", "globex"))
            await wait_until(lambda: len(stream.events) >= 2, 10, "globex's resume")
        async with event_stream(base, last_id=stream.events[0]["id"],
                                since=since + 3600) as resumed:
            await wait_until(lambda: len(resumed.events) >= 1, 10, "the event after the id")
        bad = await get(base, f"{PATH}?since=yesterday",
                        headers={"Authorization": f"Bearer {ADMIN}"})
    assert stream.seen() == [("client.paused", "globex"), ("client.resumed", "globex")]
    assert resumed.seen() == [("client.resumed", "globex")]
    assert bad == (400, {"ok": False,
                         "error": "since must be a time in whole seconds since 1970"})


async def test_a_client_sees_only_its_own_events_by_token_or_console_session(
    sse_settings, amqp: Broker
):
    """acme's console token, and acme's console session (the cookie the console's
    EventSource sends), get acme's events and never globex's; the admin gets both."""
    base = _base(sse_settings)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1
    async with running(sse_settings), aiohttp.ClientSession(cookie_jar=jar) as browser:
        await _log_in(browser, base, ACME)
        async with event_stream(base) as admin, event_stream(base, ACME) as own, \
                event_stream(base, None, http=browser) as console:
            await _act(amqp, ("pause", "globex"), ("resume", "globex"), ("pause", "acme"))
            for stream in (admin, own, console):
                await wait_until(_got(stream, ("client.paused", "acme")), 10, "acme's pause")
    assert admin.seen() == [("client.paused", "globex"), ("client.resumed", "globex"),
                            ("client.paused", "acme")]
    assert own.seen() == console.seen() == [("client.paused", "acme")]
    assert "globex" not in str(own.messages) + str(console.messages)


def _got(stream: EventStream, event: tuple[str, str]) -> Callable[[], bool]:
    return lambda: event in stream.seen()


async def _log_in(http: aiohttp.ClientSession, base: str, token: str) -> None:
    async with http.get(f"{base}/login") as form:
        match = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert match, "the login form carries a CSRF token"
    async with http.post(f"{base}/login", data={"csrf": match.group(1), "token": token},
                         allow_redirects=False) as answer:
        assert answer.status == 303, await answer.text()


async def test_a_stream_needs_a_token_or_a_session_and_a_good_last_event_id(
    sse_settings, amqp: Broker
):
    """401 without a token, with a wrong one or a forged session; 400 for a bad
    Last-Event-ID; the session cookie opens this route alone."""
    base = _base(sse_settings)
    async with running(sse_settings):
        none = await get(base, PATH)
        wrong = await get(base, PATH, headers={"Authorization": "Bearer nope"})
        forged = await get(base, PATH, headers={"Cookie": "s2s_session=forged"})
        bad_id = await get(base, PATH, headers={"Authorization": f"Bearer {ADMIN}",
                                                "Last-Event-ID": "-1"})
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            await _log_in(browser, base, ADMIN)
            async with browser.get(base + "/api/v1/clients") as other:
                other_route = other.status, await other.json()
    assert none == wrong == forged == other_route == (401, UNAUTHORIZED)
    assert bad_id == (400, {"ok": False, "error": "Last-Event-ID must be the id of an event "
                                                  "of this stream, a whole number"})


async def test_open_streams_beyond_the_limit_are_refused(sse_settings, amqp: Broker):
    """S2SQ_EVENTS_MAX_STREAMS open at once; the next one is told to try again (`amqp`
    purges the daemon's queues afterwards)."""
    settings = sse_settings.model_copy(update={"events_max_streams": 1})
    base = _base(settings)
    async with running(settings), event_stream(base):
        refused = await get(base, PATH, headers={"Authorization": f"Bearer {ADMIN}"})
    assert refused == (503, {"ok": False,
                             "error": "too many event streams open; try again shortly"})


async def test_the_daemon_stops_at_once_with_streams_open(sse_settings, amqp: Broker):
    """Open streams end when the daemon stops: the server does not wait for them
    (aiohttp would wait 60 s for running handlers)."""
    base = _base(sse_settings)
    async with running(sse_settings) as sup, event_stream(base) as one, \
            event_stream(base, ACME) as two:
        started = time.monotonic()
        sup.stop_requested.set()
        await wait_until(lambda: one.ended and two.ended, 10, "both streams to end")
    took = time.monotonic() - started
    assert took < 5, f"the daemon took {took:.1f} s to stop"
