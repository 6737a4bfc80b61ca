"""Web Push end to end: VAPID keys, encryption a browser can read, gone subscriptions, the guard.

The push service is `tests.webpush_receiver`: it verifies each request's VAPID JWT and decrypts
its payload with the private key of a subscription made as a browser makes one.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import jwt
import pika
import pytest
from cryptography.hazmat.primitives import serialization
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from channels.base import DeviceTarget, Outcome
from channels.push import PushChannel
from channels.vapid import TOKEN_SECONDS, VapidKey, origin_of
from channels.worker import channel_context
from producer_api.api_keys import NewApp
from shared.config_file import ConfigError, parse_config
from shared.models import Delivery, Device, Event, User
from shared.runtime import Runtime
from shared.settings import Settings
from tests.channel_harness import Answer, channel_settings, context_for, delivery_for
from tests.conftest import AMQP_URL, bearer, new_tenant, queue_prefix, service_env
from tests.queued import queued_delivery, running_worker
from tests.rigs.push_webpush import SUBJECT, webpush_settings
from tests.stack import run_omnipush, wait_until
from tests.webpush_receiver import AUTH, P256DH, WebPushReceiver


@pytest.fixture
def key() -> VapidKey:
    return VapidKey.generate()


@pytest.fixture
def receiver(key: VapidKey) -> Iterator[WebPushReceiver]:
    with WebPushReceiver(SUBJECT, key.public_b64()) as running:
        yield running


@contextmanager
def push_channel(key: VapidKey, allow_loopback: bool = True) -> Iterator[PushChannel]:
    with channel_settings() as settings:
        channel = PushChannel(context_for(webpush_settings(settings, key, allow_loopback), "push"))
        try:
            yield channel
        finally:
            channel.close()


def webpush_device(receiver: WebPushReceiver, device_id: int = 1) -> DeviceTarget:
    return DeviceTarget(device_id, "webpush", None, receiver.subscribe().as_json())


# The key and its Authorization.


def test_a_generated_key_loads_back_from_raw_base64url_and_from_pem(key: VapidKey) -> None:
    assert VapidKey.load(key.private_b64()).public_b64() == key.public_b64()
    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM, form, serialization.NoEncryption()
        ).decode()
        assert VapidKey.load(pem).public_b64() == key.public_b64()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not base64url at all!", id="not base64url"),
        pytest.param("c2VjcmV0LWtleS1mb3ItdmFwaWQtc2lnbmluZw", id="not 32 bytes"),
        pytest.param("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", id="bad PEM"),
        pytest.param("_" * 43, id="beyond the curve's order"),
    ],
)
def test_what_is_not_a_p256_private_key_is_refused_saying_why(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        VapidKey.load(text)


def test_the_authorization_is_a_token_for_the_endpoints_origin_signed_by_k(key: VapidKey) -> None:
    now = time.time()
    header = key.authorization("https://push.example.net:8443/send/abc?x=1", SUBJECT, now)
    token, public = header.removeprefix("vapid t=").split(", k=")
    assert public == key.public_b64()
    claims = jwt.decode(
        token,
        key.private_key.public_key(),
        algorithms=["ES256"],
        audience="https://push.example.net:8443",
    )
    assert claims["sub"] == SUBJECT
    assert now < claims["exp"] <= now + 24 * 3600
    # The same token serves the origin for hours, then a new one is made before it expires.
    assert key.authorization("https://push.example.net:8443/other", SUBJECT, now + 60) == header
    assert key.authorization("https://push.example.net:8443/x", SUBJECT, now + TOKEN_SECONDS) != (
        header
    )


@pytest.mark.parametrize(
    ("endpoint", "origin"),
    [
        ("https://Push.Example.net/send/a?b=c", "https://push.example.net"),
        ("https://push.example.net:443/send/a", "https://push.example.net"),
        ("https://push.example.net:8443/send/a", "https://push.example.net:8443"),
        ("http://[::1]:8080/p", "http://[::1]:8080"),
    ],
)
def test_the_audience_is_the_endpoints_origin_as_rfc_6454_writes_it(
    endpoint: str, origin: str
) -> None:
    assert origin_of(endpoint) == origin


def test_vapid_generate_prints_a_webpush_section_whose_key_signs_pushes(
    settings: Settings, receiver: WebPushReceiver
) -> None:
    done = run_omnipush("vapid", "generate", env=service_env(settings))
    assert done.returncode == 0, done.stderr
    config = parse_config(tomllib.loads(done.stdout), "pasted")
    assert config.webpush.vapid_subject and config.webpush.vapid_private_key
    key = VapidKey.load(config.webpush.vapid_private_key)
    assert done.stdout.rstrip().splitlines()[-1] == f"# {key.public_b64()}"
    usable = WebPushReceiver(SUBJECT, key.public_b64())
    with usable, push_channel(key) as channel:
        result = channel.send(delivery_for("push", devices=(webpush_device(usable),)))
    assert result.outcome is Outcome.SENT, result
    assert usable.problems == [] and len(usable.received) == 1


def test_the_webpush_timeout_is_a_duration_and_a_bad_one_is_named() -> None:
    assert parse_config({"webpush": {"timeout": "3s"}}).webpush.timeout == 3
    with pytest.raises(ConfigError, match=r"webpush\.timeout: "):
        parse_config({"webpush": {"timeout": "soon"}})


# Sending.


def test_the_browser_decrypts_exactly_what_was_sent_with_the_headers_asked_for(
    key: VapidKey, receiver: WebPushReceiver
) -> None:
    content = {
        "title": "Ship",
        "body": "Ça arrive ✓",
        "url": "https://shop.example/o/7",
        "data": {"order": 7},
    }
    delivery = delivery_for(
        "push", content=content, priority="high", devices=(webpush_device(receiver),)
    )
    with push_channel(key) as channel:
        result = channel.send(delivery)
    assert result.outcome is Outcome.SENT, result
    assert receiver.problems == []
    (got,) = receiver.received
    assert got.payload == content
    assert got.headers["urgency"] == "high" and int(got.headers["ttl"]) > 0
    assert got.headers["content-encoding"] == "aes128gcm"


def test_every_subscription_of_the_user_gets_its_own_encryption(
    key: VapidKey, receiver: WebPushReceiver
) -> None:
    devices = (webpush_device(receiver, 1), webpush_device(receiver, 2))
    with push_channel(key) as channel:
        result = channel.send(delivery_for("push", devices=devices))
    assert result.outcome is Outcome.SENT and result.detail == "sent to 2 of 2 devices"
    assert receiver.problems == []
    assert {r.subscription for r in receiver.received} == {
        d.subscription["endpoint"].rsplit("/", 1)[1] for d in devices if d.subscription
    }


def test_a_payload_too_large_for_a_push_service_fails_for_good_without_a_call(
    key: VapidKey, receiver: WebPushReceiver
) -> None:
    content = {"title": "Big", "body": "x" * 5000, "url": None, "data": None}
    with push_channel(key) as channel:
        result = channel.send(
            delivery_for("push", content=content, devices=(webpush_device(receiver),))
        )
    assert result.outcome is Outcome.PERMANENT and "4096" in (result.detail or "")
    assert receiver.received == [] and receiver.problems == []


@pytest.mark.parametrize(
    "subscription",
    [
        pytest.param(None, id="none"),
        pytest.param({"endpoint": "http://127.0.0.1:9/p"}, id="no keys"),
        pytest.param(
            {"endpoint": "http://127.0.0.1:9/p", "keys": {"p256dh": AUTH, "auth": AUTH}},
            id="a p256dh that is no point",
        ),
    ],
)
def test_an_unusable_stored_subscription_fails_for_good_without_a_call(
    key: VapidKey, subscription: dict[str, object] | None
) -> None:
    device = DeviceTarget(1, "webpush", None, subscription)
    with push_channel(key) as channel:
        result = channel.send(delivery_for("push", devices=(device,)))
    assert result.outcome is Outcome.PERMANENT
    assert (result.detail or "").startswith("webpush subscription unusable")


def test_a_slow_down_pauses_web_push_for_every_later_delivery(
    key: VapidKey, receiver: WebPushReceiver
) -> None:
    receiver.answer(Answer.SLOW_DOWN)
    with push_channel(key) as channel:
        first = channel.send(delivery_for("push", devices=(webpush_device(receiver),)))
        receiver.answer(Answer.OK)
        second = channel.send(delivery_for("push", devices=(webpush_device(receiver),)))
    assert first.outcome is Outcome.DEFERRED and first.retry_after == 7
    assert second.outcome is Outcome.DEFERRED and 0 < (second.retry_after or 0) <= 7
    assert len(receiver.received) == 1  # the paused account was not called again


def test_a_private_endpoint_is_refused_for_good_unless_the_allow_list_opens_it(
    key: VapidKey, receiver: WebPushReceiver
) -> None:
    delivery = delivery_for("push", devices=(webpush_device(receiver),))
    with push_channel(key, allow_loopback=False) as channel:
        result = channel.send(delivery)
    assert result.outcome is Outcome.PERMANENT, result
    assert "refused" in (result.detail or "") and "loopback" in (result.detail or "")
    assert receiver.proxy.accepted == 0
    with push_channel(key, allow_loopback=True) as channel:
        assert channel.send(delivery).outcome is Outcome.SENT


def test_an_unusable_vapid_key_leaves_web_push_unconfigured(receiver: WebPushReceiver) -> None:
    with channel_settings() as settings:
        base = webpush_settings(settings, VapidKey.generate())
        broken = replace(base.config.webpush, vapid_private_key="A" * 43 + "x")
        channel = PushChannel(
            context_for(base.with_overrides(config=replace(base.config, webpush=broken)), "push")
        )
        try:
            result = channel.send(delivery_for("push", devices=(webpush_device(receiver),)))
        finally:
            channel.close()
    assert result.outcome is Outcome.PERMANENT
    assert result.detail == "webpush push is not configured"


# The worker runtime.


def test_a_gone_subscription_is_removed_from_the_user_and_traced(
    inprocess_settings: Settings, key: VapidKey, receiver: WebPushReceiver
) -> None:
    receiver.answer(Answer.REJECT_ADDRESS)
    with queue_prefix() as prefix:
        settings = webpush_settings(inprocess_settings.with_overrides(queue_prefix=prefix), key)
        runtime = Runtime.build(settings, channels=("push",))
        try:
            message_id, delivery_id, device_id = queued_push(runtime, receiver)
            with running_push_worker(runtime):
                wait_until(lambda: events_of(runtime, message_id)[-1:] == ["failed"], 20, "failed")
            with runtime.engine.connect() as connection:
                device = connection.scalar(select(Device.id).where(Device.id == device_id))
                delivery = connection.execute(
                    select(Delivery.status, Delivery.last_error).where(Delivery.id == delivery_id)
                ).one()
                removed = connection.scalar(
                    select(Event.detail).where(
                        Event.message_id == message_id, Event.stage == "device_removed"
                    )
                )
            stages = events_of(runtime, message_id)
        finally:
            delete_queues(runtime)
            runtime.close()
    assert device is None
    assert delivery.status == "failed" and "gone (410)" in delivery.last_error
    assert removed == {"device": device_id, "platform": "webpush"}
    assert stages == ["device_removed", "failed", "failed"]
    assert len(receiver.received) == 1


def delete_queues(runtime: Runtime) -> None:
    """The push queues of `runtime`'s prefix (`queue_prefix` deletes only the web ones)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        runtime.topology.delete_blocking(connection.channel())
    finally:
        connection.close()


