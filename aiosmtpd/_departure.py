"""When a connection the server wants to end may be ended: pure, no I/O.

A drain (``Operations.drain``) and the session deadline end connections
with a ``421``, but never in the middle of what the client is owed: a
command being answered, a mail transaction (for a drain, until its
deadline), or a message the handler is delivering (never).  ``Departure``
holds what that decision needs and takes it; ``SMTP`` does the I/O
(``_say_goodbye``) and tells it what happens (docs/internals.rst,
"Goodbyes"; ``tests/test_departure.py`` checks every decision without a
socket).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["AFTER_DELIVERY", "AFTER_TRANSACTION", "Departure"]

# How long a goodbye may wait (the ``after`` of SMTP._leave):
#: until the client's transaction ends (a drain, before its deadline);
AFTER_TRANSACTION = "transaction"
#: only until the handler's delivery ends (past the drain's deadline, and the
#: session deadline): a handler is never cut short.
AFTER_DELIVERY = "delivery"


class Departure:
    """The leaving state of one connection, and the decisions about it."""

    # Slots, and no more than these: there is one per connection, and
    # _process_line sets ``busy`` twice per command.
    __slots__ = ("busy", "delivering", "reply", "after")

    def __init__(self) -> None:
        #: A command is being answered (set by SMTP._process_line).
        self.busy = False
        #: The handler is delivering a message (set around handle_DATA and
        #: the stream hook's verdict); nothing cuts that short.
        self.delivering = False
        #: The goodbye that had to wait, and how long it may
        #: (AFTER_TRANSACTION or AFTER_DELIVERY); None while none waits.
        self.reply: Optional[str] = None
        self.after = ""

    def leave(self, reply: str, after: str, in_transaction: bool) -> bool:
        """The server wants to end the connection with ``reply``: True to
        say goodbye now, False to wait (the goodbye is then kept, and
        ``due`` says after each command whether it has come).

        Waiting for a delivery outranks waiting for a transaction: once the
        drain's deadline has passed, a later AFTER_DELIVERY replaces an
        earlier AFTER_TRANSACTION, never the other way round.
        """
        waits = self.delivering or (
            after == AFTER_TRANSACTION and (self.busy or in_transaction)
        )
        if not waits:
            return True
        if self.reply is None or after == AFTER_DELIVERY:
            self.reply, self.after = reply, after
        return False

    def due(self, in_transaction: bool) -> Optional[str]:
        """After a command, with a goodbye waiting: the reply to say now,
        or None while the transaction it waits for goes on."""
        if self.reply is None:
            return None
        if self.after == AFTER_TRANSACTION and in_transaction:
            return None
        return self.reply

    def settled(self, closing: bool) -> bool:
        """Whether nothing is left to wait for (a drain's last wait): the
        connection is gone or closing, and no handler is delivering."""
        return closing and not self.delivering
