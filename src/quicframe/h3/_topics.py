"""``GET /topics/{topic}``: a topic's subscription as one long-lived HTTP/3 response.

The gateway's default subscription handler (:func:`serve_topic`), installed when
the server's router has topics.  It does not reimplement pub/sub: it builds the
same :class:`~quicframe.pubsub.ServerSubscription` a native SUBSCRIBE builds, on
the topic's :class:`~quicframe.pubsub.TopicCore`, so the subscription gets a
queue of its own with the native policies (CONFLATE, DROP_OLDEST, DISCONNECT,
BLOCK), the same snapshot and replay recovery, and the very frames the topic
published.  Each frame the subscription would write on a native stream becomes
one *record* of the response instead:

- ``application/vnd.quicframe.records+msgpack`` (the default): a u32 big-endian
  length, then that many bytes holding a msgpack map;
- ``text/event-stream`` (when Accept asks for it): one SSE event per record, its
  ``data:`` line the same map as JSON; data records carry ``id: <seq>`` and no
  ``event:`` line (so ``EventSource.onmessage`` sees them), the others are named
  events (``subscribed``, ``snapshot``, ``gap``, ``error``).

The driver works like the native one (``quicframe._topic._Driver``): it hands the
transport at most the topic's send buffer (``Topic.send_buffer_for``) of this response and leaves
the rest in the subscription's queue, where the policy applies while the client
is slow.  See ``docs/http3.md`` for the record fields and query parameters.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, unquote

import msgpack

from .._topic import Topic, _Driver, stream_urgency
from ..errors import (
    ErrorCode,
    InvalidArgument,
    RemoteError,
    RemoteProtocolError,
    UnknownTopic,
    code_name,
    remote_error_class,
)
from ..pubsub import (
    MODE_STREAM,
    ON_GAP_ERROR,
    ON_GAP_SNAPSHOT,
    Gap,
    Policy,
    ServerSubscription,
    SnapshotMarker,
    Subscribe,
    Subscribed,
    decode_control,
)
from ..session import error_from_frame
from ..wire import FrameType, decode_frame
from . import _mapping as mapping
from ._gateway import TopicRequest, _Reply

if TYPE_CHECKING:
    from ._gateway import Gateway

__all__ = ["RecordEncoder", "SubscriptionParams", "parse_subscription_query", "serve_topic"]

# Frames taken from the queue per write, as the native driver does.
_BATCH_FRAMES: Final = 256
# A frame of the subscription is at most this long (the u32 length prefix).
_MAX_RECORD: Final = 0xFFFF_FFFF

_POLICIES: Final[dict[str, Policy]] = {
    "conflate": Policy.CONFLATE,
    "drop_oldest": Policy.DROP_OLDEST,
    "drop-oldest": Policy.DROP_OLDEST,
    "disconnect": Policy.DISCONNECT,
    "block": Policy.BLOCK,
}
_BOOLEANS: Final[dict[str, bool]] = {
    "1": True,
    "true": True,
    "yes": True,
    "0": False,
    "false": False,
    "no": False,
}
_PARAMETERS: Final = ("from_seq", "policy", "snapshot", "on_gap", "queue_size")


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionParams:
    """The query parameters of ``GET /topics/{topic}`` (the fields of SUBSCRIBE).

    Attributes:
        from_seq: resume from this sequence number (replay, then live); None to
            start now.  ``Last-Event-ID: N`` (an SSE client reconnecting) means
            ``from_seq=N+1`` when the query does not say.
        policy: the slow-consumer policy, or None for the topic's default.
        snapshot: when starting now, start with the latest value per key.
        on_gap: ``"snapshot"`` or ``"error"``: what a ``from_seq`` older than the
            history gets.
        queue_size: the queue capacity asked for (0: the topic's).
    """

    from_seq: int | None = None
    policy: Policy | None = None
    snapshot: bool = True
    on_gap: str = ON_GAP_SNAPSHOT
    queue_size: int = 0


def _positive_int(name: str, text: str, minimum: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}, not {text!r}")
    value = int(text)
    if value < minimum or value >= 1 << 63:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}, not {text!r}")
    return value


def parse_subscription_query(query: str, last_event_id: str | None = None) -> SubscriptionParams:
    """The subscription asked for by a query string (and an SSE ``Last-Event-ID``).

    Raises:
        InvalidArgument: an unknown parameter, a parameter given twice, or a
            value out of range (answered 400).
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise InvalidArgument(f"malformed query string: {exc}") from None
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMETERS:
            raise InvalidArgument(
                f"unknown query parameter {name!r} (known: {', '.join(_PARAMETERS)})"
            )
        if name in given:
            raise InvalidArgument(f"query parameter {name!r} is given twice")
        given[name] = value.strip()
    from_seq: int | None = None
    if "from_seq" in given:
        from_seq = _positive_int("from_seq", given["from_seq"], 1)
    elif last_event_id is not None and last_event_id.strip():
        from_seq = _positive_int("Last-Event-ID", last_event_id.strip(), 0) + 1
    policy: Policy | None = None
    if "policy" in given:
        policy = _POLICIES.get(given["policy"].lower())
        if policy is None:
            raise InvalidArgument(
                f"policy must be conflate, drop_oldest, disconnect or block, not "
                f"{given['policy']!r}"
            )
    snapshot = True
    if "snapshot" in given:
        flag = _BOOLEANS.get(given["snapshot"].lower())
        if flag is None:
            raise InvalidArgument(f"snapshot must be 1 or 0, not {given['snapshot']!r}")
        snapshot = flag
    on_gap = given.get("on_gap", ON_GAP_SNAPSHOT).lower()
    if on_gap not in (ON_GAP_SNAPSHOT, ON_GAP_ERROR):
        raise InvalidArgument(f"on_gap must be snapshot or error, not {given['on_gap']!r}")
    queue_size = 0
    if "queue_size" in given:
        queue_size = _positive_int("queue_size", given["queue_size"], 0)
    return SubscriptionParams(from_seq, policy, snapshot, on_gap, queue_size)


def _fields(value: Any) -> Any:
    """A frame value as a map of its fields."""
    as_dict: Callable[[], Mapping[str, Any]] | None = getattr(value, "_asdict", None)
    if as_dict is not None:
        return dict(as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _json_default(value: object) -> str:
    return str(value)


# The record of each control frame a subscription writes: its event name and
# the fields it carries, in order.
_CONTROL_RECORDS: Final[dict[type, tuple[str, tuple[str, ...]]]] = {
    Subscribed: (
        "subscribed",
        ("topic", "frame_type", "head", "first_seq", "policy", "queue_size"),
    ),
    SnapshotMarker: ("snapshot", ("phase", "seq", "count")),
    Gap: ("gap", ("first_missing", "last_missing", "reason")),
}


class RecordEncoder:
    """Turns the frames of one subscription (control frames and the topic's data
    frames, as a native subscription stream carries them) into response records.

    Args:
        topic: the topic subscribed to (its frame type and codec decode the data).
        event_stream: True for ``text/event-stream``, False for length-prefixed
            msgpack records.
    """

    def __init__(self, topic: Topic[Any], *, event_stream: bool) -> None:
        core = topic.core
        self.frame_type = core.frame_type
        self.codec = core.codec
        self.event_stream = event_stream

    def encode(self, data: bytes) -> bytes:
        """The record of one encoded frame."""
        frame = decode_frame(data, max_frame_size=max(len(data), 12))
        frame_type = frame.type
        record: dict[str, Any]
        if frame_type == self.frame_type:
            value = self.codec.decode(frame.body)
            seq = int(value.seq)
            record = {"event": "data", "seq": seq, "value": _fields(value)}
            return self._pack(record, seq)
        if frame_type == FrameType.ERROR:
            error = error_from_frame(frame)
            record = {
                "event": "error",
                "code": error.code,
                "code_name": code_name(error.code),
                "message": error.message,
                "details": dict(error.details),
            }
            return self._pack(record, None)
        body = decode_control(frame_type, frame.body)
        try:
            event, names = _CONTROL_RECORDS[type(body)]
        except KeyError:  # pragma: no cover - a server subscription writes nothing else
            raise AssertionError(f"unexpected frame type 0x{frame_type:02x}") from None
        record = {"event": event, **{name: getattr(body, name) for name in names}}
        return self._pack(record, None)

    def _pack(self, record: dict[str, Any], seq: int | None) -> bytes:
        if self.event_stream:
            # json.dumps escapes line breaks, so the JSON is one data: line.
            text = json.dumps(
                mapping._jsonable(record), separators=(",", ":"), default=_json_default
            )
            if seq is not None:
                return f"id: {seq}\ndata: {text}\n\n".encode()
            return f"event: {record['event']}\ndata: {text}\n\n".encode()
        packed: bytes = msgpack.packb(record, use_bin_type=True)
        if len(packed) > _MAX_RECORD:  # pragma: no cover - frames are far smaller
            raise ValueError("a record longer than 4 GiB")
        return len(packed).to_bytes(4, "big") + packed


class SubscriptionDriver(_Driver):
    """One HTTP/3 subscription: moves the subscription's frames, as records, to
    the response while the client takes them.

    A :class:`quicframe._topic._Driver` (the topic wakes it when it publishes)
    with the native driver's writer loop, writing HTTP/3 DATA frames through the
    :class:`TopicRequest`.  The request was read to its end, so there is no
    reader task: the client ends the subscription by cancelling the request
    (STOP_SENDING, through the stream's stop callback) or by closing the connection.
    """

    def __init__(
        self,
        topic: Topic[Any],
        sub: ServerSubscription,
        request: TopicRequest,
        records: RecordEncoder,
    ) -> None:
        super().__init__(topic, sub, request._stream, request._session.connection)
        self.request = request
        self.records = records

    def _stopped(self, code: int) -> None:
        # STOP_SENDING: the client cancelled.  Account for it at once, so the
        # metrics agree with what the client did before this task runs again.
        super()._stopped(code)
        self.request._session.gateway._subscription_ended(self)

    def end(self, error: RemoteError | None = None) -> None:
        """End the subscription; with ``error``, its record is the last one sent."""
        self.sub.close(error)
        self.wake()

    async def serve(self) -> None:
        """Run the subscription until it ends (the response then gets its FIN)."""
        stream = self.stream
        topic = self.topic
        sub = self.sub
        stream.urgency = stream_urgency(sub.queue.urgency)
        stream.send_high_water_mark = topic.send_buffer_for(sub.queue.policy)
        stream._stop_callback = self._stopped
        try:
            await self._pump()
        finally:
            stream._stop_callback = None
            sub.close()
            topic._idle.discard(self)
            topic._drained()

    async def _pump(self) -> None:
        topic = self.topic
        sub = self.sub
        stream = self.stream
        clock = topic.clock
        encode = self.records.encode
        send = self.request.send
        blocking = sub.queue.policy is Policy.BLOCK
        while True:
            # The room first: while the response holds its mark, frames wait in the
            # queue, where the policy works on them.
            await stream.wait_send_all_might_not_block()
            while sub.request is not None:
                sub.fulfil()
            chunks = sub.data_to_send(clock(), _BATCH_FRAMES)
            if chunks:
                if blocking:
                    topic._drained()
                await send(b"".join([encode(chunk) for chunk in chunks]))
                continue
            if sub.done:
                return
            topic._idle.add(self)
            await self.lot.park()
            topic._idle.discard(self)


async def serve_topic(request: TopicRequest) -> None:
    """The gateway's subscription handler for the topics of the server's router.

    Raises (before the response starts, answered with a problem document):
        UnknownTopic: no such topic (404).
        InvalidArgument: a bad query parameter (400).
        RemoteError: SUBSCRIPTION_LIMIT, the connection holds
            ``Router.max_subscriptions`` subscriptions (429); SEQUENCE_GAP,
            ``from_seq`` is older than the history and ``on_gap=error`` (410).
    """
    session = request._session
    gateway: Gateway = session.gateway
    router = session._router
    name = unquote(request.topic)
    topic = router.topic(name)
    if topic is None:
        raise UnknownTopic(f"no topic {name!r}", details={"topic": name})
    stream_type = mapping.choose_stream_type(request.accept)
    if stream_type is None:
        raise _Reply(
            406,
            ErrorCode.INVALID_ARGUMENT,
            f"a subscription is {mapping.RECORDS} or {mapping.EVENT_STREAM}; Accept allows neither",
        )
    params = parse_subscription_query(request.query, request.headers.get("last-event-id"))
    if session._subscriptions >= router.max_subscriptions:
        raise remote_error_class(ErrorCode.SUBSCRIPTION_LIMIT)(
            f"this connection already holds {session._subscriptions} subscriptions",
            code=ErrorCode.SUBSCRIPTION_LIMIT,
            details={"limit": router.max_subscriptions},
        )
    subscribe = Subscribe(
        topic=topic.name,
        from_seq=params.from_seq,
        mode=MODE_STREAM,
        policy=None if params.policy is None else str(params.policy),
        snapshot=params.snapshot,
        on_gap=params.on_gap,
        queue_size=params.queue_size,
    )
    try:
        sub = ServerSubscription(
            topic.core,
            subscribe,
            max_queue_size=topic.max_queue_size,
            max_frame_size=session._options.max_frame_size,
        )
    except RemoteProtocolError as exc:
        raise InvalidArgument(exc.message) from None
    try:
        # Recover (snapshot or replay) before answering: a history gap the
        # client wants as an error is then an HTTP status, not a record.
        while sub.request is not None:
            sub.fulfil()
        if sub.error is not None:
            raise sub.error
        records = RecordEncoder(topic, event_stream=stream_type == mapping.EVENT_STREAM)
        driver = SubscriptionDriver(topic, sub, request, records)
        # Counted from here: no await since the limit was checked.
        session._subscriptions += 1
        gateway._subscription_started(driver, resumed=params.from_seq is not None)
        try:
            await request.start(stream_type, {"cache-control": "no-store"})
            await driver.serve()
        finally:
            session._subscriptions -= 1
            gateway._subscription_ended(driver)
    finally:
        sub.close()
