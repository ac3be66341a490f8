"""What the HTTP face is given (`Face`): the operations, readiness, settings, the clients
file and a scrape — nothing else of the daemon (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from common.clients import ClientConfig
from daemon.core.event_log import EventLog
from daemon.operations.admin import Operations
from daemon.settings import Settings


class Health(Protocol):
    """Whether the daemon serves: `/readyz`, and whether a failed request is the broker's."""

    @property
    def ready(self) -> bool: ...

    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True)
class Face:
    ops: Operations
    health: Health
    settings: Settings
    clients: Callable[[], Mapping[str, ClientConfig]]  # as reloaded on SIGHUP
    scrape: Callable[[], Awaitable[bytes]]  # the Prometheus text of one scrape
    events: EventLog  # the events log, for GET /api/v1/events/stream


FACE = web.AppKey("face", Face)


def face_of(request: web.Request) -> Face:
    return request.app[FACE]
