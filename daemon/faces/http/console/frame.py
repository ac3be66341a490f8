"""The console's frame: rendering, sessions, login and logout, the `page` wrapper, flash
messages. The pages themselves are in `clients`, `failed` and `audit`."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import jinja2
import orjson
import structlog
from aiohttp import web

from common.clients import CLIENT_ID_RE
from daemon.faces.http.auth import Identity, authenticate
from daemon.faces.http.face import face_of
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
from daemon.operations.admin import UnknownClient, UnknownItem
from daemon.operations.listing import BadQuery

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


def signer_of(request: web.Request) -> Signer | None:
    """The app's signer (made once, in `add_routes`); None when no admin token is set."""
    return request.app.get(SIGNER)


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    """A page; `live_since` is where its live updates start (`/api/v1/events/stream`'s
    `?since=`): a second before it was rendered, so no event after is missed."""
    html = _env.get_template(template).render(request=request,
                                              live_since=int(time.time()) - 1, **values)
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers.update({"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'self'; "
                             "script-src 'self'; connect-src 'self'; "
                             "style-src 'unsafe-inline'; form-action 'self'",
                             "Referrer-Policy": "same-origin"})
    return response


def redirect(to: str) -> web.Response:
    """303 See Other: the browser GETs `to` (post/redirect/get)."""
    return web.Response(status=303, headers={"Location": to})


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
            max_age: int | None = None) -> None:
    secure = request.secure or face_of(request).settings.secure_cookies  # TLS ends at a proxy
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="Strict", secure=secure)


# -- login and logout ---------------------------------------------------------------


async def login_page(request: web.Request, *, error: str | None = None,
                     status: int = 200) -> web.Response:
    signer = signer_of(request)
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(16)
    response = render(request, "login.html.j2", status, error=error, csrf=csrf,
                      closed=signer is None, session=None)
    set_cookie(request, response, LOGIN_CSRF_COOKIE, csrf, 3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie or form.get("csrf") != cookie:
        return await login_page(request, error="The login form expired. Please try again.",
                                status=403)
    face, signer = face_of(request), signer_of(request)
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
    response = redirect(home)
    set_cookie(request, response, SESSION_COOKIE, issue(signer, identity, credential),
               SESSION_SECONDS)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


def session_of(request: web.Request) -> Session | None:
    face, signer = face_of(request), signer_of(request)
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
            signer = signer_of(request)
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
            return not_found(request, session, str(exc))

    return wrapped


def not_found(request: web.Request, session: Session, message: str) -> web.Response:
    return render(request, "error.html.j2", 404, session=session, title="Not found",
                  message=message, csrf=csrf_token(request, session))


def csrf_token(request: web.Request, session: Session) -> str:
    signer = signer_of(request)
    assert signer is not None
    return signer.csrf(session.nonce)


@page
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    log.info("console.logout", actor=session.identity.name)
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


# -- flash messages (the outcome of the last action) -----------------------------------


def flash_to(request: web.Request, to: str, ok: bool, message: str) -> web.StreamResponse:
    response = redirect(to)
    signer = signer_of(request)
    assert signer is not None
    set_cookie(request, response, FLASH_COOKIE, signer.sign({"ok": ok, "msg": message}), 120)
    return response


def view(request: web.Request, session: Session, template: str, **values: Any) -> web.Response:
    """Render a page with the session's CSRF token and the pending flash message, if any."""
    signer = signer_of(request)
    assert signer is not None
    flash = signer.unsign(request.cookies.get(FLASH_COOKIE))
    response = render(request, template, session=session, csrf=signer.csrf(session.nonce),
                      flash=flash, **values)
    if FLASH_COOKIE in request.cookies:
        response.del_cookie(FLASH_COOKIE, path="/")
    return response


def visible(identity: Identity, client_id: str) -> str:
    """The client id of a URL, if this identity may see it; a malformed id is not found."""
    if not CLIENT_ID_RE.fullmatch(client_id) or not identity.may_see(client_id):
        raise UnknownClient(f"client {client_id!r} is not registered")
    return client_id


def bad_address(request: web.Request, session: Session, exc: BadQuery) -> web.Response:
    """400: a page's query is not one it takes (the same words as the API's)."""
    return render(request, "error.html.j2", 400, session=session, title="Bad address",
                  message=f"{exc}.", csrf=csrf_token(request, session))
