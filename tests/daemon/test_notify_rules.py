"""The notification rules, the email rendering and webhook signatures, without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from common import mail, webhooks
from daemon.core.notifications import Failure, summarize
from daemon.core.notify_rules import (
    REMEMBER_S,
    Plan,
    Rules,
    decide,
    digest_entry,
    empty_memory,
    fold,
)
from daemon.core.records import as_dict
from daemon.settings import Settings

RULES = Rules(quiet_period=3600, digest_window=300)
T0 = 1_800_000_000.0


def parked(repeated: bool = False, at: str = "2026-11-28T10:00:00.000Z") -> dict[str, Any]:
    return Failure("acme", "blocking", "m1", "product.sync", "HTTP 503", 3, at,
                   {"sku": "ABC-1"}, repeated).job()


def failed(message_id: str = "o1") -> dict[str, Any]:
    return Failure("acme", "nonblocking", message_id, "order.add_to_source", "HTTP 422", 1,
                   "2026-11-28T10:00:00.000Z", {"order": {"id": 1001}}).job()


def remember(memory: dict[str, Any], plan: Plan, job: dict[str, Any], t: float) -> None:
    """Fold what the outbox would append for this decision."""
    record = plan.record(job, t)
    if record is not None:
        fold(memory, as_dict(record))


def test_a_park_sends_mail_and_webhook_and_the_same_park_again_is_a_duplicate():
    memory: dict[str, Any] = {}
    plan = decide(None, parked(), T0, RULES, has_email=True, has_webhook=True)
    assert (plan.why, plan.email, plan.webhook) == ("sent", "parked", True)
    remember(memory, plan, parked(), T0)
    again = decide(memory["acme"], parked(), T0 + 5, RULES, has_email=True, has_webhook=True)
    assert again.why == "duplicate"
    assert again.record(parked(), T0 + 5) is None


def test_a_failed_retry_is_quiet_within_the_quiet_period_and_mailed_after_it():
    memory: dict[str, Any] = {}
    first = decide(None, parked(), T0, RULES, has_email=True, has_webhook=True)
    remember(memory, first, parked(), T0)
    retry = parked(repeated=True, at="2026-11-28T10:20:00.000Z")
    quiet = decide(memory["acme"], retry, T0 + 1200, RULES, has_email=True, has_webhook=True)
    assert (quiet.why, quiet.email, quiet.webhook) == ("quiet", None, False)
    remember(memory, quiet, retry, T0 + 1200)
    later = parked(repeated=True, at="2026-11-28T11:01:00.000Z")
    loud = decide(memory["acme"], later, T0 + 3660, RULES, has_email=True, has_webhook=True)
    assert (loud.why, loud.email) == ("sent", "parked")


def test_a_new_park_is_always_mailed_even_within_the_quiet_period():
    memory: dict[str, Any] = {}
    first = decide(None, parked(), T0, RULES, has_email=True, has_webhook=False)
    remember(memory, first, parked(), T0)
    other = Failure("acme", "blocking", "m2", "product.sync", "HTTP 400", 1,
                    "2026-11-28T10:01:00.000Z").job()
    assert decide(memory["acme"], other, T0 + 60, RULES, has_email=True,
                  has_webhook=False).email == "parked"


def test_failures_in_a_window_go_to_one_digest_sent_when_the_window_closes():
    memory: dict[str, Any] = {}
    first = decide(None, failed("o0"), T0, RULES, has_email=True, has_webhook=True)
    assert (first.email, first.open_window, first.webhook) == ("failed", True, True)
    remember(memory, first, failed("o0"), T0)
    for n in range(1, 50):
        plan = decide(memory["acme"], failed(f"o{n}"), T0 + n, RULES, has_email=True,
                      has_webhook=True)
        assert (plan.why, plan.email, plan.webhook) == ("digest", None, True)
        remember(memory, plan, failed(f"o{n}"), T0 + n)
    digest = memory["acme"]["digest"]
    assert digest["count"] == 49
    assert digest["types"] == {"order.add_to_source": 49}
    assert len(digest["entries"]) == 20
    assert digest["entries"][0]["summary"] == "order 1001"
    due = {"job": "digest", "id": f"digest:acme:{T0 + 300}", "client_id": "acme", "due": T0 + 300}
    plan = decide(memory["acme"], due, T0 + 300, RULES, has_email=True, has_webhook=True)
    assert (plan.why, plan.email, plan.webhook, plan.open_window) == ("sent", "digest", False,
                                                                      True)
    remember(memory, plan, due, T0 + 300)
    assert memory["acme"]["digest"] is None
    nxt = {"job": "digest", "id": f"digest:acme:{T0 + 600}", "client_id": "acme", "due": T0 + 600}
    assert decide(memory["acme"], nxt, T0 + 600, RULES, has_email=True,
                  has_webhook=False).why == "nothing to send"


def test_a_digest_check_of_an_older_window_is_stale():
    memory: dict[str, Any] = {}
    first = decide(None, failed("o0"), T0, RULES, has_email=True, has_webhook=False)
    remember(memory, first, failed("o0"), T0)
    old = {"job": "digest", "id": "digest:acme:1", "client_id": "acme", "due": 1.0}
    assert decide(memory["acme"], old, T0 + 1, RULES, has_email=True,
                  has_webhook=False).why == "stale"


def test_a_failure_after_the_window_is_mailed_at_once():
    memory: dict[str, Any] = {}
    first = decide(None, failed("o0"), T0, RULES, has_email=True, has_webhook=False)
    remember(memory, first, failed("o0"), T0)
    assert decide(memory["acme"], failed("o1"), T0 + 301, RULES, has_email=True,
                  has_webhook=False).email == "failed"


@pytest.mark.parametrize(("has_webhook", "why"), [(True, "sent"), (False, "nothing to send")])
def test_a_resume_is_a_webhook_only(has_webhook: bool, why: str):
    job = {"job": "resumed", "id": "resumed:acme:m1:t", "client_id": "acme"}
    plan = decide(None, job, T0, RULES, has_email=True, has_webhook=has_webhook)
    assert (plan.why, plan.email, plan.webhook) == (why, None, has_webhook)


def test_fold_forgets_old_ids_and_replaying_a_record_changes_nothing():
    memory: dict[str, Any] = {}
    fold(memory, {"kind": "notified", "client_id": "acme", "id": "old", "t": T0})
    record = {"kind": "digest.add", "client_id": "acme", "id": "new", "t": T0 + REMEMBER_S + 1,
              "entry": {"type": "x"}}
    fold(memory, record)
    fold(memory, record)
    assert set(memory["acme"]["done"]) == {"new"}
    assert memory["acme"]["digest"]["count"] == 1
    assert empty_memory()["done"] == {}


@pytest.mark.parametrize(("type_", "payload", "expected"), [
    ("product.sync", {"sku": "ABC-1", "product": {}}, "SKU ABC-1"),
    ("order.add_to_source", {"order": {"id": 1001}}, "order 1001"),
    ("fulfillment.add", {"fulfillment": {"order_id": "A7"}}, "fulfillment A7"),
    ("notification.email", {"to": ["a@x.example"], "subject": "s"}, "email to a@x.example"),
    ("system.noop", {}, ""),
    ("product.sync", "not json", ""),
])
def test_summarize_names_the_item(type_: str, payload: Any, expected: str):
    assert summarize(type_, payload) == expected


def settings() -> Settings:
    return Settings(console_url="https://queue.example/console/", admin_emails="ops@s2s.example",
                    notify_digest_window=300)


def test_the_park_mail_names_everything_a_client_needs():
    job = Failure("acme", "blocking", "m-1", "product.sync",
                  'HTTP 422 from shop: {"message":"<b>bad</b> price"}', 3,
                  "2026-11-28T10:00:00.123Z", {"sku": "ABC-1"}).job()
    to, cc = mail.recipients(["it@acme.example"], settings().admin_email_list)
    rendered = mail.render("parked", job, client_name="Acme Ltd", to=to, cc=cc,
                           settings=settings())
    assert rendered.subject == "[s2s-queue] Acme Ltd: queue stopped at SKU ABC-1"
    assert (rendered.to, rendered.cc) == (("it@acme.example",), ("ops@s2s.example",))
    for text in ("Acme Ltd (acme)", "SKU ABC-1", "product.sync", "m-1", "Attempts:    3",
                 "2026-11-28 10:00:00", "blocking", "HTTP 422 from shop",
                 "https://queue.example/console/clients/acme",
                 "s2s-queue retry acme --message-id m-1", "s2s-queue skip acme --message-id m-1"):
        assert text in rendered.text, text
    assert "&lt;b&gt;bad&lt;/b&gt;" in rendered.html
    assert "<b>bad</b>" not in rendered.html
    assert 'href="https://queue.example/console/clients/acme"' in rendered.html
    assert 'name="viewport"' in rendered.html


def test_the_digest_mail_counts_by_type_and_lists_the_first_failures():
    memory: dict[str, Any] = {}
    for n in range(3):
        job = failed(f"o{n}")
        fold(memory, {"kind": "digest.add", "client_id": "acme", "id": job["id"], "t": T0,
                      "entry": digest_entry(job)})
    rendered = mail.render("digest", {"client_id": "acme", "id": "digest:acme:1"},
                           client_name="", to=("it@acme.example",), cc=(), settings=settings(),
                           digest=memory["acme"]["digest"])
    assert rendered.subject == "[s2s-queue] acme: 3 more failed items"
    assert "order.add_to_source: 3 failed" in rendered.text
    assert rendered.text.count("order 1001") == 3
    assert "s2s-queue failed list --client acme" in rendered.text


def test_the_mime_message_has_both_parts_and_a_message_id_from_the_notification():
    rendered = mail.Mail(("a@x.example",), ("b@x.example",), "subj", "text", "<p>html</p>",
                         "parked:acme:m1:t")
    msg = mail.message(rendered, "s2s@x.example")
    assert msg["Cc"] == "b@x.example"
    assert msg.get_body(("plain",)) is not None
    assert msg.get_body(("html",)) is not None
    assert msg["Message-ID"] == mail.message(rendered, "s2s@x.example")["Message-ID"]


def test_a_webhook_body_carries_what_orjson_cannot_write_exactly():
    """Found by the fuzz campaign: a notification.webhook whose data held an integer past
    64 bits crashed its handler (orjson: "Integer exceeds 64-bit range")."""
    raw = webhooks.body("e", "acme", "m1", {"n": 10**20, "s": "\ud800"})
    assert raw == b'{"event":"e","client_id":"acme","message_id":"m1",' \
                  b'"data":{"n":100000000000000000000,"s":"\\ud800"}}'


def test_webhook_signature_is_hmac_sha256_of_the_raw_body():
    raw = webhooks.body("client.parked", "acme", "m1", {"error": "x"})
    assert raw == b'{"event":"client.parked","client_id":"acme","message_id":"m1",' \
                  b'"data":{"error":"x"}}'
    signature = webhooks.sign("s3cret", raw)
    # printf '%s' '<raw>' | openssl dgst -sha256 -hmac s3cret
    assert signature == "sha256=f14b2308f18d49c8116e1a35e4836ea79195603d3cad82066c43d01eccfc9441"
    assert webhooks.verify("s3cret", raw, signature)
    assert not webhooks.verify("other", raw, signature)
    assert not webhooks.verify("s3cret", raw + b" ", signature)
    assert not webhooks.verify("s3cret", raw, None)
