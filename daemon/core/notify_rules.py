"""Who is told what, and when: the notification rules as pure functions.

The outbox's single deciding consumer asks `decide()` what to do with each
queued notification, given what the state log remembers of the client
(`Memory`, folded from `notified`, `digest.add` and `digest.sent` records by
`fold()`). Every replica folds the same records, so whichever replica decides
next (after a failover, say) applies the same rules:

* one park → one mail and one webhook; a `retry` that fails again within the
  quiet period sends nothing new (a park after it does);
* the first final non-blocking failure of a client is mailed at once and
  opens a digest window; further ones within the window are gathered and
  mailed as one digest when it closes (which opens the next window); each
  failure still gets its own webhook;
* a resume is announced by webhook only;
* a notification already decided (its id is remembered) is never sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from daemon.core.records import DigestAdded, DigestSent, Notified, NotifyRecord

Record = dict[str, Any]

DIGEST_SHOWN = 20
"""Failures listed one by one in a digest; the rest are counted by type."""

REMEMBER_S = 2 * 86_400
"""How long a decided notification's id is remembered (far beyond any redelivery)."""


def empty_memory() -> Record:
    return {"parked_mail": None, "window_until": None, "digest": None, "done": {}}


def fold(memory: dict[str, Record], record: Record) -> None:
    """Apply one notification record to the per-client memory (replaying twice is harmless)."""
    client, kind = record.get("client_id"), record.get("kind")
    if not isinstance(client, str):
        return
    mem = memory.setdefault(client, empty_memory())
    t = float(record.get("t") or 0)
    if kind == "notified":
        for key in ("parked_mail", "window_until"):
            if record.get(key) is not None:
                mem[key] = record[key]
    elif kind == "digest.add" and record.get("id") not in mem["done"]:
        mem["digest"] = _digest_with(mem["digest"], record.get("entry") or {})
    elif kind == "digest.sent":
        mem["digest"] = None
        mem["window_until"] = record.get("window_until")
    mem["done"] = {k: v for k, v in mem["done"].items() if v > t - REMEMBER_S}
    if isinstance(record.get("id"), str):
        mem["done"][record["id"]] = t


def _digest_with(digest: Record | None, entry: Record) -> Record:
    digest = dict(digest or {"count": 0, "types": {}, "entries": []})
    type_ = str(entry.get("type") or "unknown")
    digest["count"] += 1
    digest["types"] = {**digest["types"], type_: digest["types"].get(type_, 0) + 1}
    if len(digest["entries"]) < DIGEST_SHOWN:
        digest["entries"] = [*digest["entries"], entry]
    return digest


Email = Literal["parked", "failed", "digest"]


Remember = Literal["notified", "digest.add", "digest.sent"]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one queued notification."""

    why: str  # for the log: sent, quiet, duplicate, digest, stale, nothing to send
    email: Email | None = None
    webhook: bool = False
    digest_add: bool = False  # keep the failure for the window's digest
    open_window: bool = False  # schedule the digest check at the window's end
    remember: Remember | None = None  # the kind of record that keeps the decision
    parked_mail: float | None = None
    window_until: float | None = None

    def record(self, job: Record, now: float) -> NotifyRecord | None:
        """The state record that keeps this decision for `job`, decided at `now` (pure)."""
        client_id, job_id = str(job.get("client_id") or ""), job.get("id")
        ident = job_id if isinstance(job_id, str) else None
        if self.remember == "notified":
            return Notified(client_id=client_id, id=ident, t=now, parked_mail=self.parked_mail,
                            window_until=self.window_until)
        if self.remember == "digest.add":
            return DigestAdded(client_id=client_id, id=ident, t=now, entry=digest_entry(job))
        if self.remember == "digest.sent":
            return DigestSent(client_id=client_id, id=ident, t=now,
                              window_until=self.window_until)
        return None


@dataclass(frozen=True, slots=True)
class Rules:
    quiet_period: float
    digest_window: float


def decide(mem: Record | None, job: Record, now: float, rules: Rules, *,
           has_email: bool, has_webhook: bool) -> Plan:
    """The plan for `job` given the client's memory `mem` (pure)."""
    mem = mem or empty_memory()
    if job.get("id") in mem["done"]:
        return Plan("duplicate")
    kind = job.get("job")
    if kind == "parked":
        return _parked(mem, job, now, rules, has_email, has_webhook)
    if kind == "failed":
        return _failed(mem, now, rules, has_email, has_webhook)
    if kind == "resumed":
        return Plan("sent" if has_webhook else "nothing to send", webhook=has_webhook,
                    remember="notified")
    if kind == "digest":
        return _digest_due(mem, job, now, rules)
    return Plan(f"unknown job {kind!r}")


def _parked(mem: Record, job: Record, now: float, rules: Rules,
            has_email: bool, has_webhook: bool) -> Plan:
    last = mem["parked_mail"]
    if job.get("repeated") and last is not None and now - last < rules.quiet_period:
        return Plan("quiet", remember="notified")
    return Plan("sent", email="parked" if has_email else None, webhook=has_webhook,
                remember="notified", parked_mail=now)


def _failed(mem: Record, now: float, rules: Rules, has_email: bool, has_webhook: bool) -> Plan:
    if not has_email:
        return Plan("sent" if has_webhook else "nothing to send", webhook=has_webhook,
                    remember="notified")
    window = mem["window_until"]
    if window is not None and now < window:
        return Plan("digest", webhook=has_webhook, digest_add=True, remember="digest.add")
    return Plan("sent", email="failed", webhook=has_webhook, open_window=True,
                remember="notified", window_until=now + rules.digest_window)


def _digest_due(mem: Record, job: Record, now: float, rules: Rules) -> Plan:
    if job.get("due") != mem["window_until"]:
        return Plan("stale")  # a later window has its own check
    if not mem["digest"]:
        return Plan("nothing to send")
    until = max(now, float(job.get("due") or now)) + rules.digest_window
    return Plan("sent", email="digest", open_window=True,
                remember="digest.sent", window_until=until)


def digest_entry(job: Record) -> Record:
    """What a digest keeps of one failure."""
    return {"message_id": job.get("message_id"), "type": job.get("type"),
            "error": str(job.get("error") or "")[:300], "at": job.get("at"),
            "attempts": job.get("attempts"),
            "summary": job.get("summary") or ""}
