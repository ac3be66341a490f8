"""What a failure notification says, and the hook the consumers call.

The consumers call the `Notifier` once per park, once per final non-blocking
failure and once per resume of a parked client, after the state log has the
fact. The notifier only *queues* the notification (a confirmed publish to
`<prefix>.notify`) and returns: deciding who gets what and sending it happen
beside the consumers (`daemon/core/outbox.py`), so a slow or dead SMTP server
never holds a queue.

Every notification has an id derived from the fact it reports, so a fact
announced twice (a daemon that died between queueing and recording that it
announced) is sent once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import structlog

from daemon.core.records import Failed

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Failure:
    """Which item failed, why, and how often it was tried."""

    client_id: str
    queue: str
    message_id: str | None
    type: str | None
    error: str
    attempts: int
    at: str
    payload: Any = None
    repeated: bool = False  # a retry that failed again (the client was already parked)

    @property
    def job_id(self) -> str:
        """The same failure always gets the same id (pure)."""
        if self.queue == "blocking":
            return f"parked:{self.client_id}:{self.message_id}:{self.at}"
        return f"failed:{self.client_id}:{self.message_id}:{self.at}"

    def job(self) -> dict[str, Any]:
        """The notification job as queued in `<prefix>.notify` (the payload only as a summary)."""
        kind = "parked" if self.queue == "blocking" else "failed"
        fields = asdict(self)
        fields["summary"] = summarize(self.type, fields.pop("payload"))
        return {"job": kind, "id": self.job_id, **fields}


@dataclass(frozen=True, slots=True)
class Resumed:
    """A parked client runs again (after retry, skip or resume)."""

    client_id: str
    message_id: str | None
    type: str | None
    how: str
    actor: str
    at: str

    def job(self) -> dict[str, Any]:
        return {"job": "resumed", "id": f"resumed:{self.client_id}:{self.message_id}:{self.at}",
                **asdict(self)}


def failure_from_record(record: Failed) -> Failure:
    """The failure a `failed` state record describes (to notify it, or again after a crash)."""
    return Failure(
        client_id=record.client_id, queue="nonblocking", message_id=record.message_id,
        type=record.type, error=record.error, attempts=record.attempts, at=record.failed_at,
        payload=record.payload,
    )


_REFERENCE_KEYS = ("sku", "order_id", "fulfillment_id", "id", "number", "increment_id")


def summarize(type_: str | None, payload: Any) -> str:
    """A short readable name for an item, e.g. `SKU ABC-1` or `order 1001` (pure)."""
    if not isinstance(payload, dict):
        return ""
    if isinstance(payload.get("sku"), str | int):
        return f"SKU {payload['sku']}"
    for noun in ("order", "fulfillment", "product"):
        inner = payload.get(noun)
        if isinstance(inner, dict):
            ref = _reference(inner)
            if ref:
                return f"{noun} {ref}"
    if type_ == "notification.email" and isinstance(payload.get("to"), list):
        return "email to " + ", ".join(str(t) for t in payload["to"][:3])
    ref = _reference(payload)
    return f"{type_ or 'item'} {ref}" if ref else ""


def _reference(data: dict[str, Any]) -> str:
    for key in _REFERENCE_KEYS:
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)[:80]
    return ""


class Notifier(Protocol):
    """Queues notifications; raises when the broker did not take one (the caller retries)."""

    async def parked(self, failure: Failure) -> None: ...

    async def failed(self, failure: Failure) -> None: ...

    async def resumed(self, resumed: Resumed) -> None: ...
