"""The web console: server-rendered pages over the same operations as the API.

Log in with a token (the admin token or a client's console token) and get a
session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS or when the
console's public address, `S2SQ_CONSOLE_URL`, is https). Every form
carries a CSRF token. Actions that change items (retry, skip, bulk) ask for
a confirmation page first; every action ends on the page it came from with
its outcome in plain words (post/redirect/get with a signed flash cookie).
A client sees the same pages limited to itself: anything else is "not found".
No JavaScript needed: one small script (`/static/live.js`) refreshes the
clients, client and failed pages in place when an event concerns them.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import orjson
import structlog
from aiohttp import web
from multidict import MultiDictProxy

from common.clients import CLIENT_ID_RE
from daemon.faces.http import outcomes
from daemon.faces.http.auth import Identity, authenticate
from daemon.faces.http.face import FACE, face_of
from daemon.faces.http.sessions import (
    FLASH_COOKIE,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    Signer,
    credential_of,
    issue,
    read,
)
from daemon.operations.actions import Request, action_on, perform
from daemon.operations.admin import OperationError, UnknownClient, UnknownItem
from daemon.operations.audit import AUDIT_LIMIT, AuditQuery, audit_query
from daemon.operations.groups import GroupsQuery, Kind, find, groups_query
from daemon.operations.groups import page as groups_page_of
from daemon.operations.history import HISTORY_LIMIT, history_query
from daemon.operations.listing import CLIENTS_LIMIT, BadQuery, clients_query

log = structlog.get_logger()

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("daemon", "templates/console"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)
_env.filters["pretty"] = lambda value: orjson.dumps(
    value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def segment(value: object) -> str:
    """An id as one URL path segment or query value: every reserved character escaped.

    Ids come from outside (a routing key, a header); unescaped, `../clients/acme/pause?`
    would make a form post somewhere else with the admin's CSRF token.
    """
    return quote(str(value), safe="")


_env.filters["segment"] = segment

Page = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


SIGNER = web.AppKey("console_signer", Signer)


def _signer(request: web.Request) -> Signer | None:
    """The app's signer (made once, in `add_routes`); None when no admin token is set."""
    return request.app.get(SIGNER)


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    html = _env.get_template(template).render(request=request, **values)
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers.update({"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'self'; "
                             "script-src 'self'; connect-src 'self'; "
                             "style-src 'unsafe-inline'; form-action 'self'",
                             "Referrer-Policy": "same-origin"})
    return response


def _redirect(to: str) -> web.Response:
    """303 See Other: the browser GETs `to` (post/redirect/get)."""
    return web.Response(status=303, headers={"Location": to})


def _cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
            max_age: int | None = None) -> None:
    secure = request.secure or face_of(request).settings.secure_cookies  # TLS ends at a proxy
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="Strict", secure=secure)


# -- login and logout ---------------------------------------------------------------


