"""Hook, command and mechanism discovery by attribute name, cached per class.

Handlers and ``SMTP`` subclasses are plain classes whose ``handle_*``,
``smtp_*`` and ``auth_*`` attributes are found by name.  ``dir()`` is costly
and this runs for every connection, so the class part is computed once.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Optional

from aiosmtpd._inline import is_own

_members_cache: dict[tuple[type, str], tuple[str, ...]] = {}


def names_with_prefix(obj: Any, prefix: str) -> list[str]:
    """``[n for n in dir(obj) if n.startswith(prefix)]``, with the class part
    of ``dir()`` computed once per class: it runs for every connection."""
    cls = type(obj)
    if cls.__dir__ is not object.__dir__ or isinstance(obj, type):  # type: ignore[comparison-overlap]
        return [n for n in dir(obj) if n.startswith(prefix)]
    key = (cls, prefix)
    names = _members_cache.get(key)
    if names is None:
        names = _members_cache[key] = tuple(n for n in dir(cls) if n.startswith(prefix))
    own = [n for n in getattr(obj, "__dict__", ()) if n.startswith(prefix) and n not in names]
    return [*names, *own] if own else list(names)


# Shared by every connection whose handler has no hooks; never mutated.
NO_HOOKS: dict[str, Callable[..., Any]] = {}

_command_cache: dict[type, frozenset[str]] = {}


def command_names(server: Any) -> frozenset[str]:
    """The verbs of a server's ``smtp_<VERB>`` methods, computed once per class."""
    cls = type(server)
    names = _command_cache.get(cls)
    if names is None:
        names = _command_cache[cls] = frozenset(n[5:] for n in dir(cls) if n.startswith("smtp_"))
    own = [n[5:] for n in getattr(server, "__dict__", ()) if n.startswith("smtp_")]
    return names.union(own) if own else names


_off_commands: dict[tuple[type, frozenset[str], str], frozenset[str]] = {}


def without_command(cls: type, names: frozenset[str], verb: str) -> frozenset[str]:
    """``names`` without ``verb`` when ``cls`` has the engine's own
    ``smtp_<verb>``: an opt-in command that is off is no command at all (a
    subclass's own method of that name stays)."""
    key = (cls, names, verb)
    commands = _off_commands.get(key)
    if commands is None:
        commands = names
        if verb in names and is_own(cls, "smtp_" + verb):
            commands = names - {verb}
        if len(_off_commands) < 256:
            _off_commands[key] = commands
    return commands


_ehlo_arity_cache: dict[Any, int] = {}


def ehlo_hook_version(hook: Optional[Callable[..., Any]]) -> Optional[str]:
    """Which ``handle_EHLO`` the handler has: ``None`` (none), ``"new"``
    (5 arguments) or ``"old"`` (4, deprecated)."""
    if hook is None:
        return None
    arity = ehlo_hook_arity(hook)
    if arity == 5:
        return "new"
    if arity == 4:
        warnings.warn(
            "Use the 5-argument handle_EHLO() hook instead of "
            "the 4-argument handle_EHLO() hook; "
            "support for the 4-argument handle_EHLO() hook will be "
            "removed in version 2.0",
            DeprecationWarning, stacklevel=3,  # SMTP()'s caller
        )
        return "old"
    raise RuntimeError("Unsupported EHLO Hook")


def ehlo_hook_arity(hook: Callable[..., Any]) -> int:
    """The number of parameters of a bound ``handle_EHLO`` (-1 for ``*args``)."""
    func = getattr(hook, "__func__", hook)
    try:
        return _ehlo_arity_cache[func]
    except (KeyError, TypeError):
        pass
    params = inspect.signature(hook).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        arity = -1
    else:
        arity = len(params)
    try:
        _ehlo_arity_cache[func] = arity
    except TypeError:  # pragma: no cover - unhashable callables
        pass
    return arity
