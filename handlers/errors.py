"""What a handler raises to say how an item failed.

    HandlerError
     ├── TransientError   retry later: timeouts, connection errors, HTTP 408/429/5xx
     └── PermanentError   retrying will not help: invalid item, other HTTP 4xx, missing settings

Every other exception escaping a handler is a bug in the handler; the consumers
treat it as permanent (the item parks or goes to failed) and log it with a
traceback.  Messages are shown to people (events, console, email): they say
what went wrong in plain words, quote an HTTP status and the start of the
response body, and never contain a secret.
"""

from __future__ import annotations


class HandlerError(Exception):
    """Base of the two outcomes a handler may signal."""

    transient = False


class TransientError(HandlerError):
    """Raised when the same call may succeed later (the peer is down, slow or busy)."""

    transient = True


class PermanentError(HandlerError):
    """Raised when the item cannot succeed as it is (bad data, refused, not configured)."""
