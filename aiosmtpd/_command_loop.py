"""The command loop of an ``SMTP`` connection: receive buffer, command
lines, and where each command runs.

Bytes land in one bytearray per connection (``data_received``).  A complete
command line is answered right there, inline, when the class allows it (see
``_inline``): its coroutine is driven by hand and only moves into a Task
before handler code runs or when it must wait for something other than
client bytes.  Otherwise, and for subclasses that override coroutine methods,
the connection's Task reads the lines (``_serve_commands``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from aiosmtpd._auth import sanitized_log
from aiosmtpd._command_gate import ENHANCED_CODES, CommandGate, Refusal, Why, split_line
from aiosmtpd._inline import (
    CLOSED,
    DRIVING,
    HOP,
    IDLE,
    NEXT,
    NEXT_TURN,
    SUSPENDED,
    TASK,
    Resume,
    Run,
    engine_class,
)

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import Session

log = logging.getLogger("mail.log")

# The read buffer of each thread's connections (see get_buffer).
_READ_SIZE = 256 * 1024
_thread_local = threading.local()


def _read_buffer() -> memoryview:
    try:
        return _thread_local.read_buffer  # type: ignore[no-any-return]
    except AttributeError:
        view = _thread_local.read_buffer = memoryview(bytearray(_READ_SIZE))
        return view


# Stop reading from a client whose unprocessed commands pile up past this,
# or, in a message, whose bytes do (a slow stream hook: backpressure).
_MAX_COMMAND_BUFFER = 64 * 1024
_MAX_MESSAGE_BUFFER = 1024 * 1024

# Fairness: at most this many command lines of one connection are answered
# per event-loop callback; the rest wait for a later turn of the loop, so a
# client that pipelines thousands of commands slows only itself
# (docs/internals.rst, "Fairness").
LINES_PER_TURN = 64

# Commands that always run in a Task: they call handler code throughout.
_TASK_COMMANDS = frozenset({"AUTH", "STARTTLS"})


@engine_class
class CommandLoopMixin:
    """Receives the client's bytes and answers its command lines."""

    if TYPE_CHECKING:  # pragma: no cover - provided by SMTP
        loop: asyncio.AbstractEventLoop
        transport: Optional[asyncio.BaseTransport]
        session: Optional[Session]
        hostname: str
        enable_SMTPUTF8: bool
        require_starttls: Any
        command_size_limit: int
        command_size_limits: Any
        line_length_limit: int
        __ident__: str
        _buf: bytearray
        _waiter: Optional[asyncio.Future[None]]
        _reading_paused: bool
        _in_data: bool
        _handler_coroutine: Optional[asyncio.Task[None]]
        _inline: bool
        _run: Run
        _suspended: Optional[Coroutine[Any, Any, bool]]
        _turn: Optional[asyncio.Handle]
        _call_limit_base: Optional[Mapping[str, int]]
        _call_limit_default: int
        _gate: CommandGate
        @property
        def _tls_active(self) -> bool: ...
        _tls_handshake_okay: bool
        _proxy_timeout: Optional[float]
        _last_activity: float
        _timeout_handle: Optional[asyncio.TimerHandle]
        _busy: bool
        _goodbye: Optional[str]
        _cork: Optional[list[bytes]]
        _linger: Optional[asyncio.TimerHandle]

        def _flush(self) -> None: ...
        def _code(self, reply: str, enhanced: Optional[str]) -> str: ...

        def _leaving_now(self) -> bool: ...

        async def push(self, status: Union[str, bytes]) -> None: ...
        async def _reply_to_exception(self, error: Exception) -> bool: ...
        async def _accept_proxy_header(self) -> bool: ...
        def _allowed_before_starttls(self) -> frozenset[str]: ...
        def _reset_timeout(self) -> None: ...
        def _command_method(
            self, command: str
        ) -> Optional[Callable[[Optional[str]], Awaitable[Any]]]: ...

    # -- Receiving ---------------------------------------------------------------------
    #
    # SMTP is also an asyncio.BufferedProtocol: the transport reads into a
    # buffer of ours (get_buffer) rather than into a new bytes object per
    # read, which on Linux costs an mmap, a mremap, a munmap and page faults
    # for each read.  The buffer is shared by the connections of a thread:
    # buffer_updated() copies what arrived into the connection's own buffer.

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        data = _read_buffer()[:nbytes]
        if type(self).data_received is CommandLoopMixin.data_received:
            self._received(data)
        else:
            self.data_received(bytes(data))  # a subclass's override sees bytes

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def _received(self, data: Union[bytes, memoryview]) -> None:
        if self._linger is not None:
            return  # said goodbye: what the client still sends is dropped
        buf = self._buf
        buf += data
        run = self._run
        if run is SUSPENDED:
            # A command run inline waits for these bytes (in DATA, say).
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            assert self._suspended is not None
            self._drive(self._suspended)
            self._pump()
            return
        if run is IDLE:
            self._pump()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if (
            len(buf) > (_MAX_MESSAGE_BUFFER if self._in_data else _MAX_COMMAND_BUFFER)
            and not self._reading_paused
            and self.transport is not None
        ):
            # The client sends faster than we answer or take its bytes.
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]

    def _wait_for_data(self) -> asyncio.Future[None]:
        """Return a future that completes when more data has arrived.

        A plain function, not a coroutine: a connection waiting here (in
        DATA, say) keeps one coroutine frame less in memory.
        """
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if self._reading_paused:
            self._resume_reading()
        self._waiter = waiter = self.loop.create_future()
        return waiter

    # -- The command loop -----------------------------------------------------------

    async def _readline(self, limit: Optional[int] = None) -> Optional[bytes]:
        """Return the next LF-terminated line, or None if it was longer than
        ``limit`` (default: ``line_length_limit``) and has been discarded up
        to and including its LF."""
        buf = self._buf
        if limit is None:
            limit = self.line_length_limit
        while True:
            i = buf.find(b"\n", 0, limit + 1)
            if i >= 0:
                line = bytes(buf[: i + 1])
                del buf[: i + 1]
                return line
            if len(buf) > limit:
                break
            await self._wait_for_data()
        # Over-long line: drop it, however long it is, without keeping it.
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                del buf[: i + 1]
                return None
            buf.clear()
            await self._wait_for_data()

    async def _handle_client(self) -> None:
        """Serve the connection: the PROXY header, the greeting, the commands.

        This is the coroutine upstream ran as the connection's Task, and code
        written for it overrides or patches it to choose what the client sees
        first; ``connection_made`` then runs the override in a Task instead of
        greeting by itself.
        """
        await self._serve_session(greeted=False)

    async def _serve_session(self, greeted: bool) -> None:
        await self._continue(self._open_session(greeted))

    async def _open_session(self, greeted: bool) -> bool:
        """Accept the PROXY header and greet, if not done yet; False closes."""
        if self._proxy_timeout is not None and not await self._accept_proxy_header():
            return False
        if not greeted:
            await self.push(f"220 {self.hostname} {self.__ident__}")
        self._begin_commands()
        return True

    def _begin_commands(self) -> None:
        """Start the per-connection command budgets, after the greeting."""
        self._gate = CommandGate(self._call_limit_base, self._call_limit_default)

    def _lost_during_command(self) -> None:
        log.info(
            "%r Connection lost during _handle_client()",
            self.session.peer if self.session else None,
        )
        if self.transport is not None:
            self.transport.close()

    async def _serve_commands(self) -> None:
        """Serve commands in the connection's Task.

        When commands may run inline, the Task ends as soon as no complete
        command line is waiting: ``data_received`` serves what follows.
        """
        buf = self._buf
        turn = LINES_PER_TURN
        while self.transport is not None and not self.transport.is_closing():
            if self._inline:
                limit = self.line_length_limit
                if buf.find(b"\n", 0, limit + 1) < 0 and len(buf) <= limit:
                    self._to(IDLE)
                    self._resume_reading()  # paused if commands piled up meanwhile
                    return
            turn -= 1
            if turn < 0:
                # Pipelined lines answered without a pause: let others in.
                await asyncio.sleep(0)
                turn = LINES_PER_TURN
            line = await self._readline()
            if not await self._process_line(line):
                return

    async def _process_line(self, line: Optional[bytes]) -> bool:
        """Answer one command line; False ends the session."""
        assert self.session is not None
        peer = self.session.peer
        if line is not None and log.isEnabledFor(logging.INFO):  # DEBUG implies INFO
            if log.isEnabledFor(logging.DEBUG):
                sanitized_log(log.debug, "_handle_client readline: %r", line)
            sanitized_log(log.info, "%r >> %r", peer, line.rstrip(b"\r\n"))
        parsed = split_line(line, self.enable_SMTPUTF8)
        if isinstance(parsed, Refusal):
            await self.push(self._code(parsed.reply, ENHANCED_CODES.get(parsed.why)))
            return True
        command = parsed.verb
        method = self._command_method(command)
        starttls_missing = bool(self.require_starttls) and not self._tls_active
        # Positional: this runs for every command.
        refusal = self._gate.admit(
            parsed,
            self.command_size_limits[command]
            if self.session.extended_smtp
            else self.command_size_limit,
            not self._tls_handshake_okay,
            starttls_missing,
            self._allowed_before_starttls() if starttls_missing else (),
            method is not None,
        )
        if refusal is not None:
            why = refusal.why
            if why is Why.OVER_LIMIT:
                log.warning("%r over limit for %s", peer, command)
            elif why is Why.UNRECOGNISED or why is Why.TOO_MANY_BOGUS:
                log.warning("%r unrecognised: %s", peer, command)
                if why is Why.TOO_MANY_BOGUS:
                    log.warning("%r too many bogus commands", peer)
            await self.push(self._code(refusal.reply, ENHANCED_CODES.get(why)))
            if refusal.close:
                self._close()
                return False
            return True
        assert method is not None
        # _reset_timeout(), inlined: this runs for every command.
        self._last_activity = self.loop.time()
        if self._timeout_handle is None:
            self._reset_timeout()
        if self._run is DRIVING and command in _TASK_COMMANDS:
            await HOP
        self._busy = True
        try:
            await method(parsed.arg)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as error:
            self._busy = False
            return await self._reply_to_exception(error)
        self._busy = False
        if self._goodbye is not None:
            # A drain or a deadline waited for this command to end.
            return not self._leaving_now()
        return True

    def _close(self) -> None:
        if self._cork is not None:
            self._flush()  # what was said before closing is still sent
        if self.transport is not None:
            self.transport.close()

    # -- Running commands inline (see _inline) --------------------------------------

    def _to(self, state: Run) -> None:
        """Change who serves the connection (the moves allowed: _inline.NEXT)."""
        assert state in NEXT[self._run], f"{self._run.value} -> {state.value}"
        self._run = state

    def _pump(self) -> None:
        """Answer the complete command lines in the buffer, inline, up to
        LINES_PER_TURN of them; the rest on a later turn of the loop."""
        try:
            self._answer_lines()
        finally:
            if self._cork is not None:
                self._flush()

    def _answer_lines(self) -> None:
        """_pump's loop."""
        buf = self._buf
        limit = self.line_length_limit
        turn = LINES_PER_TURN
        while self._run is IDLE:
            transport = self.transport
            if transport is None or transport.is_closing():
                self._to(CLOSED)
                return
            i = buf.find(b"\n", 0, limit + 1)
            if i < 0:
                if len(buf) > limit:
                    # Too long: the Task's _readline drops it as it arrives.
                    self._to(TASK)
                    self._handler_coroutine = self.loop.create_task(self._continue())
                elif self._reading_paused:
                    self._resume_reading()
                return
            if turn == 0:
                # Bytes arriving before the next turn are only buffered (and
                # reading pauses if they pile up).
                self._to(NEXT_TURN)
                if len(buf) > _MAX_COMMAND_BUFFER and not self._reading_paused:
                    self._reading_paused = True
                    transport.pause_reading()  # type: ignore[attr-defined]
                self._turn = self.loop.call_soon(self._next_turn)
                return
            turn -= 1
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            if self._cork is None and buf.find(b"\n", 0, limit + 1) >= 0:
                # Pipelined: more lines wait behind this one.  Their replies
                # go out together when no complete line is left (_flush).
                self._cork = []
            self._drive(self._process_line(line))

    def _next_turn(self) -> None:
        """Go on answering the lines _pump left for this turn of the loop."""
        self._turn = None
        self._to(IDLE)
        self._pump()

    def _drive(
        self,
        command: Coroutine[Any, Any, bool],
        error: Optional[BaseException] = None,
    ) -> None:
        """Run ``command`` until it ends, waits for client bytes (it is
        resumed by data_received) or must move into a Task."""
        self._suspended = None
        # _to(), inlined for the two moves every command makes.
        assert DRIVING in NEXT[self._run], f"{self._run.value} -> driving"
        self._run = DRIVING
        try:
            awaited = command.send(None) if error is None else command.throw(error)
        except StopIteration as done:
            self._run = IDLE if done.value else CLOSED
            return
        except (asyncio.CancelledError, ConnectionResetError):
            self._to(CLOSED)
            self._lost_during_command()
            return
        except Exception:
            # Only a bug gets here; the Task would have died with it too.
            self._to(CLOSED)
            log.exception("%r SMTP session failed", self.session.peer if self.session else None)
            self._close()
            return
        if awaited is self._waiter:
            self._to(SUSPENDED)
            self._suspended = command
        else:
            self._to(TASK)
            self._handler_coroutine = self.loop.create_task(
                self._continue(Resume(command, awaited))
            )

    async def _continue(self, first: Optional[Awaitable[bool]] = None) -> None:
        """The connection's Task: finish ``first`` (opening the session, or a
        command moved out of _drive), then serve the commands waiting."""
        try:
            if first is None or await first:
                await self._serve_commands()
        except (asyncio.CancelledError, ConnectionResetError) as error:
            if self._run is TASK:
                self._to(CLOSED)
            self._lost_during_command()
            if isinstance(error, asyncio.CancelledError):
                raise
        if self._run is TASK:  # not handed back to data_received
            self._to(CLOSED)

    def _stop_commands(self) -> None:
        """The client went away (EOF or lost): end whatever serves it."""
        run = self._run
        if run is TASK:
            task = self._handler_coroutine
            self._to(CLOSED)
            if task is not None and not task.done():
                task.cancel()
                coro = task.get_coro()
                if inspect.iscoroutine(coro) and (
                    inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
                ):
                    # Cancelled before its first step (the client's EOF came
                    # in the same callback): its own cleanup never runs.
                    self._lost_during_command()
        elif run is SUSPENDED:
            assert self._suspended is not None
            self._drive(self._suspended, asyncio.CancelledError())
        elif run is IDLE or run is NEXT_TURN:
            # Idle, or waiting for the next turn with lines still to answer:
            # like a cancelled Task, the rest of them go unanswered.
            if self._turn is not None:
                self._turn.cancel()
                self._turn = None
            self._to(CLOSED)
            self._lost_during_command()
