"""Connectors: how handlers reach a client's systems (SPEC §7)."""

from handlers.connectors.http import HttpConnector, classify_status, http_error

__all__ = ["HttpConnector", "classify_status", "http_error"]
