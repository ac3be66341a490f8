"""Console sessions: signed cookies that end on expiry, tampering, or a rotated credential."""

from __future__ import annotations

import hashlib

from pydantic import SecretStr

from common.clients import ClientConfig
from daemon.faces.http.auth import Identity
from daemon.faces.http.sessions import SESSION_SECONDS, Signer, issue, read

ADMIN = SecretStr("admin-token")
NOW = 1_800_000_000.0


def clients(token: str = "acme-token") -> dict[str, ClientConfig]:
    return {"acme": ClientConfig(console_token_sha256=hashlib.sha256(token.encode()).hexdigest())}


def test_an_admin_session_reads_back_until_it_expires():
    signer = Signer(ADMIN)
    cookie = issue(signer, Identity("admin"), ADMIN.get_secret_value(), NOW)
    session = read(signer, cookie, ADMIN, clients(), NOW + 60)
    assert session is not None
    assert session.identity == Identity("admin")
    assert read(signer, cookie, ADMIN, clients(), NOW + SESSION_SECONDS + 1) is None


def test_a_client_session_is_that_client_and_ends_when_its_token_changes():
    signer = Signer(ADMIN)
    credential = clients()["acme"].console_token_sha256
    assert credential is not None
    cookie = issue(signer, Identity("client:acme", "acme"), credential, NOW)
    session = read(signer, cookie, ADMIN, clients(), NOW)
    assert session is not None
    assert session.identity == Identity("client:acme", "acme")
    assert read(signer, cookie, ADMIN, clients("rotated"), NOW) is None
    assert read(signer, cookie, ADMIN, {}, NOW) is None


def test_rotating_the_admin_token_ends_every_session():
    cookie = issue(Signer(ADMIN), Identity("admin"), ADMIN.get_secret_value(), NOW)
    rotated = SecretStr("new-admin-token")
    assert read(Signer(rotated), cookie, rotated, clients(), NOW) is None


def test_a_tampered_or_foreign_cookie_is_no_session():
    signer = Signer(ADMIN)
    cookie = issue(signer, Identity("client:acme", "acme"),
                   clients()["acme"].console_token_sha256 or "", NOW)
    data, _, mac = cookie.rpartition(".")
    forged = signer.sign({"sub": None, "exp": NOW + 60, "nonce": "n", "fp": "x"})
    for value in (None, "", "garbage", f"{data}x.{mac}", f"{data}.{mac[:-2]}AA", forged,
                  issue(Signer(SecretStr("other")), Identity("admin"), "other", NOW)):
        assert read(signer, value, ADMIN, clients(), NOW) is None, value


def test_csrf_tokens_differ_per_session_nonce():
    signer = Signer(ADMIN)
    assert signer.csrf("a") == signer.csrf("a")
    assert signer.csrf("a") != signer.csrf("b")
    assert Signer(SecretStr("other")).csrf("a") != signer.csrf("a")
