"""Each policy stage of the dispatcher, from a table: what it decides about one delivery.

The pure stages (unreachable, rendering, discard, preferences, quiet hours) are decided from
their facts alone; the Redis ones (dedup, frequency cap) against the real Redis, under a key
prefix of their own. Quiet hours have their own table of time zones, windows that cross
midnight and the nights the clocks change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from channels.registry import reach_table
from dispatcher.stages.base import Candidate, MessageFacts, RecipientFacts, Stage
from dispatcher.stages.dedup import ContentDedup
from dispatcher.stages.discard import Discard
from dispatcher.stages.frequency_cap import FrequencyCap
from dispatcher.stages.pipeline import PolicyPipeline, standard_stages, user_needs
from dispatcher.stages.preferences import Preferences
from dispatcher.stages.quiet_hours import QuietHours, quiet_until
from dispatcher.stages.rendering import Rendering
from dispatcher.stages.unreachable import Unreachable
from dispatcher.targets import Target
from shared.policy import Cap, Policy

NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
LITERAL = {"title": "Hi", "body": "Your order shipped"}
TEMPLATED = {"template": "promo", "params": {}, "parts": {"web": {"title": "A", "body": "B"}}}


def candidate(
    channel: str = "web",
    *,
    user: str | None = "alice",
    address: str | None = None,
    kind: str = "user",
    category: str = "notification",
    priority: str = "normal",
    content: dict[str, Any] | None = None,
    dedup_key: str | None = None,
    facts: RecipientFacts | None = None,
    policy: Policy | None = None,
    endpoint_known: bool = True,
    message: str = "msg_1",
    fallback: list[str] | None = None,
) -> Candidate:
    recipient = f"user:{user}" if kind == "user" else f"{kind}:{address}"
    return Candidate(
        delivery_id=f"dlv_{uuid.uuid4().hex}",
        target=Target(recipient, user if kind == "user" else None, address, channel),
        message=MessageFacts(
            id=message,
            app_id="app_1",
            category=category,
            priority=priority,
            content=LITERAL if content is None else content,
            dedup_key=dedup_key,
            fallback=fallback,
        ),
        policy=Policy() if policy is None else policy,
        recipient=facts,
        endpoint_known=endpoint_known,
    )


QUIET_NOW = RecipientFacts(quiet_hours={"start": "11:00", "end": "13:30"}, timezone="UTC")
OPTED_OUT = RecipientFacts(email=True, preferences={"marketing": {"email": False}})
UNREACHABLE = Unreachable(user_needs())

# (stage, candidate, status it gives or None when the delivery goes on, words in the reason)
PURE_STAGES: list[tuple[Stage, Candidate, str | None, str]] = [
    (UNREACHABLE, candidate("web"), None, ""),
    (UNREACHABLE, candidate("email"), "failed", "no email address"),
    (UNREACHABLE, candidate("email", facts=RecipientFacts(email=True)), None, ""),
    (UNREACHABLE, candidate("sms", facts=RecipientFacts(email=True)), "failed", "no phone"),
    (UNREACHABLE, candidate("sms", facts=RecipientFacts(phone=True)), None, ""),
    (UNREACHABLE, candidate("push", facts=RecipientFacts(phone=True)), "failed", "no devices"),
    (UNREACHABLE, candidate("push", facts=RecipientFacts(devices=True)), None, ""),
    (UNREACHABLE, candidate("email", kind="email", address="a@example.com"), None, ""),
    (
        UNREACHABLE,
        candidate("webhook", kind="endpoint", address="crm", endpoint_known=False),
        "failed",
        "no endpoint 'crm'",
    ),
    (UNREACHABLE, candidate("webhook", kind="endpoint", address="crm"), None, ""),
    (Rendering(), candidate("email"), None, ""),
    (Rendering(), candidate("web", content=TEMPLATED), None, ""),
    (Rendering(), candidate("sms", content=TEMPLATED), "failed", "'promo' has no sms part"),
    (Discard(), candidate(), None, ""),
    (Discard(), candidate(policy=Policy(discard_all=True)), "canceled", "discard switch"),
    (
        Discard(),
        candidate(content=TEMPLATED, policy=Policy(discard_templates=frozenset({"promo"}))),
        "canceled",
        "'promo' is switched off",
    ),
    (Discard(), candidate(policy=Policy(discard_templates=frozenset({"promo"}))), None, ""),
    (Preferences(), candidate("email", category="marketing"), None, ""),
    (
        Preferences(),
        candidate("email", category="marketing", facts=OPTED_OUT),
        "suppressed",
        "opted out of marketing on email",
    ),
    (Preferences(), candidate("web", category="marketing", facts=OPTED_OUT), None, ""),
    (Preferences(), candidate("email", category="notification", facts=OPTED_OUT), None, ""),
    (
        Preferences(),
        candidate(
            "email",
            category="verification",
            facts=RecipientFacts(preferences={"verification": {"email": False}}),
        ),
        None,
        "",
    ),
    (QuietHours(), candidate(facts=QUIET_NOW), "deferred", "quiet hours until 2026-06-15T13:30"),
    (QuietHours(), candidate(category="marketing", facts=QUIET_NOW), "deferred", "13:30"),
    (QuietHours(), candidate(category="verification", facts=QUIET_NOW), None, ""),
    (QuietHours(), candidate(priority="high", facts=QUIET_NOW), None, ""),
    (QuietHours(), candidate(priority="low", facts=QUIET_NOW), "deferred", "13:30"),
    (QuietHours(), candidate(facts=RecipientFacts(timezone="UTC")), None, ""),
    (
        QuietHours(),
        candidate(facts=replace(QUIET_NOW, quiet_hours={"start": "13:00", "end": "14:00"})),
        None,
        "",
    ),
]


@pytest.mark.parametrize(
    ("stage", "subject", "status", "reason"),
    PURE_STAGES,
    ids=[f"{row[0].name}-{i}" for i, row in enumerate(PURE_STAGES)],
)
def test_each_stage_decides_a_delivery_from_its_facts(
    stage: Stage, subject: Candidate, status: str | None, reason: str
) -> None:
    (verdict,) = stage.decide([subject], NOON)
    if status is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.status == status
        assert reason in verdict.reason


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (now in UTC, zone, start, end, end of the quiet hours in UTC or None when outside)
QUIET_WINDOWS = [
    # Same-day window, in and out, and its edges (the end itself is outside).
    ("2026-06-15T12:00", "UTC", "11:00", "13:00", "2026-06-15T13:00"),
    ("2026-06-15T11:00", "UTC", "11:00", "13:00", "2026-06-15T13:00"),
    ("2026-06-15T13:00", "UTC", "11:00", "13:00", None),
    ("2026-06-15T10:59", "UTC", "11:00", "13:00", None),
    # A window that crosses midnight, before and after midnight.
    ("2026-06-15T23:30", "UTC", "22:00", "07:00", "2026-06-16T07:00"),
    ("2026-06-16T03:00", "UTC", "22:00", "07:00", "2026-06-16T07:00"),
    ("2026-06-16T07:30", "UTC", "22:00", "07:00", None),
    ("2026-06-15T21:59", "UTC", "22:00", "07:00", None),
    # In the user's zone: 22:00-07:00 in Shanghai (UTC+8) is 14:00-23:00 UTC.
    ("2026-06-15T15:00", "Asia/Shanghai", "22:00", "07:00", "2026-06-15T23:00"),
    ("2026-06-15T23:00", "Asia/Shanghai", "22:00", "07:00", None),
    # New York, summer (UTC-4) and winter (UTC-5).
    ("2026-07-01T03:00", "America/New_York", "22:00", "07:00", "2026-07-01T11:00"),
    ("2026-01-15T03:00", "America/New_York", "22:00", "07:00", "2026-01-15T12:00"),
    # The night the clocks go forward (8 March 2026, 02:00 -> 03:00 in New York): the window
    # opened at 22:00 EST and ends at 07:00 EDT, an hour shorter.
    ("2026-03-08T04:00", "America/New_York", "22:00", "07:00", "2026-03-08T11:00"),
    # An end that does not exist that night (02:30) ends when 03:30 EDT does.
    ("2026-03-08T05:00", "America/New_York", "22:00", "02:30", "2026-03-08T07:30"),
    # The night the clocks go back (1 November 2026, 02:00 -> 01:00): an hour longer.
    ("2026-11-01T04:00", "America/New_York", "22:00", "07:00", "2026-11-01T12:00"),
    # An end that happens twice that night (01:30) ends at its first occurrence (EDT).
    ("2026-11-01T04:00", "America/New_York", "22:00", "01:30", "2026-11-01T05:30"),
    # Europe's changes (29 March and 25 October 2026, at 01:00 UTC).
    ("2026-03-29T00:30", "Europe/Berlin", "23:00", "08:00", "2026-03-29T06:00"),
    ("2026-10-25T00:30", "Europe/Berlin", "23:00", "08:00", "2026-10-25T07:00"),
    # No zone is UTC; an unknown one too; an empty window is no window.
    ("2026-06-15T12:00", None, "11:00", "13:00", "2026-06-15T13:00"),
    ("2026-06-15T12:00", "Mars/Olympus", "11:00", "13:00", "2026-06-15T13:00"),
    ("2026-06-15T12:00", "UTC", "12:00", "12:00", None),
]


@pytest.mark.parametrize(("now", "zone", "start", "end", "until"), QUIET_WINDOWS)
def test_quiet_hours_end_at_the_local_end_of_the_window(
    now: str, zone: str | None, start: str, end: str, until: str | None
) -> None:
    assert quiet_until(utc(now), zone, start, end) == (None if until is None else utc(until))


@pytest.fixture
def prefix() -> str:
    return f"omnipush-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(prefix: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    yield connection
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)
    connection.close()


def statuses(stage: Stage, subjects: list[Candidate]) -> list[str | None]:
    return [None if v is None else v.status for v in stage.decide(subjects, NOON)]


def test_dedup_lets_the_first_through_and_stops_the_same_content_of_another_message(
    client: redis.Redis, prefix: str
) -> None:
    dedup = ContentDedup(client, prefix)
    first = candidate("email", message="msg_a")
    assert statuses(dedup, [first]) == [None]
    # The same message again (a redelivery) goes on; another message with it does not.
    assert statuses(dedup, [first, candidate("email", message="msg_b")]) == [None, "deduplicated"]
    # Other content, another channel or another recipient is not a duplicate.
    other = {"title": "Hi", "body": "Something else"}
    assert statuses(
        dedup,
        [
            candidate("email", message="msg_c", content=other),
            candidate("web", message="msg_c"),
            candidate("email", message="msg_c", user="bob"),
        ],
    ) == [None, None, None]


def test_dedup_by_key_ignores_the_content_and_a_zero_window_turns_it_off(
    client: redis.Redis, prefix: str
) -> None:
    dedup = ContentDedup(client, prefix)
    one = candidate(message="msg_a", dedup_key="order-7-shipped")
    two = candidate(message="msg_b", dedup_key="order-7-shipped", content={"body": "other"})
    assert statuses(dedup, [one, two]) == [None, "deduplicated"]
    off = Policy(dedup_window={"notification": 0.0})
    assert statuses(dedup, [replace(two, policy=off, message=replace(two.message, id="c"))]) == [
        None
    ]


def test_dedup_holds_for_the_window_of_the_category(client: redis.Redis, prefix: str) -> None:
    dedup = ContentDedup(client, prefix)
    short = Policy(dedup_window={"notification": 30.0})
    assert statuses(dedup, [candidate(policy=short, message="msg_a")]) == [None]
    key = next(client.scan_iter(f"{prefix}:dedup:*"))
    assert 25_000 < int(client.pttl(key)) <= 30_000


def test_frequency_cap_counts_messages_per_recipient_channel_and_category(
    client: redis.Redis, prefix: str
) -> None:
    cap = FrequencyCap(client, prefix)
    policy = Policy(frequency_cap={"marketing": Cap(2, 3600.0)})
    marketing = [candidate(category="marketing", policy=policy, message=f"m{i}") for i in range(3)]
    assert statuses(cap, marketing[:2]) == [None, None]
    assert statuses(cap, [marketing[0], marketing[2]]) == [None, "throttled"]
    others = [
        candidate("email", category="marketing", policy=policy, message="m9"),
        candidate(category="marketing", policy=policy, message="m9", user="bob"),
        candidate(category="notification", policy=policy, message="m9"),
    ]
    assert statuses(cap, others) == [None, None, None]


def test_the_default_caps_marketing_at_five_a_day(client: redis.Redis, prefix: str) -> None:
    cap = FrequencyCap(client, prefix)
    sent = statuses(cap, [candidate(category="marketing", message=f"m{i}") for i in range(7)])
    assert sent == [None] * 5 + ["throttled"] * 2
    key = next(client.scan_iter(f"{prefix}:cap:*"))
    assert timedelta(hours=23) < timedelta(milliseconds=int(client.pttl(key))) <= timedelta(days=1)


def test_the_redis_stages_go_on_deciding_after_redis_lost_their_scripts(
    client: redis.Redis, prefix: str
) -> None:
    """A restarted Redis has no scripts; the stages load theirs again and count as before."""
    dedup, cap = ContentDedup(client, prefix), FrequencyCap(client, prefix)
    policy = Policy(frequency_cap={"marketing": Cap(1, 3600.0)})
    first = candidate(category="marketing", policy=policy, message="m1")
    again = candidate(category="marketing", policy=policy, message="m2")
    assert statuses(dedup, [first]) == [None]
    assert statuses(cap, [first]) == [None]
    client.script_flush()
    assert statuses(dedup, [again]) == ["deduplicated"]
    assert statuses(cap, [again]) == ["throttled"]


def test_a_redis_stage_without_redis_raises_unless_it_fails_open() -> None:
    away = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.exceptions.ConnectionError):
        ContentDedup(away, "p").decide([candidate()], NOON)
    assert statuses(ContentDedup(away, "p", fail_open=True), [candidate()]) == [None]
    assert statuses(FrequencyCap(away, "p", fail_open=True), [candidate(category="marketing")]) == [
        None
    ]


def test_the_first_final_verdict_decides_and_quiet_hours_leave_the_later_stages_to_run(
    client: redis.Redis, prefix: str
) -> None:
    pipeline = PolicyPipeline(standard_stages(client, prefix, frozenset()), reach_table())
    opted_out_and_quiet = RecipientFacts(
        email=True,
        preferences={"marketing": {"email": False}},
        quiet_hours=QUIET_NOW.quiet_hours,
    )
    first, duplicate = (
        candidate("web", facts=QUIET_NOW, message="msg_a"),
        candidate("web", facts=QUIET_NOW, message="msg_b"),
    )
    decisions = pipeline.run(
        [
            candidate("email", category="marketing", facts=opted_out_and_quiet),
            first,
            duplicate,
            candidate("email", policy=Policy(discard_all=True)),
        ],
        NOON,
    )
    assert [(d.status, d.stage) for d in decisions] == [
        ("suppressed", "preferences"),
        ("deferred", None),
        ("deduplicated", "dedup"),
        # Unreachable comes before the discard switch.
        ("failed", "unreachable"),
    ]
    assert decisions[1].deferral is not None
    assert decisions[1].deferral.release_at == utc("2026-06-15T13:30")


def test_an_unreachable_delivery_hands_over_to_the_first_fallback_channel_that_reaches(
    client: redis.Redis, prefix: str
) -> None:
    pipeline = PolicyPipeline(standard_stages(client, prefix, frozenset()), reach_table())
    facts = RecipientFacts(phone=True)
    decisions = pipeline.run(
        [candidate("email", facts=facts, fallback=["push", "sms"]), candidate("web", facts=facts)],
        NOON,
    )
    email, web, push, sms = decisions
    assert (email.status, email.stage, web.status) == ("failed", "unreachable", "queued")
    # Push reaches users but this one has no devices: it fails too and hands on to SMS.
    assert (push.candidate.channel, push.status, push.candidate.fallback_of) == (
        "push",
        "failed",
        email.candidate.delivery_id,
    )
    assert (sms.candidate.channel, sms.status, sms.candidate.fallback_of) == (
        "sms",
        "queued",
        push.candidate.delivery_id,
    )
