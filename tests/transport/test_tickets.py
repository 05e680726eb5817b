"""The ticket stores: single use, newest first, bounded, expiry honoured."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import pytest

from quicframe.transport import ServerTicketStore, SessionTicketStore


def _in(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)


@dataclass
class FakeTicket:
    server_name: str
    ticket: bytes
    not_valid_after: datetime.datetime = field(default_factory=lambda: _in(1))


def test_client_store_newest_first_single_use_and_expiry() -> None:
    store = SessionTicketStore(per_server=2)
    old, new, newest = (FakeTicket("a", bytes([i])) for i in range(3))
    store.add(old)
    store.add(new)
    store.add(newest)  # pushes `old` out: two per server
    assert len(store) == 2
    assert store.pop("a") is newest
    assert store.pop("a") is new
    assert store.pop("a") is None
    store.add(FakeTicket("a", b"x", not_valid_after=_in(-1)))
    assert store.pop("a") is None  # expired
    assert store.pop("unknown") is None


def test_client_store_forgets_least_recent_server() -> None:
    store = SessionTicketStore(max_servers=2)
    for name in ("a", "b", "c"):
        store.add(FakeTicket(name, name.encode()))
    assert store.pop("a") is None
    assert store.pop("b") is not None
    assert store.pop("c") is not None


def test_server_store_single_use_bounded_and_expiry() -> None:
    store = ServerTicketStore(max_tickets=2)
    first, second, third = (FakeTicket("s", bytes([i])) for i in range(3))
    for ticket in (first, second, third):
        store.add(ticket)
    assert len(store) == 2
    assert store.pop(first.ticket) is None  # forgotten: oldest first
    assert store.pop(second.ticket) is second
    assert store.pop(second.ticket) is None  # single use: a replay finds nothing
    expired = FakeTicket("s", b"e", not_valid_after=_in(-1))
    store.add(expired)
    assert store.pop(b"e") is None


def test_stores_reject_bad_bounds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SessionTicketStore(max_servers=0)
    with pytest.raises(ValueError, match="at least 1"):
        ServerTicketStore(max_tickets=0)
