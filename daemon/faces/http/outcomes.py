"""What the console says after an action, in plain words (pure)."""

from __future__ import annotations

from typing import Any


def client_action(action: str, client_id: str, result: dict[str, Any]) -> tuple[bool, str]:
    """(ok, message) for retry, skip, pause or resume of a client."""
    mid = result.get("message_id")
    if mid is None:
        mid = "the item (it has no message id)"
    if action == "retry":
        if result.get("outcome") == "succeeded":
            return True, f"Retried {mid}: it succeeded. {client_id} runs again."
        return False, (f"Retried {mid}: it failed again: {result.get('error')}. "
                       f"{client_id} stays parked.")
    if action == "skip":
        return True, f"Skipped {mid} (kept in the archive). {client_id} runs again."
    if action == "pause":
        return True, f"{client_id} is paused: it stops after its current item."
    return True, f"{client_id} runs again."


def failed_action(action: str, done: list[str], errors: list[str]) -> str:
    """The message after retrying or skipping failed items, one or many."""
    verb = {"retry": "Sent back to run", "skip": "Skipped (kept in the archive)"}[action]
    parts = []
    if done:
        parts.append(f"{verb}: {', '.join(done[:10])}" + (" …" if len(done) > 10 else "")
                     + f" ({len(done)} item{'s' if len(done) != 1 else ''}).")
    if errors:
        parts.append("Not done: " + "; ".join(errors[:5]) + ("; …" if len(errors) > 5 else "")
                     + ".")
    return " ".join(parts)
