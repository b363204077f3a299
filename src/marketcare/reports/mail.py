"""Email: building a report message and handing it to an SMTP server, with no surprises.

smtplib's traps are handled here: a timeout on every connection, certificate checking
for STARTTLS and implicit TLS, and failures sorted into *temporary* (try again later)
and *permanent* (a person must act: bad address, login refused).
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import encoders
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime
from typing import Literal

XLSX = ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet")
#: the header that carries the audit chain's head (``seq hash``) in every report email
ANCHOR_HEADER = "X-Marketcare-Audit-Head"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: Literal["starttls", "tls", "none"]
    user: str | None
    password: str | None
    sender: str
    timeout: float


class DeliveryError(Exception):
    """A send failed; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def message_id(report_id: int, recipient: str, sender: str) -> str:
    """The same Message-ID for every attempt of one report to one recipient."""
    domain = sender.rsplit("@", 1)[-1] or "marketcare"
    who = hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:16]
    return f"<marketcare.report-{report_id}.{who}@{domain}>"


def build_message(
    *,
    sender: str,
    recipient: str,
    subject: str,
    body: str,
    attachment: bytes,
    filename: str,
    msg_id: str,
    date: datetime,
    headers: Mapping[str, str] | None = None,
    extra: Sequence[tuple[bytes, str]] = (),
) -> Message:
    """A plain-text message with the workbook attached, UTF-8 throughout.

    Built with the classic ``email.mime`` API (policy compat32): the newer
    ``EmailMessage`` folding re-encodes a long Content-Type with a non-ASCII ``name`` and
    breaks the MIME type itself. The name is given twice: RFC 2231 ``filename*`` for
    standard clients and an RFC 2047 ``name=`` for Outlook versions that read only that.
    """
    msg = MIMEMultipart()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = Header(subject, "utf-8")  # type: ignore[assignment]  # compat32 folds it
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = msg_id
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.attach(MIMEText(body, "plain", "utf-8"))
    for data, name, mime in [(attachment, filename, XLSX)] + [
        (d, n, ("application", "pdf")) for d, n in extra
    ]:
        part = MIMEBase(*mime)
        part.set_payload(data)
        encoders.encode_base64(part)
        part.set_param("name", name if name.isascii() else Header(name, "utf-8").encode())
        part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", name))
        msg.attach(part)
    return msg


def send(config: SmtpConfig, msg: Message, recipient: str) -> None:
    """Deliver one message to one recipient or raise DeliveryError."""
    context = ssl.create_default_context()
    try:
        client: smtplib.SMTP
        if config.security == "tls":
            client = smtplib.SMTP_SSL(
                config.host, config.port, timeout=config.timeout, context=context
            )
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        with client:
            client.ehlo()
            if config.security == "starttls":
                client.starttls(context=context)
                client.ehlo()
            if config.user:
                client.login(config.user, config.password or "")
            refused = client.send_message(msg, from_addr=config.sender, to_addrs=[recipient])
            if refused:
                code, text = refused.get(recipient, (550, b"refused"))
                raise DeliveryError(
                    f"recipient refused: {code} {_text(text)}", permanent=code >= 500
                )
    except DeliveryError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"login refused by {config.host}: {exc.smtp_code} {_text(exc.smtp_error)} "
            "(check smtp_user and smtp_password)",
            permanent=True,
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()), (550, b"refused"))
        raise DeliveryError(
            f"recipient refused: {code} {_text(text)}", permanent=code >= 500
        ) from None
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        raise DeliveryError(
            f"server refused the message: {exc.smtp_code} {_text(exc.smtp_error)}",
            permanent=exc.smtp_code >= 500,
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(
            f"server does not support {exc} (check smtp_security)", permanent=True
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(
            f"TLS certificate of {config.host} not trusted: {exc.verify_message}", permanent=True
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(
            f"server answered {exc.smtp_code} {_text(exc.smtp_error)}",
            permanent=exc.smtp_code >= 500,
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(
            f"cannot reach {config.host}:{config.port}: {exc or type(exc).__name__}",
            permanent=False,
        ) from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
