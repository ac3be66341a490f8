"""What the consumers share, and the one place a handler is called."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel

from daemon.broker.topology import Topology
from daemon.core.events import Events
from daemon.core.items import Parsed
from daemon.core.metrics import ItemMetrics
from daemon.core.notifications import Notifier
from daemon.core.state import StateLog
from daemon.settings import Settings
from handlers.base import Context, Handler, Item
from handlers.errors import HandlerError, PermanentError, TransientError

log = structlog.get_logger()


@dataclass(slots=True)
class Runtime:
    """Settings, broker handles and collaborators every consumer needs."""

    settings: Settings
    topo: Topology
    handlers: Mapping[str, Handler]
    context: Context
    events: Events
    state: StateLog
    notifier: Notifier
    confirm_channel: AbstractChannel
    replica: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    metrics: ItemMetrics = field(default_factory=ItemMetrics)

    async def publish_confirmed(
        self, message: aio_pika.Message, *, routing_key: str, exchange: str = ""
    ) -> None:
        """Publish and wait for the broker's confirm (raises if it was not routed or refused)."""
        target = (
            self.confirm_channel.default_exchange
            if exchange == ""
            else await self.confirm_channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(message, routing_key=routing_key, mandatory=True)


async def call_handler(
    parsed: Parsed, attempt: int, context: Context, timeout: float, metrics: ItemMetrics
) -> None:
    """Run one attempt of an item, timed into `metrics`; every failure comes out as a HandlerError.

    Raises:
        TransientError: the handler said so, or it ran past `timeout`.
        PermanentError: the handler said so, or it crashed (a bug: logged with traceback).
    """
    item = parsed.item
    if attempt != item.attempt:
        item = Item(item.message_id, item.type, item.client_id, item.payload, item.queue, attempt)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await parsed.handler.func(item, context)
    except HandlerError:
        raise
    except TimeoutError:
        raise TransientError(f"{item.type} timed out after {timeout:g} s") from None
    except Exception as exc:
        log.exception("handler.crashed", client_id=item.client_id, message_id=item.message_id,
                      type=item.type)
        raise PermanentError(f"{item.type} crashed: {type(exc).__name__}: {exc}") from exc
    finally:
        metrics.observe(item.type, item.queue, time.perf_counter() - started)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base * 2**(n-1), capped."""
    return float(min(cap, base * 2 ** (attempt - 1)))
