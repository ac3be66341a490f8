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


def group_action(kind: str, how: str, result: dict[str, Any]) -> tuple[bool, str]:
    """(ok, message) after retrying or skipping a group: what was done, what was not."""
    results = result["results"]
    again = [r for r in results if r["ok"] and r.get("outcome") == "failed"]
    refused = [r for r in results if not r["ok"]]
    done = [r for r in results if r["ok"] and r.get("outcome") != "failed"]
    verb = {("failed", "retry"): "Sent back to run",
            ("parked", "retry"): "Retried, succeeded and running again",
            }.get((kind, how), "Skipped (kept in the archive)")
    parts = [f"{verb}: {_items(done)}."] if done else []
    if again:
        parts.append(f"Failed again, still parked: {_items(again)}.")
    if refused:
        parts.append("Not done: " + "; ".join(f"{r['message_id']}: {r['error']}"
                                             for r in refused[:5])
                     + ("; …" if len(refused) > 5 else "") + ".")
    return not (again or refused), " ".join(parts)


def _items(results: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{r['message_id']} of {r['client_id']}" for r in results[:10])
    n = len(results)
    return f"{shown}{' …' if n > 10 else ''} ({n} item{'s' if n != 1 else ''})"
