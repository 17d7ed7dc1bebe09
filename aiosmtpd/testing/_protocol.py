"""The SMTP protocol of the test servers: records the session, injects faults.

It is the library's own :class:`~aiosmtpd.smtp.SMTP` with a few override
points wrapped, so that what the tests see is what production code would do
whenever no fault is configured.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Optional, Union

from aiosmtpd._framing import DataReader
from aiosmtpd.smtp import SMTP, syntax
from aiosmtpd.testing._faults import CONNECT, EOM, Fault, FaultPlan, drop
from aiosmtpd.testing._transcript import Direction, Recorder, client_line

CommandMethod = Callable[[Optional[str]], Awaitable[Any]]


class RecordingSMTP(SMTP):
    """``SMTP`` plus a transcript and a fault plan (both optional)."""

    def __init__(
        self,
        handler: Any,
        *,
        recorder: Optional[Recorder] = None,
        plan: Optional[FaultPlan] = None,
        require_auth: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._recorder = recorder
        self._plan = plan
        self._connection = 0
        self._in_auth_exchange = False
        if require_auth:
            # Set after construction: passing auth_required to SMTP together
            # with auth_require_tls=False warns on every connection, which is
            # noise in a test run (and an error under -W error).
            self._auth_required = True

    # -- Transcript ---------------------------------------------------------------

    def _record(self, direction: Direction, text: str) -> None:
        if self._recorder is not None:
            peer = self.session.peer if self.session is not None else None
            self._recorder.add(self._connection, peer, direction, text)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:
            # Called again after STARTTLS: the same connection, now encrypted.
            super().connection_made(transport)
            return
        if self._recorder is not None:
            self._connection = self._recorder.new_connection()
        super().connection_made(transport)
        peer = self.session.peer if self.session is not None else None
        self._record("*", f"connected from {_show_peer(peer)}")
        if self._tls_active:
            self._record("*", "TLS (implicit)")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._record("*", "connection closed")
        super().connection_lost(exc)

    async def _write(self, data: bytes, lines: Sequence[bytes] = ()) -> None:
        # Recorded before the write: once the client has a reply, the test
        # can already find it in the transcript.
        if self.transport is not None:
            shown = lines or (data,)
            for line in shown:
                self._record("S", line.decode("utf-8", errors="backslashreplace"))
            self._in_auth_exchange = shown[-1][:3] == b"334"
        await super()._write(data, lines)

    async def _readline(self, limit: Optional[int] = None) -> Optional[bytes]:
        line = await super()._readline(limit)
        if line is None:
            self._record("C", "<line too long>")
        else:
            self._record("C", client_line(line.rstrip(b"\r\n"), self._in_auth_exchange))
        return line

    async def _read_data(self) -> DataReader:
        reader = await super()._read_data()
        size = reader.size
        self._record("*", f"message data ({size} bytes)" if reader.error is None
                     else f"message data refused ({reader.error.name})")
        return reader

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: Optional[str]) -> None:
        was_active = self._tls_active
        await super().smtp_STARTTLS(arg)
        if self._tls_active and not was_active:
            self._record("*", "TLS (STARTTLS)")

    # -- Faults ---------------------------------------------------------------------

    async def _apply(self, fault: Fault) -> bool:
        """Act out a fault; True if it replaces the normal processing."""
        self._record("*", fault.describe())
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.reply_text is not None:
            for line in fault.reply_text.split("\n"):
                await self.push(line)
        if (fault.close or fault.reset) and self.transport is not None:
            drop(self.transport, reset=fault.reset)
        return fault.replaces_processing

    def _take(self, point: str, argument: str) -> Optional[Fault]:
        if self._plan is None or not self._plan.covers(point):
            return None
        return self._plan.take(point, argument)

    async def _handle_client(self) -> None:
        # Overriding it makes connection_made() leave the greeting to it:
        # through push() it gets recorded, and a CONNECT fault can delay or
        # replace it.
        fault = self._take(CONNECT, "")
        if fault is not None and await self._apply(fault):
            return
        await super()._handle_client()

    def _command_method(self, command: str) -> Optional[CommandMethod]:
        method = super()._command_method(command)
        if method is None or self._plan is None or not self._plan.covers(command):
            return method

        @functools.wraps(method)
        async def with_faults(arg: Optional[str]) -> Any:
            fault = self._take(command, arg or "")
            if fault is not None and await self._apply(fault):
                return None
            return await method(arg)

        return with_faults

    async def _deliver(self) -> None:
        if self._plan is not None and self._plan.covers(EOM) and self.envelope is not None:
            content = self.envelope.original_content or b""
            fault = self._take(EOM, content.decode("latin-1"))
            if fault is not None and await self._apply(fault):
                self._set_post_data_state()
                return
        await super()._deliver()


def _show_peer(peer: Union[None, str, tuple[Any, ...]]) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
