"""Packets built from a window of streams when many have data (aioquic core, sans-IO).

aioquic offers every stream with data the rest of each packet it builds, so with
a hundred busy streams on one connection a 1,200-byte packet costs a hundred
calls.  ``AioquicCore`` shows the core a window of the streams at a time
(``_StreamWindow``).  These tests drive two cores in memory, as the driver does,
and check that the data still arrives whole and in order on every stream, that
the streams are served in turn, and that the calls per packet stay few.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.events import StreamDataReceived

from quicframe.transport._core import _WINDOW_BYTES, AioquicCore, _StreamWindow

from .test_acks import CLIENT, SERVER, _pair

STREAMS = 100
SIZE = 5000


def _payload(index: int) -> bytes:
    return hashlib.sha256(b"%d" % index).digest() * (SIZE // 32) + b"!" * (SIZE % 32)


def _count_frame_calls(core: AioquicCore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count aioquic's _write_stream_frame calls on ``core`` (one cell, incremented)."""
    calls = [0]
    connection: Any = core._quic_connection
    original = type(connection)._write_stream_frame

    def counting(*args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        result: int = original(connection, *args, **kwargs)
        return result

    monkeypatch.setattr(connection, "_write_stream_frame", counting)
    return calls


def _acknowledge(client: AioquicCore, server: AioquicCore, t: float) -> float:
    """Let the server's acknowledgements go back to the client at once; the clock."""
    t += 0.001
    server.quic.handle_timer(t)
    for data, _ in server.quic.datagrams_to_send(t):
        client.quic.receive_datagram(data, SERVER, t)
    while client.quic.next_event() is not None:
        pass
    return t


def _run(
    client: AioquicCore, server: AioquicCore, t: float, flushes: int
) -> tuple[dict[int, bytearray], list[set[int]], int, float]:
    """Flush the client up to ``flushes`` times, delivering and acknowledging as the
    driver would; returns what the server received per stream, the streams each
    flush carried, the datagrams built, and the clock."""
    received: dict[int, bytearray] = defaultdict(bytearray)
    carried: list[set[int]] = []
    datagrams_built = 0
    for _ in range(flushes):
        t += 0.001
        datagrams = client.quic.datagrams_to_send(t)
        datagrams_built += len(datagrams)
        streams_in_flush: set[int] = set()
        for data, _ in datagrams:
            server.quic.receive_datagram(data, CLIENT, t)
        while (event := server.quic.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                received[event.stream_id] += event.data
                if event.data:
                    streams_in_flush.add(event.stream_id)
        carried.append(streams_in_flush)
        t = _acknowledge(client, server, t)
        if sum(map(len, received.values())) == STREAMS * SIZE:
            break
    return received, carried, datagrams_built, t


def test_many_busy_streams_arrive_whole_in_turn_and_cheaply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, server, t = _pair(tmp_path)
    stream_ids = []
    for index in range(STREAMS):
        stream_id = client.quic.get_next_available_stream_id()
        client.quic.send_stream_data(stream_id, _payload(index), True)
        stream_ids.append(stream_id)
    client.note_queued(STREAMS * SIZE)
    calls = _count_frame_calls(client, monkeypatch)

    received, carried, datagrams_built, _ = _run(client, server, t, flushes=500)

    for index, stream_id in enumerate(stream_ids):
        assert bytes(received[stream_id]) == _payload(index), index
    # In turn: a stream that sent goes to the back of the queue, so no stream
    # carries data in a second flush before every stream has carried some.
    # (The flush that reaches the last of them may go round to the first again.)
    seen: set[int] = set()
    for flush in carried:
        if len(seen | flush) == STREAMS:
            break
        assert not flush & seen, (sorted(flush & seen), len(seen))
        seen |= flush
    else:
        raise AssertionError("some streams never carried data")
    # Cheap: about one stream-frame call per stream per packet it fills, where
    # offering every busy stream every packet would cost ~STREAMS per packet.
    assert calls[0] <= 4 * datagrams_built, (calls[0], datagrams_built)


def test_a_flush_of_small_writes_is_built_by_the_core_as_usual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small replies on many streams (W2's 64 calls in flight): under the window's
    # threshold and with nothing left over, aioquic builds from its whole queue.
    client, server, t = _pair(tmp_path)
    windows = [0]
    original = _StreamWindow.build

    def counting(self: _StreamWindow, *args: Any) -> Any:
        windows[0] += 1
        return original(self, *args)

    monkeypatch.setattr(_StreamWindow, "build", counting)
    for _ in range(64):
        stream_id = client.quic.get_next_available_stream_id()
        client.quic.send_stream_data(stream_id, b"x" * 16, True)
    client.note_queued(64 * 16)
    got = 0
    for data, _ in client.quic.datagrams_to_send(t + 0.001):
        server.quic.receive_datagram(data, CLIENT, t + 0.001)
    while (event := server.quic.next_event()) is not None:
        if isinstance(event, StreamDataReceived):
            got += len(event.data)
    assert got == 64 * 16
    assert windows[0] == 0
    # Past the threshold the window builds.
    for _ in range(16):
        stream_id = client.quic.get_next_available_stream_id()
        client.quic.send_stream_data(stream_id, b"y" * 1000, True)
    client.note_queued(16 * 1000)
    client.quic.datagrams_to_send(t + 0.002)
    assert windows[0] == 1


def test_streams_finished_while_shown_in_a_window_are_discarded(tmp_path: Path) -> None:
    # aioquic discards a finished stream from the dict it is shown (the window's);
    # the connection's own dict and queue must lose it too, or the stream would
    # stay in every later packet's walk and never free its slot.
    client, server, t = _pair(tmp_path)
    for index in range(STREAMS):
        stream_id = client.quic.get_next_available_stream_id(is_unidirectional=True)
        client.quic.send_stream_data(stream_id, _payload(index), True)
    connection: Any = client._quic_connection
    for _ in range(500):
        client.note_queued(_WINDOW_BYTES)  # every flush through the window
        t += 0.001
        for data, _ in client.quic.datagrams_to_send(t):
            server.quic.receive_datagram(data, CLIENT, t)
        while server.quic.next_event() is not None:
            pass
        t = _acknowledge(client, server, t)
        if not connection._streams:
            break
    assert not connection._streams
    assert not connection._streams_queue
