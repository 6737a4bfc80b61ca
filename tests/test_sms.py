"""The SMS channel across accounts: weights, failover, slow-downs, breakers, masking, config.

Every provider here is a local server checking requests as the provider would
(`tests.sms_providers`); the accounts' shared state is the real AccountGate on Redis. The last
test drives deliveries through the real worker runtime, broker and store.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from sqlalchemy import insert, select
from structlog.testing import capture_logs

from channels.base import Outcome
from channels.sms import SmsChannel
from channels.sms_providers import aliyun as aliyun_provider
from channels.worker import channel_context
from shared.config_file import ConfigError, parse_config
from shared.masking import mask_address
from shared.models import Delivery, Event, Message, User
from shared.runtime import Runtime
from shared.settings import Settings
from tests.channel_harness import Answer, channel_settings, context_for
from tests.conftest import AMQP_URL, new_tenant, queue_prefix
from tests.queued import queued_delivery, running_worker
from tests.sms_providers import (
    AliyunServer,
    GatewayServer,
    ProviderServer,
    Received,
    TwilioServer,
    alibaba_encode,
    sms_delivery,
    sms_settings,
)
from tests.stack import ROOT, wait_until

PHONE = "+8613800138000"


class Heaviest(random.Random):
    """Puts the heaviest account first, always: the weights' order without the chance."""

    def choices(self, population: Any, weights: Any = None, **_: Any) -> list[Any]:
        return [max(zip(population, weights, strict=True), key=lambda pair: pair[1])[0]]


@pytest.fixture
def settings() -> Iterator[Settings]:
    with channel_settings() as built:
        yield built


@contextmanager
def sms_channel(
    settings: Settings,
    *accounts: dict[str, Any],
    chooser: random.Random | None = None,
    **sections: Any,
) -> Iterator[SmsChannel]:
    context = context_for(sms_settings(settings, *accounts, **sections), "sms")
    channel = SmsChannel(context, chooser=chooser or Heaviest())
    try:
        yield channel
    finally:
        channel.close()


@pytest.mark.parametrize(
    "trouble", [Answer.SERVER_ERROR, Answer.DOWN, Answer.TIMEOUT], ids=lambda a: a.value
)
def test_a_failing_account_fails_over_to_the_next(settings: Settings, trouble: Answer) -> None:
    with TwilioServer() as primary, GatewayServer() as backup:
        accounts = (
            primary.account("primary", weight=3, timeout="300ms"),
            backup.account("backup", weight=1),
        )
        with sms_channel(settings, *accounts) as channel:
            primary.answer(trouble)
            delivery = sms_delivery()
            result = channel.send(delivery)
        assert result.outcome is Outcome.SENT and result.account == "backup", result
        assert backup.received == [Received(PHONE, delivery.part()["body"], delivery.delivery_id)]
        assert primary.received == []
        assert primary.requests == (0 if trouble is Answer.DOWN else 1)


def test_accounts_are_chosen_in_proportion_to_their_weights(settings: Settings) -> None:
    with TwilioServer() as primary, AliyunServer() as backup:
        accounts = (primary.account("primary", weight=3), backup.account("backup", weight=1))
        with sms_channel(settings, *accounts, chooser=random.Random(8)) as channel:
            results = channel.send_many([sms_delivery() for _ in range(200)])
    assert {r.outcome for r in results} == {Outcome.SENT}
    used = Counter(r.account for r in results)
    assert used["primary"] + used["backup"] == 200
    assert 120 <= used["primary"] <= 180, used  # 150 expected; five deviations either side
    assert len(primary.received) == used["primary"] and len(backup.received) == used["backup"]
    assert primary.problems == backup.problems == []


def test_a_429_pauses_that_account_and_the_other_is_used_meanwhile(settings: Settings) -> None:
    with TwilioServer() as primary, GatewayServer() as backup:
        accounts = (primary.account("primary", weight=3), backup.account("backup", weight=1))
        with sms_channel(settings, *accounts) as channel:
            primary.answer(Answer.SLOW_DOWN)
            results = [channel.send(sms_delivery()) for _ in range(4)]
            paused_for = channel.context.accounts.admit(channel.accounts[0])
    assert [(r.outcome, r.account) for r in results] == [(Outcome.SENT, "backup")] * 4
    # Asked once: its Retry-After of 7 s keeps every worker off it since.
    assert primary.requests == 1
    assert 5 < paused_for <= 7
    assert len(backup.received) == 4


