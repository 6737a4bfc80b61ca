"""How an endpoint's HTTP answer becomes the worker's outcome (`channels.endpoint_http`)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from channels.base import Outcome
from channels.endpoint_http import (
    DEFAULT_RETRY_AFTER_SECONDS,
    classify,
    post_json,
)
from shared.outbound import OutboundPolicy, outbound_client
from shared.retry_after import retry_after_seconds
from tests.offline_dns import offline_resolver


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (204, Outcome.SENT),
        (429, Outcome.DEFERRED),
        (408, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (301, Outcome.PERMANENT),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (410, Outcome.PERMANENT),
    ],
)
def test_each_http_status_has_its_outcome(status: int, outcome: Outcome) -> None:
    result = classify(httpx.Response(status))
    assert result.outcome is outcome
    assert result.detail and str(status) in result.detail


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        ("7", 7, 7),
        ("0.5", 0.5, 0.5),
        (None, DEFAULT_RETRY_AFTER_SECONDS, DEFAULT_RETRY_AFTER_SECONDS),
        ("soon", DEFAULT_RETRY_AFTER_SECONDS, DEFAULT_RETRY_AFTER_SECONDS),
    ],
    ids=["seconds", "fraction", "absent", "unreadable"],
)
def test_retry_after_is_seconds_from_now(header: str | None, low: float, high: float) -> None:
    assert low <= retry_after_seconds(header, DEFAULT_RETRY_AFTER_SECONDS) <= high


@pytest.mark.parametrize(
    ("ahead", "low", "high"), [(60, 55, 61), (-60, 0.001, 0.001)], ids=["future", "past"]
)
def test_retry_after_may_be_an_http_date(ahead: float, low: float, high: float) -> None:
    header = email.utils.formatdate(time.time() + ahead, usegmt=True)
    assert low <= retry_after_seconds(header, DEFAULT_RETRY_AFTER_SECONDS) <= high


def test_a_429_waits_for_its_retry_after() -> None:
    result = classify(httpx.Response(429, headers={"Retry-After": "12"}))
    assert result.outcome is Outcome.DEFERRED and result.retry_after == 12


@pytest.mark.parametrize(
    ("url", "outcome", "says"),
    [
        ("http://127.0.0.1:9/hook", Outcome.PERMANENT, "loopback"),
        ("https://metadata.internal.example/hook", Outcome.PERMANENT, "link-local"),
        ("https://no-such-host.example/hook", Outcome.TRANSIENT, "does not resolve"),
    ],
    ids=["loopback", "resolves inside", "does not resolve now"],
)
def test_the_guard_at_call_time_refuses_for_good_or_waits_for_dns(
    url: str, outcome: Outcome, says: str
) -> None:
    with outbound_client(OutboundPolicy(resolver=offline_resolver()), timeout=1) as client:
        result = post_json(client, url, b"{}")
    assert result.outcome is outcome and result.detail and says in result.detail
