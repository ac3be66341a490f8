"""Console sessions and CSRF tokens: signed, stateless, the same on every replica.

A session is a cookie holding who logged in, a fingerprint of the credential
used, an expiry and a nonce, signed with HMAC-SHA256 under a key derived from
`S2SQ_ADMIN_TOKEN` (every replica has it, so any replica accepts any
session). The fingerprint is checked on every request against the current
settings: rotating the admin token or a client's console token ends the
sessions made with the old one. Each form carries a CSRF token derived from
the session's nonce; the login form, before any session, uses a random
double-submit cookie. Everything here is pure except reading the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from pydantic import SecretStr

from common.clients import ClientConfig
from daemon.faces.http.auth import Identity

SESSION_COOKIE = "s2s_session"
LOGIN_CSRF_COOKIE = "s2s_login_csrf"
FLASH_COOKIE = "s2s_flash"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    identity: Identity
    nonce: str
    expires: float


class Signer:
    """Signs and checks cookie values with a key derived from the admin token."""

    def __init__(self, admin_token: SecretStr) -> None:
        secret = admin_token.get_secret_value().encode()
        self._key = hmac.new(secret, b"s2s-queue console v1", hashlib.sha256).digest()

    def _mac(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())

    def sign(self, payload: dict[str, object]) -> str:
        data = _b64(orjson.dumps(payload))
        return f"{data}.{self._mac(data.encode())}"

    def unsign(self, value: str | None) -> dict[str, object] | None:
        """The payload of a value this signer made, or None (tampered, foreign, garbage)."""
        if not value or "." not in value:
            return None
        data, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(data.encode())):
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        return payload if isinstance(payload, dict) else None

    def fingerprint(self, credential: str) -> str:
        """A short keyed hash of a credential: changes when the credential does."""
        return self._mac(b"fp:" + credential.encode())[:22]

    def csrf(self, nonce: str) -> str:
        return self._mac(b"csrf:" + nonce.encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def credential_of(identity: Identity, admin_token: SecretStr,
                  clients: Mapping[str, ClientConfig]) -> str | None:
    """What proves `identity` today: the admin token, or the client's console token hash."""
    if identity.is_admin:
        return admin_token.get_secret_value()
    config = clients.get(identity.client_id or "")
    return config.console_token_sha256 if config is not None else None


def issue(signer: Signer, identity: Identity, credential: str, now: float | None = None) -> str:
    """A new session cookie value for `identity`."""
    now = time.time() if now is None else now
    return signer.sign({"sub": identity.client_id, "name": identity.name,
                        "fp": signer.fingerprint(credential), "exp": now + SESSION_SECONDS,
                        "nonce": secrets.token_urlsafe(16)})


def read(signer: Signer, value: str | None, admin_token: SecretStr,
         clients: Mapping[str, ClientConfig], now: float | None = None) -> Session | None:
    """The session a cookie proves now, or None (expired, tampered, credential rotated)."""
    payload = signer.unsign(value)
    if payload is None:
        return None
    now = time.time() if now is None else now
    expires, nonce, sub = payload.get("exp"), payload.get("nonce"), payload.get("sub")
    if not isinstance(expires, int | float) or expires < now or not isinstance(nonce, str):
        return None
    if sub is not None and not isinstance(sub, str):
        return None
    identity = Identity("admin") if sub is None else Identity(f"client:{sub}", sub)
    credential = credential_of(identity, admin_token, clients)
    if credential is None or not hmac.compare_digest(
            str(payload.get("fp")), signer.fingerprint(credential)):
        return None
    return Session(identity, nonce, float(expires))