def queued_push(runtime: Runtime, receiver: WebPushReceiver) -> tuple[str, str, int]:
    """A dispatched push message to a user with one Web Push subscription, published."""
    tenant = new_tenant(runtime)
    with runtime.engine.begin() as connection:
        connection.execute(insert(User), {"app_id": tenant.app_id, "user_id": "wendy"})
        device_id = connection.scalar(
            insert(Device)
            .values(
                app_id=tenant.app_id,
                user_id="wendy",
                platform="webpush",
                subscription=receiver.subscribe().as_json(),
            )
            .returning(Device.id)
        )
    message_id, delivery_id = queued_delivery(
        runtime, "push", app_id=tenant.app_id, user_id="wendy", content={"title": "t", "body": "b"}
    )
    assert device_id is not None
    return message_id, delivery_id, device_id


@contextmanager
def running_push_worker(runtime: Runtime) -> Iterator[None]:
    channel = PushChannel(channel_context(runtime, "push"))
    try:
        with running_worker(runtime, channel):
            yield
    finally:
        channel.close()


def events_of(runtime: Runtime, message_id: str) -> list[str]:
    with runtime.engine.connect() as connection:
        return list(
            connection.scalars(
                select(Event.stage).where(Event.message_id == message_id).order_by(Event.id)
            )
        )


