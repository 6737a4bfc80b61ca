"""The dispatcher's policy stages as an app and its users see them, through real services.

A stack of its own (api, relay, dispatcher, web worker, gateway, and an email worker sending to
a local SMTP server) takes messages through the API. Each test looks where a user would: the
deliveries and events of `GET /v1/messages/{id}`, `omnipush trace`, what a connected browser and
the mailbox received, and the dispatcher's one `dispatch.message` line per message. Then two
dispatchers at once share a burst of messages and agree on the dedup and the cap, and a
deferred delivery waits in the store across a relay restart until it is due.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select, update

from producer_api.api_keys import NewApp
from shared.models import Delivery, OutboxEntry
from shared.runtime import Runtime
from shared.tokens import mint_browser_token
from tests.conftest import isolated_settings, new_tenant, service_env
from tests.inbox_client import InboxClient
from tests.smtp_server import SmtpServer
from tests.stack import READY_SECONDS, SERVICE_ARGS, Service, Stack, run_omnipush, wait_until
from tests.test_email_worker import email_worker

#: How long a message may take through the stack (the machine is shared).
SETTLE_SECONDS = 30.0


@dataclass
class PolicyStack:
    """The module's stack, a reader of its store, the mailbox, and the email worker."""

    stack: Stack
    runtime: Runtime
    mailbox: SmtpServer
    email: Service

    @property
    def dispatcher(self) -> Service:
        return self.stack.services["dispatcher"]


@pytest.fixture(scope="module")
def policy_stack() -> Iterator[PolicyStack]:
    with isolated_settings() as settings, SmtpServer() as mailbox:
        stack = Stack(settings=settings, env=service_env(settings))
        runtime = Runtime.build(settings)
        email: Service | None = None
        try:
            stack.start_all()
            email = email_worker(settings, mailbox)
            yield PolicyStack(stack, runtime, mailbox, email)
        finally:
            if email is not None:
                email.stop()
            stack.stop_all()
            runtime.close()


@dataclass
class App:
    """An app of the stack, talking to its API as its backend would."""

    scene: PolicyStack
    tenant: NewApp
    api: httpx.Client

    def put_user(self, user_id: str, **fields: Any) -> None:
        response = self.api.put(f"/v1/users/{user_id}", json=fields)
        assert response.status_code in (200, 201), response.text

    def put_policy(self, document: dict[str, Any]) -> None:
        response = self.api.put("/v1/policy", json=document)
        assert response.status_code == 200, response.text

    def send(self, **body: Any) -> str:
        response = self.api.post("/v1/messages", json=body)
        assert response.status_code == 202, response.text
        message_id: str = response.json()["id"]
        return message_id

    def message(self, message_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/messages/{message_id}")
        assert response.status_code == 200, response.text
        shown: dict[str, Any] = response.json()
        return shown

    def settled(self, message_id: str, status: str) -> dict[str, Any]:
        """The message once it shows `status` and none of its deliveries is on its way."""

        def shown() -> dict[str, Any] | None:
            message = self.message(message_id)
            moving = {"pending", "queued", "sending", "retrying"}
            if message["status"] == status and not any(
                d["status"] in moving for d in message["deliveries"]
            ):
                return message
            return None

        found: dict[str, Any] = wait_until(shown, SETTLE_SECONDS, f"{message_id} {status}", 0.1)
        return found

    def browser(self, user_id: str) -> InboxClient:
        secret = self.scene.stack.settings.secret_key
        token, _ = mint_browser_token(secret, self.tenant.app_id, user_id, 600)
        return InboxClient(self.scene.stack.gateway_url, token).connect()


@pytest.fixture
def app(policy_stack: PolicyStack) -> Iterator[App]:
    """A new app on the module's stack, with its API client."""
    tenant = new_tenant(policy_stack.runtime)
    with httpx.Client(
        base_url=policy_stack.stack.api_url,
        headers={"Authorization": f"Bearer {tenant.api_key}"},
        timeout=30,
    ) as api:
        yield App(policy_stack, tenant, api)


def by_user_and_channel(message: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["user_id"], d["channel"]): d for d in message["deliveries"]}


