"""The email channel: one mail per delivery through the operator's SMTP server.

`[email] smtp_url` (or `OMNIPUSH_SMTP_URL`) names the server:
`smtp://user:pass@host:587?starttls=true` upgrades a plain connection with STARTTLS (and fails
rather than send in clear when the server does not offer it), `smtps://host:465` speaks TLS
from the start; AUTH is used when the URL has credentials. `[email] ca_file` trusts a private
CA or a self-signed server, `timeout` bounds every wait on the server. What is sent is
`channels._mail.compose`.

One SMTP connection is opened on first use and reused by every mail of a batch and by the
batches after it while it stays healthy. A reused connection that turns out closed when a mail
begins (servers drop idle connections) is reopened and that mail sent on the new one: nothing of
it had reached the server. A connection that fails otherwise (refused, TLS, AUTH, a timeout, a
drop in the middle of a mail) fails that mail transiently and defers the rest of the batch
without an attempt, rather than waiting out a timeout for each.

The server's replies, through the channel's `AccountGate` (the server is one account, `smtp`,
with `[email] rate`):

| reply                         | outcome                                                    |
|-------------------------------|------------------------------------------------------------|
| 250 after DATA                | sent                                                       |
| 421, 451, 452 ("try later")   | deferred: the account pauses `TRY_LATER_SECONDS`          |
| any other 4xx                 | transient                                                  |
| 550, 553 and every other 5xx  | permanent (550/553: the recipient is refused)              |
| refused, timeout, TLS or AUTH | transient, counted towards the account's breaker          |
| (an address no mail can carry)| permanent, before the gate and without a call             |

A "try later" pauses the whole account, as the server asked: a greylisting 451 to one
recipient slows every mail down for a while too.

Sending once. The worker's claim keeps a redelivered delivery from being sent again while its
first send is known (`channels.worker`); it leaves one window, a worker killed between the
server's answer and the commit of its record. The email channel narrows it: right after the
server accepts a mail it sets a Redis marker `<prefix>:email:accepted:<delivery id>` (kept
`ACCEPTED_TTL_SECONDS`), and a delivery found marked is reported sent without a new mail. What
is left is a worker killed between the server's 250 and that SET (one Redis round trip), or a
Redis that does not answer then, or a timeout waiting for the 250 of a mail the server did
accept: that mail is sent again, with the same Message-ID.

Logs and failure details carry masked addresses (`a***@example.com`) and never the password.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import unquote, urlsplit

import structlog
from redis.exceptions import RedisError

from channels._mail import compose, envelope_sender, smtp_address
from channels.accounts import send_through
from channels.base import Channel, ChannelContext, OutboundDelivery, Result
from shared.config_file import Account, ConfigError
from shared.masking import mask_address
from shared.settings import Settings

log = structlog.get_logger(__name__)

#: How long the account pauses after a "try later" reply (SMTP says not how long).
TRY_LATER_SECONDS = 30.0
#: When the rest of a batch whose connection failed comes back.
NOT_ATTEMPTED_SECONDS = 5.0
#: How long an accepted mail's marker is kept: beyond every retry and a replay soon after.
ACCEPTED_TTL_SECONDS = 7 * 24 * 3600
_TRY_LATER = frozenset({421, 451, 452})
_ADDRESS = re.compile(r"[^\s<>@\"',;:()\[\]]+@[^\s<>@\"',;:()\[\]]+")
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to reach the SMTP server, from `smtp_url`."""

    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        """`smtp://user:pass@host:port?starttls=true` or `smtps://...`; `ConfigError` (never
        naming the password) when it is not one."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ConfigError("email.smtp_url: use smtp://host:port or smtps://host:port")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError("email.smtp_url: the port is not a number") from None
        implicit = parts.scheme == "smtps"
        options = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
        starttls = not implicit and options.get("starttls", "").lower() in _TRUE
        return cls(
            host=parts.hostname,
            port=port or (465 if implicit else 587 if starttls else 25),
            implicit_tls=implicit,
            starttls=starttls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def security(self) -> str:
        return "tls" if self.implicit_tls else "starttls" if self.starttls else "none"


class EmailChannel(Channel):
    """Mail through the configured SMTP server; see the module docstring."""

    name = "email"
    reaches = frozenset({"email"})
    address_kind = "email"

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        config = context.settings.config.email
        if not config.smtp_url:
            raise ConfigError("email.smtp_url: not set (nor OMNIPUSH_SMTP_URL)")
        self._server = SmtpServer.from_url(config.smtp_url)
        self._sender = context.settings.smtp_from
        try:
            self._envelope_from = smtp_address(envelope_sender(self._sender))
        except ValueError as error:
            raise ConfigError(f"email.from: {error} (OMNIPUSH_SMTP_FROM)") from None
        self._list_unsubscribe = config.list_unsubscribe
        self._timeout = config.timeout
        self._account = Account(name="smtp", provider="smtp", rate=config.rate)
        try:
            self._tls = ssl.create_default_context(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"email.ca_file: cannot be used: {error}") from None
        self._local_hostname = socket.getfqdn()
        self._marker_prefix = f"{context.settings.queue_prefix}:email:accepted:"
        self._smtp: smtplib.SMTP | None = None
        # Why the connection failed in the batch being sent (None: it has not).
        self._failure: str | None = None
        self._log = log.bind(channel=self.name, server=f"{self._server.host}:{self._server.port}")

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        return bool(settings.config.email.smtp_url)

    def send(self, delivery: OutboundDelivery) -> Result:
        return self.send_many([delivery])[0]

    def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Result]:
        """Every mail of the batch on one connection; see the module docstring."""
        accepted = self._accepted_before(deliveries)
        self._failure = None
        results = []
        for delivery in deliveries:
            if delivery.delivery_id in accepted:
                results.append(Result.sent("already accepted by the SMTP server"))
                continue
            try:
                address = smtp_address(delivery.address or "")
                mail = compose(delivery, self._sender, self._list_unsubscribe).as_bytes()
            except (ValueError, TypeError, IndexError) as error:
                # Not the server's doing: it neither costs a token nor counts for its breaker.
                results.append(
                    Result.permanent(f"the mail cannot be written: {masked(str(error))}")
                )
                continue
            if self._failure is not None:
                detail = f"not attempted: {self._failure}"
                results.append(Result.deferred(detail, retry_after=NOT_ATTEMPTED_SECONDS))
                continue
            attempt = partial(self._attempt, delivery.delivery_id, address, mail)
            results.append(send_through(self.context.accounts, [self._account], attempt))
        return results

    def close(self) -> None:
        self._drop(polite=True)

    def _attempt(self, delivery_id: str, address: str, mail: bytes, _account: Account) -> Result:
        reused = self._smtp is not None
        result = self._on_connection(delivery_id, address, mail)
        if result is None and reused:
            self._log.info("email.reconnect", reason="the server closed the connection")
            result = self._on_connection(delivery_id, address, mail)
        if result is None:
            closed = smtplib.SMTPServerDisconnected("closed by the server")
            return self._server_failed(closed, "MAIL FROM")
        return result

    def _on_connection(self, delivery_id: str, address: str, mail: bytes) -> Result | None:
        """One MAIL, RCPT, DATA on the open connection (opened if none is); None when the
        connection turned out closed before the mail began."""
        try:
            smtp = self._smtp or self._connect()
        except (OSError, smtplib.SMTPException) as error:
            return self._server_failed(error, "connecting")
        try:
            code, reply = smtp.mail(self._envelope_from)
        except (smtplib.SMTPServerDisconnected, ConnectionError, ssl.SSLEOFError):
            self._drop()
            return None
        except (OSError, smtplib.SMTPException) as error:
            return self._server_failed(error, "MAIL FROM")
        if code != 250:
            return self._refused(smtp, "MAIL FROM", code, reply, address)
        stage = "RCPT TO"
        try:
            code, reply = smtp.rcpt(address)
            if code not in (250, 251):
                return self._refused(smtp, stage, code, reply, address)
            stage = "DATA"
            code, reply = smtp.data(mail)
        except smtplib.SMTPDataError as error:
            return self._refused(smtp, stage, error.smtp_code, error.smtp_error, address)
        except (OSError, smtplib.SMTPException) as error:
            return self._server_failed(error, stage)
        if code != 250:
            return self._refused(smtp, stage, code, reply, address)
        self._mark_accepted(delivery_id)
        return Result.sent()

    def _connect(self) -> smtplib.SMTP:
        server = self._server
        smtp: smtplib.SMTP
        if server.implicit_tls:
            smtp = smtplib.SMTP_SSL(
                server.host,
                server.port,
                local_hostname=self._local_hostname,
                timeout=self._timeout,
                context=self._tls,
            )
        else:
            smtp = smtplib.SMTP(
                server.host, server.port, local_hostname=self._local_hostname, timeout=self._timeout
            )
        try:
            smtp.ehlo_or_helo_if_needed()
            if server.starttls:
                smtp.starttls(context=self._tls)
                smtp.ehlo_or_helo_if_needed()
            if server.username is not None:
                smtp.login(server.username, server.password or "")
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        self._log.info("email.connected", security=server.security, auth=bool(server.username))
        return smtp

    def _refused(
        self, smtp: smtplib.SMTP, stage: str, code: int, reply: bytes | str, address: str
    ) -> Result:
        """The server answered `code` to `stage`: classify it, and leave the connection ready
        for the next mail (or closed, after a 421: the server closes it)."""
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        detail = f"SMTP {code} to {stage}: {masked(text)}"
        self._log.info("email.refused", to=mask_address(address), code=code, stage=stage)
        if code == 421:
            self._drop()
        else:
            try:
                smtp.rset()
            except (OSError, smtplib.SMTPException):
                self._drop()
        if code in _TRY_LATER:
            return Result.deferred(detail, retry_after=TRY_LATER_SECONDS)
        if 400 <= code < 500:
            return Result.transient(detail)
        if code in (550, 553):
            return Result.permanent(f"recipient refused: {detail}")
        return Result.permanent(detail)

    def _server_failed(self, error: BaseException, stage: str) -> Result:
        """The connection failed: this mail is a transient failure, the rest of the batch
        waits (see the module docstring)."""
        self._drop()
        detail = f"SMTP server failed at {stage}: {type(error).__name__}: {masked(str(error))}"
        self._failure = detail
        self._log.warning("email.server_failed", stage=stage, error=detail)
        return Result.transient(detail)

    def _drop(self, polite: bool = False) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if polite:
                smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            smtp.close()

    def _accepted_before(self, deliveries: Sequence[OutboundDelivery]) -> set[str]:
        """The deliveries whose mail the server accepted before (a redelivery after a crash)."""
        ids = [d.delivery_id for d in deliveries]
        if not ids:
            return set()
        try:
            marks = self.context.redis.mget([self._marker_prefix + i for i in ids])
        except (RedisError, OSError) as error:
            # The store's claim still guards them; only the crash window is open wider.
            self._log.warning("email.markers_unavailable", error=type(error).__name__)
            return set()
        return {i for i, mark in zip(ids, marks, strict=True) if mark is not None}

    def _mark_accepted(self, delivery_id: str) -> None:
        try:
            self.context.redis.set(self._marker_prefix + delivery_id, "1", ex=ACCEPTED_TTL_SECONDS)
        except (RedisError, OSError) as error:
            self._log.warning(
                "email.marker_not_set", delivery_id=delivery_id, error=type(error).__name__
            )


def masked(text: str) -> str:
    """`text` (a server's reply, an error) with every email address in it masked."""
    return _ADDRESS.sub(lambda match: mask_address(match.group(0)), text)
