"""Event-loop helpers: the loop selection rule shared by SMTP, AsyncMessage and
the CLI, and waking a waiter."""

from __future__ import annotations

import asyncio
import warnings
from typing import Optional


def wake(waiter: Optional[asyncio.Future[None]]) -> None:
    """Complete ``waiter`` (a future someone may be waiting on), if pending."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def get_or_new_eventloop() -> asyncio.AbstractEventLoop:
    """Return this thread's current event loop, creating and installing one if
    there is none.

    ``asyncio.get_event_loop()`` warns (3.10-3.11) or raises (3.12+) when no
    loop is set; turning warnings into errors lets us treat both the same way
    and never leak a DeprecationWarning to the caller.
    """
    try:
        # The common case, and cheap: every connection's SMTP() asks.
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return asyncio.get_event_loop()
        except (RuntimeError, DeprecationWarning):
            pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop
