"""Who is asking: bearer tokens to identities, and what each identity may see.

An admin token (`S2SQ_ADMIN_TOKEN`) sees everything. Client console tokens
(checked against `console_token_sha256` in the clients file) reach their own
client only; anything else answers 404, as if it did not exist. With no
admin token configured everyone is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from common.clients import ClientConfig


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: the admin, or one client."""

    name: str
    client_id: str | None = None  # None: admin

    @property
    def is_admin(self) -> bool:
        return self.client_id is None

    def may_see(self, client_id: str | None) -> bool:
        return self.is_admin or (client_id is not None and client_id == self.client_id)


IDENTITY = web.RequestKey("identity", Identity)
"""Who sent the request: set by api.py's middleware on every /api/ request it lets in."""


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if well formed."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authenticate(
    token: str | None, admin_token: SecretStr | None, clients: Mapping[str, ClientConfig]
) -> Identity | None:
    """The identity a token proves, or None (no admin token configured: nobody)."""
    if not token or admin_token is None:
        return None
    if hmac.compare_digest(token.encode(), admin_token.get_secret_value().encode()):
        return Identity("admin")
    digest = hashlib.sha256(token.encode()).hexdigest()
    for client_id, config in clients.items():
        expected = config.console_token_sha256
        if expected and hmac.compare_digest(digest, expected):
            return Identity(f"client:{client_id}", client_id)
    return None
