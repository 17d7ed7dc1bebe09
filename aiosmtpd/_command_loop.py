"""The command loop of an ``SMTP`` connection: received bytes, command
lines, and where each command runs (methods of ``SMTP``, written here).

Bytes land in the connection's receiver (``_receiver``).  A complete
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
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Optional, Union

from aiosmtpd._auth import sanitized_log
from aiosmtpd._command_gate import ENHANCED_CODES, CommandGate, Refusal, Why, split_line
from aiosmtpd._inline import (
    CLOSED,
    DRIVING,
    IDLE,
    NEXT,
    NEXT_TURN,
    SUSPENDED,
    TASK,
    Resume,
    Run,
)

if TYPE_CHECKING:  # pragma: no cover
    from aiosmtpd.smtp import SMTP

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


# Fairness: at most this many command lines of one connection are answered
# per event-loop callback; the rest wait for a later turn of the loop, so a
# client that pipelines thousands of commands slows only itself
# (docs/internals.rst, "Fairness").
LINES_PER_TURN = 64

# Commands that pass the door into user code whole (SMTP._user_code): they
# call it throughout (authenticators, AUTH mechanisms, handle_STARTTLS).
_TASK_COMMANDS = frozenset({"AUTH", "STARTTLS"})


# Receives the client's bytes and answers its command lines.

# -- Receiving ---------------------------------------------------------------------
#
# SMTP is also an asyncio.BufferedProtocol: the transport reads into a
# buffer of ours (get_buffer) rather than into a new bytes object per
# read, which on Linux costs an mmap, a mremap, a munmap and page faults
# for each read.  The buffer is shared by the connections of a thread:
# buffer_updated() copies what arrived into the connection's own buffer.


def get_buffer(self: SMTP, sizehint: int) -> memoryview:
    return _read_buffer()


def buffer_updated(self: SMTP, nbytes: int) -> None:
    data = _read_buffer()[:nbytes]
    if type(self).data_received is data_received:
        self._received(data)
    else:
        self.data_received(bytes(data))  # a subclass's override sees bytes


def data_received(self: SMTP, data: bytes) -> None:
    self._received(data)


def _received(self: SMTP, data: Union[bytes, memoryview]) -> None:
    if not self._receiver.feed(data):
        return  # said goodbye: what the client still sends is dropped
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
    if not self._reading_paused and self._receiver.backlog() and self.transport is not None:
        # The client sends faster than we answer or take its bytes.
        self._reading_paused = True
        self.transport.pause_reading()  # type: ignore[attr-defined]


def _resume_reading(self: SMTP) -> None:
    if self._reading_paused and self.transport is not None:
        self._reading_paused = False
        self.transport.resume_reading()  # type: ignore[attr-defined]


def _wait_for_data(self: SMTP) -> asyncio.Future[None]:
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


async def _readline(self: SMTP, limit: Optional[int] = None) -> Optional[bytes]:
    """Return the next LF-terminated line, or None if it was longer than
    ``limit`` (default: ``line_length_limit``) and has been discarded up
    to and including its LF."""
    receiver = self._receiver
    if limit is None:
        limit = self.line_length_limit
    while True:
        line = receiver.line(limit)
        if line is not None:
            return line if isinstance(line, bytes) else None  # None: TOO_LONG
        await self._wait_for_data()


async def _handle_client(self: SMTP) -> None:
    """Serve the connection: the PROXY header, the greeting, the commands.

    This is the coroutine upstream ran as the connection's Task, and code
    written for it overrides or patches it to choose what the client sees
    first; ``connection_made`` then runs the override in a Task instead of
    greeting by itself.
    """
    await self._serve_session(greeted=False)


async def _serve_session(self: SMTP, greeted: bool) -> None:
    await self._continue(self._open_session(greeted))


async def _open_session(self: SMTP, greeted: bool) -> bool:
    """Accept the PROXY header and greet, if not done yet; False closes."""
    if self._proxy_timeout is not None and not await self._accept_proxy_header():
        return False
    if not greeted:
        await self.push(f"220 {self.hostname} {self.__ident__}")
    self._begin_commands()
    return True


def _begin_commands(self: SMTP) -> None:
    """Start the per-connection command budgets, after the greeting."""
    self._gate = CommandGate(*self._call_limits)


def _lost_during_command(self: SMTP) -> None:
    log.info(
        "%r Connection lost during _handle_client()",
        self.session.peer if self.session else None,
    )
    if self.transport is not None:
        self.transport.close()


async def _serve_commands(self: SMTP) -> None:
    """Serve commands in the connection's Task.

    When commands may run inline, the Task ends as soon as no complete
    command line is waiting: ``data_received`` serves what follows.
    """
    receiver = self._receiver
    turn = LINES_PER_TURN
    while self.transport is not None and not self.transport.is_closing():
        if self._inline:
            if not receiver.has_line(self.line_length_limit):
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


async def _process_line(self: SMTP, line: Optional[bytes]) -> bool:
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
    # A goodbye (drain, deadline) waits while a command runs (_departure).
    departure = self._departure
    departure.busy = True
    try:
        if command in _TASK_COMMANDS:
            await self._user_code(method, parsed.arg)
        else:
            await method(parsed.arg)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as error:
        departure.busy = False
        return await self._reply_to_exception(error)
    departure.busy = False
    if departure.reply is not None:
        # A drain or a deadline waited for this command to end.
        return not self._leaving_now()
    return True


def _close(self: SMTP) -> None:
    if self._cork is not None:
        self._flush()  # what was said before closing is still sent
    if self.transport is not None:
        self.transport.close()

# -- Running commands inline (see _inline) --------------------------------------


def _to(self: SMTP, state: Run) -> None:
    """Change who serves the connection (the moves allowed: _inline.NEXT)."""
    assert state in NEXT[self._run], f"{self._run.value} -> {state.value}"
    self._run = state


def _pump(self: SMTP) -> None:
    """Answer the complete command lines in the buffer, inline, up to
    LINES_PER_TURN of them; the rest on a later turn of the loop."""
    try:
        self._answer_lines()
    finally:
        if self._cork is not None:
            self._flush()


def _answer_lines(self: SMTP) -> None:
    """_pump's loop."""
    receiver = self._receiver
    limit = self.line_length_limit
    turn = LINES_PER_TURN
    while self._run is IDLE:
        transport = self.transport
        if transport is None or transport.is_closing():
            self._to(CLOSED)
            return
        if turn == 0 and receiver.has_line(limit):
            # Bytes arriving before the next turn are only buffered (and
            # reading pauses if they pile up).
            self._to(NEXT_TURN)
            if receiver.backlog() and not self._reading_paused:
                self._reading_paused = True
                transport.pause_reading()  # type: ignore[attr-defined]
            self._turn = self.loop.call_soon(self._next_turn)
            return
        line = receiver.line(limit)
        if line is None:
            if self._reading_paused:
                self._resume_reading()
            return
        turn -= 1
        if self._cork is None and receiver.buf and receiver.has_line(limit):
            # Pipelined: more lines wait behind this one.  Their replies
            # go out together when no complete line is left (_flush).
            self._cork = []
        # None: TOO_LONG, a line that was too long and has been dropped.
        self._drive(self._process_line(line if isinstance(line, bytes) else None))


def _next_turn(self: SMTP) -> None:
    """Go on answering the lines _pump left for this turn of the loop."""
    self._turn = None
    self._to(IDLE)
    self._pump()


def _drive(
    self: SMTP,
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


async def _continue(self: SMTP, first: Optional[Awaitable[bool]] = None) -> None:
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


def _stop_commands(self: SMTP) -> None:
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
