"""The request-response fast path: synchronous twins and answers flushed by their writer.

When a batch of datagrams hands data to one reader only, the driver stays parked
and that reader's reply leaves from the reader's own task
(``Connection._begin_answer``).  These tests pin down what that path saves (the
driver's turn) and what it must still do (acknowledge a request nobody answers).
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from quicframe import ClientConfig, ServerConfig
from quicframe.testing import FakeNetwork, LinkPolicy
from quicframe.transport import Connection, Stream, StreamResetByPeer, connect

from .conftest import start_server
from .test_lossy import fake_pair
from .test_streams import connection_pair, receive_until_error, stream_pair


class DriverSteps(trio.abc.Instrument):
    """Counts the steps of every connection driver task (``Connection._run``)."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Connection._run"):
            self.steps[task.name] += 1


async def answer_with_nowait_twins(stream: Stream) -> None:
    """Read the whole request without waiting when it is there, answer with its FIN."""
    request = bytearray()
    while not stream.receive_finished:
        try:
            request += stream.receive_nowait()
        except trio.WouldBlock:
            request += await stream.receive_some()
    stream.send_nowait(bytes(request[::-1]), eof=True)


async def test_nowait_twins_read_open_and_refuse_without_waiting(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    server_config.max_bidi_streams = 3
    with trio.fail_after(10):
        async with connection_pair(server_config, client_config) as (client, server):
            local, remote = await stream_pair(client, server)
            with pytest.raises(trio.WouldBlock):
                remote.receive_nowait()
            local.send_nowait(b"abc", eof=True)
            data = await remote.receive_some(1)
            assert data == b"a"
            while not remote.receive_finished:  # the rest and the FIN, as they come
                try:
                    data += remote.receive_nowait()
                except trio.WouldBlock:
                    data += await remote.receive_some()
            assert data == b"abc"
            assert remote.receive_nowait() == b""  # EOF, like receive_some

            # The peer allows three streams: stream_pair's and two more, then no more.
            opened = [client.open_stream_nowait(), client.open_stream_nowait()]
            with pytest.raises(trio.WouldBlock):
                client.open_stream_nowait()
            opened[0].send_nowait(b"x")
            reset_side = await server.accept_stream()
            opened[0].reset(7)
            with pytest.raises(StreamResetByPeer):
                await receive_until_error(reset_side)  # the reset arrives
            with pytest.raises(StreamResetByPeer) as caught:
                reset_side.receive_nowait()
            assert caught.value.code == 7


async def test_a_lone_request_is_answered_without_the_drivers_turn(
    server_config: ServerConfig, client_config: ClientConfig
) -> None:
    async def handler(connection: Connection) -> None:
        await connection.serve_streams(answer_with_nowait_twins)

    instrument = DriverSteps()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, server_config, handler)
            async with connect("127.0.0.1", handle.listener.port, client_config) as client:
                await client.ping()  # both handshakes done, the drivers idle
                trio.lowlevel.add_instrument(instrument)
                try:
                    for index in range(20):
                        stream = client.open_stream_nowait()
                        stream.send_nowait(b"request %d" % index, eof=True)
                        reply = b""
                        while not stream.receive_finished:
                            reply += await stream.receive_some()
                        assert reply == (b"request %d" % index)[::-1]
                finally:
                    trio.lowlevel.remove_instrument(instrument)
            handle.cancel_scope.cancel()
    # Each request and each reply left from the task that wrote it: the drivers
    # (client and server) slept through the 20 exchanges, bar a few timers (an
    # ACK delay that ran out, say).  Woken per batch, they take 40 steps or more.
    assert sum(instrument.steps.values()) <= 12, instrument.steps


async def test_a_request_nobody_answers_is_still_acknowledged_in_time(
    autojump_clock: trio.testing.MockClock,
    server_config: ServerConfig,
    client_config: ClientConfig,
) -> None:
    read = trio.Event()

    async def never_answer(stream: Stream) -> None:
        await stream.receive_some()
        read.set()
        await trio.sleep_forever()

    async def handler(connection: Connection) -> None:
        await connection.serve_streams(never_answer)

    policy = LinkPolicy(delay=0.010)  # 20 ms round trips: the PTO is past 45 ms
    with trio.fail_after(30):
        async with (
            FakeNetwork(seed=1, policy=policy) as net,
            fake_pair(net, server_config, client_config, handler) as (client, _),
        ):
            await client.ping()
            stream = await client.open_stream()
            stream.send_nowait(b"nobody answers this")
            await read.wait()
            assert client.statistics().bytes_in_flight > 0
            # The request reached a lone reader, so the server's driver stayed
            # parked; it must still wake for the ACK delay (1 ms), not at its next
            # loss or idle timer: 10 ms there, 1 ms, 10 ms back.
            await trio.sleep(0.025)
            assert client.statistics().bytes_in_flight == 0
