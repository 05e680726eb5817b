"""``GET /topics/{topic}``: subscriptions over HTTP/3, driven by aioquic's own client.

The response is one long-lived stream of records (u32 length + msgpack map, or
SSE with JSON); the subscription behind it is the pub/sub core's, so the
slow-consumer policies are the native ones.  Every test has a deadline and
waits on events, never on time.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import trio

import quicframe
from quicframe import ClientConfig, MarketTick, ServerConfig
from quicframe._topic import DEFAULT_SEND_BUFFER
from quicframe.errors import InvalidArgument
from quicframe.h3 import gateway_of
from quicframe.h3._mapping import EVENT_STREAM, RECORDS, choose_stream_type
from quicframe.h3._topics import RecordEncoder, parse_subscription_query
from quicframe.pubsub import Policy
from quicframe.transport import Stream, connect as transport_connect

from .conftest import Certificate, H3Client, deadline, h3_client, open_gateway
from .test_stalls import StreamH3Client

ECHO = 0x0001
TICKS = "md.ticks"
KEYS = 10


def tick(i: int, key: int | None = None) -> MarketTick:
    """Tick number ``i`` (``seq`` is written by the topic)."""
    instrument = i % KEYS if key is None else key
    return MarketTick(0, i, 0, 1_000_000 + i, i, instrument)


def make_router(topic: quicframe.Topic[MarketTick]) -> quicframe.Router:
    router = quicframe.Router()

    @router.rpc(ECHO)
    async def echo(request: Any, ctx: quicframe.CallContext) -> Any:
        return request

    router.add_topic(topic)
    return router


def ticks_topic(**options: Any) -> quicframe.Topic[MarketTick]:
    return quicframe.Topic(TICKS, MarketTick, key=lambda t: t.instrument_id, **options)


@contextlib.asynccontextmanager
async def gateway(
    server_config: ServerConfig, topic: quicframe.Topic[MarketTick]
) -> AsyncIterator[quicframe.Server]:
    async with open_gateway(make_router(topic), server_config) as server:
        yield server


@contextlib.asynccontextmanager
async def gateway_client(
    server_config: ServerConfig, certificate: Certificate, topic: quicframe.Topic[MarketTick]
) -> AsyncIterator[H3Client]:
    """An HTTP/3 client connected to a gateway serving ``topic``."""
    async with (
        gateway(server_config, topic) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        yield client


# -- reading a long-lived response ----------------------------------------------------


def split_records(buffer: bytearray) -> list[dict[str, Any]]:
    """Complete length-prefixed msgpack records at the front of ``buffer`` (removed)."""
    records = []
    while len(buffer) >= 4:
        size = int.from_bytes(buffer[:4], "big")
        if len(buffer) < 4 + size:
            break
        records.append(msgpack.unpackb(bytes(buffer[4 : 4 + size])))
        del buffer[: 4 + size]
    return records


def split_events(buffer: bytearray) -> list[dict[str, Any]]:
    """Complete SSE events at the front of ``buffer`` (removed), as
    ``{"id": ..., "event": ..., "data": <the JSON>}``."""
    events = []
    while (end := buffer.find(b"\n\n")) >= 0:
        block = bytes(buffer[:end]).decode()
        del buffer[: end + 2]
        event: dict[str, Any] = {"id": None, "event": None, "data": None}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value
        events.append(event)
    return events


class Subscription:
    """The records of one ``GET /topics/...`` response, read as they arrive."""

    def __init__(self, client: H3Client, stream_id: int, *, sse: bool = False) -> None:
        self.client = client
        self.stream_id = stream_id
        self.sse = sse
        self._offset = 0
        self._buffer = bytearray()
        self._ready: deque[dict[str, Any]] = deque()

    async def next(self) -> dict[str, Any]:
        """The next record (SSE: the next event); EOFError when the response ended."""
        while not self._ready:
            data = await self.client.read_body(self.stream_id, self._offset)
            if not data:
                raise EOFError
            self._offset += len(data)
            self._buffer += data
            self._ready.extend(
                split_events(self._buffer) if self.sse else split_records(self._buffer)
            )
        return self._ready.popleft()

    async def until(self, event: str) -> list[dict[str, Any]]:
        """Records up to and including the next one of kind ``event``."""
        seen = []
        while True:
            record = await self.next()
            seen.append(record)
            if record["event"] == event:
                return seen


async def subscribe(
    client: H3Client, query: str = "", headers: list[tuple[str, str]] | None = None
) -> Subscription:
    path = f"/topics/{TICKS}" + (f"?{query}" if query else "")
    stream_id = client.start("GET", path, headers or [])
    response = await client.response_headers(stream_id)
    assert response[":status"] == "200", response
    sse = response["content-type"] == EVENT_STREAM
    return Subscription(client, stream_id, sse=sse)


def problem(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == response.status
    return document


# -- the format ------------------------------------------------------------------------


@deadline(10)
async def test_records_are_length_prefixed_msgpack_maps(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic()
    async with gateway_client(server_config, certificate, topic) as client:
        stream_id = client.start("GET", f"/topics/{TICKS}", [("x-request-id", "md-1")])
        headers = await client.response_headers(stream_id)
        assert headers[":status"] == "200"
        assert headers["content-type"] == RECORDS
        assert headers["x-request-id"] == "md-1"
        assert headers["cache-control"] == "no-store"
        sub = Subscription(client, stream_id)
        subscribed = await sub.next()
        assert subscribed == {
            "event": "subscribed",
            "topic": TICKS,
            "frame_type": 0x10,
            "head": 0,
            "first_seq": 1,
            "policy": "conflate",
            "queue_size": topic.core.queue_size,
        }
        # An empty topic's snapshot: begin and end, nothing between.
        assert await sub.until("snapshot") == [
            {"event": "snapshot", "phase": "begin", "seq": 0, "count": 0}
        ]
        assert (await sub.next())["phase"] == "end"
        await topic.publish(tick(7))
        record = await sub.next()
        assert record == {
            "event": "data",
            "seq": 1,
            "value": {
                "seq": 1,
                "event_time_ns": 7,
                "send_time_ns": record["value"]["send_time_ns"],
                "price": 1_000_007,
                "quantity": 7,
                "instrument_id": 7,
                "side": 0,
                "kind": 0,
            },
        }
        assert record["value"]["send_time_ns"] > 0  # stamped by the topic


@deadline(10)
async def test_event_stream_with_json_and_ids_replays_and_resumes(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic()
    for i in range(5):
        await topic.publish(tick(i))
    async with gateway_client(server_config, certificate, topic) as client:
        sub = await subscribe(client, "from_seq=3", [("accept", "text/event-stream")])
        assert sub.sse
        first = await sub.next()
        assert first["event"] == "subscribed"
        assert first["id"] is None
        assert first["data"]["head"] == 5
        # The replay from the history, then live frames: ids are the sequence numbers.
        await topic.publish(tick(5))
        await topic.publish(tick(6))
        events = [await sub.next() for _ in range(5)]
        assert [event["id"] for event in events] == ["3", "4", "5", "6", "7"]
        assert all(event["event"] is None for event in events)  # EventSource "message"
        assert [event["data"]["seq"] for event in events] == [3, 4, 5, 6, 7]
        assert [event["data"]["value"]["event_time_ns"] for event in events] == [2, 3, 4, 5, 6]
        assert events[0]["data"]["event"] == "data"

        # An EventSource reconnecting sends Last-Event-ID: it resumes after that id.
        again = await subscribe(
            client, headers=[("accept", "text/event-stream"), ("last-event-id", "6")]
        )
        assert (await again.next())["event"] == "subscribed"
        resumed = await again.next()
        assert (resumed["id"], resumed["data"]["value"]["event_time_ns"]) == ("7", 6)

        # Without from_seq, a snapshot: the latest value per key, as named events around.
        snap = await subscribe(client, "snapshot=1", [("accept", "text/event-stream")])
        events = await snap.until("snapshot")
        assert events[-1]["data"] == {"event": "snapshot", "phase": "begin", "seq": 7, "count": 7}
        body = await snap.until("snapshot")
        assert [event["id"] for event in body[:-1]] == [str(seq) for seq in range(1, 8)]
        assert body[-1]["data"]["phase"] == "end"
        lines = (await client.request("GET", "/metrics")).body.decode().splitlines()
        assert 'quicframe_subscriptions{protocol="h3"} 3' in lines
        assert 'quicframe_reconnects_total{protocol="h3"} 2' in lines


# -- policies ------------------------------------------------------------------------


@deadline(20)
async def test_block_delivers_every_frame_in_order(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    count = 3000
    topic = ticks_topic(send_buffer=1024)
    async with (
        gateway(server_config, topic) as server,
        h3_client(server.port, certificate.path) as client,
        trio.open_nursery() as nursery,
    ):
        sub = await subscribe(client, "policy=block&queue_size=8&snapshot=0")
        subscribed = await sub.next()
        assert (subscribed["policy"], subscribed["queue_size"]) == ("block", 8)
        blocked = trio.Event()

        async def publish() -> None:
            for i in range(count):
                try:
                    topic.publish_nowait(tick(i))
                except trio.WouldBlock:
                    blocked.set()  # the subscriber's queue is full: wait for it
                    await topic.publish(tick(i))

        nursery.start_soon(publish)
        received = [await sub.next() for _ in range(count)]
        assert blocked.is_set()
        assert [record["seq"] for record in received] == list(range(1, count + 1))
        assert [record["value"]["event_time_ns"] for record in received] == list(range(count))
        stats = topic.statistics()
        assert stats.publisher_waits >= 1
        (queue,) = stats.subscriptions
        assert (queue.dropped, queue.conflated, queue.stale) == (0, 0, 0)


@deadline(20)
@pytest.mark.parametrize("send_buffer", [2048, None])
async def test_conflate_keeps_a_stalled_client_bounded_and_sends_the_latest_per_key(
    server_config: ServerConfig, certificate: Certificate, send_buffer: int | None
) -> None:
    """With the topic's send buffer, or by default the 64 KiB a subscription that
    may drop frames keeps (not the connection's larger stream high-water mark)."""
    count = 5000
    topic = ticks_topic(send_buffer=send_buffer)
    if send_buffer is None:
        send_buffer = DEFAULT_SEND_BUFFER
    async with (
        gateway(server_config, topic) as server,
        h3_client(server.port, certificate.path) as stalled,
        h3_client(server.port, certificate.path) as other,
    ):
        sub = await subscribe(stalled, "policy=conflate&snapshot=0")
        assert (await sub.next())["policy"] == "conflate"
        stalled.paused = True  # from now on it reads nothing (and acknowledges nothing)
        latest: dict[int, int] = {}
        for i in range(count):
            latest[i % KEYS] = await topic.publish(tick(i))
        (queue,) = topic.statistics().subscriptions
        # The queue holds at most one frame per key, and the transport at most the
        # send buffer plus one batch (which, conflated, is at most one per key).
        assert queue.high_water <= KEYS
        assert queue.conflated > 0
        streams = [s for c in gateway_of(server).connections for s in c._streams.values()]
        assert max(s.statistics().send_buffered for s in streams) <= send_buffer + KEYS * 128
        # Nothing here waits for the stalled client.
        for i in range(10):
            assert (await other.call(ECHO, i)).msgpack() == i
        assert (await other.request("GET", "/healthz")).status == 200

        stalled.paused = False
        stalled.transmit()
        seen: dict[int, int] = {}
        last = 0
        received = 0
        while seen != latest:
            record = await sub.next()
            assert record["seq"] > last  # in order, never twice
            last = record["seq"]
            seen[record["value"]["instrument_id"]] = record["seq"]
            received += 1
        assert received < count  # the stale values per key were conflated away
        lines = (await other.request("GET", "/metrics")).body.decode().splitlines()
        conflated = [x for x in lines if x.startswith("quicframe_subscription_drops_total{")]
        assert any('reason="conflated"' in x and not x.endswith(" 0") for x in conflated)


async def _get(client: StreamH3Client, path: str) -> Stream:
    """A GET on a quicframe transport stream (its response is read by hand)."""
    stream = await client.connection.open_stream()
    client.quic.attach(stream)
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", path.encode()),
    ]
    client.h3.send_headers(stream.stream_id, headers, end_stream=True)
    data, _ = client.quic.take(stream.stream_id)
    await stream.send_all(data)
    await stream.send_eof()
    return stream


