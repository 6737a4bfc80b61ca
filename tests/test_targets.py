"""Who a message reaches on which channel, for every kind of `to` entry."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.targets import Target, delivery_targets

REACHES = {
    "web": frozenset({"user"}),
    "email": frozenset({"user", "email"}),
    "sms": frozenset({"user", "phone"}),
    "webhook": frozenset({"endpoint"}),
}
TOPICS = {"vip": ["ann", "ben"], "empty": []}


def targets(to: list[dict[str, Any]], channels: list[str]) -> list[Target]:
    return delivery_targets(to, channels, lambda topic: TOPICS[topic], REACHES)


@pytest.mark.parametrize(
    ("to", "channels", "expected"),
    [
        (
            [{"user_id": "ann"}],
            ["web", "email"],
            [Target("user:ann", "ann", None, "web"), Target("user:ann", "ann", None, "email")],
        ),
        (
            [{"topic": "vip"}, {"user_id": "ann"}],
            ["web"],
            [Target("user:ann", "ann", None, "web"), Target("user:ben", "ben", None, "web")],
        ),
        ([{"topic": "empty"}], ["web"], []),
        (
            [{"email": "Bob@Example.com"}, {"email": "bob@example.com"}],
            ["web", "email"],
            [Target("email:bob@example.com", None, "Bob@Example.com", "email")],
        ),
        (
            [{"phone": "+33612345678"}, {"email": "c@example.com"}],
            ["sms"],
            [Target("phone:+33612345678", None, "+33612345678", "sms")],
        ),
        (
            [{"user_id": "ann"}, {"endpoint": "ops"}],
            ["web", "webhook"],
            [
                Target("user:ann", "ann", None, "web"),
                Target("endpoint:ops", None, "ops", "webhook"),
            ],
        ),
    ],
    ids=[
        "user-every-channel",
        "topic-and-user-once",
        "empty-topic",
        "email-once",
        "phone-sms",
        "endpoint-only-on-its-channel",
    ],
)
def test_each_recipient_gets_one_delivery_per_channel_that_reaches_it(
    to: list[dict[str, Any]], channels: list[str], expected: list[Target]
) -> None:
    assert targets(to, channels) == expected
