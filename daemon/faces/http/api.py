"""Routes of SPEC section 8: /healthz, /readyz, /metrics and the JSON API under /api/v1.

Every action goes through the action table's `perform`, exactly like a control
message (and so is audited, `via` "api"), and answers the same JSON:
`{"ok": true, ...}` or `{"ok": false, "error": ...}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from daemon.core.unrouted import UNROUTED_LIMIT, UNROUTED_MAX_LIMIT
from daemon.faces.http import sse
from daemon.faces.http.auth import IDENTITY, Identity, authenticate, bearer_token
from daemon.faces.http.console import add_routes, session_of
from daemon.faces.http.face import FACE, Face, face_of
from daemon.faces.http.scrape import CONTENT_TYPE
from daemon.operations.actions import Request, action_on, perform
from daemon.operations.admin import OperationError, UnknownClient, UnknownItem
from daemon.operations.audit import as_csv, audit_query
from daemon.operations.groups import Kind, groups_query
from daemon.operations.groups import page as groups_page
from daemon.operations.history import history_query
from daemon.operations.listing import BadQuery, clients_query

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response({"ok": False, "error": message}, status)


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate /api/ requests; turn operation errors, and any error under /api/, into JSON."""
    if request.path.startswith("/api/"):
        face = face_of(request)
        token = bearer_token(request.headers.get("Authorization"))
        identity = authenticate(token, face.settings.admin_token, face.clients())
        if identity is None and token is None and sse.takes_session(request):
            session = session_of(request)  # the console's EventSource sends no header
            identity = session.identity if session else None
        if identity is None:
            return error(401, "missing or wrong bearer token")
        request[IDENTITY] = identity
    try:
        return await handler(request)
    except UnknownClient as exc:
        return error(404, str(exc))
    except OperationError as exc:
        return error(409, str(exc))
    except web.HTTPException as exc:  # no such route or method: JSON too, under /api/
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        answer = error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        if "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception:  # the last resort, as aiohttp's own, but answered in JSON
        if not request.path.startswith("/api/"):
            raise
        return _failed(request)


def _failed(request: web.Request) -> web.Response:
    """An /api/ request that raised: the broker is away (503), or a bug (500, logged)."""
    if not face_of(request).health.connected:  # aiormq raises a bare RuntimeError on a closed link
        log.warning("http.broker_unavailable", method=request.method, path=request.path)
        return error(503, "not connected to the broker; try again shortly")
    log.exception("http.crashed", method=request.method, path=request.path)
    return error(500, "internal error; the daemon's log has the details")


def _identity(request: web.Request) -> Identity:
    identity: Identity = request[IDENTITY]
    return identity


