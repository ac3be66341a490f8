"""The console's client pages: the clients, one client, its history, its actions, and
items published for unknown clients."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from common.clients import CLIENT_ID_RE
from daemon.faces.http import outcomes
from daemon.faces.http.console.frame import (
    bad_address,
    csrf_token,
    flash_to,
    page,
    render,
    segment,
    view,
    visible,
)
from daemon.faces.http.face import face_of
from daemon.faces.http.sessions import Session
from daemon.operations.actions import Request, action_on, perform
from daemon.operations.admin import OperationError, UnknownClient
from daemon.operations.audit import AuditQuery
from daemon.operations.history import HISTORY_LIMIT, history_query
from daemon.operations.listing import CLIENTS_LIMIT, BadQuery, clients_query

CLIENT_AUDIT = 10  # a client's page shows its latest entries; /audit?client_id= has them all


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/clients")


@page
async def clients_page(request: web.Request, session: Session) -> web.StreamResponse:
    """A page of clients by id, with the API's `?state=&limit=&after=` and links on."""
    try:
        query = clients_query(request.query)
    except BadQuery as exc:
        return bad_address(request, session, exc)
    ops, only = face_of(request).ops, session.identity.client_id
    listing = ops.clients_page(query, only)
    names = {cid: cfg.name for cid, cfg in face_of(request).clients().items()}
    return view(request, session, "clients.html.j2", clients=listing["clients"],
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
    client_id = visible(session.identity, request.match_info["client_id"])
    ops = face_of(request).ops
    client = await ops.client(client_id)
    config = face_of(request).clients().get(client_id)
    recent = ops.audit_page(AuditQuery(client_id=client_id, limit=CLIENT_AUDIT))["entries"]
    return view(request, session, "client.html.j2", client=client,
                 name=config.name if config else "", failed=len(ops.failed(client_id)),
                 audit=recent)


@page
async def history_page(request: web.Request, session: Session) -> web.StreamResponse:
    """What ran for a client, newest first, with the API's `?limit=&before=`."""
    client_id = visible(session.identity, request.match_info["client_id"])
    face = face_of(request)
    try:
        query = history_query(request.query)
    except BadQuery as exc:
        return bad_address(request, session, exc)
    try:
        listing = face.ops.history(client_id, query)
    except UnknownClient:
        raise
    except OperationError as exc:  # the history is off
        return render(request, "error.html.j2", 409, session=session, title="No history",
                      message=f"{exc}.", csrf=csrf_token(request, session))
    older = listing["next"]
    return view(request, session, "history.html.j2", client_id=client_id,
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
    client_id = visible(session.identity, request.match_info["client_id"])
    action = action_on("client", request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound
    form = await request.post()
    args = _args(form)
    back = f"/clients/{segment(client_id)}"
    if action.confirm and form.get("confirm") != "yes":
        return view(request, session, "confirm.html.j2", action=action.name, back=back,
                     target=f"{back}/{action.name}", client_id=client_id,
                     message_ids=[args["message_id"]] if args["message_id"] else [],
                     reason=args["reason"] or "")
    try:
        result = await perform(face_of(request).ops, action.name, Request(
            actor=session.identity.name, via="console", client_id=client_id,
            message_id=args["message_id"], reason=args["reason"]))
    except OperationError as exc:
        return flash_to(request, back, False, str(exc))
    ok, message = outcomes.client_action(action.name, client_id, result)
    return flash_to(request, back, ok, message)


def _args(form: MultiDictProxy[Any]) -> dict[str, str | None]:
    return {"message_id": str(form.get("message_id") or "").strip() or None,
            "reason": str(form.get("reason") or "").strip() or None}



@page
async def unrouted_page(request: web.Request, session: Session) -> web.StreamResponse:
    ops = face_of(request).ops
    listing = await ops.unrouted(session.identity.client_id)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in listing["items"]:
        groups.setdefault(str(item["client_id"]), []).append(item)
    registered = {c for c in groups if ops.registered(c)}
    valid = {c for c in groups if CLIENT_ID_RE.fullmatch(c)}
    return view(request, session, "unrouted.html.j2", groups=groups, registered=registered,
                 valid=valid, shown=len(listing["items"]), more=listing["more"],
                 total=listing["total"])


@page
async def unrouted_replay(request: web.Request, session: Session) -> web.StreamResponse:
    client_id = visible(session.identity, request.match_info["client_id"])
    ops = face_of(request).ops
    asked = Request(actor=session.identity.name, via="console", client_id=client_id)
    try:
        if not ops.registered(client_id) and session.identity.is_admin:
            await perform(ops, "register", asked)
        result = await perform(ops, "replay_unrouted", asked)
    except OperationError as exc:
        return flash_to(request, "/unrouted", False, str(exc))
    n = result["replayed"]
    return flash_to(request, "/unrouted", True,
                 f"Replayed {n} item{'s' if n != 1 else ''} to {client_id}, in their original "
                 "order.")
