"""The console's failed items and groups: lists, and retries or skips after a confirmation."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from daemon.faces.http import outcomes
from daemon.faces.http.auth import Identity
from daemon.faces.http.console.frame import (
    bad_address,
    flash_to,
    page,
    segment,
    view,
    visible,
)
from daemon.faces.http.face import face_of
from daemon.faces.http.sessions import Session
from daemon.operations.actions import Request, action_on, perform
from daemon.operations.admin import OperationError, UnknownItem
from daemon.operations.groups import GroupsQuery, Kind, find, groups_query
from daemon.operations.groups import page as groups_page_of
from daemon.operations.listing import CLIENTS_LIMIT, BadQuery


@page
async def failed_page(request: web.Request, session: Session) -> web.StreamResponse:
    identity = session.identity
    client_id = request.query.get("client_id") or None
    type_ = request.query.get("type") or None
    if client_id is not None:
        visible(identity, client_id)
    ops = face_of(request).ops
    everyone = ops.failed(client_id if identity.is_admin else identity.client_id)
    items = [i for i in everyone if not type_ or i["type"] == type_]
    return view(request, session, "failed.html.j2", items=items, client_id=client_id or "",
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
        return flash_to(request, back, False, "Select at least one item first.")
    reason = str(form.get("reason") or "").strip() or None
    if known.confirm and form.get("confirm") != "yes":
        return view(request, session, "confirm.html.j2", action=action, back=back,
                     target="/failed/action", client_id=None, message_ids=ids,
                     reason=reason or "", query=query)
    done, errors = await _each_failed(request, session.identity, known.name, ids, reason)
    return flash_to(request, back, not errors, outcomes.failed_action(action, done, errors))


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



async def groups_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/groups/failed")


@page
async def groups_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Failed items or parks grouped by error, biggest first, with the API's query."""
    kind: Kind = "failed" if request.match_info["kind"] == "failed" else "parked"
    try:
        query = groups_query(request.query)
    except BadQuery as exc:
        return bad_address(request, session, exc)
    identity = session.identity
    if query.client_id is not None:
        visible(identity, query.client_id)
    only = query.client_id if identity.is_admin else identity.client_id
    listing = groups_page_of(face_of(request).ops.groups(kind, only), query)
    return view(request, session, "groups.html.j2", kind=kind, groups=listing["groups"],
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
            return flash_to(request, back, False, f"That group has no {kind} items any more.")
        return view(request, session, "group_confirm.html.j2", kind=kind, how=how,
                     group=found.describe(), back=back, query=query, reason=reason or "",
                     target=f"/groups/{kind}/{segment(key)}/{how}")
    try:
        result = await perform(face_of(request).ops, f"{how}_{kind}_group", Request(
            actor=identity.name, via="console", client_id=identity.client_id, group=key,
            reason=reason))
    except OperationError as exc:
        return flash_to(request, back, False, str(exc))
    ok, message = outcomes.group_action(kind, how, result)
    return flash_to(request, back, ok, message)
