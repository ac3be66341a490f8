"""`HandlerContext`: the daemon's implementation of the handlers' `Context` (handlers/base.py).

It reads the clients file through a getter on every call, because the file is
reloaded on SIGHUP and a handler must see the settings in force when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from common.clients import SECTIONS, ClientConfig, Connection
from handlers.base import HandlerSettings
from handlers.connectors.http import HttpConnector
from handlers.connectors.magento2 import Magento2Connector
from handlers.errors import PermanentError

DEFAULT_TIMEOUT = 30.0
"""Seconds per HTTP request when neither the daemon nor the connection says otherwise.

Shorter than the per-handler timeout (S2SQ_HANDLER_TIMEOUT, 60 s), so a slow
peer ends as the connector's readable "timed out" error, not a cancelled handler.
"""

CONNECTORS: dict[str, type[HttpConnector]] = {"http": HttpConnector, "magento2": Magento2Connector}
"""The connector class for each `kind` a connection may have."""


class HandlerContext:
    """Gives handlers their client's settings, connections and connectors, and nothing else."""

    def __init__(
        self,
        clients: Callable[[], Mapping[str, ClientConfig]],
        session: aiohttp.ClientSession,
        default_timeout: float | None = None,
        *,
        settings: HandlerSettings,
    ) -> None:
        self._clients = clients
        self._session = session
        self._settings = settings
        # Each HTTP request times out before the whole handler call does.
        self._default_timeout = default_timeout or min(
            DEFAULT_TIMEOUT, self._settings.handler_timeout * 0.9
        )

    @property
    def settings(self) -> HandlerSettings:
        """The daemon's settings (SMTP, image folder and limits, timeouts)."""
        return self._settings

    @property
    def http(self) -> aiohttp.ClientSession:
        """The daemon's one shared HTTP client session."""
        return self._session

    @property
    def request_timeout(self) -> aiohttp.ClientTimeout:
        """The default timeout of one HTTP request a handler makes."""
        return aiohttp.ClientTimeout(total=self._default_timeout)

    def client(self, client_id: str) -> ClientConfig:
        """The client's `[clients.<id>]` settings.

        Raises:
            PermanentError: the client is not in the clients file.
        """
        config = self._clients().get(client_id)
        if config is None:
            raise PermanentError(f"client '{client_id}' is not in the clients file")
        return config

    def connection(self, client_id: str, section: str) -> Connection:
        """The client's `[clients.<id>.<section>]` settings.

        Raises:
            PermanentError: the client or the section is not in the clients file.
        """
        if section not in SECTIONS:
            raise PermanentError(
                f"unknown connection section {section!r}: expected one of {', '.join(SECTIONS)}"
            )
        where = f"[clients.{client_id}.{section}]"
        config = self._clients().get(client_id)
        if config is None:
            raise PermanentError(
                f"client '{client_id}' is not in the clients file, so it has no {where} section"
            )
        conn = config.connection(section)
        if conn is None:
            raise PermanentError(f"client '{client_id}' has no {where} section in the clients file")
        return conn

    def connector(self, client_id: str, section: str) -> HttpConnector:
        """The connector for the client's `section`, of its `kind`, on the shared session.

        Raises:
            PermanentError: no such section.
        """
        conn = self.connection(client_id, section)
        connector = CONNECTORS[conn.kind]
        return connector(self._session, conn, client_id, timeout=self._default_timeout)
