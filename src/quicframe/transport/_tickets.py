"""TLS session-ticket stores for resumption and 0-RTT.

:class:`SessionTicketStore` is the client side: tickets the servers issued, kept by
server name, newest first, each used at most once (a ticket reused across
connections would let an observer link them).  :class:`ServerTicketStore` is the
server side: the tickets this server issued, by label; a ticket is taken out when a
client presents it, so a replayed ticket is not found and the client falls back
to a full handshake without 0-RTT (replay protection for early data).

Both are bounded (least recently used entries go first) and drop expired tickets.
The tickets are the core's objects; nothing here imports the core.
"""

from __future__ import annotations

import datetime
import threading
from collections import OrderedDict
from typing import Any, final

__all__ = ["ServerTicketStore", "SessionTicketStore"]


def _expired(ticket: Any) -> bool:
    not_valid_after = getattr(ticket, "not_valid_after", None)
    if not_valid_after is None:
        return False
    return bool(datetime.datetime.now(datetime.UTC) > not_valid_after)


@final
class SessionTicketStore:
    """Client tickets by server name, for ``ClientConfig.session_tickets``.

    Args:
        max_servers: server names remembered (least recently used forgotten first).
        per_server: tickets kept per server name.
    """

    def __init__(self, max_servers: int = 256, per_server: int = 4) -> None:
        if max_servers < 1 or per_server < 1:
            raise ValueError("max_servers and per_server must be at least 1")
        self._max_servers = max_servers
        self._per_server = per_server
        self._tickets: OrderedDict[str, list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, ticket: Any) -> None:
        """Remember a ticket a server issued (called by the transport)."""
        with self._lock:
            tickets = self._tickets.setdefault(ticket.server_name, [])
            tickets.insert(0, ticket)
            del tickets[self._per_server :]
            self._tickets.move_to_end(ticket.server_name)
            while len(self._tickets) > self._max_servers:
                self._tickets.popitem(last=False)

    def pop(self, server_name: str) -> Any | None:
        """Take the newest unexpired ticket for ``server_name`` (each is used once)."""
        with self._lock:
            tickets = self._tickets.get(server_name)
            while tickets:
                ticket = tickets.pop(0)
                if not _expired(ticket):
                    return ticket
            self._tickets.pop(server_name, None)
            return None

    def __len__(self) -> int:
        with self._lock:
            return sum(len(tickets) for tickets in self._tickets.values())


@final
class ServerTicketStore:
    """The tickets a server issued, single use, for ``ServerConfig.session_tickets``.

    Args:
        max_tickets: tickets remembered (the oldest are forgotten first; a client
            holding a forgotten ticket gets a full handshake).
    """

    def __init__(self, max_tickets: int = 10_000) -> None:
        if max_tickets < 1:
            raise ValueError("max_tickets must be at least 1")
        self._max_tickets = max_tickets
        self._tickets: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, ticket: Any) -> None:
        """Remember a ticket this server issued (called by the transport)."""
        with self._lock:
            self._tickets[ticket.ticket] = ticket
            while len(self._tickets) > self._max_tickets:
                self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> Any | None:
        """Take out the ticket a client presented; None if unknown, used or expired."""
        with self._lock:
            ticket = self._tickets.pop(label, None)
        if ticket is None or _expired(ticket):
            return None
        return ticket

    def __len__(self) -> int:
        with self._lock:
            return len(self._tickets)
