"""The ticket stores: single use, newest first, bounded, expiry honoured; the client
store's file: persisted atomically, reloaded, and a damaged file ignored."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from aioquic import tls
from aioquic.tls import SessionTicket

from quicframe import ClientConfig, ServerConfig
from quicframe.errors import HandshakeTimeout
from quicframe.transport import ServerTicketStore, SessionTicketStore

from .conftest import start_server
from .test_resumption import Seen, recording_handler, request


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


# -- the file-backed client store ------------------------------------------------------


def real_ticket(server_name: str, label: bytes, *, days: float = 1) -> SessionTicket:
    """A ticket as aioquic makes them (contents random: only the store reads it)."""
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(
        age_add=0xDEADBEEF,
        cipher_suite=tls.CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(days=days),
        not_valid_before=now - datetime.timedelta(hours=1),
        resumption_secret=os.urandom(32),
        server_name=server_name,
        ticket=label,
        max_early_data_size=0xFFFFFFFF,
        other_extensions=[(0x2A, b"\x00\x01")],
    )


def labels_in(path: Path) -> dict[str, list[bytes]]:
    """The ticket labels a ticket file holds, by server name, in file order."""
    document = json.loads(path.read_text())
    return {
        server["server_name"]: [bytes.fromhex(record["ticket"]) for record in server["tickets"]]
        for server in document["servers"]
    }


def test_file_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    writer = SessionTicketStore(path=path)
    assert writer.path == path
    assert not path.exists()  # nothing written until there is something to keep
    tickets = [real_ticket("a", b"a1"), real_ticket("b", b"b1"), real_ticket("a", b"a2")]
    for ticket in tickets:
        writer.add(ticket)
    assert labels_in(path) == {"b": [b"b1"], "a": [b"a2", b"a1"]}  # least recent first
    # The file holds resumption secrets: its owner alone may read it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Writes go through a temporary file that is renamed over the old one.
    assert [p.name for p in tmp_path.iterdir()] == ["tickets.json"]

    reader = SessionTicketStore(path=path)
    assert len(reader) == 3
    assert reader.pop("a") == tickets[2]  # equal in every field, newest first
    assert reader.pop("a") == tickets[0]
    assert reader.pop("a") is None
    assert reader.pop("b") == tickets[1]


def test_file_store_persists_single_use(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    first = SessionTicketStore(path=path)
    first.add(real_ticket("s", b"old"))
    first.add(real_ticket("s", b"new"))
    assert first.pop("s") is not None
    # A store opened later does not see the ticket that was taken.
    later = SessionTicketStore(path=path)
    assert len(later) == 1
    taken = later.pop("s")
    assert taken is not None
    assert taken.ticket == b"old"
    assert labels_in(path) == {}
    assert len(SessionTicketStore(path=path)) == 0


def test_file_store_drops_expired_tickets_and_honours_bounds(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    store = SessionTicketStore(path=path)
    store.add(real_ticket("x", b"fresh"))
    # An expired ticket written by an earlier run is not loaded.
    document = json.loads(path.read_text())
    from quicframe.transport._core import ticket_to_record

    document["servers"][0]["tickets"].append(ticket_to_record(real_ticket("x", b"stale", days=-1)))
    path.write_text(json.dumps(document))
    loaded = SessionTicketStore(path=path)
    assert len(loaded) == 1
    ticket = loaded.pop("x")
    assert ticket is not None
    assert ticket.ticket == b"fresh"

    # Bounds apply to what is loaded: the most recent servers and tickets stay.
    wide = SessionTicketStore(path=path)
    for name in ("p", "q", "r"):
        for i in range(3):
            wide.add(real_ticket(name, f"{name}{i}".encode()))
    narrow = SessionTicketStore(max_servers=2, per_server=2, path=path)
    assert len(narrow) == 4
    assert narrow.pop("p") is None  # the least recently used server went first
    popped = [narrow.pop("q"), narrow.pop("q"), narrow.pop("q")]
    assert [t.ticket if t is not None else None for t in popped] == [b"q2", b"q1", None]


def valid_record() -> dict[str, object]:
    from quicframe.transport._core import ticket_to_record

    return ticket_to_record(real_ticket("h", b"label"))


def ticket_file(records: list[object]) -> str:
    servers = [{"server_name": "h", "tickets": records}]
    return json.dumps({"format": "quicframe-session-tickets", "version": 1, "servers": servers})


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\xff\xfe garbage \x9c", id="binary-garbage"),
        pytest.param(b'{"format": "quicframe-session-tickets", "version": 1, "ser', id="truncated"),
        pytest.param(b"[1, 2, 3]", id="not-an-object"),
        pytest.param(b'{"format": "something-else", "version": 1, "servers": []}', id="format"),
        pytest.param(
            b'{"format": "quicframe-session-tickets", "version": 99, "servers": []}', id="version"
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        pytest.param(ticket_file([{**valid_record(), "ticket": "zz"}]).encode(), id="bad-hex"),
        pytest.param(ticket_file([{**valid_record(), "age_add": -1}]).encode(), id="bad-int"),
        pytest.param(
            ticket_file([{**valid_record(), "not_valid_after": "2030-01-01T00:00:00"}]).encode(),
            id="naive-time",
        ),
        pytest.param(ticket_file([{**valid_record(), "cipher_suite": 7}]).encode(), id="suite"),
        pytest.param(
            ticket_file([{**valid_record(), "resumption_secret": "00"}]).encode(), id="secret"
        ),
        pytest.param(ticket_file([{**valid_record(), "server_name": "other"}]).encode(), id="name"),
        pytest.param(ticket_file([{"server_name": "h"}]).encode(), id="missing-fields"),
        pytest.param(ticket_file([valid_record(), 42]).encode(), id="not-a-record"),
    ],
)
def test_file_store_ignores_a_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "tickets.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="quicframe.transport"):
        store = SessionTicketStore(path=path)
    assert len(store) == 0
    assert store.pop("h") is None
    assert "ignoring the session ticket file" in caplog.text
    # The next change replaces the damaged file with a good one.
    store.add(real_ticket("h", b"good"))
    assert labels_in(path) == {"h": [b"good"]}
    assert len(SessionTicketStore(path=path)) == 1


def test_file_store_accepts_a_well_formed_file_written_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    path.write_text(ticket_file([valid_record()]))
    assert len(SessionTicketStore(path=path)) == 1


def test_file_store_write_failure_keeps_the_store_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tickets.json"
    store = SessionTicketStore(path=path)
    store.add(real_ticket("s", b"first"))

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    with caplog.at_level(logging.WARNING, logger="quicframe.transport"):
        store.add(real_ticket("s", b"second"))  # must not raise: the transport calls it
    assert "could not write the session ticket file" in caplog.text
    assert len(store) == 2
    assert labels_in(path) == {"s": [b"first"]}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["tickets.json"]  # no temporary left


def test_file_store_unusable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SessionTicketStore(path=tmp_path / "missing-directory" / "tickets.json")
    with pytest.raises(IsADirectoryError):
        SessionTicketStore(path=tmp_path)


async def test_resumption_across_two_stores_sharing_a_file(
    server_config: ServerConfig, client_config: ClientConfig, tmp_path: Path
) -> None:
    path = tmp_path / "tickets.json"
    seen: list[Seen] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, recording_handler(seen))
            port = handle.listener.port

            client_config.session_tickets = SessionTicketStore(path=path)
            first = await request(port, b"full", client_config, early_data=True)
            assert not first.session_resumed
            before = labels_in(path)["localhost"]
            assert before

            # A second store on the same file, as a client process started later
            # would open it: it resumes, with 0-RTT, from the first one's ticket.
            second_store = SessionTicketStore(path=path)
            assert len(second_store) == len(before)
            client_config.session_tickets = second_store
            second = await request(port, b"resumed", client_config, early_data=True)
            assert second.session_resumed
            assert second.early_data_accepted

            # The ticket it used (the newest) is gone from the file; the resumed
            # connection's fresh tickets are in it.
            after = labels_in(path)["localhost"]
            assert before[0] not in after
            assert set(after) - set(before)
            handle.cancel_scope.cancel()
    assert seen == [
        (False, False, 0, b"full"),
        (True, True, len(b"resumed"), b"resumed"),
    ]


async def test_a_dial_that_never_completes_its_handshake_keeps_the_ticket(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    """The transport takes a ticket out of the store for each dial; when no handshake
    completes (here: nothing listens any more), the server cannot have consumed it,
    so it goes back and the next dial resumes from it."""
    store = client_config.session_tickets = SessionTicketStore()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, recording_handler([]))
            port = handle.listener.port
            await request(port, b"full", client_config, early_data=False)
            handle.cancel_scope.cancel()
        assert len(store) >= 1
        ticket = store.pop("localhost")
        store.add(ticket)
        # A listener that is gone: the dial times out without hearing the server.
        silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with silent:
            await silent.bind(("127.0.0.1", 0))
            _, silent_port = silent.getsockname()
            short = dataclasses.replace(client_config, handshake_timeout=0.2)
            with pytest.raises(HandshakeTimeout):
                await request(silent_port, b"lost", short, early_data=False)
        assert store.pop("localhost") is ticket
