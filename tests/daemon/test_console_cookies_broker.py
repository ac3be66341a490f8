"""The console's cookies over real HTTP on a running daemon: the flags a browser sees."""

from __future__ import annotations

import re
from http.cookies import Morsel, SimpleCookie

import aiohttp
import pytest

from tests.support import Broker, free_port, running, settings_for

pytestmark = pytest.mark.timeout(60)


def _cookies(response: aiohttp.ClientResponse) -> dict[str, Morsel[str]]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return dict(jar)


async def _login(base: str) -> tuple[dict[str, Morsel[str]], dict[str, Morsel[str]]]:
    """GET the login form, then POST the admin token: the cookies each answer sets."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{base}/login") as form:
            assert form.status == 200
            html = await form.text()
            first = _cookies(form)
        match = re.search(r'name="csrf" value="([^"]+)"', html)
        assert match, "the login form carries a CSRF token"
        csrf = match.group(1)
        async with http.post(f"{base}/login", data={"csrf": csrf, "token": "admin-token"},
                             headers={"Cookie": f"s2s_login_csrf={csrf}"},
                             allow_redirects=False) as answer:
            assert answer.status == 303, await answer.text()
            return first, _cookies(answer)


@pytest.mark.parametrize(
    ("console_url", "secure"),
    [("https://queue.example", True), ("http://queue.example", False), (None, False)],
    ids=["https-console-url", "http-console-url", "no-console-url"],
)
async def test_the_session_cookie_is_secure_when_the_console_is_served_over_https(
    prefix, tmp_path, amqp: Broker, console_url, secure
):
    """Issue 12, hole 5: behind a TLS proxy the daemon itself speaks plain HTTP, so
    `S2SQ_CONSOLE_URL=https://...` is what marks every console cookie `Secure`."""
    settings = settings_for(prefix, tmp_path, http_port=free_port(), console_url=console_url)
    async with running(settings):
        form, login = await _login(f"http://127.0.0.1:{settings.http_port}")
    session = login["s2s_session"]
    assert bool(session["secure"]) is secure
    assert bool(form["s2s_login_csrf"]["secure"]) is secure
    assert (bool(session["httponly"]), session["samesite"], session["path"]) == (
        True, "Strict", "/")
