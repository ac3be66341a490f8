"""Connectors: how handlers reach a client's systems (SPEC §7)."""

from common.http import classify_status
from handlers.connectors.errors import http_error
from handlers.connectors.http import HttpConnector

__all__ = ["HttpConnector", "classify_status", "http_error"]
