"""The session transcript: what each client sent and what the server replied."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

import attr

from aiosmtpd.smtp import sanitize

Direction = Literal["C", "S", "*"]

#: What an AUTH exchange line (a reply to a ``334`` challenge) becomes.
MASK = "********"


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class TranscriptEntry:
    """One line of a session: ``C`` client to server, ``S`` server to client,
    ``*`` an event (connection opened or closed, TLS started, fault applied)."""

    connection: int
    peer: Any
    direction: Direction
    text: str

    def __str__(self) -> str:
        return f"{self.direction}: {self.text}"


class Transcript(Sequence[TranscriptEntry]):
    """An immutable snapshot of the recorded lines, oldest first."""

    def __init__(self, entries: Sequence[TranscriptEntry]) -> None:
        self._entries = tuple(entries)

    @overload
    def __getitem__(self, index: int) -> TranscriptEntry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[TranscriptEntry]: ...
    def __getitem__(self, index: Any) -> Any:
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TranscriptEntry]:
        return iter(self._entries)

    def __str__(self) -> str:
        return "\n".join(str(entry) for entry in self._entries)

    def __repr__(self) -> str:
        return f"<Transcript of {len(self._entries)} lines>"

    @property
    def commands(self) -> list[str]:
        """The client's lines (AUTH secrets masked)."""
        return [e.text for e in self._entries if e.direction == "C"]

    @property
    def replies(self) -> list[str]:
        """The server's reply lines, one per line of a multi-line reply."""
        return [e.text for e in self._entries if e.direction == "S"]

    @property
    def events(self) -> list[str]:
        return [e.text for e in self._entries if e.direction == "*"]

    def connection(self, number: int) -> Transcript:
        """Only the lines of one connection (numbered from 1 in accept order)."""
        return Transcript([e for e in self._entries if e.connection == number])

    @property
    def connections(self) -> int:
        """How many connections were recorded."""
        return max((e.connection for e in self._entries), default=0)


class Recorder:
    """Collects entries from the server side; read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[TranscriptEntry] = []
        self._connections = 0

    def new_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    def add(self, connection: int, peer: Any, direction: Direction, text: str) -> None:
        entry = TranscriptEntry(connection=connection, peer=peer, direction=direction, text=text)
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> Transcript:
        with self._lock:
            return Transcript(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def client_line(line: bytes, in_auth_exchange: bool) -> str:
    """The transcript text of a line the client sent, secrets masked."""
    if in_auth_exchange:
        # A reply to a 334 challenge is a credential (or part of one) except
        # for the "*" that cancels the exchange.
        return "*" if line.strip() == b"*" else MASK
    return sanitize(line).decode("utf-8", errors="backslashreplace")