def test_when_every_account_is_slowed_down_the_delivery_is_deferred(settings: Settings) -> None:
    with TwilioServer() as primary, AliyunServer() as backup:
        accounts = (primary.account("primary", weight=3), backup.account("backup", weight=1))
        with sms_channel(settings, *accounts) as channel:
            primary.answer(Answer.SLOW_DOWN)
            backup.answer(Answer.SLOW_DOWN)
            first = channel.send(sms_delivery())
            second = channel.send(sms_delivery())
    # Twilio asked for 7 s, Alibaba's flow control a minute: back when the first one allows.
    assert first.outcome is Outcome.DEFERRED and first.retry_after == 7
    assert second.outcome is Outcome.DEFERRED and second.retry_after is not None
    assert 5 < second.retry_after <= 7
    assert (primary.requests, backup.requests) == (1, 1)


def test_an_account_that_keeps_failing_is_skipped_behind_its_breaker(settings: Settings) -> None:
    breaker = {"failures": 2, "open_for": "30s"}
    with TwilioServer() as primary, GatewayServer() as backup:
        accounts = (primary.account("primary", weight=3), backup.account("backup", weight=1))
        with sms_channel(settings, *accounts, breaker=breaker) as channel:
            primary.answer(Answer.SERVER_ERROR)
            results = [channel.send(sms_delivery()) for _ in range(5)]
    assert [r.account for r in results] == ["backup"] * 5
    assert primary.requests == 2


def test_a_permanent_refusal_does_not_fail_over(settings: Settings) -> None:
    with AliyunServer() as primary, GatewayServer() as backup:
        accounts = (primary.account("primary", weight=3), backup.account("backup", weight=1))
        with sms_channel(settings, *accounts) as channel:
            primary.answer(Answer.REJECT_ADDRESS)
            result = channel.send(sms_delivery())
    assert result.outcome is Outcome.PERMANENT
    assert result.detail == "primary: aliyun answered 200, isv.MOBILE_NUMBER_ILLEGAL"
    assert backup.requests == 0


@pytest.mark.parametrize(
    ("server_class", "wrong", "detail"),
    [
        (TwilioServer, {"auth_token": "not-the-token"}, "twilio answered 401, error 20003"),
        (AliyunServer, {"access_key_secret": "not-the-secret"}, "SignatureDoesNotMatch"),
        (GatewayServer, {"token": "not-the-token"}, "http answered 401"),
    ],
    ids=["twilio", "aliyun", "http"],
)
def test_the_providers_refuse_wrong_credentials_for_good(
    settings: Settings, server_class: type[ProviderServer], wrong: dict[str, str], detail: str
) -> None:
    with server_class() as server, sms_channel(settings, server.account("only", **wrong)) as sms:
        result = sms.send(sms_delivery())
    assert result.outcome is Outcome.PERMANENT and detail in (result.detail or "")
    assert server.received == [] and len(server.problems) == 1


def test_the_text_is_the_rendered_sms_part_before_the_content_body(settings: Settings) -> None:
    content = {"body": "the body", "parts": {"sms": {"text": "Order 42 shipped"}}}
    with GatewayServer() as server, sms_channel(settings, server.account("only")) as channel:
        rendered = sms_delivery(content=content)
        plain = sms_delivery(content={"title": "t", "body": "the body"})
        results = [channel.send(rendered), channel.send(plain)]
        nothing = channel.send(sms_delivery(content={"title": "only a title"}))
        no_number = channel.send(sms_delivery(address=None))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert [m.text for m in server.received] == ["Order 42 shipped", "the body"]
    assert nothing.outcome is Outcome.PERMANENT and no_number.outcome is Outcome.PERMANENT
    assert server.requests == 2


def test_logs_and_details_mask_the_number_and_never_hold_a_credential(settings: Settings) -> None:
    with TwilioServer() as twilio, AliyunServer() as aliyun, GatewayServer() as gateway:
        accounts = (
            twilio.account("t", weight=3),
            aliyun.account("a", weight=2),
            gateway.account("g", weight=1),
        )
        secrets = [twilio.token, aliyun.secret, gateway.token]
        with sms_channel(settings, *accounts) as channel, capture_logs() as logs:
            twilio.answer(Answer.REJECT_ADDRESS)
            rejected = channel.send(sms_delivery())
            twilio.answer(Answer.SERVER_ERROR)
            aliyun.answer(Answer.SLOW_DOWN)
            sent = channel.send(sms_delivery())
    assert rejected.outcome is Outcome.PERMANENT and sent.account == "g"
    attempts = [entry for entry in logs if entry["event"] == "sms.attempt"]
    assert [(e["account"], e["status"]) for e in attempts] == [
        ("t", "permanent"),
        ("t", "transient"),
        ("a", "deferred"),
        ("g", "sent"),
    ]
    assert {e["to"] for e in attempts} == {mask_address(PHONE)} == {"+86*********00"}
    # Twilio's refusal quotes the number; neither the logs nor the details repeat it.
    everything = repr(logs) + repr([rejected, sent])
    assert PHONE not in everything and PHONE[1:] not in everything
    assert not [secret for secret in secrets if secret in everything]


