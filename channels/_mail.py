"""The mail the email channel sends for one delivery: headers and a text + HTML body.

The body is the template's `email` part (`subject`, `text`, `html`) or, for a message without a
template, its literal `content` (`title`, `body`, `url`), with an HTML alternative made from the
text. The Message-ID is derived from the delivery id, so a mail sent again after a crash carries
the Message-ID of the first and a receiving system can tell the two apart from other mail.
"""

from __future__ import annotations

import html
import re
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from urllib.parse import quote

from channels.base import OutboundDelivery
from shared.ids import utcnow

#: CRLF line ends as SMTP wants them, and non-ASCII bodies as quoted-printable or base64, so
#: that no server has to support 8BITMIME.
SMTP_POLICY = policy.SMTP.clone(cte_type="7bit")
_WHITESPACE = re.compile(r"\s+")
_BARE_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"]+@[^\s@<>()\[\],;:\"]+")
#: The category whose mail carries `List-Unsubscribe`.
MARKETING = "marketing"


def envelope_sender(sender: str) -> str:
    """The bare address of a `From` such as `Shop <noreply@example.com>`."""
    return parseaddr(sender)[1] or sender


def compose(
    delivery: OutboundDelivery, sender: str, list_unsubscribe: str | None = None
) -> EmailMessage:
    """The mail of `delivery` to its address, from `sender`; ValueError when the address or a
    header cannot be written (the delivery can never be sent as it is)."""
    part = delivery.part()
    subject = part.get("subject") or part.get("title") or ""
    text = part.get("text") or part.get("body") or ""
    url = part.get("url")
    if url:
        text = f"{text}\n\n{url}" if text else str(url)
    mail = EmailMessage(policy=SMTP_POLICY)
    mail["From"] = sender
    mail["To"] = smtp_address(delivery.address or "")
    # A template may render line breaks into the subject; a header cannot hold them.
    mail["Subject"] = _WHITESPACE.sub(" ", str(subject)).strip()
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = f"<{delivery.delivery_id}@{_domain_of(sender)}>"
    if delivery.category == MARKETING and list_unsubscribe:
        target = unsubscribe_url(list_unsubscribe, delivery)
        mail["List-Unsubscribe"] = f"<{target}>"
        if target.startswith("https://"):
            # RFC 8058 one-click: the mailbox provider POSTs to the URL itself.
            mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    mail.set_content(text)
    mail.add_alternative(part.get("html") or _html_of(text), subtype="html")
    return mail


def smtp_address(address: str) -> str:
    """`address` as SMTP carries it without SMTPUTF8 (an international domain in IDNA);
    ValueError when it is not a bare address or its local part is not ASCII."""
    local, at, domain = address.rpartition("@")
    if not at or not _BARE_ADDRESS.fullmatch(address):
        raise ValueError("the recipient's address is not a bare email address")
    if not local.isascii():
        raise ValueError("the recipient's address has a non-ASCII local part (no SMTPUTF8)")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        raise ValueError("the recipient's address has a domain IDNA cannot write") from None


def unsubscribe_url(template: str, delivery: OutboundDelivery) -> str:
    """`[email] list_unsubscribe` filled in for `delivery`, each value URL-quoted."""
    values = {
        "app_id": delivery.app_id,
        "user_id": delivery.user_id or "",
        "address": delivery.address or "",
        "message_id": delivery.message_id,
        "delivery_id": delivery.delivery_id,
    }
    return template.format(**{name: quote(value, safe="") for name, value in values.items()})


def _html_of(text: str) -> str:
    paragraphs = (p for p in re.split(r"\n\s*\n", text) if p.strip())
    body = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)
    return f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{body}</body></html>'


def _domain_of(sender: str) -> str:
    _local, at, domain = envelope_sender(sender).rpartition("@")
    return domain if at and domain else "omnipush.localdomain"
