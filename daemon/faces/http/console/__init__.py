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

`frame` renders pages and keeps sessions (login, CSRF, flash messages);
`clients`, `failed` (with the groups) and `audit` are the pages; this module
routes them.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from daemon.faces.http.console import audit, clients, failed
from daemon.faces.http.console.frame import SIGNER, login, login_page, logout, session_of
from daemon.faces.http.face import FACE
from daemon.faces.http.sessions import Signer

__all__ = ["add_routes", "session_of"]

# -- live updates: the one script, served from the package -------------------------

LIVE_JS = (resources.files("daemon") / "static" / "live.js").read_bytes()


async def live_js(request: web.Request) -> web.Response:
    """daemon/static/live.js: refreshes a page's <main> on the events that concern it."""
    return web.Response(body=LIVE_JS, content_type="text/javascript", charset="utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def add_routes(app: web.Application) -> None:
    token = app[FACE].settings.admin_token
    if token is not None:
        app[SIGNER] = Signer(token)
    app.router.add_get("/", clients.home)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/clients", clients.clients_page)
    app.router.add_get("/clients/{client_id}", clients.client_page)
    app.router.add_get("/clients/{client_id}/history", clients.history_page)
    app.router.add_post("/clients/{client_id}/{action}", clients.client_action)
    app.router.add_get("/failed", failed.failed_page)
    app.router.add_post("/failed/action", failed.failed_action)
    app.router.add_get("/unrouted", clients.unrouted_page)
    app.router.add_post("/unrouted/{client_id}/replay", clients.unrouted_replay)
    app.router.add_get("/groups", failed.groups_home)
    app.router.add_get("/groups/{kind:failed|parked}", failed.groups_page)
    app.router.add_post("/groups/{kind:failed|parked}/{group}/{how:retry|skip}",
                        failed.group_action)
    app.router.add_get("/static/live.js", live_js)
    app.router.add_get("/audit", audit.audit_page)
