"""TLS session-ticket stores for resumption and 0-RTT.

:class:`SessionTicketStore` is the client side: tickets the servers issued, kept by
server name, newest first, each used at most once (a ticket reused across
connections would let an observer link them).  It lives in memory, or also in a
file (``path=``) so that tickets outlive the process.  :class:`ServerTicketStore` is
the server side: the tickets this server issued, by label; a ticket is taken out
when a client presents it, so a replayed ticket is not found and the client falls
back to a full handshake without 0-RTT (replay protection for early data).

Both are bounded (least recently used entries go first) and drop expired tickets.
The tickets are the core's objects; only the ticket file's encoding (lazily
imported from ``_core``) knows what is inside them.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final, final

__all__ = ["ServerTicketStore", "SessionTicketStore"]

logger = logging.getLogger("quicframe.transport")

_FILE_FORMAT: Final = "quicframe-session-tickets"
_FILE_VERSION: Final = 1
# A ticket record takes a few hundred bytes; a file this big was not written by us.
_MAX_FILE_SIZE: Final = 16 * 1024 * 1024


def _expired(ticket: Any) -> bool:
    not_valid_after = getattr(ticket, "not_valid_after", None)
    if not_valid_after is None:
        return False
    return bool(datetime.datetime.now(datetime.UTC) > not_valid_after)


@final
class SessionTicketStore:
    """Client tickets by server name, for ``ClientConfig.session_tickets``.

    With ``path``, the store is also kept in that file so that a later process
    (or another store given the same path) resumes where this one left off.  The
    file is read once, by the constructor, and rewritten after every change (a
    ticket added, a ticket taken): written to a temporary file in the same
    directory, then moved over the old one with :func:`os.replace`, so a reader
    never sees half a file.  It holds resumption secrets: it is created readable
    by its owner only.  Writes are small and synchronous (a few per connection).

    Errors with the file never break a connection: the file is a cache, and a
    lost ticket only costs a full handshake.  A file that is not a ticket file
    (garbage, truncated, another format or version, a malformed ticket) is
    ignored as a whole, with a warning on the ``quicframe.transport`` logger, and
    replaced at the next write; expired tickets in it are dropped.  A failed
    write is logged and the store carries on in memory.  Only the constructor
    raises: :class:`OSError` when the file exists but cannot be read, or its
    directory does not exist.

    Several stores (or processes) sharing one file do not merge their views: the
    last to write wins.  At worst a ticket is forgotten, or presented twice, in
    which case the server refuses the second use and a full handshake follows.

    Args:
        max_servers: server names remembered (least recently used forgotten first).
        per_server: tickets kept per server name.
        path: the file to keep the tickets in (None: memory only).

    Raises:
        ValueError: a bound is below 1.
        OSError: ``path`` exists but cannot be read, or its directory is missing.
    """

    def __init__(
        self,
        max_servers: int = 256,
        per_server: int = 4,
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_servers < 1 or per_server < 1:
            raise ValueError("max_servers and per_server must be at least 1")
        self._max_servers = max_servers
        self._per_server = per_server
        self._tickets: OrderedDict[str, list[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._path = Path(path) if path is not None else None
        if self._path is not None:
            self._load(self._path)

    @property
    def path(self) -> Path | None:
        """The file the tickets are kept in, or None for a store in memory only."""
        return self._path

    def add(self, ticket: Any) -> None:
        """Remember a ticket a server issued (called by the transport)."""
        with self._lock:
            self._insert(ticket)
            self._save()

    def pop(self, server_name: str) -> Any | None:
        """Take the newest unexpired ticket for ``server_name`` (each is used once)."""
        with self._lock:
            tickets = self._tickets.get(server_name)
            if tickets is None:
                return None
            found = None
            while tickets:
                ticket = tickets.pop(0)
                if not _expired(ticket):
                    found = ticket
                    break
            if not tickets:
                del self._tickets[server_name]
            self._save()
            return found

    def __len__(self) -> int:
        with self._lock:
            return sum(len(tickets) for tickets in self._tickets.values())

    # -- internals (callers hold the lock, or own the store exclusively) ---------------

    def _insert(self, ticket: Any) -> None:
        tickets = self._tickets.setdefault(ticket.server_name, [])
        tickets.insert(0, ticket)
        del tickets[self._per_server :]
        self._tickets.move_to_end(ticket.server_name)
        while len(self._tickets) > self._max_servers:
            self._tickets.popitem(last=False)

    def _load(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise FileNotFoundError(
                errno.ENOENT, "the session ticket file's directory does not exist", str(path.parent)
            )
        try:
            with open(path, "rb") as file:
                data = file.read(_MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return  # the first run: the file appears with the first ticket
        try:
            servers = _decode_ticket_file(data)
        except ValueError as exc:
            logger.warning("ignoring the session ticket file %s: %s", path, exc)
            return
        # Oldest first, so the bounds keep the most recent servers and tickets.
        for tickets in servers:
            for ticket in reversed(tickets):
                if not _expired(ticket):
                    self._insert(ticket)

    def _save(self) -> None:
        path = self._path
        if path is None:
            return
        from ._core import ticket_to_record

        servers = []
        for name, tickets in self._tickets.items():
            records = []
            for ticket in tickets:
                if _expired(ticket):
                    continue
                try:
                    records.append(ticket_to_record(ticket))
                except (AttributeError, TypeError, ValueError):
                    continue  # not a ticket the core can encode: kept in memory only
            if records:
                servers.append({"server_name": name, "tickets": records})
        document = {"format": _FILE_FORMAT, "version": _FILE_VERSION, "servers": servers}
        data = json.dumps(document, separators=(",", ":")).encode()
        try:
            _replace_file(path, data)
        except OSError as exc:
            logger.warning("could not write the session ticket file %s: %s", path, exc)


def _decode_ticket_file(data: bytes) -> list[list[Any]]:
    """The tickets of each server in a ticket file, least recently used server first.

    Raises:
        ValueError: the data is not a ticket file this version wrote.
    """
    from ._core import ticket_from_record

    if len(data) > _MAX_FILE_SIZE:
        raise ValueError("the file is too big to be a ticket file")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if (
        not isinstance(document, dict)
        or document.get("format") != _FILE_FORMAT
        or document.get("version") != _FILE_VERSION
        or not isinstance(document.get("servers"), list)
    ):
        raise ValueError(f"not a version {_FILE_VERSION} session ticket file")
    servers = []
    for entry in document["servers"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("tickets"), list):
            raise ValueError("a server entry is malformed")
        tickets = [ticket_from_record(record) for record in entry["tickets"]]
        if any(ticket.server_name != entry.get("server_name") for ticket in tickets):
            raise ValueError("a ticket is filed under another server's name")
        servers.append(tickets)
    return servers


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file, then a rename."""
    # mkstemp creates the file readable and writable by its owner only.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


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
