"""The handler registry: builtins, plus plug-ins from the `s2s_queue.handlers` entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel

import handlers
from handlers import BUILTIN_HANDLERS, ENTRY_POINT_GROUP, PluginError, load_handlers
from handlers.base import Context, Handler, Item


class EchoPayload(BaseModel):
    text: str


async def echo(item: Item[EchoPayload], ctx: Context) -> None:
    """A plug-in handler that does nothing."""


ECHO = Handler(type="acme.echo", payload=EchoPayload, func=echo, queue="nonblocking")
ECHO_TWICE = [ECHO, Handler(type="acme.echo2", payload=EchoPayload, func=echo)]
STEALS_SYNC = Handler(type="product.sync", payload=EchoPayload, func=echo)
NOT_A_HANDLER = 42


def use_plugins(monkeypatch: pytest.MonkeyPatch, *targets: str) -> None:
    """Make `load_handlers` see entry points named `p0`, `p1`... pointing at `targets`."""
    points = [
        EntryPoint(
            f"p{i}", f"{__name__}:{target}" if ":" not in target else target, ENTRY_POINT_GROUP
        )
        for i, target in enumerate(targets)
    ]

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(handlers, "entry_points", fake_entry_points)


def test_the_builtin_types_are_registered_once_each():
    """Every shipped type is present, with no duplicates."""
    types = [handler.type for handler in BUILTIN_HANDLERS]
    assert len(types) == len(set(types))
    assert {"system.noop", "product.sync", "product.delete"} <= set(types)


def test_without_plugins_the_registry_is_the_builtins(monkeypatch):
    """`load_handlers` maps each builtin type to its handler."""
    use_plugins(monkeypatch)
    assert load_handlers() == {handler.type: handler for handler in BUILTIN_HANDLERS}


def test_builtin_payloads_are_strict_and_frozen():
    """Every builtin payload forbids unknown fields and is immutable."""
    for handler in BUILTIN_HANDLERS:
        assert handler.payload.model_config.get("extra") == "forbid", handler.type
        assert handler.payload.model_config.get("frozen") is True, handler.type


def test_a_plugin_may_give_one_handler_or_several(monkeypatch):
    """An entry point loads to a Handler or an iterable of them."""
    use_plugins(monkeypatch, "ECHO_TWICE")
    registry = load_handlers()
    assert registry["acme.echo"] is ECHO
    assert "acme.echo2" in registry
    use_plugins(monkeypatch, "ECHO")
    assert load_handlers()["acme.echo"] is ECHO


def test_a_plugin_that_fails_to_import_is_named_in_the_error(monkeypatch):
    """A broken plug-in stops start-up with its entry point and the import error."""
    use_plugins(monkeypatch, "no_such_module_s2s:HANDLERS")
    with pytest.raises(PluginError) as info:
        load_handlers()
    assert str(info.value).startswith(
        "handler plug-in 'p0 = no_such_module_s2s:HANDLERS' (s2s_queue.handlers) failed to load: "
        "ModuleNotFoundError"
    )


def test_a_plugin_that_gives_something_else_is_refused(monkeypatch):
    """Anything but handlers is an error naming the entry point."""
    use_plugins(monkeypatch, "NOT_A_HANDLER")
    with pytest.raises(PluginError, match=r"'p0 = .*:NOT_A_HANDLER'.* gave 42: expected a Handler"):
        load_handlers()


def test_a_plugin_may_not_replace_a_builtin_type(monkeypatch):
    """Redefining `product.sync` is refused rather than silently taking over."""
    use_plugins(monkeypatch, "STEALS_SYNC")
    with pytest.raises(
        PluginError, match=r"defines type 'product\.sync', already defined by builtin"
    ):
        load_handlers()


def test_two_plugins_may_not_define_the_same_type(monkeypatch):
    """The second definition names the first plug-in."""
    use_plugins(monkeypatch, "ECHO", "ECHO_TWICE")
    with pytest.raises(PluginError, match=r"'p1 = .*' .* already defined by handler plug-in 'p0"):
        load_handlers()
