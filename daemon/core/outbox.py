"""The outbox: failure notifications queued in the broker, decided once, sent beside the work.

Three steps, each safe to repeat after a crash, none on a consumer's path:

1. **Queue** (`parked`, `failed`, `resumed`: the `Notifier` the consumers
   call): a confirmed publish of a job to `<prefix>.notify`. That is all a
   consumer waits for.
2. **Decide**: one replica at a time (single active consumer, prefetch 1)
   takes each job in order, applies `daemon.core.notify_rules` to what the state
   log remembers of the client, publishes the deliveries to
   `<prefix>.notify.send` (and, when a digest window opens, a digest check
   to the window's delay queue, which dead-letters it back here when the
   window closes), records the decision in the state log, then acks.
3. **Send**: every replica takes deliveries from `<prefix>.notify.send`
   (`notify_concurrency` at a time), sends the mail or webhook and acks. A
   failure worth retrying goes to the delay queue of the next delay of
   `notify_retry_delays` (then the last delay again) until the notification
   is `notify_max_age` old; one that cannot succeed is logged and dropped.

A job or delivery that crashes a step (one that cannot be built, or a bug) is
put back at the end of its queue, `CRASH_LIMIT` tries in all, then given up
and reported once: an error log line `notify.failed`, the counter behind
`s2s_notification_failures_total` and a `notification.failed` event. No
notification loops, and none holds the deciding queue.

So an SMTP server that is down delays mail, visible in the log as
`notify.retry_later`, while parking and items go on. Pending notifications
are messages in the broker: they outlive a restart, and a graceful stop
finishes or hands back each delivery, so none is sent twice because of it.
Each sent delivery's id goes to the state log before its ack, and a sender
checks it first, so a crash after sending (even a decision redone after a
crash) does not send again; only a `kill -9` in the instant between the SMTP
server's acceptance and that record may (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import aio_pika
import aiohttp
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from common import mail, webhooks
from common.clients import ClientConfig
from daemon.broker.errors import CHANNEL_ERRORS
from daemon.broker.topology import Topology
from daemon.core.events import Events
from daemon.core.notifications import Failure, Resumed
from daemon.core.notify_rules import Plan, Rules, decide
from daemon.core.records import Notified
from daemon.core.state import StateLog
from daemon.settings import Settings
from daemon.tasks import Tasks

log = structlog.get_logger()

Job = dict[str, Any]
Step = Literal["decide", "send"]

CRASH_PAUSE_S = 1.0
CRASH_LIMIT = 5
"""Tries at a job or delivery that crashes before it is given up and reported."""
CRASHES_HEADER = "x-s2s-crashes"
"""How often a requeued job or delivery crashed so far."""

_EVENTS = {"parked": "client.parked", "failed": "item.failed", "resumed": "client.resumed"}


class Outbox:
    """Queues, decides and sends notifications; the daemon's `Notifier`."""

    def __init__(self, connection: AbstractRobustConnection, settings: Settings, topo: Topology,
                 state: StateLog, clients: Callable[[], Mapping[str, ClientConfig]],
                 http: aiohttp.ClientSession, events: Events) -> None:
        self._connection = connection
        self._settings = settings
        self._topo = topo
        self._state = state
        self._clients = clients
        self._http = http
        self._events = events
        self._rules = Rules(settings.notify_quiet_period, settings.notify_digest_window)
        self._publisher: AbstractChannel | None = None
        self._channels: list[AbstractChannel] = []
        self._running = Tasks()  # the consumers' callback tasks, while they run
        self._stopping = False
        self.jobs: Counter[str] = Counter()  # queued, by job kind
        self.deliveries: Counter[tuple[str, str]] = Counter()  # by (channel, outcome)
        self.failures: Counter[str] = Counter()  # given up after crashing, by step

    def __repr__(self) -> str:
        return f"<Outbox jobs={dict(self.jobs)} deliveries={dict(self.deliveries)}>"

    def count(self, outcome: str) -> int:
        """Deliveries with `outcome` (sent, retried, given_up) over every channel."""
        return sum(n for (_, o), n in self.deliveries.items() if o == outcome)

    @property
    def queue_names(self) -> list[str]:
        """Where notifications wait: to decide, to send, for a window or a retry."""
        topo, settings = self._topo, self._settings
        retries = sorted(set(settings.notify_delays))
        return [topo.notify, topo.notify_send,
                topo.delay_queue(settings.notify_digest_window, topo.notify),
                *(topo.delay_queue(d, topo.notify_send) for d in retries)]

    async def start(self, *, consume: bool = True) -> None:
        """Open the publishing channel; with `consume`, decide and send as well.

        A non-blocking worker process (daemon/workers.py) only queues: the
        supervisor's outbox decides and sends.
        """
        self._publisher = await self._connection.channel(publisher_confirms=True,
                                                         on_return_raises=True)
        if not consume:
            return
        for queue_name, prefetch, callback in (
            (self._topo.notify, 1, self._on_job),
            (self._topo.notify_send, self._settings.notify_concurrency, self._on_delivery),
        ):
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            # Declared, so that the robust channel consumes again after a reconnect.
            queue = await channel.declare_queue(queue_name, passive=True)
            await queue.consume(callback)
            self._channels.append(channel)

    async def stop(self, timeout: float) -> None:
        """Take nothing new; let what runs finish within `timeout`; hand the rest back."""
        self._stopping = True
        await self._running.stop(timeout)
        for channel in (*self._channels, self._publisher):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(*CHANNEL_ERRORS):
                    await channel.close()
        log.info("notify.stopped", jobs=dict(self.jobs),
                 deliveries={f"{c}.{o}": n for (c, o), n in self.deliveries.items()},
                 failures=dict(self.failures))

    # -- 1. queue (called by the consumers) --------------------------------------

    async def parked(self, failure: Failure) -> None:
        await self._queue(failure.job())

    async def failed(self, failure: Failure) -> None:
        await self._queue(failure.job())

    async def resumed(self, resumed: Resumed) -> None:
        await self._queue(resumed.job())

    async def _queue(self, job: Job, routing_key: str | None = None) -> None:
        assert self._publisher is not None, "Outbox.start() first"
        await self._publisher.default_exchange.publish(
            aio_pika.Message(orjson.dumps(job), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key or self._topo.notify, mandatory=True,
        )
        if routing_key is None:
            self.jobs[str(job.get("job"))] += 1
            log.info("notify.queued", client_id=job.get("client_id"),
                     message_id=job.get("message_id"), type=job.get("type"), job=job.get("job"))

    # -- shared by both consumers ------------------------------------------------

    async def _guarded(self, message: AbstractIncomingMessage, step: Step,
                       work: Callable[[Job], Awaitable[None]]) -> None:
        if self._stopping:
            return  # not started: handed back when the channel closes
        with self._running.running():
            await self._run(message, step, work)

    async def _run(self, message: AbstractIncomingMessage, step: Step,
                   work: Callable[[Job], Awaitable[None]]) -> None:
        try:
            job = orjson.loads(message.body)
            if not isinstance(job, dict):
                raise TypeError("not a JSON object")
        except (orjson.JSONDecodeError, TypeError) as exc:
            await self._give_up({}, step, f"not a notification: {exc}", 1)
            await message.ack()
            return
        try:
            await work(job)
            await message.ack()
        except CHANNEL_ERRORS as exc:
            log.warning("notify.interrupted", **_about(job), error=repr(exc))
        except Exception as exc:  # a crash (a job that cannot be built, a bug): bounded below
            await self._crashed(message, job, step, exc)

    async def _crashed(self, message: AbstractIncomingMessage, job: Job, step: Step,
                       exc: Exception) -> None:
        """Put a job that crashed back at the end of its queue, or give it up after
        `CRASH_LIMIT` tries.

        Not nack-requeued: a requeued message returns to the head, so one job that
        cannot be built would come back for ever, and on the deciding queue
        (prefetch 1) hold every notification behind it; a classic queue does not
        count deliveries, so the count travels in a header.
        """
        crashes = _crashes(message) + 1
        log.error("notify.crashed", **_about(job), step=step, crashes=crashes, exc_info=exc)
        try:
            if crashes >= CRASH_LIMIT:
                await self._give_up(job, step, f"{type(exc).__name__}: {exc}", crashes)
            else:
                await asyncio.sleep(CRASH_PAUSE_S)  # a bug: retried, but not in a tight loop
                assert self._publisher is not None, "Outbox.start() first"
                await self._publisher.default_exchange.publish(
                    aio_pika.Message(message.body, content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     headers={CRASHES_HEADER: crashes}),
                    routing_key=self._topo.notify if step == "decide" else self._topo.notify_send,
                    mandatory=True,
                )
            await message.ack()
        except CHANNEL_ERRORS as err:
            log.warning("notify.interrupted", **_about(job), error=repr(err))
            with contextlib.suppress(*CHANNEL_ERRORS):
                await message.nack(requeue=True)

    async def _give_up(self, job: Job, step: Step, error: str, attempts: int) -> None:
        """Report a notification that cannot be built or sent: once, in the log (error), the
        metrics and a `notification.failed` event."""
        self.failures[step] += 1
        about = _about(job)
        error = error[:300]
        log.error("notify.failed", **about, step=step, notification=job.get("id"),
                  attempts=attempts, error=error)
        await self._events.publish(
            "notification.failed", client_id=str(about["client_id"] or ""),
            message_id=about["message_id"], type_=about["type"],
            queue=str(job.get("queue") or ""), notification=job.get("id"), step=step,
            attempts=attempts, error=error)

    # -- 2. decide (one replica at a time) ---------------------------------------

    async def _on_job(self, message: AbstractIncomingMessage) -> None:
        await self._guarded(message, "decide", self._decide)

    async def _decide(self, job: Job) -> None:
        client_id = str(job.get("client_id") or "")
        config = self._clients().get(client_id)
        emails = config.notify_emails if config else []
        to, cc = mail.recipients(emails, self._settings.admin_email_list)
        has_webhook = config is not None and config.webhook_url is not None
        await self._state.sync()  # what earlier decisions recorded, on any replica
        now = time.time()
        memory = self._state.view.notify.get(client_id)
        plan = decide(memory, job, now, self._rules, has_email=bool(to), has_webhook=has_webhook)
        if plan.email is not None:
            digest = (memory or {}).get("digest") if plan.email == "digest" else None
            rendered = mail.render(plan.email, job, client_name=config.name if config else "",
                                   to=to, cc=cc, settings=self._settings, digest=digest)
            await self._deliver_later({"channel": "email", "mail": rendered.as_dict()}, job, now)
        if plan.webhook:
            await self._deliver_later(self._webhook_delivery(job), job, now)
        if plan.open_window:
            until = plan.window_until
            await self._queue({"job": "digest", "id": f"digest:{client_id}:{until}",
                               "client_id": client_id, "due": until},
                              routing_key=self._topo.delay_queue(self._rules.digest_window,
                                                                 self._topo.notify))
        await self._remember(plan, job, client_id, now)
        log.info("notify.decided", client_id=client_id,
                 message_id=job.get("message_id"), type=job.get("type"), job=job.get("job"),
                 outcome=plan.why, email=plan.email, webhook=plan.webhook)

    async def _remember(self, plan: Plan, job: Job, client_id: str, now: float) -> None:
        record = plan.record({**job, "client_id": client_id}, now)
        if record is not None:
            await self._state.append(record)

    @staticmethod
    def _webhook_delivery(job: Job) -> Job:
        kind = str(job.get("job"))
        data = {k: job.get(k) for k in ("type", "queue", "error", "attempts", "at", "summary",
                                         "how", "actor") if job.get(k) is not None}
        if kind == "failed":
            data["final"] = True
        return {"channel": "webhook", "event": _EVENTS[kind], "message_id": job.get("message_id"),
                "data": data}

    async def _deliver_later(self, delivery: Job, job: Job, now: float) -> None:
        """Hand a delivery to the senders (any replica)."""
        channel = delivery["channel"]
        delivery |= {"id": f"{job.get('id')}:{channel}", "client_id": job.get("client_id"),
                     "about": job.get("message_id"), "type": job.get("type"),
                     "queue": job.get("queue"), "created": now, "attempt": 0}
        await self._queue(delivery, routing_key=self._topo.notify_send)

    # -- 3. send (every replica) -------------------------------------------------

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        await self._guarded(message, "send", self._send)

    async def _send(self, delivery: Job) -> None:
        fields: dict[str, Any] = {
            "client_id": delivery.get("client_id"), "message_id": delivery.get("about"),
            "type": delivery.get("type"), "channel": delivery.get("channel"),
            "attempt": int(delivery.get("attempt") or 0) + 1,
        }
        client_id, delivery_id = str(delivery.get("client_id")), delivery.get("id")
        await self._state.sync()
        if delivery_id in (self._state.view.notify.get(client_id) or {}).get("done", {}):
            log.info("notify.already_sent", **fields)  # a redelivery after a crash
            return
        try:
            await self._send_once(delivery)
        except (mail.MailError, webhooks.WebhookError) as exc:
            await self._after_failure(delivery, exc, fields)
            return
        # Remembered before the ack: a crash in between does not send it again.
        await self._state.append(Notified(client_id=client_id, id=str(delivery_id),
                                          t=time.time()))
        self.deliveries[str(fields["channel"]), "sent"] += 1
        log.info("notify.sent", **fields)

    async def _send_once(self, delivery: Job) -> None:
        if delivery.get("channel") == "email":
            await mail.send(mail.Mail.from_dict(delivery["mail"]), self._settings)
            return
        config = self._clients().get(str(delivery.get("client_id")))
        if config is None or config.webhook_url is None or config.webhook_secret is None:
            raise webhooks.WebhookError("the client has no webhook_url any more", permanent=True)
        raw = webhooks.body(str(delivery["event"]), str(delivery["client_id"]),
                            delivery.get("message_id"), delivery.get("data") or {})
        await webhooks.post(self._http, config.webhook_url,
                            config.webhook_secret.get_secret_value(), raw,
                            self._settings.webhook_timeout)

    async def _after_failure(self, delivery: Job, exc: mail.MailError | webhooks.WebhookError,
                             fields: dict[str, Any]) -> None:
        attempt = fields["attempt"]
        age = time.time() - float(delivery.get("created") or 0)
        # A refused SMTP login or sender is our settings: keep trying until they are fixed.
        gives_up = exc.permanent and not getattr(exc, "settings", False)
        if gives_up or age > self._settings.notify_max_age:
            self.deliveries[str(fields["channel"]), "given_up"] += 1
            log.error("notify.given_up", **fields, error=str(exc),
                      reason="permanent" if gives_up else "too old")
            return
        delays = self._settings.notify_delays
        delay = delays[min(attempt, len(delays)) - 1]
        await self._queue({**delivery, "attempt": attempt},
                          routing_key=self._topo.delay_queue(delay, self._topo.notify_send))
        self.deliveries[str(fields["channel"]), "retried"] += 1
        ours = getattr(exc, "settings", False)  # our SMTP settings: someone must act
        (log.error if ours else log.warning)("notify.retry_later", **fields, delay_s=delay,
                                              error=str(exc))


def _crashes(message: AbstractIncomingMessage) -> int:
    """How often this job crashed before (the header a requeue sets)."""
    value = (message.headers or {}).get(CRASHES_HEADER)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _about(job: Job) -> dict[str, Any]:
    """The item a job or delivery is about, for log lines and events."""
    message_id = job.get("about", job.get("message_id"))
    return {"client_id": job.get("client_id"), "message_id": message_id,
            "type": job.get("type")}
