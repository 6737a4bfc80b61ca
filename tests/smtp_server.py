"""A real SMTP server (aiosmtpd) standing in for the operator's mail relay.

It listens on 127.0.0.1 in plain text, with STARTTLS, or with TLS from the start (a self-signed
certificate made with `cryptography`, whose file the client trusts as its CA), requires AUTH
when given credentials, and parses every mail it accepts with the `email` package, as a
mailbox would. It can be told to answer as `tests.channel_harness.Answer` says; the SMTP
replies are those of the email channel's classification (`channels.email`):

- OK: 250; SLOW_DOWN: 421 to DATA, and it closes the connection ("try later");
- SERVER_ERROR: 450 to DATA (a 4xx that is not "try later": 421, 451, 452 are);
- TIMEOUT: no answer to DATA until told otherwise (then 451, the mail not kept);
- REJECT_ADDRESS: 550 to RCPT; DOWN: nothing listens on the port.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import ipaddress
import ssl
import tempfile
import threading
import warnings
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.channel_harness import Answer
from tests.stack import free_port

HOST = "127.0.0.1"
#: The longest a TIMEOUT answer holds a mail before giving up on it.
HOLD_SECONDS = 30.0


class Security(enum.Enum):
    """How the server protects its connections."""

    PLAIN = "plain"
    STARTTLS = "starttls"
    IMPLICIT_TLS = "implicit tls"


@dataclass(frozen=True)
class Received:
    """One mail the server accepted: its envelope, the parsed message, and on which
    connection (numbered from 1) and as whom (None: not authenticated) it came."""

    mail_from: str
    recipients: tuple[str, ...]
    message: EmailMessage
    connection: int
    login: str | None
    tls: bool

    def part(self, content_type: str) -> str:
        """The decoded body of the message's `text/plain` or `text/html` alternative."""
        found = self.message.get_body(preferencelist=(content_type.split("/")[1],))
        assert found is not None and found.get_content_type() == content_type, content_type
        return str(found.get_content())


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "omnipush test SMTP")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class _Handler:
    """aiosmtpd's handler hooks: what the server answers, and what it keeps."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.server._greeted(smtp)
        return responses

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.server.mode is Answer.REJECT_ADDRESS:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        mode = self.server.mode
        if mode is Answer.TIMEOUT:
            waited = 0.0
            while self.server.mode is Answer.TIMEOUT and waited < HOLD_SECONDS:
                await asyncio.sleep(0.05)
                waited += 0.05
            return "451 4.3.0 The mail was held too long"
        if mode is Answer.SLOW_DOWN:
            # A real server closes the connection after a 421; the reply goes out first.
            transport = smtp.transport
            assert transport is not None
            asyncio.get_running_loop().call_later(0.05, transport.close)
            return "421 4.7.0 Try again later, closing connection"
        if mode is Answer.SERVER_ERROR:
            return "450 4.3.0 Temporary server error, try again"
        if self.server.data_reply is not None:
            return self.server.data_reply
        if self.server.data_delay:
            await asyncio.sleep(self.server.data_delay)
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.server._keep(
            Received(
                mail_from=envelope.mail_from or "",
                recipients=tuple(envelope.rcpt_tos),
                message=message,
                connection=self.server._number_of(smtp),
                login=_login_of(session),
                tls=_over_tls(smtp),
            )
        )
        return "250 2.0.0 Ok: queued"


class SmtpServer:
    """See the module docstring. A context manager: started on enter, stopped on exit."""

    def __init__(
        self,
        security: Security = Security.PLAIN,
        credentials: tuple[str, str] | None = None,
        data_delay: float = 0.0,
    ) -> None:
        self.security = security
        self.credentials = credentials
        #: Seconds the server takes over each accepted mail (to slow a stream down).
        self.data_delay = data_delay
        #: When set, the reply to every DATA (and the mail is not kept), e.g. "452 4.3.1 Full".
        self.data_reply: str | None = None
        self.port = free_port()
        self.mode = Answer.OK
        self.received: list[Received] = []
        # One SMTP protocol instance per connection (its session is renewed by STARTTLS).
        self._connections: list[SMTP] = []
        self._lock = threading.Lock()
        self._directory = tempfile.TemporaryDirectory(prefix="omnipush-smtp-")
        self.ca_file: Path | None = None
        self._tls: ssl.SSLContext | None = None
        if security is not Security.PLAIN:
            self.ca_file, key_file = self_signed_certificate(Path(self._directory.name))
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(self.ca_file, key_file)
        self._controller: Controller | None = None

    def url(self, credentials: tuple[str, str] | None = None) -> str:
        """The `smtp_url` that reaches this server, with `credentials` (default: its own)."""
        user, password = credentials or self.credentials or (None, None)
        auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user else ""
        scheme = "smtps" if self.security is Security.IMPLICIT_TLS else "smtp"
        query = "?starttls=true" if self.security is Security.STARTTLS else ""
        return f"{scheme}://{auth}{HOST}:{self.port}{query}"

    @property
    def connections(self) -> int:
        """How many connections have greeted the server (EHLO or HELO) so far."""
        with self._lock:
            return len(self._connections)

    def by_message_id(self) -> dict[str, list[Received]]:
        """The mails received, by their Message-ID."""
        found: dict[str, list[Received]] = {}
        with self._lock:
            for mail in self.received:
                found.setdefault(str(mail.message["Message-ID"]), []).append(mail)
        return found

    def answer(self, mode: Answer) -> None:
        """Answer every following command as `mode` says (see the module docstring)."""
        self.mode = mode
        if mode is Answer.DOWN:
            self._stop_listening()
        elif self._controller is None:
            self._listen()

    def drop_connections(self) -> None:
        """Close every open connection, as a server does with idle ones."""
        controller = self._controller
        assert controller is not None
        with self._lock:
            open_now = list(self._connections)
        for smtp in open_now:
            if smtp.transport is not None:
                controller.loop.call_soon_threadsafe(smtp.transport.close)

    def __enter__(self) -> SmtpServer:
        self._listen()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_listening()
        self._directory.cleanup()

    def _listen(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.security is Security.IMPLICIT_TLS:
            kwargs["ssl_context"] = self._tls
        elif self.security is Security.STARTTLS:
            kwargs.update(tls_context=self._tls, require_starttls=True)
        if self.credentials is not None:
            # AUTH only over TLS; aiosmtpd sees only STARTTLS's, implicit TLS is all TLS (and
            # its warning about AUTH without TLS does not apply to it).
            if self.security is Security.IMPLICIT_TLS:
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=self.security is Security.STARTTLS,
            )
        controller = Controller(
            _Handler(self), hostname=HOST, port=self.port, server_hostname="smtp.test", **kwargs
        )
        controller.start()
        self._controller = controller

    def _stop_listening(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (data.login.decode(), data.password.decode()) == self.credentials
        ):
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    def _greeted(self, smtp: SMTP) -> None:
        with self._lock:
            if not any(known is smtp for known in self._connections):
                self._connections.append(smtp)

    def _number_of(self, smtp: SMTP) -> int:
        with self._lock:
            return next(i for i, known in enumerate(self._connections, 1) if known is smtp)

    def _keep(self, mail: Received) -> None:
        with self._lock:
            self.received.append(mail)


def _login_of(session: Session) -> str | None:
    data = session.auth_data
    return (
        data.login.decode() if session.authenticated and isinstance(data, LoginPassword) else None
    )


def _over_tls(smtp: SMTP) -> bool:
    transport = smtp.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None
