"""The dispatcher: expands each queued message into deliveries and hands them to the channels.

For a batch of messages it writes one delivery row per recipient and channel in one
transaction, publishes one AMQP message per delivery to `channel.<name>`, and acks each source
message only after all of its deliveries are confirmed by the broker. Web deliveries it sends
itself, right after that commit, as the web worker would send them (`WebSender`: written
already taken, as a claim leaves them, then appended to the live feed, recorded, their message
settled), which spares them a queue hop, a claim and a process on the way to the browser; only
what fails (a retry, a dead letter) is published, and a batch with more than
`WEB_SENDS_AT_ONCE` of them leaves them all to the web worker's lanes (written queued).
A message whose topics hold more subscribers than a page is expanded page by page instead
(`dispatcher.expansion`), each page in its own transaction and handed over as soon as it
commits (its web deliveries sent, unless a message of a higher lane is waiting). A
redelivered message finds its deliveries already written (or resumes its expansion where it
stopped) and publishes the unsent ones again, a page at a time, those a dispatcher sent but did
not record among them; the channel workers make that harmless (the web channel appends a
delivery to the feed once).
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection, bindparam, select, update

from channels.registry import reach_table
from channels.web import WebChannel
from dispatcher.decisions import (
    DeliveryDecider,
    Work,
    message_facts,
    settled_at_dispatch,
    write_deferred,
)
from dispatcher.expansion import (
    HANDED_OVER,
    MESSAGE_COLUMNS,
    PagedExpansion,
    Written,
    endpoint_channels,
    endpoints_of,
    first_pages,
    insert_deliveries,
    progress_of,
    take_for_sending,
    topics_of,
)
from dispatcher.stages.pipeline import PolicyPipeline, standard_stages
from dispatcher.targets import delivery_targets
from shared.amqp.consumer import BatchConsumer
from shared.amqp.link import AmqpLink, Inbound, Outgoing
from shared.amqp.settlements import Settlements
from shared.amqp.topology import LANES, channel_key
from shared.ids import utcnow
from shared.models import Delivery, Message, table_of
from shared.outbox import enqueue_callbacks
from shared.payloads import DeliveryPayload, DispatchPayload, decode, encode
from shared.pipeline_metrics import DispatchMetrics
from shared.runtime import Runtime
from shared.trace import event_row, record_events

log = structlog.get_logger(__name__)

CONFIRM_TIMEOUT_SECONDS = 30.0
#: The channel whose deliveries the dispatcher may send itself (`WebSender`).
WEB = WebChannel.name
#: The most web deliveries of one batch the dispatcher sends itself: a batch with more hands
#: them to the web worker's lanes, so the next batch (a high message, say) never waits long.
WEB_SENDS_AT_ONCE = 1000
# A scheduled message is only in the queue once it is due; the relay may mark it after this reads.
DISPATCHABLE = ("accepted", "scheduled", "queued", "dispatched")

# The dispatcher's statements, built once (building SQL costs more than running it here).
_D = table_of(Delivery)
_M = table_of(Message)
_DISPATCHABLE = (
    select(*MESSAGE_COLUMNS)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)), _M.c.status.in_(DISPATCHABLE))
    .order_by(_M.c.id)
)
_MARK_DISPATCHED = (
    update(_M)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)))
    .values(status="dispatched", updated_at=bindparam("now"))
)
_MARK_FINISHED = (
    update(_M)
    .where(_M.c.id.in_(bindparam("ids", expanding=True)))
    .values(status=bindparam("status"), updated_at=bindparam("now"))
)
_PRIORITY = select(_M.c.priority).where(_M.c.id == bindparam("message"))
# What a message still has to publish, a page at a time in delivery id order: a `sending` one
# too, which a dispatcher that sent it itself may have left claimed (the worker that gets it
# waits for the claim to go stale).
_PENDING_PAGE = (
    select(_D.c.id, _D.c.message_id, _D.c.app_id, _D.c.channel)
    .where(
        _D.c.message_id == bindparam("message"),
        _D.c.status.in_(("pending", "queued", "sending")),
        _D.c.id > bindparam("after"),
    )
    .order_by(_D.c.id)
    .limit(bindparam("limit"))
)


def log_dispatched(
    message_id: str, app_id: str, recipients: int, counts: Counter[tuple[str, str]]
) -> None:
    """The operator's one line about a dispatched message: its deliveries per channel and
    how many of them each stage outcome took (never an address or a body)."""
    channels: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for (channel, status), count in counts.items():
        channels[channel] += count
        outcomes[status] += count
    log.info(
        "dispatch.message",
        message_id=message_id,
        app=app_id,
        recipients=recipients,
        deliveries=sum(channels.values()),
        channels=dict(sorted(channels.items())),
        **dict(sorted(outcomes.items())),
    )


def all_confirmed(futures: Sequence[Future[None]]) -> bool:
    """Wait for the broker's confirms of `futures`; False unless every one came, positive."""
    wait(futures, timeout=CONFIRM_TIMEOUT_SECONDS)
    return all(f.done() and f.exception() is None for f in futures)


