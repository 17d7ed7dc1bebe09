"""Fault injection: canned replies, delays and dropped connections.

A :class:`Fault` says *where* (an SMTP command, or one of the pseudo-commands
``CONNECT`` and ``EOM``) and *what* (reply, delay, disconnect).  A
:class:`FaultPlan` holds the faults of one server and counts their uses; the
protocol asks it for a match each time it reaches a fault point.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any, Optional

import attr

#: Pseudo-commands: before the greeting, and after the message data (before
#: the reply to it).
CONNECT = "CONNECT"
EOM = "EOM"


def _upper(value: str) -> str:
    return value.upper()


def _check_reply(instance: Fault, attribute: Any, value: Optional[str]) -> None:
    if value is not None and not re.match(r"[2-5]\d\d([ -]|\Z)", value):
        raise ValueError(f"a fault reply must start with a 3-digit SMTP code: {value!r}")


def _check_times(instance: Fault, attribute: Any, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ValueError("times must be at least 1 (or None for every time)")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Fault:
    """What the test server does instead of (or before) its normal reply.

    Build one with :meth:`reply`, :meth:`delay` or :meth:`disconnect`.
    """

    #: An SMTP verb (``"RCPT"``), ``"CONNECT"`` or ``"EOM"``.
    command: str = attr.ib(converter=_upper)
    #: The reply sent instead of the normal one; multi-line replies use ``\n``.
    reply_text: Optional[str] = attr.ib(default=None, validator=_check_reply)
    #: Seconds to wait before acting (or before the normal reply).
    delay_seconds: float = 0.0
    #: Close the connection after the canned reply, if any.
    close: bool = False
    #: Close with a TCP reset instead of an orderly close.
    reset: bool = False
    #: A regular expression searched (case-insensitively) in the command's
    #: argument, or in the message for ``EOM``; ``None`` matches everything.
    match: Optional[str] = None
    #: How many times the fault fires; ``None`` means every time.
    times: Optional[int] = attr.ib(default=None, validator=_check_times)

    @classmethod
    def reply(
        cls,
        command: str,
        text: str,
        *,
        match: Optional[str] = None,
        times: Optional[int] = None,
        close: bool = False,
        delay: float = 0.0,
    ) -> Fault:
        """Answer ``command`` with ``text`` instead of processing it.

        At ``CONNECT`` the text replaces the greeting and the connection is
        closed; at ``EOM`` the message is not captured.
        """
        return cls(command=command, reply_text=text, match=match, times=times,
                   close=close or command.upper() == CONNECT, delay_seconds=delay)

    @classmethod
    def delay(
        cls,
        command: str,
        seconds: float,
        *,
        match: Optional[str] = None,
        times: Optional[int] = None,
    ) -> Fault:
        """Wait ``seconds``, then process ``command`` normally."""
        return cls(command=command, delay_seconds=seconds, match=match, times=times)

    @classmethod
    def disconnect(
        cls,
        command: str,
        *,
        match: Optional[str] = None,
        times: Optional[int] = None,
        reset: bool = False,
    ) -> Fault:
        """Drop the connection, without a reply, when ``command`` arrives."""
        return cls(command=command, close=True, reset=reset, match=match, times=times)

    @property
    def replaces_processing(self) -> bool:
        """True if the normal processing of the command does not happen."""
        return self.reply_text is not None or self.close or self.reset

    def describe(self) -> str:
        parts = [f"fault at {self.command}"]
        if self.delay_seconds:
            parts.append(f"delay {self.delay_seconds:g}s")
        if self.reply_text is not None:
            parts.append(f"reply {self.reply_text.splitlines()[0]!r}")
        if self.reset:
            parts.append("reset")
        elif self.close:
            parts.append("close")
        return ", ".join(parts)

    def matches(self, command: str, argument: str) -> bool:
        if command != self.command:
            return False
        return self.match is None or re.search(self.match, argument, re.IGNORECASE) is not None


class FaultPlan:
    """The faults of one server; safe to change from the test's thread."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._lock = threading.Lock()
        # [fault, uses left or None]
        self._entries: list[tuple[Fault, list[Optional[int]]]] = []
        self._commands: frozenset[str] = frozenset()
        for fault in faults:
            self.add(fault)

    def add(self, fault: Fault) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        with self._lock:
            self._entries.append((fault, [fault.times]))
            self._commands = self._commands | {fault.command}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._commands = frozenset()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return [fault for fault, _ in self._entries]

    def covers(self, command: str) -> bool:
        """A cheap test for the protocol's hot path: any fault for this command?"""
        return command in self._commands

    def take(self, command: str, argument: str) -> Optional[Fault]:
        """The first matching fault with uses left, counting this use."""
        if command not in self._commands:
            return None
        with self._lock:
            for fault, left in self._entries:
                if left[0] == 0 or not fault.matches(command, argument):
                    continue
                if left[0] is not None:
                    left[0] -= 1
                return fault
        return None


def drop(transport: object, *, reset: bool) -> None:
    """Close a connection now; with ``reset`` the peer sees a TCP RST."""
    sock = getattr(transport, "get_extra_info", lambda _: None)("socket")
    if reset and sock is not None:
        # Linger on with a zero timeout turns close() into a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if reset:
        transport.abort()  # type: ignore[attr-defined]
    else:
        transport.close()  # type: ignore[attr-defined]
