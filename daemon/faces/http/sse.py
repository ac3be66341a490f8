"""`GET /api/v1/events/stream`: the events of SPEC section 6 as Server-Sent Events.

Each event is one message: `id:` its offset in the events log, `event:` its
name, `data:` its JSON on one line. A client that reconnects with
`Last-Event-ID` goes on after that event, without loss or repeats, for as
long as the log keeps it (daemon/core/event_log.py). A client token gets
its own client's events only. An idle stream gets a comment line
(`: keep-alive`) every `S2SQ_EVENTS_KEEPALIVE` seconds, which keeps proxies
from closing it and finds browsers that went away.

A page of the console gives `?since=<seconds since 1970>`, the time it was
rendered less a second: the stream then starts at the first event the log
holds from then (by the broker's clock, to the second), so an event between
the rendering and the stream's opening is not missed (at worst one from the
second before is given too, which only refreshes the page once more).
`Last-Event-ID`, when a browser reconnects, wins over `since`.

Who may read is decided where every /api/ request is, in api.py's
middleware: a bearer token, or for this route alone (`takes_session`) the
console's session cookie, since a browser's EventSource cannot set headers.

On shutdown every stream ends (the app's `on_shutdown`, which aiohttp runs
before it waits for the handlers still running): the server's cleanup never
waits on an open stream.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web

from daemon.core.event_log import Follower, LoggedEvent
from daemon.faces.http.auth import IDENTITY, Identity
from daemon.faces.http.face import face_of

log = structlog.get_logger()

PATH = "/api/v1/events/stream"
KEEPALIVE = b": keep-alive\n\n"
RETRY = b"retry: 2000\n\n"  # how long a browser waits before it reconnects (ms)
STREAMS: web.AppKey[set[Follower]] = web.AppKey("event_streams")


class BadEventId(ValueError):
    """Raised when a `Last-Event-ID` header is not an id this stream gave, or `?since=` not a
    time."""


def takes_session(request: web.Request) -> bool:
    """Whether a request may prove who it is with the console's session cookie."""
    return request.method == "GET" and request.path == PATH


def last_event_id(text: str | None) -> int | None:
    """The offset a `Last-Event-ID` header names; None without one (pure)."""
    return _whole_number(text, 20, "Last-Event-ID must be the id of an event of this stream,"
                                   " a whole number")  # offsets < 2**64


def since_of(text: str | None) -> datetime | None:
    """The time a `?since=` names (whole seconds since 1970); None without one (pure)."""
    seconds = _whole_number(text, 11, "since must be a time in whole seconds since 1970")
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _whole_number(text: str | None, digits: int, error: str) -> int | None:
    """`text` as a whole number of at most `digits` ASCII digits, None if blank; else
    BadEventId(error)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= digits):
        raise BadEventId(error)
    return int(text)


def frame(event: LoggedEvent) -> bytes:
    """One Server-Sent Events message (pure): the data is one line of JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.offset, event.event.encode(),
                                                  event.data)


def _refused(status: int, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"ok": False, "error": message}), status=status,
                        content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    identity: Identity = request[IDENTITY]
    face = face_of(request)
    try:
        after = last_event_id(request.headers.get("Last-Event-ID"))
        since = since_of(request.query.get("since")) if after is None else None
    except BadEventId as exc:
        return _refused(400, str(exc))
    streams = request.app[STREAMS]
    if len(streams) >= face.settings.events_max_streams:
        return _refused(503, "too many event streams open; try again shortly")
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})  # nginx: pass each event on at once
    async with face.events.follow(after, since) as follower:
        streams.add(follower)
        log.info("sse.opened", actor=identity.name, after=after,
                 since=since.isoformat() if since else None)
        sent = 0
        try:
            await response.prepare(request)
            await response.write(RETRY)
            sent = await _pump(response, follower, identity, face.settings.events_keepalive)
        except ConnectionResetError:  # the browser went: seen at the next write
            pass
        finally:
            streams.discard(follower)
            log.info("sse.closed", actor=identity.name, events=sent, ended=follower.ended)
    return response


async def _pump(response: web.StreamResponse, follower: Follower, identity: Identity,
                keepalive: float) -> int:
    """Write the events this identity may see until the server stops; how many were sent."""
    sent = 0
    while True:
        event = await follower.next(keepalive)
        if follower.ended:
            return sent
        if event is None:
            await response.write(KEEPALIVE)
        elif identity.may_see(event.client_id):
            await response.write(frame(event))
            sent += 1


async def _end_streams(app: web.Application) -> None:
    streams = app[STREAMS]
    for follower in list(streams):
        follower.end()


def add_routes(app: web.Application) -> None:
    streams: set[Follower] = set()
    app[STREAMS] = streams
    app.on_shutdown.append(_end_streams)
    app.router.add_get(PATH, stream)