def sends_page_now(priority: str, waiting_rank: int | None) -> bool:
    """Whether the dispatcher sends a page of a large message of `priority` itself, the lane
    of the next message waiting for it being `waiting_rank` (None: none waits): unless that
    lane is a higher one."""
    return waiting_rank is None or waiting_rank >= LANES.index(priority)


def subscribers_of(members: dict[tuple[str, str], list[str]], app_id: str, topic: str) -> list[str]:
    return members.get((app_id, topic), [])


class WebSender(Protocol):
    """Sends web deliveries in the dispatcher's process as the web worker would send them
    (`channels.worker.ChannelWorker.send_now`), the dispatcher having written them taken:
    delivery id -> its follow-up publish."""

    def send_now(self, payloads: Sequence[dict[str, str]]) -> dict[str, Outgoing]: ...


@dataclass
class Plan:
    """What a batch's transaction leaves to do: deliveries it wrote that are to be published,
    messages whose unsent deliveries are to be read back and published, and messages to
    expand page by page first (with where each stopped, if it had begun)."""

    ready: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: Whether the web deliveries of `ready` were written taken, for this dispatcher to send.
    web_taken: bool = False
    pending: list[str] = field(default_factory=list)
    paged: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    #: Seconds from when each message expanded here was due (accepted, or its `send_at`).
    lags: list[float] = field(default_factory=list)
    #: Of each message expanded here: its app, recipients and (channel, status) -> deliveries.
    outcomes: dict[str, tuple[str, int, Counter[tuple[str, str]]]] = field(default_factory=dict)


