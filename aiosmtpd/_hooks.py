"""The vocabulary shared by commands and hooks: ``MISSING`` and ``@syntax``."""

from __future__ import annotations

import enum
from typing import Any, Callable, Optional, TypeVar

RT = TypeVar("RT")
DecoratorType = Callable[[Callable[..., RT]], Callable[..., RT]]


class _Missing(enum.Enum):
    MISSING = object()


#: "No such hook" / "use the default behaviour", as in 1.4.6 (docs/smtp.rst, "Hooks").
MISSING = _Missing.MISSING


def syntax(
    text: str, extended: Optional[str] = None, when: Optional[str] = None
) -> DecoratorType[Any]:
    """Attach HELP text to an ``smtp_<VERB>`` method.

    ``extended`` is appended in ESMTP sessions; with ``when``, the command is
    listed only while ``getattr(server, when)`` is truthy.
    """

    def decorator(f: Callable[..., RT]) -> Callable[..., RT]:
        f.__smtp_syntax__ = text  # type: ignore[attr-defined]
        f.__smtp_syntax_extended__ = extended  # type: ignore[attr-defined]
        f.__smtp_syntax_when__ = when  # type: ignore[attr-defined]
        return f

    return decorator
