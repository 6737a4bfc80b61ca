"""The push channel on FCM and APNs: tokens, gone devices, and devices of several platforms.

The provider answers are the contract table's (`tests/rigs/push_fcm.py`); these tests hold
what the table does not: the access token is fetched once and again only when FCM refuses
it, a token FCM reports unregistered is removed from its user by the real worker runtime,
and a user's FCM and Web Push devices are each sent to, one result for the delivery.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import insert, select

from channels.base import DeviceTarget, Outcome
from channels.push import PushChannel
from channels.vapid import VapidKey
from channels.worker import channel_context
from shared.config_file import ConfigError, FcmConfig, FileConfig, WebPushConfig, parse_config
from shared.models import Delivery, Device, Event, User
from shared.runtime import Runtime
from shared.settings import Settings
from tests.apns_server import running_apns
from tests.channel_harness import Answer, channel_settings, context_for, delivery_for
from tests.conftest import AMQP_URL, new_tenant, queue_prefix
from tests.push_providers import FcmServer
from tests.queued import queued_delivery, running_worker
from tests.rigs.push_apns import apns_device, apns_settings
from tests.rigs.push_fcm import fcm_settings
from tests.rigs.push_webpush import LOOPBACK, SUBJECT
from tests.stack import wait_until
from tests.webpush_receiver import WebPushReceiver


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    with FcmServer() as server:
        yield server


def fcm_device(token: str = "fcm-token-1", device_id: int = 1) -> DeviceTarget:
    return DeviceTarget(device_id, "fcm", token, None)


def test_one_access_token_serves_every_send_until_fcm_refuses_it(fcm: FcmServer) -> None:
    with channel_settings() as settings:
        channel = PushChannel(context_for(fcm_settings(settings, fcm), "push"))
        try:
            sent = [channel.send(delivery_for("push", devices=(fcm_device(),))) for _ in range(3)]
            assert fcm.token_requests == 1
            fcm.revoke_tokens()
            again = channel.send(delivery_for("push", devices=(fcm_device(),)))
        finally:
            channel.close()
    assert [r.outcome for r in sent] == [Outcome.SENT] * 3
    # FCM answered 401 once; the sender fetched a new token and sent with it.
    assert again.outcome is Outcome.SENT
    assert fcm.token_requests == 2 and len(fcm.received) == 4


def test_a_token_endpoint_that_refuses_is_a_transient_failure(fcm: FcmServer) -> None:
    with channel_settings() as settings:
        channel = PushChannel(context_for(fcm_settings(settings, fcm), "push"))
        # Google no longer knows the key of the file (deleted in the console, say).
        fcm.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        try:
            result = channel.send(delivery_for("push", devices=(fcm_device(),)))
        finally:
            channel.close()
    assert result.outcome is Outcome.TRANSIENT
    assert fcm.received == []


def test_an_unreadable_service_account_leaves_fcm_unconfigured(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = tmp_path_factory.mktemp("fcm") / "sa.json"
    path.write_text('{"project_id": "p"}')
    with channel_settings() as settings:
        config = FileConfig(fcm=FcmConfig(service_account_file=str(path)))
        channel = PushChannel(context_for(settings.with_overrides(config=config), "push"))
        try:
            result = channel.send(delivery_for("push", devices=(fcm_device(),)))
        finally:
            channel.close()
    assert result.outcome is Outcome.PERMANENT
    assert result.detail == "fcm push is not configured"


def test_fcm_timeout_is_a_duration() -> None:
    assert parse_config({"fcm": {"timeout": "2s"}}).fcm.timeout == 2.0
    with pytest.raises(ConfigError, match=r"^omnipush.toml: fcm.timeout: 'soon' is"):
        parse_config({"fcm": {"timeout": "soon"}}, "omnipush.toml")


def test_a_user_with_an_fcm_and_a_web_push_device_gets_both_and_a_gone_one_is_reported(
    fcm: FcmServer,
) -> None:
    key = VapidKey.generate()
    with WebPushReceiver(SUBJECT, key.public_b64()) as browser, channel_settings() as settings:
        config = FileConfig(
            fcm=fcm_settings(settings, fcm).config.fcm,
            webpush=WebPushConfig(vapid_private_key=key.private_b64(), vapid_subject=SUBJECT),
        )
        both = settings.with_overrides(config=config, outbound_allow=LOOPBACK)
        channel = PushChannel(context_for(both, "push"))
        web = DeviceTarget(2, "webpush", None, browser.subscribe().as_json())
        try:
            first = channel.send(delivery_for("push", devices=(fcm_device(), web)))
            browser.answer(Answer.REJECT_ADDRESS)
            second = channel.send(delivery_for("push", devices=(fcm_device(), web)))
        finally:
            channel.close()
    assert first.outcome is Outcome.SENT and first.gone_devices == ()
    assert len(fcm.received) == 2 and len(browser.received) == 2
    # One device had it: the delivery is sent, and the gone one is passed on for removal.
    assert second.outcome is Outcome.SENT and second.gone_devices == (2,)


def test_a_token_fcm_reports_unregistered_is_removed_from_its_user(
    inprocess_settings: Settings, fcm: FcmServer
) -> None:
    fcm.answer(Answer.REJECT_ADDRESS)
    with queue_prefix() as prefix:
        settings = fcm_settings(inprocess_settings.with_overrides(queue_prefix=prefix), fcm)
        runtime = Runtime.build(settings, channels=("push",))
        channel = PushChannel(channel_context(runtime, "push"))
        try:
            tenant = new_tenant(runtime)
            with runtime.engine.begin() as connection:
                connection.execute(insert(User), {"app_id": tenant.app_id, "user_id": "fiona"})
                device_id = connection.scalar(
                    insert(Device)
                    .values(app_id=tenant.app_id, user_id="fiona", platform="fcm", token="tok")
                    .returning(Device.id)
                )
            message_id, delivery_id = queued_delivery(
                runtime, "push", app_id=tenant.app_id, user_id="fiona", content={"title": "t"}
            )
            with running_worker(runtime, channel):
                wait_until(lambda: status_of(runtime, delivery_id) == "failed", 20, "failed")
            with runtime.engine.connect() as connection:
                left = connection.scalar(select(Device.id).where(Device.id == device_id))
                removed = connection.scalar(
                    select(Event.detail).where(
                        Event.message_id == message_id, Event.stage == "device_removed"
                    )
                )
        finally:
            channel.close()
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            runtime.topology.delete_blocking(connection.channel())
            connection.close()
            runtime.close()
    assert left is None
    assert removed == {"device": device_id, "platform": "fcm"}
    assert [m["token"] for m in fcm.received] == ["tok"]


def status_of(runtime: Runtime, delivery_id: str) -> str | None:
    with runtime.engine.connect() as connection:
        return connection.scalar(select(Delivery.status).where(Delivery.id == delivery_id))


def test_a_user_with_an_fcm_and_an_apns_device_gets_it_on_both(fcm: FcmServer) -> None:
    with (
        running_apns() as apns,
        tempfile.TemporaryDirectory() as directory,
        channel_settings() as settings,
    ):
        base = f"https://127.0.0.1:{apns.server.port}"
        both = apns_settings(fcm_settings(settings, fcm), apns, base, Path(directory))
        channel = PushChannel(context_for(both, "push"))
        iphone = apns_device()
        try:
            results = [
                channel.send(delivery_for("push", priority="high", devices=(fcm_device(), iphone)))
                for _ in range(2)
            ]
        finally:
            channel.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 2
    assert len(fcm.received) == 2
    assert [(token, headers["apns-priority"]) for token, headers, _ in apns.sent] == [
        (iphone.token, "10")
    ] * 2
    # One provider token for both pushes: APNs refuses one renewed too often.
    assert len(apns.provider_tokens) == 1


def test_apns_timeout_and_ca_file_are_read_from_the_file() -> None:
    apns = parse_config({"apns": {"timeout": "3s", "ca_file": "ca.pem"}}).apns
    assert (apns.timeout, apns.ca_file) == (3.0, "ca.pem")
