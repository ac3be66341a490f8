"""HandlerContext: connections from the current clients file, and connectors by kind."""

from __future__ import annotations

import pytest

from common.clients import ClientConfig, Connection
from daemon.settings import Settings
from handlers.base import Context
from handlers.connectors import HttpConnector
from handlers.connectors.magento2 import Magento2Connector
from handlers.context import HandlerContext
from handlers.errors import PermanentError


def test_the_context_satisfies_the_handlers_context_protocol(ctx):
    """Handlers type their argument as `Context`; HandlerContext is one."""
    context: Context = ctx
    assert isinstance(context.connector("acme", "channel"), HttpConnector)


def test_the_context_returns_the_clients_connection(ctx, clients):
    """`connection` gives the section's settings as loaded."""
    assert ctx.connection("acme", "catalog") == clients["acme"].catalog


def test_the_context_reads_the_clients_file_again_on_each_call(session):
    """A reload (SIGHUP) is seen by the next item, without a new context."""
    current: dict[str, ClientConfig] = {}
    ctx = HandlerContext(lambda: current, session, settings=Settings())
    with pytest.raises(PermanentError):
        ctx.connection("acme", "source")
    current["acme"] = ClientConfig(source=Connection(base_url="https://erp.example"))
    assert ctx.connection("acme", "source").base_url == "https://erp.example"


def test_a_missing_section_names_the_table_to_add(ctx):
    """The error says which [clients.<id>.<section>] table is missing."""
    with pytest.raises(PermanentError) as info:
        ctx.connector("bare", "warehouse")
    assert str(info.value) == (
        "client 'bare' has no [clients.bare.warehouse] section in the clients file"
    )


def test_an_unknown_section_is_refused(ctx):
    """Only channel, catalog, source and warehouse exist."""
    with pytest.raises(PermanentError, match="unknown connection section 'shop'"):
        ctx.connection("acme", "shop")


def test_magento2_connections_get_the_magento_connector(session):
    """`kind` picks the connector class; both share the daemon's session."""
    config = ClientConfig(channel=Connection(kind="magento2", base_url="https://m2.example"),
                          catalog=Connection(base_url="https://cat.example"))
    ctx = HandlerContext(lambda: {"acme": config}, session, settings=Settings())
    assert isinstance(ctx.connector("acme", "channel"), Magento2Connector)
    assert type(ctx.connector("acme", "catalog")) is HttpConnector


def test_the_context_gives_the_client_and_names_a_missing_one(ctx, clients):
    """`client()` returns the client's settings, or a permanent error naming the client."""
    assert ctx.client("acme") == clients["acme"]
    with pytest.raises(PermanentError) as info:
        ctx.client("ghost")
    assert str(info.value) == "client 'ghost' is not in the clients file"


def test_requests_time_out_before_the_handler_does(session):
    """Without an explicit default, a request gets 90 % of the handler timeout, at most 30 s."""
    quick = HandlerContext(lambda: {}, session, settings=Settings(handler_timeout=10))
    assert quick.request_timeout.total == 9.0
    slow = HandlerContext(lambda: {}, session, settings=Settings(handler_timeout=600))
    assert slow.request_timeout.total == 30.0
