"""Running command coroutines inline, without a Task per command.

A Task per connection costs an event-loop iteration (a wake-up) for every
command, and memory for every idle connection.  So ``SMTP`` answers a command
right inside ``data_received``, driving the command's coroutine by hand: the
built-in commands only ever wait for client bytes, and those arrive through
``data_received`` too.  Before handler code runs, a command awaits :data:`HOP`
and the rest of it moves into a Task (:class:`Resume`), so that handler code
always runs in a Task, as it does upstream.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Coroutine, Generator
from typing import Any, Optional, TypeVar


class Run(enum.Enum):
    """Who serves a connection's commands now: its one piece of execution
    state (docs/internals.rst, "Inline commands and the Task")."""

    STARTING = "starting"  # before connection_made() decided
    IDLE = "idle"  # inline, at the prompt: the next read answers the next line
    DRIVING = "driving"  # a command's coroutine is being run by hand right now
    SUSPENDED = "suspended"  # an inline command waits for client bytes
    NEXT_TURN = "next turn"  # lines wait for the next turn of the loop (fairness)
    TASK = "task"  # the connection's Task serves it
    CLOSED = "closed"  # nothing serves it any more

    # Enum's own __hash__ is Python code; NEXT is looked up at every move.
    __hash__ = object.__hash__


# Module-level names: Enum attribute access costs ~45 ns before Python 3.12,
# and the command loop tests the state several times per command.
STARTING, IDLE, DRIVING, SUSPENDED = Run.STARTING, Run.IDLE, Run.DRIVING, Run.SUSPENDED
NEXT_TURN, TASK, CLOSED = Run.NEXT_TURN, Run.TASK, Run.CLOSED

#: The moves between states; SMTP._to() asserts every change against it.
NEXT: dict[Run, frozenset[Run]] = {
    Run.STARTING: frozenset({Run.IDLE, Run.TASK, Run.CLOSED}),
    Run.IDLE: frozenset({Run.DRIVING, Run.NEXT_TURN, Run.TASK, Run.CLOSED}),
    Run.DRIVING: frozenset({Run.IDLE, Run.SUSPENDED, Run.TASK, Run.CLOSED}),
    Run.SUSPENDED: frozenset({Run.DRIVING}),
    Run.NEXT_TURN: frozenset({Run.IDLE, Run.CLOSED}),
    Run.TASK: frozenset({Run.IDLE, Run.CLOSED}),
    Run.CLOSED: frozenset(),
}


class _Hop:
    """Awaited by a command run inline just before it calls handler code."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield self


HOP = _Hop()


class Resume:
    """Finish, inside a Task, a command coroutine started inline: pass the
    Task what the command waits for, and return the command's result."""

    __slots__ = ("_command", "_awaited")

    def __init__(self, command: Coroutine[Any, Any, bool], awaited: Any) -> None:
        self._command = command
        self._awaited = awaited

    def __await__(self) -> Generator[Any, Any, bool]:
        command, awaited = self._command, self._awaited
        while True:
            error: Optional[BaseException] = None
            if awaited is not HOP:
                try:
                    yield awaited
                except GeneratorExit:  # closed with its Task: close the command too
                    command.close()
                    raise
                except BaseException as exc:  # the Task was cancelled
                    error = exc
            try:
                awaited = command.send(None) if error is None else command.throw(error)
            except StopIteration as done:
                return bool(done.value)


# The classes of aiosmtpd whose coroutine methods are known to wait only for
# client bytes or to pass SMTP._user_code before user code; each registers itself with
# @engine_class, so the rule does not depend on module or class names.
_ENGINE_CLASSES: set[type] = set()
_inline_cache: dict[type, bool] = {}

_T = TypeVar("_T", bound=type)


def engine_class(cls: _T) -> _T:
    """Mark ``cls`` as part of aiosmtpd's engine (see runs_commands_inline)."""
    _ENGINE_CLASSES.add(cls)
    return cls


def _defining_class(cls: type, name: str) -> Optional[type]:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    return None


_own_cache: dict[tuple[type, str], bool] = {}


def is_own(cls: type, name: str) -> bool:
    """Whether ``cls.<name>`` is aiosmtpd's own rather than a subclass's
    (asked at every DATA: cached per class)."""
    key = (cls, name)
    own = _own_cache.get(key)
    if own is None:
        own = _own_cache[key] = _defining_class(cls, name) in _ENGINE_CLASSES
    return own


def runs_commands_inline(cls: type) -> bool:
    """Whether instances of the ``SMTP`` class ``cls`` may run commands inline.

    The rule (docs/internals.rst, "Inline commands and the Task"): a class
    that sets ``_inline_commands`` gets what it says; otherwise not when a
    class outside the engine overrides or adds a coroutine method (its code
    may need a Task, or wait for something else), or chooses the command
    methods itself: such subclasses keep one Task per connection.
    """
    inline = _inline_cache.get(cls)
    if inline is None:
        forced = getattr(cls, "_inline_commands", None)
        if forced is not None:
            inline = bool(forced)
        else:
            inline = True
            for klass in cls.__mro__:
                if klass in _ENGINE_CLASSES or klass.__module__.startswith("asyncio"):
                    continue
                for name, value in vars(klass).items():
                    func = getattr(value, "__func__", value)
                    if name == "_command_method" or inspect.iscoroutinefunction(func):
                        inline = False
        _inline_cache[cls] = inline
    return inline
