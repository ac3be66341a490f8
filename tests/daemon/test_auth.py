"""Bearer tokens to identities, and what each identity may see (SPEC §8, HTTP)."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import SecretStr

from common.clients import ClientConfig
from daemon.faces.http.auth import Identity, authenticate, bearer_token

ADMIN = SecretStr("admin-token-1")
ACME_TOKEN = "acme-console-token"
GLOBEX_TOKEN = "globex-console-token"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CLIENTS = {
    "acme": ClientConfig(console_token_sha256=sha256(ACME_TOKEN)),
    "globex": ClientConfig(console_token_sha256=sha256(GLOBEX_TOKEN).upper()),
    "bare": ClientConfig(),
}


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer x", "x"),
        ("bearer x", "x"),
        ("BEARER x", "x"),
        ("Bearer  x ", "x"),
        ("Basic x", None),
        ("Bearer ", None),
        ("Bearer", None),
        ("x", None),
        ("Bearerx", None),
    ],
)
def test_bearer_token_takes_the_token_of_a_bearer_header_only(header, token):
    """The scheme is case-insensitive; another scheme or no token gives None."""
    assert bearer_token(header) == token


@pytest.mark.parametrize("token", [ADMIN.get_secret_value(), ACME_TOKEN, "anything", ""])
def test_without_an_admin_token_configured_nobody_gets_in(token):
    """Not even a client with a valid console token: the API refuses everyone until it is set."""
    assert authenticate(token, None, CLIENTS) is None


@pytest.mark.parametrize(
    ("token", "identity"),
    [
        pytest.param("admin-token-1", Identity("admin"), id="admin"),
        pytest.param(ACME_TOKEN, Identity("client:acme", "acme"), id="acme"),
        pytest.param(GLOBEX_TOKEN, Identity("client:globex", "globex"), id="upper-case-hex"),
        pytest.param("wrong", None, id="wrong"),
        pytest.param("admin-token-1 ", None, id="admin-with-space"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
        pytest.param(sha256(ACME_TOKEN), None, id="the-hash-itself"),
        pytest.param("é-non-ascii", None, id="non-ascii"),
    ],
)
def test_authenticate_maps_a_token_to_the_admin_or_one_client(token, identity):
    """The admin token, or a token whose sha256 is a client's console_token_sha256."""
    assert authenticate(token, ADMIN, CLIENTS) == identity


def test_with_no_clients_configured_only_the_admin_token_gets_in():
    """With no clients file, only the admin token gets in."""
    assert authenticate(ACME_TOKEN, ADMIN, {}) is None
    assert authenticate("admin-token-1", ADMIN, {}) == Identity("admin")


@pytest.mark.parametrize(
    ("identity", "client_id", "allowed"),
    [
        (Identity("admin"), "acme", True),
        (Identity("admin"), "globex", True),
        (Identity("admin"), None, True),
        (Identity("client:acme", "acme"), "acme", True),
        (Identity("client:acme", "acme"), "globex", False),
        (Identity("client:acme", "acme"), "ACME", False),
        (Identity("client:acme", "acme"), None, False),
    ],
)
def test_may_see_lets_the_admin_see_everything_and_a_client_only_itself(
    identity, client_id, allowed
):
    """A client never sees another client, nor things that belong to no client."""
    assert identity.may_see(client_id) is allowed


def test_only_the_identity_without_a_client_is_admin():
    """is_admin follows client_id."""
    assert Identity("admin").is_admin
    assert not Identity("client:acme", "acme").is_admin
