"""The email channel against a real SMTP server: what a mailbox receives, over which
protection, on how many connections, and what the logs may say about it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from channels.base import Channel, Outcome
from channels.email import EmailChannel
from shared.config_file import ConfigError, parse_config
from shared.settings import Settings
from tests.channel_harness import Answer, channel_settings, context_for
from tests.rigs.email import ADDRESS, email_delivery, email_settings
from tests.smtp_server import Security, SmtpServer
from tests.stack import run_omnipush

USER, PASSWORD = "mailer", "s3cret-Pass/word"
UNSUBSCRIBE = "https://shop.example/unsubscribe?app={app_id}&to={address}"


@pytest.fixture
def settings() -> Iterator[Settings]:
    with channel_settings() as built:
        yield built


@contextmanager
def email_channel(settings: Settings, server: SmtpServer, **email: Any) -> Iterator[Channel]:
    channel = EmailChannel(context_for(email_settings(settings, server, **email), "email"))
    try:
        yield channel
    finally:
        channel.close()


def test_a_templated_mail_is_multipart_text_and_html_from_the_email_part(
    settings: Settings,
) -> None:
    parts = {"email": {"subject": "Your order\nshipped", "text": "It left.", "html": "<b>Gone</b>"}}
    delivery = email_delivery(content={"title": "t", "body": "b", "parts": parts})
    with SmtpServer() as server, email_channel(settings, server) as channel:
        assert channel.send(delivery).outcome is Outcome.SENT
    (mail,) = server.received
    assert mail.message.get_content_type() == "multipart/alternative"
    assert mail.message["Subject"] == "Your order shipped"
    assert mail.part("text/plain").strip() == "It left."
    assert mail.part("text/html").strip() == "<b>Gone</b>"
    assert mail.message["Message-ID"] == f"<{delivery.delivery_id}@shop.example>"
    assert mail.message["Date"].datetime.tzinfo is not None


def test_a_mail_without_a_template_shows_the_content_with_its_link_in_both_parts(
    settings: Settings,
) -> None:
    content = {"title": "Grüße", "body": "Tom & <Jerry>", "url": "https://shop.example/o/1"}
    with SmtpServer() as server, email_channel(settings, server) as channel:
        assert channel.send(email_delivery(content=content)).outcome is Outcome.SENT
    (mail,) = server.received
    assert mail.message["Subject"] == "Grüße"
    assert mail.part("text/plain").split() == ["Tom", "&", "<Jerry>", "https://shop.example/o/1"]
    html = mail.part("text/html")
    assert "Tom &amp; &lt;Jerry&gt;" in html and "https://shop.example/o/1" in html


@pytest.mark.parametrize(
    ("category", "template", "unsubscribe", "one_click"),
    [
        (
            "marketing",
            UNSUBSCRIBE,
            "<https://shop.example/unsubscribe?app=app_contract&to=alice%40example.com>",
            "List-Unsubscribe=One-Click",
        ),
        (
            "marketing",
            "mailto:leave@shop.example?subject={user_id}",
            "<mailto:leave@shop.example?subject=alice>",
            None,
        ),
        ("notification", UNSUBSCRIBE, None, None),
        ("verification", UNSUBSCRIBE, None, None),
        ("marketing", None, None, None),
    ],
    ids=["marketing https", "marketing mailto", "notification", "verification", "unset"],
)
def test_list_unsubscribe_is_on_marketing_mail_only(
    settings: Settings,
    category: str,
    template: str | None,
    unsubscribe: str | None,
    one_click: str | None,
) -> None:
    with (
        SmtpServer() as server,
        email_channel(settings, server, list_unsubscribe=template) as channel,
    ):
        assert channel.send(email_delivery(category=category)).outcome is Outcome.SENT
    (mail,) = server.received
    # A long header is folded after its name: the value is what follows the whitespace.
    header = mail.message["List-Unsubscribe"]
    assert (header.strip() if header else None) == unsubscribe
    assert mail.message["List-Unsubscribe-Post"] == one_click


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.IMPLICIT_TLS], ids=str)
def test_mail_goes_over_tls_with_auth(settings: Settings, security: Security) -> None:
    with SmtpServer(security, credentials=(USER, PASSWORD)) as server:
        assert server.url().startswith(
            "smtps://" if security is Security.IMPLICIT_TLS else "smtp://"
        )
        with email_channel(settings, server) as channel:
            assert channel.send(email_delivery()).outcome is Outcome.SENT
    (mail,) = server.received
    assert (mail.tls, mail.login, mail.recipients) == (True, USER, (ADDRESS,))


@pytest.mark.parametrize(
    ("security", "url_of", "ca"),
    [
        (Security.STARTTLS, lambda s: s.url((USER, "wrong")), True),
        (Security.PLAIN, lambda s: s.url((USER, PASSWORD)) + "?starttls=true", True),
        (Security.IMPLICIT_TLS, lambda s: s.url(), False),
    ],
    ids=["wrong password", "no STARTTLS offered", "untrusted certificate"],
)
def test_a_server_that_cannot_be_used_safely_is_a_transient_failure_and_nothing_is_sent(
    settings: Settings, security: Security, url_of: Any, ca: bool
) -> None:
    credentials = (USER, PASSWORD) if security is not Security.PLAIN else None
    with SmtpServer(security, credentials=credentials) as server:
        email: dict[str, Any] = {"smtp_url": url_of(server)}
        if not ca:
            email["ca_file"] = None
        with capture_logs() as logs, email_channel(settings, server, **email) as channel:
            result = channel.send(email_delivery())
    assert result.outcome is Outcome.TRANSIENT and result.detail
    assert server.received == []
    assert PASSWORD not in str(logs) + result.detail and "wrong" not in result.detail


@pytest.mark.parametrize("security", list(Security), ids=str)
def test_one_connection_carries_a_batch_and_the_next_and_a_dropped_one_is_reopened(
    settings: Settings, security: Security
) -> None:
    credentials = None if security is Security.PLAIN else (USER, PASSWORD)
    with (
        SmtpServer(security, credentials=credentials) as server,
        email_channel(settings, server) as channel,
    ):
        first = [email_delivery() for _ in range(5)]
        assert [r.outcome for r in channel.send_many(first)] == [Outcome.SENT] * 5
        assert [r.outcome for r in channel.send_many([email_delivery()])] == [Outcome.SENT]
        assert server.connections == 1
        server.drop_connections()
        assert [r.outcome for r in channel.send_many([email_delivery()])] == [Outcome.SENT]
    assert [mail.connection for mail in server.received] == [1] * 6 + [2]
    assert server.connections == 2


def test_a_mail_the_server_accepted_is_not_sent_again_when_redelivered(
    settings: Settings,
) -> None:
    delivery = email_delivery()
    with SmtpServer() as server, email_channel(settings, server) as channel:
        assert channel.send(delivery).outcome is Outcome.SENT
        # A new worker after a crash, with the same delivery redelivered.
        with email_channel(settings, server) as successor:
            again = successor.send(delivery)
    assert again.outcome is Outcome.SENT and again.detail == "already accepted by the SMTP server"
    assert len(server.received) == 1


def test_try_later_pauses_the_server_for_the_rest_of_the_batch_and_for_other_workers(
    settings: Settings,
) -> None:
    with SmtpServer() as server, email_channel(settings, server) as channel:
        server.answer(Answer.SLOW_DOWN)
        results = channel.send_many([email_delivery() for _ in range(3)])
        server.answer(Answer.OK)
        with email_channel(settings, server) as other:
            later = other.send(email_delivery())
    assert [r.outcome for r in results] == [Outcome.DEFERRED] * 3
    assert all(r.retry_after for r in results)
    assert later.outcome is Outcome.DEFERRED
    assert server.received == [] and server.connections == 1


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("451 4.3.0 Local error, try later", Outcome.DEFERRED),
        ("452 4.3.1 Insufficient system storage", Outcome.DEFERRED),
        ("454 4.7.0 Temporary authentication failure", Outcome.TRANSIENT),
        ("550 5.7.1 <alice@example.com> refused", Outcome.PERMANENT),
        ("553 5.1.3 Bad recipient address syntax", Outcome.PERMANENT),
        ("554 5.6.0 Message content rejected", Outcome.PERMANENT),
    ],
    ids=lambda value: value.split()[0] if isinstance(value, str) else None,
)
def test_each_reply_to_data_is_classified_and_the_connection_serves_the_next_mail(
    settings: Settings, reply: str, outcome: Outcome
) -> None:
    with SmtpServer() as server, email_channel(settings, server) as channel:
        server.data_reply = reply
        result = channel.send(email_delivery())
        server.data_reply = None
        follow_up = channel.send(email_delivery())
    assert result.outcome is outcome and result.detail
    assert (
        result.detail.startswith(("SMTP ", "recipient refused: SMTP "))
        and reply[:3] in result.detail
    )
    assert "alice@example.com" not in result.detail
    # A "try later" pauses the server for a while; anything else leaves it to be used.
    expected = Outcome.DEFERRED if outcome is Outcome.DEFERRED else Outcome.SENT
    assert follow_up.outcome is expected and server.connections == 1


def test_a_server_gone_mid_batch_fails_one_mail_and_defers_the_rest_unattempted(
    settings: Settings,
) -> None:
    with SmtpServer() as server, email_channel(settings, server) as channel:
        assert channel.send(email_delivery()).outcome is Outcome.SENT
        server.answer(Answer.TIMEOUT)
        results = channel.send_many([email_delivery() for _ in range(3)])
        server.answer(Answer.OK)
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] + [Outcome.DEFERRED] * 2
    assert results[1].detail and results[1].detail.startswith("not attempted")


@pytest.mark.parametrize(
    "address", ["bob@example.com\r\nBcc: eve@example.com", "bøb@example.com", "Bob <b@x.y>"]
)
def test_an_address_no_mail_can_carry_fails_for_good_without_a_call(
    settings: Settings, address: str
) -> None:
    with SmtpServer() as server, email_channel(settings, server) as channel:
        result = channel.send(email_delivery(address=address))
    assert result.outcome is Outcome.PERMANENT and server.connections == 0


def test_an_international_domain_is_sent_in_idna(settings: Settings) -> None:
    with SmtpServer() as server, email_channel(settings, server) as channel:
        assert channel.send(email_delivery(address="ann@bücher.example")).outcome is Outcome.SENT
    (mail,) = server.received
    assert mail.recipients == ("ann@xn--bcher-kva.example",)


def test_logs_and_failure_details_mask_the_address_and_never_show_the_password(
    settings: Settings,
) -> None:
    with SmtpServer(Security.STARTTLS, credentials=(USER, PASSWORD)) as server:
        server.answer(Answer.REJECT_ADDRESS)
        with capture_logs() as logs, email_channel(settings, server) as channel:
            result = channel.send(email_delivery())
    assert result.outcome is Outcome.PERMANENT and result.detail
    assert "a***@example.com" in result.detail
    assert any(line.get("to") == "a***@example.com" for line in logs), logs
    seen = str(logs) + result.detail
    assert ADDRESS not in seen and PASSWORD not in seen


@pytest.mark.parametrize(
    ("email", "error"),
    [
        ({"list_unsubscribe": "http://shop.example/u"}, "Use an https:// or mailto: URL."),
        ({"list_unsubscribe": "https://shop.example/u/{email}"}, "Unknown field {email}"),
        ({"timeout": "soon"}, "email.timeout: 'soon' is not a duration"),
    ],
    ids=["plain http", "unknown field", "bad timeout"],
)
def test_bad_email_keys_are_refused_naming_the_key(email: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=r"^configuration: email\.") as refused:
        parse_config({"email": email})
    assert error in str(refused.value)


def test_the_email_keys_are_read() -> None:
    config = parse_config(
        {"email": {"list_unsubscribe": UNSUBSCRIBE, "ca_file": "ca.pem", "timeout": "3s"}}
    ).email
    assert (config.list_unsubscribe, config.ca_file, config.timeout) == (
        UNSUBSCRIBE,
        "ca.pem",
        3.0,
    )
    assert not EmailChannel.configured(Settings())


@pytest.mark.parametrize(
    ("smtp_url", "error"),
    [
        ("smtp://mailer:s3cret@127.0.0.1:port", "email.smtp_url: the port is not a number"),
        ("smtp://", "email.smtp_url: use smtp://host:port"),
    ],
    ids=["bad port", "no host"],
)
def test_a_worker_on_a_bad_smtp_url_stops_with_one_line_naming_it(
    tmp_path: Path, smtp_url: str, error: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    env.update(OMNIPUSH_SMTP_URL=smtp_url, OMNIPUSH_SECRET_KEY=secrets.token_urlsafe(48))
    result = run_omnipush("serve", "worker", "--channel", "email", env=env, cwd=tmp_path)
    assert result.returncode == 1 and error in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
