"""When a connection the server wants to end may be ended, socket-free
(aiosmtpd/_departure.py): say goodbye now, after the transaction, or after
the delivery; whether a goodbye that waited is due after a command; whether
anything is left to wait for.  The same decisions over sockets:
tests/test_smtp_operations.py.
"""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiosmtpd._departure import AFTER_DELIVERY, AFTER_TRANSACTION, Departure
from aiosmtpd.operations import SHUTTING_DOWN
from aiosmtpd.smtp import SESSION_TOO_LONG

AFTERS = st.sampled_from([AFTER_TRANSACTION, AFTER_DELIVERY])


def departure(*, busy: bool = False, delivering: bool = False) -> Departure:
    d = Departure()
    d.busy, d.delivering = busy, delivering
    return d


# -- leave(): now, or later ---------------------------------------------------------------


def test_fresh() -> None:
    d = Departure()
    assert (d.busy, d.delivering, d.reply, d.after) == (False, False, None, "")


@pytest.mark.parametrize("after", [AFTER_TRANSACTION, AFTER_DELIVERY])
def test_idle_connection_leaves_now(after: str) -> None:
    d = Departure()
    assert d.leave(SHUTTING_DOWN, after, in_transaction=False)
    assert d.reply is None  # nothing kept: the goodbye is said at once


@pytest.mark.parametrize(
    "busy, in_transaction", [(True, False), (False, True), (True, True)]
)
def test_drain_waits_for_the_command_and_the_transaction(busy: bool, in_transaction: bool) -> None:
    d = departure(busy=busy)
    assert not d.leave(SHUTTING_DOWN, AFTER_TRANSACTION, in_transaction)
    assert (d.reply, d.after) == (SHUTTING_DOWN, AFTER_TRANSACTION)


@pytest.mark.parametrize(
    "busy, in_transaction", [(True, False), (False, True), (True, True)]
)
def test_after_delivery_waits_for_no_command_or_transaction(
    busy: bool, in_transaction: bool
) -> None:
    # Past the drain's deadline, and the session deadline: only a delivery counts.
    assert departure(busy=busy).leave(SESSION_TOO_LONG, AFTER_DELIVERY, in_transaction)


@pytest.mark.parametrize("after", [AFTER_TRANSACTION, AFTER_DELIVERY])
def test_a_delivery_is_never_cut_short(after: str) -> None:
    d = departure(busy=True, delivering=True)
    assert not d.leave(SHUTTING_DOWN, after, in_transaction=True)
    assert (d.reply, d.after) == (SHUTTING_DOWN, after)


@given(st.booleans(), st.booleans(), st.booleans(), AFTERS)
def test_leave_now_exactly_when_nothing_is_owed(
    busy: bool, delivering: bool, in_transaction: bool, after: str
) -> None:
    d = departure(busy=busy, delivering=delivering)
    owed = delivering or (after == AFTER_TRANSACTION and (busy or in_transaction))
    assert d.leave(SHUTTING_DOWN, after, in_transaction) is not owed
    assert (d.reply is None) is not owed


def test_delivery_outranks_transaction() -> None:
    d = departure(busy=True, delivering=True)
    assert not d.leave(SHUTTING_DOWN, AFTER_TRANSACTION, True)
    # The drain's deadline passes: the goodbye now waits for the delivery only.
    assert not d.leave(SHUTTING_DOWN, AFTER_DELIVERY, True)
    assert d.after == AFTER_DELIVERY
    # A later AFTER_TRANSACTION does not widen it again.
    assert not d.leave(SHUTTING_DOWN, AFTER_TRANSACTION, True)
    assert d.after == AFTER_DELIVERY


def test_first_waiting_goodbye_kept() -> None:
    d = departure(busy=True)
    assert not d.leave(SHUTTING_DOWN, AFTER_TRANSACTION, False)
    assert not d.leave("421 other", AFTER_TRANSACTION, False)
    assert d.reply == SHUTTING_DOWN


def test_session_deadline_during_a_delivery_then_drain() -> None:
    d = departure(delivering=True)
    assert not d.leave(SESSION_TOO_LONG, AFTER_DELIVERY, True)
    assert not d.leave(SHUTTING_DOWN, AFTER_DELIVERY, True)
    # The latest AFTER_DELIVERY goodbye is the one said.
    assert (d.reply, d.after) == (SHUTTING_DOWN, AFTER_DELIVERY)


# -- due(): after a command, is the goodbye that waited due? --------------------------------


@pytest.mark.parametrize("in_transaction", [False, True])
def test_nothing_due_without_a_waiting_goodbye(in_transaction: bool) -> None:
    assert Departure().due(in_transaction) is None


def test_after_transaction_due_when_the_transaction_ends() -> None:
    d = departure(busy=True)
    d.leave(SHUTTING_DOWN, AFTER_TRANSACTION, in_transaction=False)
    assert d.due(in_transaction=True) is None  # MAIL was that command: wait on
    assert d.due(in_transaction=True) is None  # RCPT
    assert d.due(in_transaction=False) == SHUTTING_DOWN  # after DATA's reply, or RSET


@pytest.mark.parametrize("in_transaction", [False, True])
def test_after_delivery_due_after_the_delivering_command(in_transaction: bool) -> None:
    d = departure(busy=True, delivering=True)
    d.leave(SESSION_TOO_LONG, AFTER_DELIVERY, in_transaction=True)
    d.delivering = d.busy = False  # the DATA command has answered
    assert d.due(in_transaction) == SESSION_TOO_LONG


@given(st.booleans(), st.booleans(), AFTERS, st.booleans())
def test_due_after_any_waiting_goodbye(
    busy: bool, delivering: bool, after: str, in_transaction_after: bool
) -> None:
    d = departure(busy=busy, delivering=delivering)
    if d.leave(SHUTTING_DOWN, after, in_transaction=True):
        assert d.due(in_transaction_after) is None  # said at once, nothing waits
        return
    expected: Optional[str] = SHUTTING_DOWN
    if d.after == AFTER_TRANSACTION and in_transaction_after:
        expected = None
    assert d.due(in_transaction_after) == expected


# -- settled(): anything left to wait for? -------------------------------------------------


@pytest.mark.parametrize(
    "closing, delivering, settled",
    [(True, False, True), (True, True, False), (False, False, False), (False, True, False)],
)
def test_settled(closing: bool, delivering: bool, settled: bool) -> None:
    assert departure(delivering=delivering).settled(closing) is settled


def test_waiting_goodbye_alone_keeps_nothing_unsettled() -> None:
    # A closing connection that still lingers is not worth waiting for.
    d = departure(busy=True)
    d.leave(SHUTTING_DOWN, AFTER_TRANSACTION, in_transaction=True)
    assert d.settled(closing=True)
