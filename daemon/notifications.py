"""Where failure notifications attach (SPEC sections 1 and 4).

The consumers call the `Notifier` once per park and once per final
non-blocking failure, after the state log has recorded it. Sending must
never hold a queue: an implementation queues the work and returns at once.
This issue ships `LogNotifier`; email and webhooks come with the
notifications issue and plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import structlog

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Failure:
    """What a notification says: which item failed, why, and how often it was tried."""

    client_id: str
    queue: str
    message_id: str | None
    type: str | None
    error: str
    attempts: int
    at: str
    payload: Any = None
    repeated: bool = False  # a retry that failed again (the client was already parked)


class Notifier(Protocol):
    """Called beside the consumers; must return quickly and never raise."""

    def parked(self, failure: Failure) -> None: ...

    def failed(self, failure: Failure) -> None: ...


class LogNotifier:
    """Logs what would be sent; the default until email and webhooks land."""

    def parked(self, failure: Failure) -> None:
        log.info("notify.parked", client_id=failure.client_id, message_id=failure.message_id,
                 type=failure.type, repeated=failure.repeated)

    def failed(self, failure: Failure) -> None:
        log.info("notify.failed", client_id=failure.client_id, message_id=failure.message_id,
                 type=failure.type)