# Registering a subscription.


def test_a_browser_subscription_is_registered_as_a_webpush_device(
    client: FlaskClient, tenant: NewApp
) -> None:
    subscription = {
        "endpoint": "https://push.example.net/send/abc",
        "keys": {"p256dh": P256DH, "auth": AUTH},
        "expirationTime": None,
    }
    body = {"devices": [{"platform": "webpush", "subscription": subscription}]}
    response = client.put("/v1/users/walt", json=body, headers=bearer(tenant))
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["devices"] == body["devices"]


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        pytest.param({"p256dh": "BNc...", "auth": AUTH}, "p256dh", id="p256dh not base64url"),
        pytest.param({"p256dh": AUTH, "auth": AUTH}, "p256dh", id="p256dh not a point"),
        pytest.param(
            {"p256dh": P256DH[:40] + "A" + P256DH[41:], "auth": AUTH}, "p256dh", id="off curve"
        ),
        pytest.param({"p256dh": P256DH, "auth": "tBH..."}, "auth", id="auth not base64url"),
        pytest.param({"p256dh": P256DH, "auth": P256DH}, "auth", id="auth not 16 bytes"),
        pytest.param({"p256dh": P256DH}, "auth", id="auth missing"),
    ],
)
def test_a_subscription_with_unusable_keys_is_a_422_naming_the_key(
    client: FlaskClient, tenant: NewApp, keys: dict[str, str], field: str
) -> None:
    subscription = {"endpoint": "https://push.example.net/send/abc", "keys": keys}
    body = {"devices": [{"platform": "webpush", "subscription": subscription}]}
    response = client.put("/v1/users/walt", json=body, headers=bearer(tenant))
    assert response.status_code == 422, response.get_data(as_text=True)
    assert f"devices.0.subscription.keys.{field}" in response.get_json()["errors"]
