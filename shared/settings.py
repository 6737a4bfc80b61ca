"""Configuration of every omnipush service, read from the environment in one place."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from shared.config_file import ConfigError, FileConfig, load_config
from shared.db import store_url
from shared.logging import LOG_FORMATS, LogFormat

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_DATABASE_URL = "sqlite:///var/omnipush.db"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET_KEY_FILE = Path("var/secret_key")

#: Where each service without HTTP of its own serves `GET /metrics` by default: one machine runs
#: them all (`make run`) without two wanting the same port. The API and the gateway serve it on
#: their own bind address.
METRICS_HOST = "127.0.0.1"
#: Where web deliveries may be sent from (`Settings.web_sends`), the default first.
WEB_SENDS = ("dispatcher", "worker")
METRICS_PORTS = {"relay": 9101, "dispatcher": 9102, "callbacks": 9103}
#: A channel worker's default port is this plus its channel's position in the channel registry.
WORKER_METRICS_BASE_PORT = 9110
#: `OMNIPUSH_METRICS_BIND` value that turns the endpoint off.
METRICS_OFF = "off"

#: Browser tokens are HMAC-signed with the secret key; shorter keys can be brute-forced.
MIN_SECRET_KEY_BYTES = 32
#: Words of the values people copy from examples and forget to replace, whatever their length.
PLACEHOLDER_WORDS = (
    "changeme",
    "changethis",
    "replaceme",
    "placeholder",
    "yoursecret",
    "insecure",
    "donotuse",
    "secretkey",
)
#: A random key of 32 bytes or more has far more distinct characters than this.
MIN_DISTINCT_SECRET_CHARACTERS = 6


@dataclass(frozen=True)
class Settings:
    """The settings of one omnipush process; build with `Settings.from_env()`."""

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    redis_url: str = DEFAULT_REDIS_URL
    secret_key: str = ""
    api_bind: str = "127.0.0.1:8080"
    gateway_bind: str = "127.0.0.1:8081"
    config_path: str = "omnipush.toml"
    # What the configuration file holds (channel providers, retry delays, policy defaults),
    # with OMNIPUSH_SMTP_URL and OMNIPUSH_SMTP_FROM over its [email].
    config: FileConfig = field(default_factory=FileConfig)
    queue_prefix: str = "omnipush"
    # None: console lines on a terminal, JSON lines otherwise.
    log_format: LogFormat | None = None
    production: bool = False
    browser_token_ttl: int = 3600
    max_browser_token_ttl: int = 86400
    # Each API key's token bucket unless its app has its own: requests per second, and burst.
    api_rate_limit: float = 500.0
    api_rate_burst: int = 1000
    # Addresses omnipush may call although they are not public (see shared/outbound.py):
    # OMNIPUSH_OUTBOUND_ALLOW and the file's [outbound] allow together.
    outbound_allow: tuple[IPNetwork, ...] = ()
    # Each app's fan-out unless it has its own: recipients one request may ask for (a topic
    # counts its subscribers), recipients per minute, and subscribers a topic may have.
    max_recipients_per_request: int = 100_000
    max_recipients_per_minute: int = 1_000_000
    max_topic_subscribers: int = 100_000
    # Topic subscribers the dispatcher expands per transaction.
    dispatch_page_size: int = 1000
    # Who sends web deliveries to the live feed: the dispatcher, right after it writes them
    # (`dispatcher` ), or the web worker, from its queue (`worker`; retries always are).
    web_sends: str = WEB_SENDS[0]
    # OMNIPUSH_METRICS_BIND: `host:port`, `off`, or None for each service's default port.
    metrics_bind: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every `OMNIPUSH_*` variable; unset ones take the one-machine defaults."""
        env = os.environ if environ is None else environ
        production = env.get("OMNIPUSH_ENV", "development") == "production"
        config_path = env.get("OMNIPUSH_CONFIG") or cls.config_path
        try:
            config = load_config(config_path, required="OMNIPUSH_CONFIG" in env)
        except ConfigError as error:
            raise RuntimeError(str(error)) from None
        return cls(
            database_url=store_url(env.get("OMNIPUSH_DATABASE_URL") or DEFAULT_DATABASE_URL),
            amqp_url=env.get("OMNIPUSH_AMQP_URL") or DEFAULT_AMQP_URL,
            redis_url=env.get("OMNIPUSH_REDIS_URL") or DEFAULT_REDIS_URL,
            api_bind=env.get("OMNIPUSH_API_BIND") or cls.api_bind,
            gateway_bind=env.get("OMNIPUSH_GATEWAY_BIND") or cls.gateway_bind,
            config_path=config_path,
            config=_email_from_env(config, env),
            queue_prefix=env.get("OMNIPUSH_QUEUE_PREFIX") or cls.queue_prefix,
            log_format=_log_format(env),
            production=production,
            api_rate_limit=_positive(env, "OMNIPUSH_API_RATE_LIMIT", float, cls.api_rate_limit),
            api_rate_burst=_positive(env, "OMNIPUSH_API_RATE_BURST", int, cls.api_rate_burst),
            outbound_allow=_networks(env, "OMNIPUSH_OUTBOUND_ALLOW") + config.outbound_allow,
            max_recipients_per_request=_positive(
                env, "OMNIPUSH_MAX_RECIPIENTS_PER_REQUEST", int, cls.max_recipients_per_request
            ),
            max_recipients_per_minute=_positive(
                env, "OMNIPUSH_MAX_RECIPIENTS_PER_MINUTE", int, cls.max_recipients_per_minute
            ),
            max_topic_subscribers=_positive(
                env, "OMNIPUSH_MAX_TOPIC_SUBSCRIBERS", int, cls.max_topic_subscribers
            ),
            dispatch_page_size=_positive(
                env, "OMNIPUSH_DISPATCH_PAGE_SIZE", int, cls.dispatch_page_size
            ),
            web_sends=_one_of(env, "OMNIPUSH_WEB_SENDS", WEB_SENDS),
            metrics_bind=_metrics_bind(env),
            # Last: it may write var/secret_key, which a bad setting above should not leave.
            secret_key=_secret_key(env, production),
        )

    @property
    def smtp_url(self) -> str | None:
        """Where email goes (`smtp://` or `smtps://`); None leaves the email channel unset."""
        return self.config.email.smtp_url

    @property
    def smtp_from(self) -> str:
        return self.config.email.sender

    def metrics_address(self, default_port: int) -> tuple[str, int] | None:
        """Where this process serves `GET /metrics`: OMNIPUSH_METRICS_BIND, else the loopback
        address at the service's `default_port` (see `default_metrics_port`); None when off."""
        if self.metrics_bind is None:
            return METRICS_HOST, default_port
        if self.metrics_bind == METRICS_OFF:
            return None
        return _host_port(self.metrics_bind)

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests build settings this way)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _email_from_env(config: FileConfig, env: Mapping[str, str]) -> FileConfig:
    """The file's configuration with the environment's SMTP settings over its [email]."""
    email = replace(
        config.email,
        smtp_url=env.get("OMNIPUSH_SMTP_URL") or config.email.smtp_url,
        sender=env.get("OMNIPUSH_SMTP_FROM") or config.email.sender,
    )
    return replace(config, email=email)


