"""`HandlerContext`: the daemon's implementation of the handlers' `Context` (handlers/base.py).

It reads the clients file through a getter on every call, because the file is
reloaded on SIGHUP and a handler must see the settings in force when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp

from daemon.clients import SECTIONS, ClientConfig, Connection
from handlers.connectors.http import HttpConnector
from handlers.errors import PermanentError

DEFAULT_TIMEOUT = 30.0
"""Seconds per HTTP request when neither the daemon nor the connection says otherwise.

Shorter than the per-handler timeout (S2SQ_HANDLER_TIMEOUT, 60 s), so a slow
peer ends as the connector's readable "timed out" error, not a cancelled handler.
"""


class HandlerContext:
    """Gives handlers their client's connections and connectors, and nothing else."""

    def __init__(
        self,
        clients: Callable[[], Mapping[str, ClientConfig]],
        session: aiohttp.ClientSession,
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._clients = clients
        self._session = session
        self._default_timeout = default_timeout

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
        """An HTTP connector for the client's `section`, on the shared session.

        Raises:
            PermanentError: no such section, or a kind without a connector yet.
        """
        conn = self.connection(client_id, section)
        if conn.kind == "magento2":
            raise PermanentError("magento2 connections are not supported yet")
        return HttpConnector(self._session, conn, client_id, timeout=self._default_timeout)