#: The worked example of Alibaba's SMS signature documentation, and its signature.
ALIBABA_EXAMPLE = {
    "AccessKeyId": "testId",
    "Action": "SendSms",
    "Format": "XML",
    "OutId": "123",
    "PhoneNumbers": "15300000001",
    "RegionId": "cn-hangzhou",
    "SignName": "阿里云短信测试专用",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
    "SignatureVersion": "1.0",
    "TemplateCode": "SMS_71390007",
    "TemplateParam": '{"customer":"test"}',
    "Timestamp": "2017-07-12T02:42:19Z",
    "Version": "2017-05-25",
}


def test_the_aliyun_signature_is_that_of_alibabas_worked_example() -> None:
    signed = aliyun_provider.signature(ALIBABA_EXAMPLE, "testSecret")
    assert signed == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    awkward = "a b*~/+"
    assert aliyun_provider.percent_encode(awkward) == "a%20b%2A~%2F%2B" == alibaba_encode(awkward)


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("twilio", "account_sid"),
        ("twilio", "auth_token"),
        ("twilio", "from"),
        ("aliyun", "access_key_id"),
        ("aliyun", "access_key_secret"),
        ("aliyun", "sign_name"),
        ("aliyun", "template_code"),
        ("http", "url"),
        ("http", "token"),
    ],
)
def test_an_account_without_a_key_its_provider_needs_is_refused(provider: str, key: str) -> None:
    servers: dict[str, type[ProviderServer]] = {
        "twilio": TwilioServer,
        "aliyun": AliyunServer,
        "http": GatewayServer,
    }
    account = servers[provider]().account("primary")
    del account[key]
    with pytest.raises(ConfigError) as refused:
        parse_config({"sms": {"accounts": [account]}}, "omnipush.toml")
    assert str(refused.value) == (
        f"omnipush.toml: sms.accounts.0.{key}: required by provider {provider!r}"
    )


def test_an_account_timeout_is_a_duration_and_sms_is_configured_by_its_accounts(
    settings: Settings,
) -> None:
    account = GatewayServer().account("primary", timeout="soon")
    with pytest.raises(ConfigError, match=r"^omnipush.toml: sms.accounts.0.timeout: 'soon' is"):
        parse_config({"sms": {"accounts": [account]}}, "omnipush.toml")
    assert not SmsChannel.configured(settings)
    assert SmsChannel.configured(sms_settings(settings, GatewayServer().account("primary")))