Number = TypeVar("Number", int, float)


def _one_of(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """The variable's value if it is one of `choices`, the first of them if unset."""
    raw = env.get(name)
    if not raw:
        return choices[0]
    if raw not in choices:
        raise RuntimeError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def _positive(env: Mapping[str, str], name: str, kind: type[Number], default: Number) -> Number:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a positive {kind.__name__}, not {raw!r}") from None
    if not value > 0:
        raise RuntimeError(f"{name} must be a positive {kind.__name__}, not {raw!r}")
    return value


def default_metrics_port(service: str, channel_position: int = 0) -> int:
    """The port `service` (`relay`, `dispatcher`, `callbacks`, `worker`) serves its metrics
    on unless told otherwise; a worker's is offset by its channel's `channel_position`."""
    if service == "worker":
        return WORKER_METRICS_BASE_PORT + channel_position
    return METRICS_PORTS[service]


def _metrics_bind(env: Mapping[str, str]) -> str | None:
    raw = (env.get("OMNIPUSH_METRICS_BIND") or "").strip()
    if not raw:
        return None
    if raw.lower() == METRICS_OFF:
        return METRICS_OFF
    try:
        _host_port(raw)
    except ValueError:
        raise RuntimeError(
            f"OMNIPUSH_METRICS_BIND must be host:port (such as 0.0.0.0:9101) or off, not {raw!r}"
        ) from None
    return raw


def _host_port(bind: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9101` for IPv6) as a pair; ValueError when it is not one."""
    host, separator, port = bind.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(bind)
    return host, int(port)


def _log_format(env: Mapping[str, str]) -> LogFormat | None:
    raw = env.get("OMNIPUSH_LOG_FORMAT")
    if not raw:
        return None
    for name in LOG_FORMATS:
        if raw.strip().lower() == name:
            return name
    raise RuntimeError(f"OMNIPUSH_LOG_FORMAT must be {' or '.join(LOG_FORMATS)}, not {raw!r}")


def _secret_key(env: Mapping[str, str], production: bool) -> str:
    secret = env.get("OMNIPUSH_SECRET_KEY") or ""
    if secret:
        check_secret_key(secret, "OMNIPUSH_SECRET_KEY")
        return secret
    if production:
        raise RuntimeError("OMNIPUSH_SECRET_KEY is required when OMNIPUSH_ENV=production")
    secret = local_secret_key()
    check_secret_key(secret, f"OMNIPUSH_SECRET_KEY (unset, so read from {SECRET_KEY_FILE})")
    return secret


def check_secret_key(secret: str, source: str) -> None:
    """Refuse a key that is short or a known placeholder, in every environment: anyone who
    guesses it can sign browser tokens for any user."""
    folded = re.sub(r"[^a-z0-9]", "", secret.lower())
    if (
        len(secret.encode()) < MIN_SECRET_KEY_BYTES
        or any(word in folded for word in PLACEHOLDER_WORDS)
        or len(set(secret)) < MIN_DISTINCT_SECRET_CHARACTERS
    ):
        raise RuntimeError(
            f"{source} must be at least {MIN_SECRET_KEY_BYTES} bytes of random data, not a "
            "short or placeholder value; make one with: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of CIDRs (`10.0.0.0/8,::1/128`; a bare address is one host)."""
    networks = []
    for cidr in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise RuntimeError(f"{name}: {cidr!r} is not a CIDR such as 10.0.0.0/8") from None
    return tuple(networks)


def local_secret_key(path: Path = SECRET_KEY_FILE) -> str:
    """The development secret, generated once into `var/secret_key` and reused after."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key)
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        # Another process generated it first; everyone must share one key.
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