class DispatchConsumer(BatchConsumer):
    """Consumes `dispatch`; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        link: AmqpLink,
        metrics: DispatchMetrics | None = None,
        web: WebSender | None = None,
    ) -> None:
        super().__init__(link)
        self.runtime = runtime
        #: Sends a batch's web deliveries right after they are written; None leaves them to
        #: the web worker's queue.
        self.web = web
        self.metrics = metrics or DispatchMetrics()
        self._settlements = Settlements()
        self.page_size = runtime.settings.dispatch_page_size
        self._in = DispatchPayload()
        self._out = DeliveryPayload()
        self._reaches = reach_table()
        stages = standard_stages(
            runtime.redis, runtime.settings.queue_prefix, runtime.settings.config.policy.fail_open
        )
        self._decider = DeliveryDecider(
            PolicyPipeline(stages, self._reaches), runtime.settings.config.policy
        )
        self._paged = PagedExpansion(self.page_size, self._reaches, self._decider)

    def handle_batch(self, batch: list[Inbound]) -> None:
        wanted: dict[str, list[Inbound]] = defaultdict(list)
        malformed: list[tuple[Inbound, str]] = []
        for message in batch:
            try:
                payload = decode(self._in, message.body)
            except ValueError as error:
                malformed.append((message, str(error)))
                continue
            wanted[payload["message_id"]].append(message)
        if wanted:
            self._dispatch(wanted)
        # Settled only once the others are done: a batch that fails because the store or Redis
        # is away is handled again whole, and settling a message twice makes the broker close
        # the channel (unknown delivery tag), which takes the others' acks with it.
        for message, detail in malformed:
            log.error("dispatch.malformed", detail=detail)
            self.link.nack(message, requeue=False)  # to the dead queue, not lost

    def _dispatch(self, wanted: dict[str, list[Inbound]]) -> None:
        """Dispatch the messages of `wanted` (message id -> its AMQP messages) and settle
        those AMQP messages."""
        with self.runtime.engine.begin() as connection:
            plan = self._expand(connection, list(wanted))
        ordered = self._hand_over(
            [(mid, d) for mid in wanted for d in plan.ready.get(mid, [])], plan.web_taken
        )
        futures = self.link.publish_batch([out for _mid, out in ordered])
        per_message: dict[str, list[Future[None]]] = {mid: [] for mid in wanted}
        for (mid, _out), future in zip(ordered, futures, strict=True):
            per_message[mid].append(future)
        # Large messages publish each page as it commits; a resumed expansion cannot know what
        # the dispatcher before it published, so, like a redelivery, it publishes what is left
        # once it is done. These are settled together once all of them are confirmed, so that
        # a batch handled again after a failure settles nothing twice.
        published: dict[str, bool] = {}
        for message_id, progress in plan.paged.items():
            confirms = self._expand_in_pages(message_id, progress)
            if (finished := self._paged.finished.pop(message_id, None)) is not None:
                plan.outcomes[message_id] = finished
            if progress is None:
                published[message_id] = all_confirmed(confirms)
            else:
                plan.pending.append(message_id)
        published.update({mid: self._publish_pending(mid) for mid in plan.pending})
        for message_id, confirmed in published.items():
            self._settle(message_id, wanted[message_id], plan.outcomes.get(message_id), confirmed)
        # The others are settled when their confirms come in, while the next batch goes on.
        for message_id, confirms in per_message.items():
            if message_id not in published:
                self._settlements.when_confirmed(
                    confirms,
                    functools.partial(
                        self._settle, message_id, wanted[message_id], plan.outcomes.get(message_id)
                    ),
                )
        totals: Counter[tuple[str, str]] = Counter()
        for _app, _recipients, counts in plan.outcomes.values():
            totals.update(counts)
        self.metrics.observe_batch(len(wanted), totals, plan.lags)
        log.debug("dispatch.batch", messages=len(wanted), deliveries=len(ordered))

    def _settle(
        self,
        message_id: str,
        sources: list[Inbound],
        outcome: tuple[str, int, Counter[tuple[str, str]]] | None,
        confirmed: bool,
    ) -> None:
        """Ack a message's sources once its deliveries are confirmed (else requeue them), then
        say what it became."""
        for source in sources:
            if confirmed:
                self.link.ack(source)
            else:
                self.link.nack(source, requeue=True)
        if confirmed and outcome is not None:
            log_dispatched(message_id, *outcome)

    def finish(self) -> None:
        """Settle the messages whose confirms are still coming before the link closes."""
        if not self._settlements.drain(CONFIRM_TIMEOUT_SECONDS):
            log.warning("dispatch.unsettled_at_stop")

    def _take_web(self, priority: str | None, rows: list[dict[str, Any]]) -> bool:
        """Take the queued web deliveries of `rows` (a batch's, or a large message's page of
        `priority`) for sending right after they are written, when this dispatcher sends them,
        there are few enough, and (a page) no message of a higher lane waits; whether it did."""
        web = [row for row in rows if row["channel"] == WEB and row["status"] == "queued"]
        if self.web is None or not 0 < len(web) <= WEB_SENDS_AT_ONCE:
            return False
        if priority is not None and not sends_page_now(priority, self.link.inbox.next_rank()):
            return False
        take_for_sending(web)
        return True

    def _hand_over(
        self, deliveries: list[tuple[str, dict[str, str]]], web_taken: bool
    ) -> list[tuple[str, Outgoing]]:
        """What to publish for a batch's deliveries, each with its message: a web delivery
        written taken (`_take_web`) is sent now, and only its follow-up (a retry, a dead
        letter) is published; the others go to their channel."""
        web = [d for _mid, d in deliveries if d["channel"] == WEB]
        sent = None
        if self.web is not None and web_taken and web:
            sent = self.web.send_now(web)
        outgoing = []
        for message_id, delivery in deliveries:
            if sent is None or delivery["channel"] != WEB:
                outgoing.append((message_id, self._outgoing(delivery)))
            elif (follow_up := sent.get(delivery["delivery_id"])) is not None:
                outgoing.append((message_id, follow_up))
        return outgoing

    def _page_out(
        self, message_id: str, page: list[dict[str, str]], web_taken: bool
    ) -> list[Future[None]]:
        """Hand over a page of a large message as it commits: its web deliveries are sent now
        if they were written taken, which they are while no message of a higher lane waits for
        this dispatcher; once one does, the pages left go to the web worker's lanes, so that it
        waits for the writing of the rest of the expansion only, not for its sends."""
        if not web_taken:
            return self._publish(page)
        outgoing = self._hand_over([(message_id, d) for d in page], web_taken)
        return self.link.publish_batch([out for _mid, out in outgoing])

    def _outgoing(self, delivery: dict[str, str]) -> Outgoing:
        """A delivery's AMQP message to its channel, in the lane of its message's priority."""
        return Outgoing(
            channel_key(delivery["channel"], delivery["priority"]), encode(self._out, delivery)
        )

    def _publish(self, deliveries: Sequence[dict[str, str]]) -> list[Future[None]]:
        """Each delivery to its channel, in the lane of its message's priority."""
        return self.link.publish_batch([self._outgoing(d) for d in deliveries])

    def _expand_in_pages(
        self, message_id: str, progress: tuple[int, str] | None
    ) -> list[Future[None]]:
        """Expand a large message step after step, each step committed on its own; the
        publications' futures of a fresh expansion, which publishes each step's deliveries
        right after it commits (a resumed one publishes everything once it is done)."""
        if progress is not None:
            log.info("dispatch.resumed", message_id=message_id, step=progress[0], after=progress[1])
        steps = 0
        futures: list[Future[None]] = []
        done = False
        while not done:
            with self.runtime.engine.begin() as connection:
                # A resumed expansion publishes everything once done: it takes nothing.
                take = self._take_web if progress is None else None
                done, ready, taken = self._paged.expand_step(connection, message_id, take)
            if progress is None:
                futures += self._page_out(message_id, ready, taken)
            steps += 1
        log.debug("dispatch.expanded", message_id=message_id, steps=steps)
        return futures

    def _publish_pending(self, message_id: str) -> bool:
        """Publish a message's unsent deliveries a page at a time; False unless all of them
        were confirmed. Pages go out while the earlier ones' confirms come in (the link's
        window bounds how many are in flight)."""
        after = ""
        futures: list[Future[None]] = []
        with self.runtime.engine.connect() as connection:
            priority = connection.scalar(_PRIORITY, {"message": message_id}) or "normal"
        while True:
            with self.runtime.engine.connect() as connection:
                page = connection.execute(
                    _PENDING_PAGE, {"message": message_id, "after": after, "limit": self.page_size}
                ).all()
            if not page:
                break
            futures += self._publish([Written(*row).payload(priority) for row in page])
            after = page[-1].id
        return all_confirmed(futures)

    def _expand(self, connection: Connection, message_ids: list[str]) -> Plan:
        """Write the deliveries of every message that fits in this transaction, as the policy
        stages decide them, and say what is left to do for each message (see `Plan`)."""
        plan = Plan()
        # A message expanding page by page (since an earlier delivery of it) goes on doing so,
        # whatever its status now: that step also ends it if it was canceled meanwhile.
        progress = progress_of(connection, message_ids)
        plan.paged.update(progress)
        # On PostgreSQL the rows stay locked until commit, so a cancel either lands before this
        # batch reads them (and they are skipped) or waits and finds them dispatched.
        postgres = connection.dialect.name == "postgresql"
        dispatchable = _DISPATCHABLE.with_for_update() if postgres else _DISPATCHABLE
        remaining = [mid for mid in message_ids if mid not in progress]
        messages = connection.execute(dispatchable, {"ids": remaining}).all() if remaining else []
        now = utcnow()
        undispatched = [m for m in messages if m.status != "dispatched"]
        # A message whose expiry passed while it waited (scheduled, or queued behind others)
        # is not sent at all.
        expired = [m.id for m in undispatched if m.expires_at is not None and m.expires_at <= now]
        due = [m for m in undispatched if m.id not in expired]
        # One more subscriber than a page says that a topic does not fit in one.
        members = first_pages(
            connection,
            {(m.app_id, t) for m in due for t in topics_of(m.recipients)},
            self.page_size + 1,
        )
        fresh = []
        routes = endpoint_channels(
            connection, {e for m in due for e in endpoints_of(m.app_id, m.recipients)}
        )
        for message in due:
            topical = sum(len(members[(message.app_id, t)]) for t in topics_of(message.recipients))
            if topical > self.page_size:
                plan.paged[message.id] = None
            else:
                fresh.append(message)
        work = [
            Work(
                message_facts(message),
                delivery_targets(
                    message.recipients,
                    message.channels,
                    functools.partial(subscribers_of, members, message.app_id),
                    self._reaches,
                    routes.get(message.app_id),
                ),
                routes.get(message.app_id, {}),
            )
            for message in fresh
        ]
        decided = self._decider.decide(connection, work, now)
        plan.web_taken = self._take_web(None, decided.rows)
        inserted = insert_deliveries(connection, decided.rows)
        new_ids = {row.id for row in inserted}
        write_deferred(connection, decided, new_ids)
        record_events(
            connection,
            [
                *(
                    event_row(m.id, "dispatched", deliveries=sum(decided.counts[m.id].values()))
                    for m in fresh
                ),
                *(e for e in decided.events if e["delivery_id"] in new_ids),
            ],
        )
        if fresh:
            connection.execute(_MARK_DISPATCHED, {"ids": [m.id for m in fresh], "now": now})
        # A message whose deliveries the stages all ended (or that reached nobody) has nothing
        # to wait for.
        settled: dict[str, list[str]] = defaultdict(list)
        for status, message_id in settled_at_dispatch(decided.rows, [m.id for m in fresh]):
            settled[status].append(message_id)
        settled["expired"].extend(expired)
        for status, ids in settled.items():
            if ids:
                connection.execute(_MARK_FINISHED, {"ids": ids, "now": now, "status": status})
                record_events(connection, [event_row(mid, status) for mid in ids])
                enqueue_callbacks(connection, ids, now)
        # A message whose rows were all written just now needs no lookup; one seen before (a
        # redelivery) or raced by another dispatcher reads back what is still to be sent.
        expected = Counter(row["message_id"] for row in decided.rows)
        written = Counter(row.message_id for row in inserted)
        plan.pending = [
            m.id
            for m in messages
            if m.status == "dispatched"
            or (m.id not in plan.paged and written[m.id] != expected[m.id])
        ]
        handed = {row["id"] for row in decided.rows if row["status"] in HANDED_OVER}
        priorities = {m.id: m.priority for m in messages}
        for row in sorted(inserted, key=lambda row: row.id):
            if row.message_id not in plan.pending and row.id in handed:
                payload = row.payload(priorities[row.message_id])
                plan.ready.setdefault(row.message_id, []).append(payload)
        plan.lags = [(now - (m.send_at or m.created_at)).total_seconds() for m in fresh]
        plan.outcomes = {
            w.message.id: (
                w.message.app_id,
                len({t.recipient for t in w.targets}),
                decided.counts[w.message.id],
            )
            for w in work
        }
        return plan
