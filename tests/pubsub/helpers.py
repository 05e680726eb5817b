"""Shared helpers: build ticks, and move bytes between the two sans-IO ends."""

from __future__ import annotations

from typing import Any, TypeVar

from quicframe.pubsub import ClientSubscription, ServerSubscription, TopicCore, read_subscribe
from quicframe.wire import MarketTick, OrderAck, decode_frame

V = TypeVar("V")

T0 = 1_700_000_000_000_000_000


def tick(instrument: int, price: int = 100, quantity: int = 1) -> MarketTick:
    """A tick as a feed hands it over: seq and send time still zero."""
    return MarketTick(
        seq=0,
        event_time_ns=T0,
        send_time_ns=0,
        price=price,
        quantity=quantity,
        instrument_id=instrument,
    )


def ack(order_id: int) -> OrderAck:
    return OrderAck(
        seq=0,
        order_id=order_id,
        client_order_id=order_id,
        event_time_ns=T0,
        send_time_ns=0,
        price=1,
        quantity=10,
        filled_quantity=0,
        instrument_id=1,
        side=1,
        status=1,
    )


def tick_topic(**kwargs: Any) -> TopicCore[MarketTick]:
    kwargs.setdefault("key", lambda t: t.instrument_id)
    return TopicCore("md.ticks", MarketTick, **kwargs)


def open_pair(topic: TopicCore[Any], client: ClientSubscription[Any]) -> ServerSubscription:
    """The server end for the SUBSCRIBE the client writes."""
    return ServerSubscription(topic, read_subscribe(decode_frame(client.subscribe_frame())))


def pump(
    server: ServerSubscription,
    client: ClientSubscription[Any],
    *,
    now_ns: int = 0,
    receive_ns: int = 0,
    chunk: int | None = None,
) -> list[Any]:
    """Answer the server's requests synchronously and deliver everything it has to send
    (optionally cut into ``chunk``-byte pieces); return what the client delivered."""
    delivered: list[Any] = []
    while True:
        while server.request is not None:
            server.fulfil()
        chunks = server.data_to_send(now_ns, 1 << 20)
        if not chunks:
            return delivered
        data = b"".join(chunks)
        if chunk is None:
            delivered += client.receive_data(data, receive_ns)
        else:
            for i in range(0, len(data), chunk):
                delivered += client.receive_data(data[i : i + chunk], receive_ns)


def seqs(values: list[Any]) -> list[int]:
    return [v.seq for v in values]


def fresh(value: V) -> V:
    """Identity: lets a test re-read a property that changed since mypy narrowed it."""
    return value