@deadline(20)
async def test_an_unread_subscription_holds_up_nothing_on_its_connection(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    window = 64 * 1024
    config = ClientConfig(
        alpn_protocols=["h3"],
        ca_file=certificate.path,
        server_name="localhost",
        stream_receive_window=window,
    )
    topic = ticks_topic(send_buffer=4096)
    async with (
        gateway(server_config, topic) as server,
        transport_connect("127.0.0.1", server.port, config) as connection,
        h3_client(server.port, certificate.path) as other,
        trio.open_nursery() as nursery,
    ):
        uni = [await connection.open_stream(unidirectional=True) for _ in range(3)]
        client = StreamH3Client(connection, uni)
        nursery.start_soon(client.read_server_streams)
        stalled = await _get(client, f"/topics/{TICKS}?snapshot=0")
        live = await subscribe(other, "snapshot=0")
        assert (await live.next())["event"] == "subscribed"
        # Far more than the receive window: the unread subscription stops at it.
        latest: dict[int, int] = {}
        count = 20_000
        for i in range(count):
            latest[i % KEYS] = await topic.publish(tick(i))
            if i % 2000 == 0:
                # Calls on the same connection, and another client's subscription,
                # keep flowing meanwhile.
                assert await client.call(ECHO, i) == i
                record = await live.next()
                assert record["event"] == "data"
        # It was really stalled: the server filled its receive window.
        assert window // 2 <= stalled.statistics().receive_buffered <= window
        assert max(q.high_water for q in topic.statistics().subscriptions) <= 2 * KEYS

        # Reading the stalled subscription now: in order, ending with the latest per key.
        buffer = bytearray()
        seen: dict[int, int] = {}
        last = 0
        while seen != latest:
            data = await stalled.receive_some()
            assert data
            client.feed(stalled.stream_id, data, False)
            for event in client.events.pop(stalled.stream_id, []):
                buffer += getattr(event, "data", b"")
            for record in split_records(buffer):
                if record["event"] != "data":
                    continue
                assert record["seq"] > last
                last = record["seq"]
                seen[record["value"]["instrument_id"]] = record["seq"]
        nursery.cancel_scope.cancel()


@deadline(10)
async def test_disconnect_policy_ends_the_response_with_an_error_record(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic()
    async with gateway_client(server_config, certificate, topic) as client:
        sub = await subscribe(client, "policy=disconnect&queue_size=4&snapshot=0")
        assert (await sub.next())["policy"] == "disconnect"
        for i in range(10):  # no checkpoint: the driver cannot send any in between
            topic.publish_nowait(tick(i))
        error = await sub.next()
        assert error["event"] == "error"
        assert error["code_name"] == "SLOW_CONSUMER"
        assert error["details"]["limit"] == 4
        with pytest.raises(EOFError):
            await sub.next()


# -- errors ------------------------------------------------------------------------------


@deadline(10)
async def test_refusals_are_problem_documents(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic(history=3)
    for i in range(10):
        await topic.publish(tick(i))
    async with gateway_client(server_config, certificate, topic) as client:
        missing = await client.request("GET", "/topics/md.nope")
        assert problem(missing)["status"] == 404
        assert problem(missing)["code_name"] == "UNKNOWN_TOPIC"
        assert problem(missing)["details"] == {"topic": "md.nope"}

        gone = await client.request("GET", f"/topics/{TICKS}?from_seq=2&on_gap=error")
        document = problem(gone)
        assert (document["status"], document["code_name"]) == (410, "SEQUENCE_GAP")
        assert document["details"] == {"topic": TICKS, "first_missing": 2, "last_missing": 7}

        for query in ("policy=fast", "from_seq=0", "from_seq=x", "bogus=1", "snapshot=maybe"):
            bad = await client.request("GET", f"/topics/{TICKS}?{query}")
            assert problem(bad)["status"] == 400, query
            assert problem(bad)["code_name"] == "INVALID_ARGUMENT"

        refused = await client.request("GET", f"/topics/{TICKS}", [("accept", "application/json")])
        assert problem(refused)["status"] == 406
        posted = await client.request("POST", f"/topics/{TICKS}", body=b"")
        assert posted.status == 405

        # on_gap=snapshot (the default): a gap record, then the snapshot.
        sub = await subscribe(client, "from_seq=2")
        records = await sub.until("gap")
        assert records[-1] == {
            "event": "gap",
            "first_missing": 2,
            "last_missing": 7,
            "reason": "not in the history",
        }
        assert (await sub.next())["phase"] == "begin"


@deadline(10)
async def test_subscription_limit_per_connection(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic()
    router = make_router(topic)
    router.max_subscriptions = 1
    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config, http3=True) as server,
        h3_client(server.port, certificate.path) as client,
        h3_client(server.port, certificate.path) as other,
    ):
        first = await subscribe(client)
        assert (await first.next())["event"] == "subscribed"
        refused = await client.request("GET", f"/topics/{TICKS}")
        assert (problem(refused)["status"], problem(refused)["code_name"]) == (
            429,
            "SUBSCRIPTION_LIMIT",
        )
        # Another connection has its own allowance.
        assert (await (await subscribe(other)).next())["event"] == "subscribed"


# -- lifecycle ---------------------------------------------------------------------------


@deadline(10)
async def test_cancelling_the_request_ends_the_subscription(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic()
    async with gateway_client(server_config, certificate, topic) as client:
        sub = await subscribe(client)
        assert (await sub.next())["event"] == "subscribed"
        assert topic.subscribers == 1
        client.cancel(sub.stream_id)
        # The next request on the connection arrives after the cancellation.
        lines = (await client.request("GET", "/metrics")).body.decode().splitlines()
        assert 'quicframe_subscriptions{protocol="h3"} 0' in lines
        assert topic.subscribers == 0
        await topic.publish(tick(1))  # nobody to send it to; nothing breaks


@deadline(15)
async def test_native_and_http3_subscribers_side_by_side_and_shutdown(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    topic = ticks_topic()
    client_config = ClientConfig(ca_file=certificate.path, server_name="localhost")
    async with (
        gateway(server_config, topic) as server,
        h3_client(server.port, certificate.path) as h3,
        quicframe.connect("127.0.0.1", server.port, client_config) as native,
        native.subscribe(TICKS, snapshot=False) as native_sub,
    ):
        sub = await subscribe(h3, "snapshot=0")
        assert (await sub.next())["event"] == "subscribed"
        lines = (await h3.request("GET", "/metrics")).body.decode().splitlines()
        assert 'quicframe_subscriptions{protocol="h3"} 1' in lines
        assert 'quicframe_subscriptions{protocol="native"} 1' in lines
        for i in range(5):
            await topic.publish(tick(i))
        over_h3 = [(await sub.next())["value"]["event_time_ns"] for _ in range(5)]
        native_values = []
        async for value in native_sub:
            native_values.append(value.event_time_ns)
            if len(native_values) == 5:
                break
        assert over_h3 == native_values == list(range(5))
        # Shutting down ends the HTTP/3 subscription with a GOING_AWAY record.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            error = await sub.next()
            assert (error["event"], error["code_name"]) == ("error", "GOING_AWAY")
            with pytest.raises(EOFError):
                await sub.next()


@deadline(10)
async def test_without_topics_the_path_is_501_and_topics_added_later_are_served(
    server_config: ServerConfig, certificate: Certificate
) -> None:
    router = quicframe.Router()
    async with (
        quicframe.open_server(router, "127.0.0.1", 0, server_config, http3=True) as server,
        h3_client(server.port, certificate.path) as client,
    ):
        assert gateway_of(server).subscription_handler is None
        assert problem(await client.request("GET", f"/topics/{TICKS}"))["status"] == 501
        router.add_topic(ticks_topic())
        sub = await subscribe(client)
        assert (await sub.next())["event"] == "subscribed"


# -- the pure parts ----------------------------------------------------------------------


def test_query_parameters() -> None:
    params = parse_subscription_query(
        "from_seq=12&policy=drop_oldest&snapshot=0&on_gap=error&queue_size=64"
    )
    assert params.from_seq == 12
    assert params.policy is Policy.DROP_OLDEST
    assert params.snapshot is False
    assert (params.on_gap, params.queue_size) == ("error", 64)
    assert parse_subscription_query("policy=drop-oldest").policy is Policy.DROP_OLDEST
    assert parse_subscription_query("", last_event_id="41").from_seq == 42
    assert parse_subscription_query("from_seq=5", last_event_id="41").from_seq == 5
    default = parse_subscription_query("")
    assert (default.from_seq, default.policy, default.snapshot) == (None, None, True)
    for query in (
        "from_seq=1&from_seq=2",
        "queue_size=-1",
        "on_gap=retry",
        "from_seq=" + "9" * 30,
        "from_seq=%C2%B2",  # a superscript two: a digit to str.isdigit, not to int()
    ):
        with pytest.raises(InvalidArgument):
            parse_subscription_query(query)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, RECORDS),
        ("*/*", RECORDS),
        ("application/msgpack", RECORDS),
        (RECORDS, RECORDS),
        ("text/event-stream", EVENT_STREAM),
        ("text/event-stream, */*;q=0.5", EVENT_STREAM),
        ("*/*, text/event-stream", EVENT_STREAM),
        ("text/event-stream;q=0.2, application/msgpack", RECORDS),
        ("application/json", None),
        ("text/event-stream;q=0", None),
    ],
)
def test_stream_type_negotiation(accept: str | None, chosen: str | None) -> None:
    assert choose_stream_type(accept) == chosen


def test_record_encoder_turns_frames_into_records() -> None:
    topic = ticks_topic(clock=lambda: 99)
    topic.publish_nowait(tick(3))
    (entry,) = topic.core.log.read(1, 1)
    framed = RecordEncoder(topic, event_stream=False).encode(entry.data)
    assert int.from_bytes(framed[:4], "big") == len(framed) - 4
    record = msgpack.unpackb(framed[4:])
    assert record["seq"] == 1
    assert record["value"]["send_time_ns"] == 99
    sse = RecordEncoder(topic, event_stream=True).encode(entry.data).decode()
    assert sse.startswith("id: 1\ndata: {")
    assert sse.endswith("}\n\n")
    assert json.loads(sse.split("data: ", 1)[1]) == record
