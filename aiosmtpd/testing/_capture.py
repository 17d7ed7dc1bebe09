"""Captured messages and the handler that captures them."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any, Optional

import attr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@attr.s(frozen=True, auto_attribs=True, kw_only=True, eq=False)
class CapturedMessage:
    """One message the test server accepted."""

    #: The message, parsed with the modern :mod:`email` API.
    message: EmailMessage
    #: The envelope sender (``MAIL FROM``); ``""`` for a null sender.
    mail_from: str
    #: The envelope recipients (``RCPT TO``), in order.
    rcpt_tos: tuple[str, ...]
    #: The client's address, as the socket reports it.
    peer: Any
    #: The message exactly as received, dot-stuffing undone.
    raw: bytes
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    #: True if the message came over an encrypted connection.
    tls: bool = False
    #: The login the client authenticated as, if it did.
    login: Optional[str] = None

    def __getitem__(self, header: str) -> Any:
        """A header of the message, e.g. ``captured["Subject"]``."""
        return self.message[header]

    @property
    def subject(self) -> Optional[str]:
        value = self.message["Subject"]
        return None if value is None else str(value)

    def body(self) -> str:
        """The text body (the plain part of a multipart message), with the
        line endings of Python text (LF, not the CRLF of the wire)."""
        part = self.message.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        return str(part.get_content()).replace("\r\n", "\n")


def _login_of(auth_data: Any) -> Optional[str]:
    if auth_data is None:
        return None
    if isinstance(auth_data, bytes):
        return auth_data.decode("utf-8", errors="backslashreplace")
    return str(auth_data)


class CaptureHandler:
    """Keeps every accepted message; checks AUTH against fixed credentials."""

    def __init__(self, credentials: Optional[Mapping[str, str]] = None) -> None:
        self._lock = threading.Lock()
        self._messages: list[CapturedMessage] = []
        self.credentials = dict(credentials or {})

    @property
    def messages(self) -> list[CapturedMessage]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            login = auth_data.login.decode("utf-8")
            password = auth_data.password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        if login in self.credentials and self.credentials[login] == password:
            return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        captured = CapturedMessage(
            message=message,
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            peer=session.peer,
            raw=raw,
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_options),
            tls=session.ssl is not None,
            login=_login_of(session.auth_data) if session.authenticated else None,
        )
        # Stored before the reply goes out: once the client has its 250,
        # the test can already see the message.
        with self._lock:
            self._messages.append(captured)
        return "250 OK"