def stage_events(message: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    return [e for e in message["events"] if e["stage"] == stage]


def dispatch_lines(service: Service, message_id: str) -> list[dict[str, Any]]:
    """The `dispatch.message` lines a dispatcher logged about `message_id`."""
    lines = []
    for line in service.output().splitlines():
        if '"dispatch.message"' not in line:
            continue
        logged = json.loads(line)
        if logged.get("message_id") == message_id:
            lines.append(logged)
    return lines


def outcome_counts(logged: dict[str, Any]) -> dict[str, int]:
    """The per-outcome counts of a `dispatch.message` line."""
    outcomes = ("queued", "failed", "canceled", "suppressed", "deferred", "deduplicated")
    return {k: v for k, v in logged.items() if k in (*outcomes, "throttled")}


def quiet_now(zone: str) -> tuple[dict[str, str], datetime]:
    """Quiet hours from an hour ago to an hour from now, local to `zone`, and the instant
    they end (the minute of the local end)."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    start, end = local - timedelta(hours=1), local + timedelta(hours=1)
    hours = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    return hours, end.replace(second=0, microsecond=0).astimezone(UTC)


def trace_of(scene: PolicyStack, message_id: str) -> str:
    shown = run_omnipush("trace", message_id, env=scene.stack.env)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_each_stage_decides_one_delivery_of_a_message_to_four_users(app: App) -> None:
    scene = app.scene
    hours, window_end = quiet_now("Asia/Tokyo")
    app.put_user(
        "ann",
        email="ann@example.com",
        preferences={"marketing": {"email": False}},
    )
    app.put_user("bob")  # no email: the web inbox takes over
    app.put_user("cat", email="cat@example.com", timezone="Asia/Tokyo", quiet_hours=hours)
    app.put_user("dan", email="dan@example.com")
    bobs_browser = app.browser("bob")
    try:
        message_id = app.send(
            to=[{"user_id": u} for u in ("ann", "bob", "cat", "dan")],
            channels=["email"],
            fallback=["web"],
            category="marketing",
            content={"title": "Spring sale", "body": "Everything half price until Sunday."},
        )
        (notification,) = bobs_browser.wait_for(1, SETTLE_SECONDS)
        wait_until(
            lambda: [m.recipients for m in scene.mailbox.received] == [("dan@example.com",)],
            SETTLE_SECONDS,
            "dan's mail",
        )
        # Cat's mail waits for the end of her quiet hours: the message is not over yet.
        message = app.settled(message_id, "dispatched")
    finally:
        bobs_browser.close()
    assert notification["message_id"] == message_id
    assert notification["title"] == "Spring sale"

    deliveries = by_user_and_channel(message)
    assert {key: d["status"] for key, d in deliveries.items()} == {
        ("ann", "email"): "suppressed",
        ("bob", "email"): "failed",
        ("bob", "web"): "sent",
        ("cat", "email"): "deferred",
        ("dan", "email"): "sent",
    }
    assert deliveries[("ann", "email")]["last_error"] == "the user opted out of marketing on email"
    assert deliveries[("bob", "email")]["last_error"] == "the user has no email address"
    stages = {
        e["delivery_id"]: e["stage"]
        for e in message["events"]
        if e["stage"] in ("preferences", "unreachable", "quiet_hours")
    }
    assert stages == {
        deliveries[("ann", "email")]["id"]: "preferences",
        deliveries[("bob", "email")]["id"]: "unreachable",
        deliveries[("cat", "email")]["id"]: "quiet_hours",
    }
    (deferral,) = stage_events(message, "quiet_hours")
    assert datetime.fromisoformat(deferral["detail"]["until"]) == window_end
    (fallback,) = stage_events(message, "fallback")
    assert fallback["delivery_id"] == deliveries[("bob", "email")]["id"]
    assert fallback["detail"] == {
        "from": "email",
        "to": "web",
        "delivery": deliveries[("bob", "web")]["id"],
    }

    trace = trace_of(scene, message_id)
    for stage, delivery in (
        ("preferences", ("ann", "email")),
        ("unreachable", ("bob", "email")),
        ("quiet_hours", ("cat", "email")),
    ):
        assert any(
            stage in line and deliveries[delivery]["id"] in line for line in trace.splitlines()
        ), (stage, trace)
    assert "status dispatched" in trace

    (logged,) = dispatch_lines(scene.dispatcher, message_id)
    assert (logged["app"], logged["recipients"], logged["deliveries"]) == (
        app.tenant.app_id,
        4,
        5,
    )
    assert logged["channels"] == {"email": 4, "web": 1}
    assert outcome_counts(logged) == {"queued": 2, "failed": 1, "suppressed": 1, "deferred": 1}
    said = scene.dispatcher.output()
    for private in ("@example.com", "half price", "Spring sale"):
        assert private not in said, f"the dispatcher logged {private!r}"


def test_verification_passes_preferences_and_quiet_hours_and_high_priority_passes_quiet_hours(
    app: App,
) -> None:
    scene = app.scene
    hours, window_end = quiet_now("UTC")
    app.put_user(
        "eve",
        email="eve@example.com",
        preferences={"verification": {"email": False}},
        quiet_hours=hours,
    )
    eves_browser = app.browser("eve")
    try:
        code = app.send(
            to=[{"user_id": "eve"}],
            channels=["email"],
            category="verification",
            content={"title": "Your code is 481516"},
        )
        urgent = app.send(
            to=[{"user_id": "eve"}],
            channels=["web"],
            priority="high",
            content={"title": "Your card was just used abroad"},
        )
        later = app.send(
            to=[{"user_id": "eve"}], channels=["web"], content={"title": "Weekly summary"}
        )
        (notification,) = eves_browser.wait_for(1, SETTLE_SECONDS)
        wait_until(
            lambda: [
                m.recipients for m in scene.mailbox.received if m.recipients[0] == "eve@example.com"
            ],
            SETTLE_SECONDS,
            "eve's code by mail",
        )
        code_shown = app.settled(code, "completed")
        urgent_shown = app.settled(urgent, "completed")
        later_shown = app.settled(later, "dispatched")
    finally:
        eves_browser.close()
    assert notification["message_id"] == urgent
    assert [d["status"] for d in code_shown["deliveries"]] == ["sent"]
    assert [d["status"] for d in urgent_shown["deliveries"]] == ["sent"]
    for shown in (code_shown, urgent_shown):
        assert not stage_events(shown, "preferences") and not stage_events(shown, "quiet_hours")
    # The same quiet hours hold back what is neither urgent nor a code.
    assert [d["status"] for d in later_shown["deliveries"]] == ["deferred"]
    (deferral,) = stage_events(later_shown, "quiet_hours")
    assert datetime.fromisoformat(deferral["detail"]["until"]) == window_end
    (mail,) = [m for m in scene.mailbox.received if m.recipients == ("eve@example.com",)]
    assert "481516" in str(mail.message["Subject"])
    for message_id, outcome in ((code, "queued"), (urgent, "queued"), (later, "deferred")):
        (logged,) = dispatch_lines(scene.dispatcher, message_id)
        assert outcome_counts(logged) == {outcome: 1}


def test_a_template_switched_off_through_the_policy_is_canceled_and_others_are_sent(
    app: App,
) -> None:
    parts = {"web": {"title": "Spring sale: {{ percent }}% off"}}
    for code in ("spring-sale", "order-shipped"):
        response = app.api.put(f"/v1/templates/{code}", json={"parts": parts})
        assert response.status_code in (200, 201), response.text
    app.put_policy({"discard": {"all": False, "templates": ["spring-sale"]}})
    app.put_user("fay")
    browser = app.browser("fay")
    try:
        discarded = app.send(
            to=[{"user_id": "fay"}],
            channels=["web"],
            template="spring-sale",
            params={"percent": 30},
        )
        canceled = app.settled(discarded, "canceled")
        kept = app.send(
            to=[{"user_id": "fay"}],
            channels=["web"],
            template="order-shipped",
            params={"percent": 40},
        )
        app.settled(kept, "completed")
        received = browser.wait_for(1, SETTLE_SECONDS)
    finally:
        browser.close()
    # The canceled message was never published: the browser has the other one only.
    assert [n["message_id"] for n in received] == [kept]
    (delivery,) = canceled["deliveries"]
    assert (delivery["status"], delivery["last_error"]) == (
        "canceled",
        "template 'spring-sale' is switched off",
    )
    (event,) = stage_events(canceled, "discard")
    assert event["delivery_id"] == delivery["id"]
    assert event["detail"]["status"] == "canceled"
    assert [e["stage"] for e in canceled["events"]][-1] == "canceled"
    (logged,) = dispatch_lines(app.scene.dispatcher, discarded)
    assert outcome_counts(logged) == {"canceled": 1}


def test_the_same_content_or_dedup_key_twice_reaches_the_user_once(app: App) -> None:
    app.put_user("gus")
    browser = app.browser("gus")
    to = [{"user_id": "gus"}]
    try:
        first = app.send(to=to, channels=["web"], content={"title": "Your parcel is out"})
        app.settled(first, "completed")
        again = app.send(to=to, channels=["web"], content={"title": "Your parcel is out"})
        again_shown = app.settled(again, "completed")
        keyed = app.send(
            to=to, channels=["web"], dedup_key="order-17", content={"title": "Order 17 paid"}
        )
        app.settled(keyed, "completed")
        rekeyed = app.send(
            to=to, channels=["web"], dedup_key="order-17", content={"title": "Order 17: paid!"}
        )
        rekeyed_shown = app.settled(rekeyed, "completed")
        last = app.send(to=to, channels=["web"], content={"title": "Anything else?"})
        app.settled(last, "completed")
        received = browser.wait_for(3, SETTLE_SECONDS)
    finally:
        browser.close()
    # The last one came after the duplicates would have: the browser has each original once.
    assert [n["message_id"] for n in received] == [first, keyed, last]
    for shown, what in ((again_shown, "content"), (rekeyed_shown, "dedup_key")):
        (delivery,) = shown["deliveries"]
        assert delivery["status"] == "deduplicated"
        assert (
            delivery["last_error"] == f"the same {what} reached this recipient on web within 300s"
        )
        (event,) = stage_events(shown, "dedup")
        assert event["delivery_id"] == delivery["id"]
    for message_id in (again, rekeyed):
        (logged,) = dispatch_lines(app.scene.dispatcher, message_id)
        assert outcome_counts(logged) == {"deduplicated": 1}
    assert "dedup" in trace_of(app.scene, rekeyed)


def test_marketing_over_the_apps_cap_is_throttled(app: App) -> None:
    app.put_policy({"frequency_cap": {"marketing": {"limit": 2, "window": 3600}}})
    app.put_user("hal")
    browser = app.browser("hal")
    sent = []
    try:
        for title in ("New arrivals", "Last chance", "Final hours"):
            message_id = app.send(
                to=[{"user_id": "hal"}],
                channels=["web"],
                category="marketing",
                content={"title": title},
            )
            sent.append((message_id, app.settled(message_id, "completed")))
        # Notifications are not capped: one after the throttled one arrives behind it.
        last = app.send(to=[{"user_id": "hal"}], channels=["web"], content={"title": "Receipt"})
        app.settled(last, "completed")
        received = browser.wait_for(3, SETTLE_SECONDS)
    finally:
        browser.close()
    assert [n["message_id"] for n in received] == [sent[0][0], sent[1][0], last]
    assert [shown["deliveries"][0]["status"] for _id, shown in sent] == [
        "sent",
        "sent",
        "throttled",
    ]
    throttled_id, throttled = sent[2]
    (delivery,) = throttled["deliveries"]
    assert delivery["last_error"] == "over 2 marketing per 3600s on web"
    (event,) = stage_events(throttled, "frequency_cap")
    assert event["delivery_id"] == delivery["id"]
    (logged,) = dispatch_lines(app.scene.dispatcher, throttled_id)
    assert outcome_counts(logged) == {"throttled": 1}


def test_a_deferred_delivery_waits_in_the_store_across_a_relay_restart_until_it_is_due(
    app: App,
) -> None:
    scene = app.scene
    stack, runtime = scene.stack, scene.runtime
    hours, window_end = quiet_now("Asia/Kolkata")
    app.put_user("ivy", timezone="Asia/Kolkata", quiet_hours=hours)
    browser = app.browser("ivy")
    try:
        message_id = app.send(
            to=[{"user_id": "ivy"}], channels=["web"], content={"title": "Good morning"}
        )
        (delivery,) = app.settled(message_id, "dispatched")["deliveries"]
        assert delivery["status"] == "deferred"
        assert held_back(runtime, message_id) == (window_end, window_end, None)

        stack.services["relay"].stop()
        stack.start("relay")
        due = datetime.now(UTC) + timedelta(seconds=2)
        with runtime.engine.begin() as connection:
            connection.execute(
                update(OutboxEntry)
                .where(OutboxEntry.message_id == message_id)
                .values(available_at=due)
            )
            connection.execute(
                update(Delivery).where(Delivery.id == delivery["id"]).values(release_at=due)
            )

        def shown_once_due() -> bool:
            if not browser.notifications:
                return False
            assert datetime.now(UTC) >= due, "sent before the end of the quiet hours"
            return True

        wait_until(shown_once_due, SETTLE_SECONDS, "the notification once due")
        shown = app.settled(message_id, "completed")
    finally:
        browser.close()
        if not stack.services["relay"].working():
            stack.start("relay")
    assert [n["message_id"] for n in browser.notifications] == [message_id]
    (sent,) = shown["deliveries"]
    assert sent["status"] == "sent"
    assert datetime.fromisoformat(sent["sent_at"]) >= due
    _available, _release, published = held_back(runtime, message_id)
    assert published is not None and published >= due
    stages = [e["stage"] for e in shown["events"]]
    assert stages.index("quiet_hours") < stages.index("sent") < stages.index("completed")


def held_back(runtime: Runtime, message_id: str) -> tuple[datetime, datetime, datetime | None]:
    """Of a message's one deferred delivery: when its outbox row is due, when the delivery is
    released, and when the row was published (None: not yet)."""
    with runtime.engine.connect() as connection:
        (row,) = connection.execute(
            select(OutboxEntry.available_at, Delivery.release_at, OutboxEntry.published_at)
            .join(Delivery, Delivery.id == OutboxEntry.payload["delivery_id"].as_string())
            .where(OutboxEntry.message_id == message_id)
        ).all()
    return row.available_at, row.release_at, row.published_at


BURST = 200
CAP = 5


@pytest.fixture
def two_dispatchers() -> Iterator[tuple[Stack, Service]]:
    """API, relay and two dispatchers on the same dispatch queue, on a store and queues of
    their own; no worker takes the deliveries."""
    with isolated_settings() as settings:
        stack = Stack(settings=settings, env=service_env(settings))
        second = Service(list(SERVICE_ARGS["dispatcher"]), stack.env)
        try:
            for name in ("api", "relay", "dispatcher"):
                stack.start(name)
            second.start().wait_for_log("amqp.ready", READY_SECONDS)
            yield stack, second
        finally:
            second.stop()
            stack.stop_all()


def test_two_dispatchers_sharing_a_burst_let_one_copy_through_and_no_more_than_the_cap(
    two_dispatchers: tuple[Stack, Service],
) -> None:
    stack, second = two_dispatchers
    runtime = Runtime.build(stack.settings)
    try:
        tenant = new_tenant(runtime)
        with httpx.Client(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {tenant.api_key}"},
            timeout=30,
        ) as api:
            policy = {"frequency_cap": {"marketing": {"limit": CAP, "window": 3600}}}
            assert api.put("/v1/policy", json=policy).status_code == 200
            to = [{"user_id": "jo"}]
            same = {"to": to, "channels": ["web"], "content": {"title": "Your parcel is out"}}
            offers = [
                {
                    "to": to,
                    "channels": ["web"],
                    "category": "marketing",
                    "content": {"title": f"Offer {n}"},
                }
                for n in range(BURST)
            ]
            # Interleaved, in one request: the relay publishes them together.
            burst = [item for pair in zip([same] * BURST, offers, strict=True) for item in pair]
            response = api.post("/v1/messages/batch", json={"messages": burst})
        assert response.status_code == 200 and response.json()["accepted"] == 2 * BURST
        ids = [result["id"] for result in response.json()["results"]]
        dispatchers = (stack.services["dispatcher"], second)

        def logged() -> list[str]:
            return [
                line["message_id"]
                for service in dispatchers
                for message_id in ids
                for line in dispatch_lines(service, message_id)
            ]

        wait_until(lambda: len(logged()) >= 2 * BURST, 60, "every message dispatched", 0.2)
        assert sorted(logged()) == sorted(ids), "a message was dispatched twice"
        for service in dispatchers:
            assert any(dispatch_lines(service, m) for m in ids), "a dispatcher took no message"
        with runtime.engine.connect() as connection:
            rows = connection.execute(
                select(Delivery.message_id, Delivery.status).where(Delivery.app_id == tenant.app_id)
            ).all()
    finally:
        runtime.close()
    statuses = {message_id: status for message_id, status in rows}
    assert len(rows) == 2 * BURST
    # What they let through they sent themselves (web deliveries go to the feed from there).
    assert Counter(statuses[m] for m in ids[0::2]) == {"sent": 1, "deduplicated": BURST - 1}
    assert Counter(statuses[m] for m in ids[1::2]) == {"sent": CAP, "throttled": BURST - CAP}