def _visible_client(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if not _identity(request).may_see(client_id):
        raise UnknownClient(f"client {client_id!r} is not registered")
    return client_id


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise OperationError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise OperationError("request body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise OperationError(f"{key} must be a string")
    return value or None


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    face = face_of(request)
    if not face.health.ready:
        return json_response({"ready": False, "reason": "starting or stopping"}, 503)
    if not face.health.connected:
        return json_response({"ready": False, "reason": "not connected to the broker"}, 503)
    return json_response({"ready": True, "clients": face.ops.client_count()})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; open like the health checks (client ids label the queue depths)."""
    body = await face_of(request).scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def list_clients(request: web.Request) -> web.Response:
    """A page of clients by id, `?state=&limit=&after=` (daemon/operations/listing.py); 400 if bad.

    Depths come from the daemon's depth cache: a listing asks the broker nothing.
    """
    try:
        query = clients_query(request.query)
    except BadQuery as exc:
        return error(400, str(exc))
    return json_response(face_of(request).ops.clients_page(query, _identity(request).client_id))


async def get_client(request: web.Request) -> web.Response:
    return json_response(await face_of(request).ops.client(_visible_client(request)))


async def client_history(request: web.Request) -> web.Response:
    """What ran for the client, newest first, `?limit=&before=` (daemon/core/history.py)."""
    client_id = _visible_client(request)
    try:
        query = history_query(request.query)
    except BadQuery as exc:
        return error(400, str(exc))
    return json_response(face_of(request).ops.history(client_id, query))


async def register_client(request: web.Request) -> web.Response:
    identity = _identity(request)
    if not identity.is_admin:
        raise UnknownClient("only an admin may register clients")
    client_id = _text(await _body(request), "client_id")
    if not client_id:
        raise OperationError("client_id is required")
    result = await perform(face_of(request).ops, "register", Request(
        actor=identity.name, via="api", client_id=client_id))
    return json_response({"ok": True, **result}, 201 if result["created"] else 200)


async def client_action(request: web.Request) -> web.Response:
    """POST /clients/{client_id}/{action}: an action of the table `on` a client."""
    client_id = _visible_client(request)
    action = action_on("client", request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound
    data = await _body(request)
    result = await perform(face_of(request).ops, action.name, Request(
        actor=_identity(request).name, via="api", client_id=client_id,
        message_id=_text(data, "message_id"), reason=_text(data, "reason")))
    return json_response({"ok": True, **result})


async def list_failed(request: web.Request) -> web.Response:
    identity = _identity(request)
    client_id = request.query.get("client_id") or None
    if client_id is not None and not identity.may_see(client_id):
        raise UnknownClient(f"client {client_id!r} is not registered")
    items = face_of(request).ops.failed(client_id if identity.is_admin else identity.client_id)
    return json_response({"items": items})


async def failed_action(request: web.Request) -> web.Response:
    """POST /failed/{message_id}/{action}: an action of the table `on` a failed item."""
    identity = _identity(request)
    message_id = request.match_info["message_id"]
    action = action_on("failed", request.match_info["action"])
    ops = face_of(request).ops
    if action is None:
        raise web.HTTPNotFound
    record = ops.failed_item(message_id)
    if record is None or not identity.may_see(record.client_id):
        raise UnknownItem(f"no failed item with message_id {message_id!r}")
    data = await _body(request)
    result = await perform(ops, action.name, Request(
        actor=identity.name, via="api", message_id=message_id, reason=_text(data, "reason")))
    return json_response({"ok": True, **result})


async def any_action(request: web.Request) -> web.Response:
    """POST /actions/{action}: any action of the table, by name, for an admin; the body
    holds its arguments (`client_id`, `client_ids`, `message_id`, `reason`, `group`)."""
    identity = _identity(request)
    if not identity.is_admin:
        raise UnknownClient("only an admin may use /api/v1/actions")
    data = await _body(request)
    client_ids = data.get("client_ids") or []
    if not isinstance(client_ids, list) or not all(isinstance(c, str) for c in client_ids):
        raise OperationError("client_ids must be a list of strings")
    result = await perform(face_of(request).ops, request.match_info["action"], Request(
        actor=identity.name, via="api", client_id=_text(data, "client_id"),
        client_ids=tuple(client_ids), message_id=_text(data, "message_id"),
        reason=_text(data, "reason"), group=_text(data, "group")))
    return json_response({"ok": True, **result})


async def list_unrouted(request: web.Request) -> web.Response:
    """The oldest unrouted items, at most `?limit=` (default 100, up to 1000), and `more`."""
    identity = _identity(request)
    limit = unrouted_limit(request.query.get("limit"))
    if limit is None:
        return error(400, f"limit must be a whole number from 1 to {UNROUTED_MAX_LIMIT}")
    return json_response(await face_of(request).ops.unrouted(identity.client_id, limit))


def unrouted_limit(text: str | None) -> int | None:
    """Pure: `?limit=` as a number of items, or None if it is not one we serve."""
    if text is None:
        return UNROUTED_LIMIT
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(UNROUTED_MAX_LIMIT))):
        return None  # (int() refuses past 4,300 digits: a ValueError, a 500)
    if not 1 <= int(text) <= UNROUTED_MAX_LIMIT:
        return None
    return int(text)


async def replay_unrouted(request: web.Request) -> web.Response:
    client_id = _visible_client(request)
    result = await perform(face_of(request).ops, "replay_unrouted", Request(
        actor=_identity(request).name, via="api", client_id=client_id))
    return json_response({"ok": True, **result})


# -- groups of failed items and parks (SPEC section 9; daemon/operations/groups.py) -----


def _only(identity: Identity, client_id: str | None) -> str | None:
    """Whose items a group covers: the asked client's (404 if not visible), a client's own."""
    if client_id is not None and not identity.may_see(client_id):
        raise UnknownClient(f"client {client_id!r} is not registered")
    return client_id if identity.is_admin else identity.client_id


async def list_groups(request: web.Request) -> web.Response:
    """GET /{failed|parked}/groups: a page of groups, biggest first, `?client_id=&limit=&after=`."""
    try:
        query = groups_query(request.query)
    except BadQuery as exc:
        return error(400, str(exc))
    kind: Kind = "failed" if request.match_info["kind"] == "failed" else "parked"
    only = _only(_identity(request), query.client_id)
    return json_response(groups_page(face_of(request).ops.groups(kind, only), query))


async def group_action(request: web.Request) -> web.Response:
    """POST /{failed|parked}/groups/{group}/{retry|skip} `{"reason"}`: every item of the
    group the caller may see, each as by itself; `{"ok", "group", "count", "results"}`."""
    identity = _identity(request)
    data = await _body(request)
    info = request.match_info
    result = await perform(face_of(request).ops, f"{info['how']}_{info['kind']}_group", Request(
        actor=identity.name, via="api", client_id=_only(identity, None), group=info["group"],
        reason=_text(data, "reason")))
    return json_response({"ok": True, **result})


# -- the audit trail (SPEC section 9) ------------------------------------------------------


def _audit(request: web.Request) -> dict[str, Any]:
    """The page `?client_id=&actor=&limit=&before=` asks for; a client token's own only."""
    identity = _identity(request)
    asked = request.query.get("client_id") or None
    if asked is not None and not identity.may_see(asked):
        raise UnknownClient(f"client {asked!r} is not registered")
    query = audit_query(request.query, only=identity.client_id)  # BadQuery: a 400
    return face_of(request).ops.audit_page(query)


async def list_audit(request: web.Request) -> web.Response:
    """Admin actions, newest first: `{"entries", "next"}` (`next`: the `before` of the
    next page)."""
    try:
        return json_response(_audit(request))
    except BadQuery as exc:
        return error(400, str(exc))


async def audit_csv(request: web.Request) -> web.Response:
    """The same page as CSV; the next page's address in a `Link: <…>; rel="next"` header."""
    try:
        page = _audit(request)
    except BadQuery as exc:
        return error(400, str(exc))
    response = web.Response(text=as_csv(page["entries"]), content_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="audit.csv"'})
    if page["next"] is not None:
        url = request.rel_url.update_query(before=page["next"])
        response.headers["Link"] = f'<{url}>; rel="next"'
    return response


def build_app(face: Face) -> web.Application:
    app = web.Application(middlewares=[auth_and_errors], client_max_size=2 * 1024 * 1024)
    app[FACE] = face
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/clients", list_clients)
    app.router.add_post("/api/v1/clients", register_client)
    app.router.add_get("/api/v1/clients/{client_id}", get_client)
    app.router.add_get("/api/v1/clients/{client_id}/history", client_history)
    app.router.add_post("/api/v1/clients/{client_id}/{action}", client_action)
    app.router.add_get("/api/v1/failed", list_failed)
    app.router.add_post("/api/v1/failed/{message_id}/{action}", failed_action)
    app.router.add_post("/api/v1/actions/{action}", any_action)
    app.router.add_get("/api/v1/unrouted", list_unrouted)
    app.router.add_post("/api/v1/unrouted/{client_id}/replay", replay_unrouted)
    app.router.add_get("/api/v1/{kind:failed|parked}/groups", list_groups)
    app.router.add_post("/api/v1/{kind:failed|parked}/groups/{group}/{how:retry|skip}",
                        group_action)
    app.router.add_get("/api/v1/audit", list_audit)
    app.router.add_get("/api/v1/audit.csv", audit_csv)
    add_routes(app)
    sse.add_routes(app)
    return app
