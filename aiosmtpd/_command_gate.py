"""The checks a command line passes before its command runs.  Pure: no I/O.

A line goes in; a decision comes out: the command to run (:class:`Command`)
or the reply the server sends by itself (:class:`Refusal`, which may close the
connection).  The checks run in 1.4.6's order, which decides which reply a
line that breaks several rules gets (docs/internals.rst, "The command gate"):

1. the line is too long (the framing dropped it) -> ``500``;
2. empty line, or a verb that is not ASCII -> ``500 Error: bad syntax``;
3. an argument that is not ASCII (UTF-8 with SMTPUTF8) -> ``500 Error: strict ASCII mode``;
4. longer than the command's size limit -> ``500 Command line too long``;
5. the STARTTLS handshake was refused by ``handle_STARTTLS`` -> ``554``
   (but ``QUIT``);
6. ``require_starttls`` and no TLS yet -> ``530`` (but the allowed commands);
7. the command's call budget is spent -> ``421`` and close;
8. an unknown command -> ``500``, or ``502`` and close once the
   unrecognised-command budget is spent.

The per-connection budgets (7, 8) live here; everything else the caller
passes in, since subclasses may change it (sizes, the allowed set, which
commands exist).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple, Optional, Union

from aiosmtpd._grammar import control_chars_to_question_marks

#: Unrecognised commands a client may send before it is disconnected.
BOGUS_LIMIT = 5
#: Calls of each command with ``command_call_limit`` on and no number for it.
CALL_LIMIT_DEFAULT = 20


def call_limits(
    command_call_limit: Union[int, Mapping[str, int], None],
) -> tuple[Optional[Mapping[str, int]], int]:
    """``SMTP(command_call_limit=...)`` as the gate's (per-command limits,
    default limit); ``None`` limits: no call limits at all."""
    if command_call_limit is None:
        return None, CALL_LIMIT_DEFAULT
    if isinstance(command_call_limit, int):
        return {}, command_call_limit
    if isinstance(command_call_limit, dict):
        if not all(isinstance(v, int) for v in command_call_limit.values()):
            raise TypeError("All command_call_limit values must be int")
        return command_call_limit, command_call_limit.get("*", CALL_LIMIT_DEFAULT)
    raise TypeError("command_call_limit must be int or Dict[str, int]")


class Why(enum.Enum):
    """Why the gate refused a line: what the server logs."""

    TOO_LONG = "too long"
    BAD_SYNTAX = "bad syntax"
    NOT_ASCII = "not ascii"
    TLS_REFUSED = "tls refused"
    STARTTLS_FIRST = "starttls first"
    OVER_LIMIT = "over limit"
    UNRECOGNISED = "unrecognised"
    TOO_MANY_BOGUS = "too many bogus"


class Refusal(NamedTuple):
    """A reply the server sends without running a command."""

    reply: str
    why: Why
    close: bool = False


class Command(NamedTuple):
    """A command line split into its upper-cased verb and its argument."""

    verb: str
    arg: Optional[str]
    #: The line without its line ending: its length is what size limits count.
    line: bytes


_new_tuple = tuple.__new__

#: The enhanced status code (RFC 3463) of the refusals whose text has none,
#: sent with ENHANCEDSTATUSCODES on (docs/extensions.rst).
ENHANCED_CODES = {
    Why.TOO_LONG: "5.5.2",
    Why.BAD_SYNTAX: "5.5.2",
    Why.NOT_ASCII: "5.5.2",
    Why.TLS_REFUSED: "5.7.0",
    Why.STARTTLS_FIRST: "5.7.0",
    Why.UNRECOGNISED: "5.5.2",
}

_TOO_LONG = Refusal("500 Command line too long", Why.TOO_LONG)
_BAD_SYNTAX = Refusal("500 Error: bad syntax", Why.BAD_SYNTAX)
_NOT_ASCII = Refusal("500 Error: strict ASCII mode", Why.NOT_ASCII)
_TLS_REFUSED = Refusal("554 Command refused due to lack of security", Why.TLS_REFUSED)
_STARTTLS_FIRST = Refusal("530 Must issue a STARTTLS command first", Why.STARTTLS_FIRST)
_TOO_MANY_BOGUS = Refusal(
    "502 5.5.1 Too many unrecognized commands, goodbye.", Why.TOO_MANY_BOGUS, close=True
)


def split_line(line: Optional[bytes], utf8: bool) -> Union[Command, Refusal]:
    """Checks 1-3: split a line (``None``: too long, already dropped)."""
    if line is None:
        return _TOO_LONG
    line = line.rstrip(b"\r\n")
    if not line:
        return _BAD_SYNTAX
    verb, _, rest = line.partition(b" ")
    try:
        command = verb.upper().decode("ascii")
    except UnicodeDecodeError:
        return _BAD_SYNTAX
    arg: Optional[str] = None
    if rest:
        rest = rest.strip()
        try:
            if utf8:
                arg = rest.decode("utf-8", errors="surrogateescape")
            else:
                arg = rest.decode("ascii")
        except UnicodeDecodeError:
            return _NOT_ASCII
    return _new_tuple(Command, (command, arg, line))  # Command(...) minus a frame


class CommandSizeLimits(dict[str, int]):
    """Per-instance command size limits; missing keys give the default
    without being inserted (upstream's class-wide defaultdict grew and was
    shared between connections; a deviation listed in CHANGES.rst)."""

    __slots__ = ("default",)

    def __init__(self, default: int, *args: Any) -> None:
        super().__init__(*args)
        self.default = default

    def __missing__(self, key: str) -> int:
        return self.default


class CommandGate:
    """Checks 4-8 for one connection, with its call and unrecognised-command
    budgets (they start when the greeting has been sent)."""

    __slots__ = ("_calls", "_call_default", "_bogus")

    def __init__(
        self,
        call_limits: Optional[Mapping[str, int]] = None,
        call_limit_default: int = 20,
        bogus_limit: int = BOGUS_LIMIT,
    ) -> None:
        # None: no call limits at all (the default, as upstream).
        self._calls = None if call_limits is None else dict(call_limits)
        self._call_default = call_limit_default
        self._bogus = bogus_limit

    def admit(
        self,
        command: Command,
        size_limit: int,
        tls_refused: bool = False,
        starttls_missing: bool = False,
        allowed_before_starttls: Collection[str] = (),
        known: bool = True,
    ) -> Optional[Refusal]:
        """``None`` if ``command`` may run; else the reply to send instead.

        ``tls_refused``: ``handle_STARTTLS`` refused the handshake.
        ``starttls_missing``: ``require_starttls`` is on and TLS is not.
        ``known``: the server has a method for the verb.
        """
        verb = command.verb
        if len(command.line) > size_limit:
            return _TOO_LONG
        if tls_refused and verb != "QUIT":
            return _TLS_REFUSED
        if starttls_missing and verb not in allowed_before_starttls:
            return _STARTTLS_FIRST
        calls = self._calls
        if calls is not None:
            budget = calls.get(verb, self._call_default)
            if budget < 1:
                # The verb may hold control bytes (even a bare CR): never echo them.
                shown = control_chars_to_question_marks(verb)
                return Refusal(f"421 4.7.0 {shown} sent too many times", Why.OVER_LIMIT, True)
            calls[verb] = budget - 1
        if not known:
            self._bogus -= 1
            if self._bogus < 1:
                return _TOO_MANY_BOGUS
            shown = control_chars_to_question_marks(verb)
            return Refusal(f'500 Error: command "{shown}" not recognized', Why.UNRECOGNISED)
        return None