@contextmanager
def sms_runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime on `settings` whose topology has the sms queue, deleted afterwards."""
    runtime = Runtime.build(settings, channels=("sms",))
    try:
        yield runtime
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        runtime.topology.delete_blocking(connection.channel())
        connection.close()
        runtime.close()


def queue_sms(runtime: Runtime, user_id: str, count: int) -> dict[str, str]:
    """`count` dispatched messages to a user with a phone, one sms delivery each, published
    to the sms queue: delivery id -> message id."""
    tenant = new_tenant(runtime)
    with runtime.engine.begin() as connection:
        connection.execute(
            insert(User), {"app_id": tenant.app_id, "user_id": user_id, "phone": PHONE}
        )
    made: dict[str, str] = {}
    for _ in range(count):
        message_id, delivery_id = queued_delivery(
            runtime,
            "sms",
            app_id=tenant.app_id,
            user_id=user_id,
            content={"title": "Code", "body": f"Your code is {len(made):04d}"},
            category="verification",
            priority="high",
        )
        made[delivery_id] = message_id
    return made


def test_the_worker_fails_over_between_two_sms_accounts_end_to_end(
    inprocess_settings: Settings,
) -> None:
    with (
        TwilioServer() as primary,
        GatewayServer() as backup,
        queue_prefix() as prefix,
    ):
        primary.answer(Answer.SERVER_ERROR)
        settings = sms_settings(
            inprocess_settings.with_overrides(queue_prefix=prefix),
            primary.account("primary", weight=3),
            backup.account("backup", weight=1),
        )
        with sms_runtime(settings) as runtime:
            channel = SmsChannel(channel_context(runtime, "sms"), chooser=Heaviest())
            try:
                with running_worker(runtime, channel):
                    made = queue_sms(runtime, "gina", 3)
                    wait_until(lambda: len(backup.received) == 3, 20, "three texts at the backup")
                    wait_until(lambda: all_completed(runtime, list(made.values())), 20, "completed")
            finally:
                channel.close()
            with runtime.engine.connect() as connection:
                rows = connection.execute(
                    select(Delivery.id, Delivery.status, Delivery.attempts).where(
                        Delivery.id.in_(list(made))
                    )
                ).all()
                events = connection.execute(
                    select(Event.delivery_id, Event.stage, Event.detail).where(
                        Event.delivery_id.in_(list(made))
                    )
                ).all()
    # The primary was asked first each time (it weighs more) and failed; the backup sent each
    # text at once, within the same attempt: nothing waited in a retry tier.
    assert primary.requests == 3 and primary.received == []
    assert sorted(m.id or "" for m in backup.received) == sorted(made)
    assert {m.to for m in backup.received} == {PHONE}
    assert sorted((status, attempts) for _id, status, attempts in rows) == [("sent", 1)] * 3
    assert (
        sorted((stage, detail["note"]) for _id, stage, detail in events) == [("sent", "backup")] * 3
    )


def test_a_gateway_down_for_30_s_loses_no_text_and_sends_none_twice(
    inprocess_settings: Settings,
) -> None:
    with GatewayServer() as gateway, queue_prefix() as prefix:
        settings = sms_settings(
            inprocess_settings.with_overrides(queue_prefix=prefix),
            gateway.account("only", timeout="1s"),
            retry={"delays": ["1s", "2s", "4s", "8s", "15s", "30s"]},
            breaker={"failures": 3, "open_for": "5s"},
        )
        with sms_runtime(settings) as runtime:
            channel = SmsChannel(channel_context(runtime, "sms"))
            try:
                with running_worker(runtime, channel):
                    # Nothing listens for the first half of the outage, then the gateway
                    # answers 502 to everything: 30 s in all, by the clock, which is what
                    # the retries and the breaker must outlast.
                    gateway.answer(Answer.DOWN)
                    back_at = time.monotonic() + 30
                    made = queue_sms(runtime, "hana", 20)
                    wait_until(lambda: retried(runtime, list(made)), 20, "every text retried")
                    time.sleep(max(0.0, back_at - 15 - time.monotonic()))
                    gateway.answer(Answer.SERVER_ERROR)
                    time.sleep(max(0.0, back_at - time.monotonic()))
                    failed_requests = gateway.requests
                    gateway.answer(Answer.OK)
                    wait_until(lambda: len(gateway.received) >= 20, 60, "twenty texts sent")
                    wait_until(lambda: all_completed(runtime, list(made.values())), 20, "done")
            finally:
                channel.close()
            with runtime.engine.connect() as connection:
                rows = connection.execute(
                    select(Delivery.status).where(Delivery.id.in_(list(made)))
                ).all()
    assert Counter(m.id for m in gateway.received) == Counter(list(made))
    assert [status for (status,) in rows] == ["sent"] * 20
    # The 502s were answered, and the breaker kept most retries from asking at all.
    assert failed_requests > 0


def retried(runtime: Runtime, delivery_ids: list[str]) -> bool:
    with runtime.engine.connect() as connection:
        statuses = connection.scalars(select(Delivery.status).where(Delivery.id.in_(delivery_ids)))
        return set(statuses) == {"retrying"}


def all_completed(runtime: Runtime, message_ids: list[str]) -> bool:
    with runtime.engine.connect() as connection:
        statuses = connection.scalars(select(Message.status).where(Message.id.in_(message_ids)))
        return list(statuses) == ["completed"] * len(message_ids)


#: A worker process's logging, sending through the accounts in argv[1] (JSON).
SEND_IN_A_PROCESS = """
import json, sys
from channels.sms import SmsChannel
from shared.logging import configure_logging
from shared.settings import Settings
from tests.channel_harness import context_for
from tests.sms_providers import sms_delivery, sms_settings
configure_logging("worker-sms", "json")
settings = sms_settings(Settings(queue_prefix=sys.argv[2]), *json.loads(sys.argv[1]))
channel = SmsChannel(context_for(settings, "sms"))
print(channel.send(sms_delivery()).outcome.value)
channel.close()
"""


def test_a_worker_process_logs_neither_the_number_nor_a_credential(settings: Settings) -> None:
    with TwilioServer() as twilio, AliyunServer() as aliyun:
        twilio.answer(Answer.SERVER_ERROR)
        accounts = [twilio.account("t", weight=1000), aliyun.account("a")]
        done = subprocess.run(
            [sys.executable, "-c", SEND_IN_A_PROCESS, json.dumps(accounts), settings.queue_prefix],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert done.stdout.strip() == "sent", done.stderr
    assert len(aliyun.received) == 1 and twilio.requests == 1
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert {line["to"] for line in lines if line["event"] == "sms.attempt"} == {"+86*********00"}
    for secret in (PHONE, PHONE[1:], twilio.token, aliyun.secret, aliyun.key_id):
        assert secret not in done.stderr
