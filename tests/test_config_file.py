"""The configuration file (`OMNIPUSH_CONFIG`): what it sets, and how a bad one is refused, with
one line naming the key, before any service starts."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from shared.config_file import ConfigError, Delay, load_config, parse_config
from shared.policy import Cap, Policy
from shared.settings import Settings
from tests.stack import run_omnipush

KEY = secrets.token_urlsafe(48)

#: The example of the issue and the README, as an operator would copy it.
EXAMPLE = """
[email]
smtp_url = "smtp://user:pass@smtp.example.com:587?starttls=true"
from = "Shop <noreply@example.com>"

[[sms.accounts]]
name = "primary"
provider = "twilio"
account_sid = "AC0123"
auth_token = "token"
from = "+15005550006"
base_url = "https://api.twilio.com"
weight = 3

[[sms.accounts]]
name = "backup"
provider = "http"
url = "https://sms-gw.example.com/send"
token = "gw-token"
weight = 1

[webpush]
vapid_private_key = "c2VjcmV0LWtleS1mb3ItdmFwaWQtc2lnbmluZw"
vapid_subject = "mailto:ops@example.com"

[fcm]
service_account_file = "sa.json"
base_url = "https://fcm.googleapis.com"

[apns]
key_file = "AuthKey.p8"
key_id = "KEY123"
team_id = "TEAM123"
topic = "com.example.app"
base_url = "https://api.push.apple.com"

[outbound]
allow = ["127.0.0.1/32"]