async def login_page(request: web.Request, *, error: str | None = None,
                     status: int = 200) -> web.Response:
    signer = _signer(request)
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(16)
    response = render(request, "login.html.j2", status, error=error, csrf=csrf,
                      closed=signer is None, session=None)
    _cookie(request, response, LOGIN_CSRF_COOKIE, csrf, 3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie or form.get("csrf") != cookie:
        return await login_page(request, error="The login form expired. Please try again.",
                                status=403)
    face, signer = face_of(request), _signer(request)
    clients = face.clients()
    token = str(form.get("token") or "").strip()
    identity = authenticate(token, face.settings.admin_token, clients)
    if identity is None or signer is None:
        log.info("console.login_refused")
        return await login_page(request, error="That token is not valid.", status=401)
    assert face.settings.admin_token is not None
    credential = credential_of(identity, face.settings.admin_token, clients)
    assert credential is not None
    log.info("console.login", actor=identity.name)
    home = "/clients" if identity.is_admin else f"/clients/{segment(identity.client_id)}"
    response = _redirect(home)
    _cookie(request, response, SESSION_COOKIE, issue(signer, identity, credential),
            SESSION_SECONDS)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


def session_of(request: web.Request) -> Session | None:
    face, signer = face_of(request), _signer(request)
    if signer is None or face.settings.admin_token is None:
        return None
    return read(signer, request.cookies.get(SESSION_COOKIE), face.settings.admin_token,
                face.clients())


def page(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Require a session (else the login page); on POST also a valid CSRF token."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = session_of(request)
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther("/login")
            return render(request, "error.html.j2", 401, session=None, title="Logged out",
                          message="Your session has ended. Please log in again.")
        if request.method == "POST":
            form = await request.post()
            signer = _signer(request)
            assert signer is not None
            if form.get("csrf") != signer.csrf(session.nonce):
                log.warning("console.csrf_refused", actor=session.identity.name,
                            path=request.path)
                return render(request, "error.html.j2", 403, session=session,
                              csrf=signer.csrf(session.nonce), title="Refused",
                              message="This form did not come from your console session, "
                                      "or it expired. Reload the page and try again.")
        try:
            return await handler(request, session)
        except (UnknownClient, UnknownItem) as exc:
            return _not_found(request, session, str(exc))

    return wrapped


def _not_found(request: web.Request, session: Session, message: str) -> web.Response:
    return render(request, "error.html.j2", 404, session=session, title="Not found",
                  message=message, csrf=_csrf(request, session))


def _csrf(request: web.Request, session: Session) -> str:
    signer = _signer(request)
    assert signer is not None
    return signer.csrf(session.nonce)


@page
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    log.info("console.logout", actor=session.identity.name)
    response = _redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# -- flash messages (the outcome of the last action) -----------------------------------


def _done(request: web.Request, to: str, ok: bool, message: str) -> web.StreamResponse:
    response = _redirect(to)
    signer = _signer(request)
    assert signer is not None
    _cookie(request, response, FLASH_COOKIE, signer.sign({"ok": ok, "msg": message}), 120)
    return response


def _view(request: web.Request, session: Session, template: str, **values: Any) -> web.Response:
    """Render a page with the session's CSRF token and the pending flash message, if any."""
    signer = _signer(request)
    assert signer is not None
    flash = signer.unsign(request.cookies.get(FLASH_COOKIE))
    response = render(request, template, session=session, csrf=signer.csrf(session.nonce),
                      flash=flash, **values)
    if FLASH_COOKIE in request.cookies:
        response.del_cookie(FLASH_COOKIE, path="/")
    return response


# -- pages -------------------------------------------------------------------------


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/clients")


def _visible(identity: Identity, client_id: str) -> str:
    """The client id of a URL, if this identity may see it; a malformed id is not found."""
    if not CLIENT_ID_RE.fullmatch(client_id) or not identity.may_see(client_id):
        raise UnknownClient(f"client {client_id!r} is not registered")
    return client_id


@page
async def clients_page(request: web.Request, session: Session) -> web.StreamResponse:
    """A page of clients by id, with the API's `?state=&limit=&after=` and links on."""
    try:
        query = clients_query(request.query)
    except BadQuery as exc:
        return render(request, "error.html.j2", 400, session=session, title="Bad address",
                      message=f"{exc}.", csrf=_csrf(request, session))
    ops, only = face_of(request).ops, session.identity.client_id
    listing = ops.clients_page(query, only)
    names = {cid: cfg.name for cid, cfg in face_of(request).clients().items()}
    return _view(request, session, "clients.html.j2", clients=listing["clients"],
                 state=query.state or "", counts=ops.client_counts(only), names=names,
                 first=_clients_link(query.state, query.limit) if query.after else None,
                 next=_clients_link(query.state, query.limit, listing["next"])
                 if listing["next"] else None)


def _clients_link(state: str | None, limit: int, after: str | None = None) -> str:
    """/clients with the query that shows `state`, `limit` a page, after `after`."""
    values = {"state": state, "limit": None if limit == CLIENTS_LIMIT else str(limit),
              "after": after}
    query = urlencode({k: v for k, v in values.items() if v})
    return "/clients" + (f"?{query}" if query else "")


@page
async def client_page(request: web.Request, session: Session) -> web.StreamResponse:
    client_id = _visible(session.identity, request.match_info["client_id"])
    ops = face_of(request).ops
    client = await ops.client(client_id)
    config = face_of(request).clients().get(client_id)
    recent = ops.audit_page(AuditQuery(client_id=client_id, limit=CLIENT_AUDIT))["entries"]
    return _view(request, session, "client.html.j2", client=client,
                 name=config.name if config else "", failed=len(ops.failed(client_id)),
                 audit=recent)


@page
async def history_page(request: web.Request, session: Session) -> web.StreamResponse:
    """What ran for a client, newest first, with the API's `?limit=&before=`."""
    client_id = _visible(session.identity, request.match_info["client_id"])
    face = face_of(request)
    try:
        query = history_query(request.query)
    except BadQuery as exc:
        return render(request, "error.html.j2", 400, session=session, title="Bad address",
                      message=f"{exc}.", csrf=_csrf(request, session))
    try:
        listing = face.ops.history(client_id, query)
    except UnknownClient:
        raise
    except OperationError as exc:  # the history is off
        return render(request, "error.html.j2", 409, session=session, title="No history",
                      message=f"{exc}.", csrf=_csrf(request, session))
    older = listing["next"]
    return _view(request, session, "history.html.j2", client_id=client_id,
                 items=listing["items"], keep=face.settings.history_per_client,
                 newest=_history_link(client_id, query.limit) if query.before else None,
                 older=_history_link(client_id, query.limit, older) if older else None)


def _history_link(client_id: str, limit: int, before: str | None = None) -> str:
    """A client's history page with `limit` entries a page, before `before`."""
    values = {"limit": None if limit == HISTORY_LIMIT else str(limit), "before": before}
    query = urlencode({k: v for k, v in values.items() if v})
    return f"/clients/{segment(client_id)}/history" + (f"?{query}" if query else "")


@page
async def client_action(request: web.Request, session: Session) -> web.StreamResponse:
    client_id = _visible(session.identity, request.match_info["client_id"])
    action = action_on("client", request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound
    form = await request.post()
    args = _args(form)
    back = f"/clients/{segment(client_id)}"
    if action.confirm and form.get("confirm") != "yes":
        return _view(request, session, "confirm.html.j2", action=action.name, back=back,
                     target=f"{back}/{action.name}", client_id=client_id,
                     message_ids=[args["message_id"]] if args["message_id"] else [],
                     reason=args["reason"] or "")
    try:
        result = await perform(face_of(request).ops, action.name, Request(
            actor=session.identity.name, via="console", client_id=client_id,
            message_id=args["message_id"], reason=args["reason"]))
    except OperationError as exc:
        return _done(request, back, False, str(exc))
    ok, message = outcomes.client_action(action.name, client_id, result)
    return _done(request, back, ok, message)


def _args(form: MultiDictProxy[Any]) -> dict[str, str | None]:
    return {"message_id": str(form.get("message_id") or "").strip() or None,
            "reason": str(form.get("reason") or "").strip() or None}


@page
async def failed_page(request: web.Request, session: Session) -> web.StreamResponse:
    identity = session.identity
    client_id = request.query.get("client_id") or None
    type_ = request.query.get("type") or None
    if client_id is not None:
        _visible(identity, client_id)
    ops = face_of(request).ops
    everyone = ops.failed(client_id if identity.is_admin else identity.client_id)
    items = [i for i in everyone if not type_ or i["type"] == type_]
    return _view(request, session, "failed.html.j2", items=items, client_id=client_id or "",
                 type=type_ or "", types=sorted({str(i["type"]) for i in everyone}),
                 clients=sorted({str(i["client_id"]) for i in everyone}),
                 query=urlencode({k: v for k, v in (("client_id", client_id),
                                                    ("type", type_)) if v}))


@page
async def failed_action(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    one = str(form.get("one") or "")
    action, _, single = one.partition(":") if one else (str(form.get("action") or ""), "", "")
    ids = [single] if single else [str(v) for v in form.getall("message_id", [])]
    query = str(form.get("query") or "")
    back = "/failed" + (f"?{query}" if query else "")
    known = action_on("failed", action)
    if known is None:
        raise web.HTTPNotFound
    if not ids:
        return _done(request, back, False, "Select at least one item first.")
    reason = str(form.get("reason") or "").strip() or None
    if known.confirm and form.get("confirm") != "yes":
        return _view(request, session, "confirm.html.j2", action=action, back=back,
                     target="/failed/action", client_id=None, message_ids=ids,
                     reason=reason or "", query=query)
    done, errors = await _each_failed(request, session.identity, known.name, ids, reason)
    return _done(request, back, not errors, outcomes.failed_action(action, done, errors))


async def _each_failed(request: web.Request, identity: Identity, action: str, ids: list[str],
                       reason: str | None) -> tuple[list[str], list[str]]:
    ops = face_of(request).ops
    done: list[str] = []
    errors: list[str] = []
    for message_id in ids:
        record = ops.failed_item(message_id)
        try:
            if record is None or not identity.may_see(record.client_id):
                raise UnknownItem(f"no failed item with message_id {message_id!r}")
            await perform(ops, action, Request(actor=identity.name, via="console",
                                               message_id=message_id, reason=reason))
            done.append(message_id)
        except OperationError as exc:
            errors.append(str(exc))
    return done, errors


@page
async def unrouted_page(request: web.Request, session: Session) -> web.StreamResponse:
    ops = face_of(request).ops
    listing = await ops.unrouted(session.identity.client_id)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in listing["items"]:
        groups.setdefault(str(item["client_id"]), []).append(item)
    registered = {c for c in groups if ops.registered(c)}
    valid = {c for c in groups if CLIENT_ID_RE.fullmatch(c)}
    return _view(request, session, "unrouted.html.j2", groups=groups, registered=registered,
                 valid=valid, shown=len(listing["items"]), more=listing["more"],
                 total=listing["total"])


@page
async def unrouted_replay(request: web.Request, session: Session) -> web.StreamResponse:
    client_id = _visible(session.identity, request.match_info["client_id"])
    ops = face_of(request).ops
    asked = Request(actor=session.identity.name, via="console", client_id=client_id)
    try:
        if not ops.registered(client_id) and session.identity.is_admin:
            await perform(ops, "register", asked)
        result = await perform(ops, "replay_unrouted", asked)
    except OperationError as exc:
        return _done(request, "/unrouted", False, str(exc))
    n = result["replayed"]
    return _done(request, "/unrouted", True,
                 f"Replayed {n} item{'s' if n != 1 else ''} to {client_id}, in their original "
                 "order.")


# -- groups of failed items and parks (daemon/operations/groups.py) ------------------


async def groups_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/groups/failed")


@page
async def groups_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Failed items or parks grouped by error, biggest first, with the API's query."""
    kind: Kind = "failed" if request.match_info["kind"] == "failed" else "parked"
    try:
        query = groups_query(request.query)
    except BadQuery as exc:
        return render(request, "error.html.j2", 400, session=session, title="Bad address",
                      message=f"{exc}.", csrf=_csrf(request, session))
    identity = session.identity
    if query.client_id is not None:
        _visible(identity, query.client_id)
    only = query.client_id if identity.is_admin else identity.client_id
    listing = groups_page_of(face_of(request).ops.groups(kind, only), query)
    return _view(request, session, "groups.html.j2", kind=kind, groups=listing["groups"],
                 client_id=query.client_id or "", query=request.query_string,
                 first=_groups_link(kind, query) if query.after else None,
                 next=_groups_link(kind, query, listing["next"]) if listing["next"] else None)


def _groups_link(kind: str, query: GroupsQuery, after: str | None = None) -> str:
    """/groups/{kind} with the query's client and limit, after `after`."""
    values = {"client_id": query.client_id,
              "limit": None if query.limit == CLIENTS_LIMIT else str(query.limit), "after": after}
    encoded = urlencode({k: v for k, v in values.items() if v})
    return f"/groups/{kind}" + (f"?{encoded}" if encoded else "")


@page
async def group_action(request: web.Request, session: Session) -> web.StreamResponse:
    """Retry or skip a whole group, after a confirmation page; back with the outcome."""
    info = request.match_info
    kind, how, key = info["kind"], info["how"], info["group"]
    form = await request.post()
    query = str(form.get("query") or "")
    back = f"/groups/{kind}" + (f"?{query}" if query else "")
    reason = str(form.get("reason") or "").strip() or None
    identity = session.identity
    if form.get("confirm") != "yes":
        found = find(face_of(request).ops.groups(
            "failed" if kind == "failed" else "parked", identity.client_id), key)
        if found is None:
            return _done(request, back, False, f"That group has no {kind} items any more.")
        return _view(request, session, "group_confirm.html.j2", kind=kind, how=how,
                     group=found.describe(), back=back, query=query, reason=reason or "",
                     target=f"/groups/{kind}/{segment(key)}/{how}")
    try:
        result = await perform(face_of(request).ops, f"{how}_{kind}_group", Request(
            actor=identity.name, via="console", client_id=identity.client_id, group=key,
            reason=reason))
    except OperationError as exc:
        return _done(request, back, False, str(exc))
    ok, message = outcomes.group_action(kind, how, result)
    return _done(request, back, ok, message)


# -- live updates: the one script, served from the package -------------------------

LIVE_JS = (resources.files("daemon") / "static" / "live.js").read_bytes()


async def live_js(request: web.Request) -> web.Response:
    """daemon/static/live.js: refreshes a page's <main> on the events that concern it."""
    return web.Response(body=LIVE_JS, content_type="text/javascript", charset="utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# -- the audit trail -----------------------------------------------------------------------

CLIENT_AUDIT = 10  # a client's page shows its latest entries; /audit?client_id= has them all


@page
async def audit_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Admin actions, newest first, filtered by client and actor, with the API's paging."""
    identity = session.identity
    asked = request.query.get("client_id") or None
    if asked is not None:
        _visible(identity, asked)
    try:
        query = audit_query(request.query, only=identity.client_id)
    except BadQuery as exc:
        return render(request, "error.html.j2", 400, session=session, title="Bad address",
                      message=f"{exc}.", csrf=_csrf(request, session))
    listing = face_of(request).ops.audit_page(query)
    filters = {"client_id": asked or "", "actor": query.actor or "",
               "limit": "" if query.limit == AUDIT_LIMIT else str(query.limit)}
    kept = {k: v for k, v in filters.items() if v}
    return _view(request, session, "audit.html.j2", entries=listing["entries"],
                 client_id=filters["client_id"], actor=filters["actor"],
                 first=f"/audit?{urlencode(kept)}" if query.before is not None else None,
                 next=f"/audit?{urlencode({**kept, 'before': listing['next']})}"
                 if listing["next"] else None)


def add_routes(app: web.Application) -> None:
    token = app[FACE].settings.admin_token
    if token is not None:
        app[SIGNER] = Signer(token)
    app.router.add_get("/", home)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/clients", clients_page)
    app.router.add_get("/clients/{client_id}", client_page)
    app.router.add_get("/clients/{client_id}/history", history_page)
    app.router.add_post("/clients/{client_id}/{action}", client_action)
    app.router.add_get("/failed", failed_page)
    app.router.add_post("/failed/action", failed_action)
    app.router.add_get("/unrouted", unrouted_page)
    app.router.add_post("/unrouted/{client_id}/replay", unrouted_replay)
    app.router.add_get("/groups", groups_home)
    app.router.add_get("/groups/{kind:failed|parked}", groups_page)
    app.router.add_post("/groups/{kind:failed|parked}/{group}/{how:retry|skip}", group_action)
    app.router.add_get("/static/live.js", live_js)
    app.router.add_get("/audit", audit_page)
