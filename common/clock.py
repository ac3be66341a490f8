"""The one time format of records, events and failures: ISO 8601 UTC, milliseconds, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> str:
    """Now as ISO 8601 UTC, the one time format of records and events."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_s(iso: str) -> float:
    """Seconds since an ISO time written by `utcnow` (0 if it cannot be read)."""
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(UTC) - then).total_seconds())
