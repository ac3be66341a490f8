"""The console's audit trail page."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from daemon.faces.http.console.frame import bad_address, page, view, visible
from daemon.faces.http.face import face_of
from daemon.faces.http.sessions import Session
from daemon.operations.audit import AUDIT_LIMIT, audit_query
from daemon.operations.listing import BadQuery


@page
async def audit_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Admin actions, newest first, filtered by client and actor, with the API's paging."""
    identity = session.identity
    asked = request.query.get("client_id") or None
    if asked is not None:
        visible(identity, asked)
    try:
        query = audit_query(request.query, only=identity.client_id)
    except BadQuery as exc:
        return bad_address(request, session, exc)
    listing = face_of(request).ops.audit_page(query)
    filters = {"client_id": asked or "", "actor": query.actor or "",
               "limit": "" if query.limit == AUDIT_LIMIT else str(query.limit)}
    kept = {k: v for k, v in filters.items() if v}
    return view(request, session, "audit.html.j2", entries=listing["entries"],
                 client_id=filters["client_id"], actor=filters["actor"],
                 first=f"/audit?{urlencode(kept)}" if query.before is not None else None,
                 next=f"/audit?{urlencode({**kept, 'before': listing['next']})}"
                 if listing["next"] else None)
