"""The registry of instruction types: the builtins below plus plug-ins from entry points.

A plug-in package declares, in its pyproject.toml,

    [project.entry-points."s2s_queue.handlers"]
    mytypes = "my_package.handlers:HANDLERS"

where the object is a `Handler` or an iterable of them.  Nothing registers
itself on import: `load_handlers()` builds the mapping when the daemon starts.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from handlers import images, notifications, orders, products, system
from handlers.base import Handler

ENTRY_POINT_GROUP = "s2s_queue.handlers"
BUILTIN_HANDLERS: tuple[Handler, ...] = (
    *system.HANDLERS,
    *products.HANDLERS,
    *images.HANDLERS,
    *orders.HANDLERS,
    *notifications.HANDLERS,
)


class PluginError(Exception):
    """Raised when a handler plug-in cannot be loaded or clashes with another type."""


def load_handlers() -> dict[str, Handler]:
    """Every handler by type: builtins first, then each plug-in's.

    Raises:
        PluginError: a plug-in fails to import, gives something other than
            handlers, or defines a type that is already taken.
    """
    registry = {handler.type: handler for handler in BUILTIN_HANDLERS}
    owners = dict.fromkeys(registry, "builtin")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        for handler in _plugin_handlers(ep):
            if handler.type in owners:
                raise PluginError(
                    f"{_name(ep)} defines type '{handler.type}', already defined by "
                    f"{owners[handler.type]}: a plug-in may not replace a type"
                )
            registry[handler.type] = handler
            owners[handler.type] = _name(ep)
    return registry


def _plugin_handlers(ep: EntryPoint) -> list[Handler]:
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(f"{_name(ep)} failed to load: {type(exc).__name__}: {exc}") from exc
    found = [obj] if isinstance(obj, Handler) else obj
    try:
        handlers = list(found)
    except TypeError:
        handlers = [found]
    if not all(isinstance(handler, Handler) for handler in handlers):
        raise PluginError(f"{_name(ep)} gave {obj!r}: expected a Handler or an iterable of them")
    return handlers


def _name(ep: EntryPoint) -> str:
    return f"handler plug-in '{ep.name} = {ep.value}' ({ENTRY_POINT_GROUP})"