[retry]
delays = ["5s", "30s", "2m", "10m", "1h"]
"""


def env_with(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPUSH_")}
    return env | {"OMNIPUSH_SECRET_KEY": KEY} | settings


def test_the_documented_example_is_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "omnipush.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.email.smtp_url == "smtp://user:pass@smtp.example.com:587?starttls=true"
    assert config.email.sender == "Shop <noreply@example.com>"
    primary, backup = config.sms_accounts
    assert (primary.name, primary.provider, primary.weight) == ("primary", "twilio", 3)
    assert primary.options["account_sid"] == "AC0123" and primary.options["from"] == "+15005550006"
    assert (backup.provider, backup.options["url"], backup.weight) == (
        "http",
        "https://sms-gw.example.com/send",
        1,
    )
    assert config.apns.topic == "com.example.app" and config.fcm.service_account_file == "sa.json"
    assert config.outbound_allow == (ipaddress.ip_network("127.0.0.1/32"),)
    assert config.retry_delays[0] == Delay("5s", 5) and config.retry_delays[-1] == Delay("1h", 3600)


def test_a_missing_default_file_is_an_empty_configuration(tmp_path: Path) -> None:
    config = load_config(tmp_path / "omnipush.toml")
    assert config.sms_accounts == () and config.email.smtp_url is None
    assert [d.label for d in config.retry_delays] == ["5s", "30s", "2m", "10m", "1h"]
    assert config.policy == Policy()


#: `[policy]` as the README shows it.
POLICY_EXAMPLE = """
[policy]
fail_open = ["dedup"]
[policy.dedup_window]
marketing = "10m"
[policy.frequency_cap.marketing]
limit = 5
window = "1d"
"""

DEFAULT_CAPS = Policy().frequency_cap


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            POLICY_EXAMPLE,
            Policy(
                dedup_window={"notification": 300, "marketing": 600, "verification": 300},
                frequency_cap={**DEFAULT_CAPS, "marketing": Cap(5, 86400)},
                fail_open=frozenset({"dedup"}),
            ),
        ),
        ("[policy]\n", Policy()),
        (
            '[policy.dedup_window]\nnotification = "0s"\nverification = "90s"\n',
            Policy(dedup_window={"notification": 0, "marketing": 300, "verification": 90}),
        ),
        (
            "[policy.frequency_cap.marketing]\nlimit = 0\n",
            Policy(frequency_cap={**DEFAULT_CAPS, "marketing": None}),
        ),
        (
            '[policy.frequency_cap.notification]\nlimit = 20\nwindow = "1h"\n',
            Policy(frequency_cap={**DEFAULT_CAPS, "notification": Cap(20, 3600)}),
        ),
        (
            '[policy]\nfail_open = ["dedup", "frequency_cap"]\n',
            Policy(fail_open=frozenset({"dedup", "frequency_cap"})),
        ),
    ],
    ids=["example", "empty", "dedup-windows", "uncapped", "new-cap", "fail-open-both"],
)
def test_the_policy_section_sets_the_defaults_of_every_app(
    tmp_path: Path, section: str, expected: Policy
) -> None:
    path = tmp_path / "omnipush.toml"
    path.write_text(section)
    assert load_config(path).policy == expected


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"emial": {}}, "emial: Unknown field."),
        ({"email": {"smtp_url": "http://mail"}}, "email.smtp_url: Use smtp:// or smtps://."),
        (
            {"sms": {"accounts": [{"name": "a", "provider": "twilo"}]}},
            "sms.accounts.0.provider: Must be one of: twilio, aliyun, http.",
        ),
        (
            {"sms": {"accounts": [{"name": "a", "provider": "http", "url": "https://x.example"}]}},
            "sms.accounts.0.token: required by provider 'http'",
        ),
        (
            {
                "sms": {
                    "accounts": [
                        {"name": "a", "provider": "http", "url": "https://x.example", "token": "t"},
                        {"name": "a", "provider": "http", "url": "https://y.example", "token": "t"},
                    ]
                }
            },
            "sms.accounts.1.name: 'a' twice",
        ),
        (
            {"sms": {"accounts": [{"name": "a", "provider": "http", "weight": "3"}]}},
            "sms.accounts.0.weight: Not a valid integer.",
        ),
        ({"retry": {"delays": ["5s", "soon"]}}, "retry.delays.1: 'soon' is not a duration"),
        ({"outbound": {"allow": ["10.0.0.300/8"]}}, "outbound.allow.0: '10.0.0.300/8' is not"),
        ({"apns": {"base_url": "ftp://apple"}}, "apns.base_url: Not a valid URL."),
        (
            {"policy": {"dedup_window": {"marketing": "soon"}}},
            "policy.dedup_window.marketing: 'soon' is not a duration",
        ),
        (
            {"policy": {"dedup_window": {"promo": "1m"}}},
            "policy.dedup_window.promo: Unknown field.",
        ),
        (
            {"policy": {"dedup_window": {"marketing": "31d"}}},
            "policy.dedup_window.marketing: Must be from 0s to 30d.",
        ),
        (
            {"policy": {"frequency_cap": {"marketing": {"limit": 5}}}},
            "policy.frequency_cap.marketing.window: Required with a limit other than 0.",
        ),
        (
            {"policy": {"frequency_cap": {"marketing": {"limit": -1, "window": "1d"}}}},
            "policy.frequency_cap.marketing.limit: Must be greater than or equal to 0",
        ),
        (
            {"policy": {"frequency_cap": {"marketing": {"limit": 5, "window": "0s"}}}},
            "policy.frequency_cap.marketing.window: Must be from 1s to 31d.",
        ),
        (
            {"policy": {"frequency_cap": {"marketing": {"limit": "5", "window": "1d"}}}},
            "policy.frequency_cap.marketing.limit: Not a valid integer.",
        ),
        (
            {"policy": {"fail_open": ["discard"]}},
            "policy.fail_open.0: Must be one of: dedup, frequency_cap.",
        ),
        ({"policy": {"dedupe_window": {}}}, "policy.dedupe_window: Unknown field."),
    ],
    ids=[
        "unknown-section",
        "smtp-scheme",
        "sms-provider",
        "provider-key-missing",
        "duplicate-account",
        "wrong-type",
        "bad-duration",
        "bad-cidr",
        "bad-url",
        "policy-duration",
        "policy-category",
        "policy-window-too-long",
        "policy-cap-without-window",
        "policy-negative-limit",
        "policy-zero-window",
        "policy-limit-type",
        "policy-fail-open-stage",
        "policy-unknown-key",
    ],
)
def test_a_bad_key_is_named_in_one_line(document: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document, "omnipush.toml")
    message = str(raised.value)
    assert message.startswith("omnipush.toml: ") and named in message
    assert "\n" not in message


def test_the_environment_overrides_the_files_email_and_joins_its_allow_list(
    tmp_path: Path,
) -> None:
    path = tmp_path / "omnipush.toml"
    path.write_text(EXAMPLE)
    settings = Settings.from_env(
        {
            "OMNIPUSH_SECRET_KEY": KEY,
            "OMNIPUSH_CONFIG": str(path),
            "OMNIPUSH_SMTP_URL": "smtps://mail.internal:465",
            "OMNIPUSH_OUTBOUND_ALLOW": "10.0.0.0/8",
        }
    )
    assert settings.smtp_url == "smtps://mail.internal:465"
    assert settings.smtp_from == "Shop <noreply@example.com>"
    assert settings.outbound_allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("[email\nsmtp_url = 1", "not valid TOML"),
        ('[fcm]\nbase_url = "nope"\n', "fcm.base_url: Not a valid URL."),
        (None, "no such file (named by OMNIPUSH_CONFIG)"),
    ],
    ids=["not-toml", "bad-key", "named-but-missing"],
)
def test_a_command_refuses_a_bad_file_with_one_line(
    tmp_path: Path, content: str | None, named: str
) -> None:
    path = tmp_path / "omnipush.toml"
    if content is not None:
        path.write_text(content)
    result = run_omnipush("apps", "list", env=env_with(OMNIPUSH_CONFIG=str(path)), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and str(path) in lines[0], result.stderr
