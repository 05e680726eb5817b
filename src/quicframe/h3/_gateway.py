"""The HTTP/3 gateway: one server's Router served to HTTP/3 clients.

The server hands every connection that negotiated ALPN ``h3`` to
:meth:`Gateway.serve_connection`.  Per connection, an :class:`_H3Session` opens
the three unidirectional streams HTTP/3 needs, builds aioquic's sans-IO
``H3Connection`` on a :class:`~quicframe.h3._quic.StreamQuic` (quicframe streams
posing as the QUIC core), and serves each stream the client opens in a task of
its own: unidirectional streams (control, QPACK) are read and fed to
``H3Connection``; each request stream is read to its end, answered, and closed.
Every ``H3Connection`` call is synchronous and trio runs one task at a time, so
the tasks share it without a lock.  A request that stalls (a slow handler, a
client that does not read its response) only blocks its own task: the QUIC
stream's flow control and the transport's high-water mark hold its bytes back
while the other streams keep moving.

Calls go through the same ``Router.pipeline`` (middleware and handler) and the
same :class:`~quicframe.CallContext` as native calls; headers carry what native
metadata carries (request id, SLA class, payload digest, deadline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, cast

import pylsqpack
import trio
from aioquic._buffer import Buffer, BufferReadError  # the C buffer (aioquic.buffer's)
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    CONNECTION_SPECIFIC_HEADERS,
    ErrorCode as H3ErrorCode,
    FrameType,
    H3Connection,
    Setting,
    encode_frame,
)
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import StopSendingReceived, StreamDataReceived, StreamReset

from .._deferred import DeferredCallContext
from .._router import Route, Router
from .._server import run_call
from .._util import send_with_fin
from ..errors import (
    ErrorCode,
    HandshakeError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    code_name,
)
from ..session import DEFAULT_CALL_URGENCY, SUPPORTED_VERSIONS, Hello, sla_urgency
from ..transport import StreamResetByPeer
from ..wire import Metadata
from . import _mapping as mapping
from ._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics, NativeSnapshot
from ._quic import TERMINAL_ERRORS, LiteralEncoder, StreamQuic

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection

    from .._config import ServerConfig
    from .._server import Server
    from ..transport import Connection, Stream
    from ._topics import SubscriptionDriver

__all__ = [
    "H3_ALPN",
    "Gateway",
    "SubscriptionHandler",
    "TopicRequest",
    "enable_http3",
    "gateway_of",
]

logger = logging.getLogger("quicframe.h3")

H3_ALPN: Final = "h3"
"""The ALPN token of HTTP/3 (RFC 9114)."""

_RPC_PREFIX: Final = "/rpc/"
_TOPICS_PREFIX: Final = "/topics/"
# How long closing one connection at shutdown may wait for acknowledgements.
_CLOSE_BOUND: Final = 1.0
# Authorization values whose principal a connection remembers.
_PRINCIPALS_KEPT: Final = 64


class TopicRequest:
    """One ``GET /topics/{topic}`` request, handed to :attr:`Gateway.subscription_handler`.

    The handler streams the subscription as one long-lived response: it calls
    :meth:`start` once with the response's content type, then :meth:`send` for
    each piece of the body, and returns when the subscription ends (the gateway
    then finishes the response).  ``send`` waits while the client is not reading
    (QUIC flow control), which is where a slow-consumer policy applies.  If the
    client goes away, ``send`` raises ``trio.BrokenResourceError`` (or
    ``ConnectionClosed``) and the handler should return.  Raising
    :class:`quicframe.errors.RemoteError` before :meth:`start` answers with that
    status and a problem document (``UnknownTopic`` is 404).

    Attributes:
        topic: the topic name from the path.
        accept: the Accept header (``text/event-stream`` asks for SSE), or None.
        request_id: the request id (``x-request-id``, else generated).
        headers: every request header, names lower-case.
        query: the query string of the path (after ``?``), or "".
    """

    def __init__(
        self,
        session: _H3Session,
        stream: Stream,
        topic: str,
        accept: str | None,
        request_id: str,
        headers: dict[str, str],
        query: str = "",
    ) -> None:
        self._session = session
        self._stream = stream
        self.topic = topic
        self.accept = accept
        self.request_id = request_id
        self.headers = headers
        self.query = query
        self.started = False

    async def start(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Send the response headers (status 200)."""
        if self.started:
            raise RuntimeError("the response has already started")
        self.started = True
        session, quic = self._session, self._session._quic
        assert quic is not None
        fields = [
            (b":status", b"200"),
            (b"content-type", content_type.encode()),
            (b"x-request-id", self.request_id.encode()),
            *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
        ]
        session._send_headers(self._stream.stream_id, fields)
        data, _ = quic.take(self._stream.stream_id)
        await self._stream.send_all(data)

    async def send(self, data: bytes) -> None:
        """Send one piece of the body, waiting while the client is behind."""
        if not self.started:
            raise RuntimeError("call start() first")
        quic = self._session._quic
        assert quic is not None
        self._session._send_data(self._stream.stream_id, data, end_stream=False)
        frame, _ = quic.take(self._stream.stream_id)
        await self._stream.send_all(frame)

    async def wait_writable(self) -> None:
        """Wait until the response holds less than its high-water mark of unsent
        and unacknowledged bytes, so that the next :meth:`send` does not wait.

        A handler that picks what to send next (the newest value rather than an
        old one) waits here first and decides afterwards, as the built-in topic
        handler does.
        """
        await self._stream.wait_send_all_might_not_block()


SubscriptionHandler = Callable[[TopicRequest], Awaitable[None]]
"""``async def handler(request: TopicRequest) -> None``: serves ``GET /topics/{topic}``."""


class _Reply(Exception):
    """Raised inside request handling to answer at once with a problem document."""

    def __init__(
        self,
        status: int,
        code: int,
        detail: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or []
        self.details = details


@dataclass(slots=True)
class _Request:
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    too_large: bool = False
    wakeup: trio.Event | None = None
    # Read without H3Connection (see _H3Session._read_whole): H3Connection
    # never hears of this stream, so its response is written without it too.
    direct: bool = False
    # Counted against max_concurrent_calls (a subscription stops counting).
    counted: bool = True
    # The headers already parsed (a request read by _read_whole), if so.
    parsed: mapping.RequestHeaders | None = None


@dataclass(frozen=True, slots=True)
class _Block:
    """What a static-only QPACK header block says, worked out once per distinct block."""

    headers: list[tuple[bytes, bytes]]
    # The content-length it announces, or -1 for none.
    content_length: int
    # Its fields as the gateway reads them, or None if they do not parse (the
    # request is then parsed again, and answered 400, by _answer).
    parsed: mapping.RequestHeaders | None


# Distinct header blocks the gateway remembers (no longer than _BLOCK_BYTES);
# when full it starts over.  Clients repeat a few blocks: one per kind of call.
_BLOCKS_KEPT: Final = 256
_BLOCK_BYTES: Final = 512


class Gateway:
    """The HTTP/3 face of one server; made by ``serve(..., http3=True)``.

    Attributes:
        metrics: the counters ``GET /metrics`` renders (connection counts for
            every ALPN included).
        subscription_handler: what serves ``GET /topics/{topic}``
            (subscriptions over HTTP/3): ``async def handler(request:
            TopicRequest)`` streaming one long-lived response.  By default the
            built-in handler of the router's topics
            (:func:`quicframe.h3._topics.serve_topic`) when the router has
            topics (also when they are added after the server started), else
            None (answered 501).  Assign your own to replace it.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self.metrics = Metrics()
        self.subscription_handler: SubscriptionHandler | None = None
        if server._router.topics:
            from ._topics import serve_topic

            self.subscription_handler = serve_topic
        self._sessions: set[_H3Session] = set()
        self._subscriptions: set[SubscriptionDriver] = set()
        # Header blocks that need no dynamic table decode to the same fields
        # whoever sends them: block -> what reading it found (see _read_whole).
        self._blocks: dict[bytes, _Block] = {}

    @property
    def connections(self) -> list[Connection]:
        """The HTTP/3 connections being served."""
        return [session.connection for session in self._sessions]

    async def handle_connection(self, connection: Connection) -> None:
        """The listener's handler: HTTP/3 connections here, the others to the native session."""
        alpn = connection.alpn_protocol or ""
        if alpn == H3_ALPN:
            await self.serve_connection(connection)
            return
        self.metrics.connection_opened(alpn)
        try:
            await self._server._handle_connection(connection)
        finally:
            self.metrics.connection_closed(alpn)

    async def aclose_connections(self) -> None:
        """Close every HTTP/3 connection with H3_NO_ERROR once its data is acknowledged.

        Each close waits at most ``_CLOSE_BOUND`` seconds for acknowledgements (a
        safety bound, as for native connections), then closes anyway.
        """
        for connection in self.connections:
            with trio.move_on_after(_CLOSE_BOUND):
                await connection.aclose(H3ErrorCode.H3_NO_ERROR, graceful=True)

    async def serve_connection(self, connection: Connection) -> None:
        """Serve one connection that negotiated ``h3`` until it closes."""
        session = _H3Session(self, connection)
        self._sessions.add(session)
        self.metrics.connection_opened(H3_ALPN)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self.metrics.connection_closed(H3_ALPN)

    def send_goaway(self) -> None:
        """Tell every HTTP/3 client that no new requests will be taken (GOAWAY).

        Subscriptions end too: each gets a last ``error`` record (GOING_AWAY) and
        its response finishes, so the client knows to resume elsewhere.
        """
        for session in list(self._sessions):
            session.send_goaway()
        for driver in list(self._subscriptions):
            driver.end(RemoteError("the server is shutting down", code=ErrorCode.GOING_AWAY))

    def _subscription_started(self, driver: SubscriptionDriver, *, resumed: bool) -> None:
        self._subscriptions.add(driver)
        self.metrics.subscription_opened(resumed=resumed)

    def _subscription_ended(self, driver: SubscriptionDriver) -> None:
        if driver in self._subscriptions:
            self._subscriptions.discard(driver)
            self.metrics.subscription_closed(driver.sub.queue.stats())

    def render_metrics(self) -> bytes:
        stats = self._server.statistics()
        # Subscribers of the router's topics other than this gateway's: the native ones.
        attached = sum(topic.subscribers for topic in self._server._router.topics)
        return self.metrics.render(
            NativeSnapshot(
                calls_in_flight=stats.calls_in_flight,
                calls_completed=stats.calls_completed,
                calls_failed=stats.calls_failed,
                handshakes_rejected=stats.handshakes_rejected,
                subscriptions=max(attached - len(self._subscriptions), 0),
            ),
            live=[driver.sub.queue.stats() for driver in self._subscriptions],
        )


class _GatewayH3Connection(H3Connection):
    """``H3Connection`` with QPACK's dynamic table off in both directions.

    A header block that refers to the dynamic table must be acknowledged by the
    receiving decoder on its decoder stream: a STREAM frame more per request and
    per response, and, for the client's acknowledgements of our responses, one
    more packet per response for the server to receive and feed.  The fields
    worth indexing on a response are mostly new each time (``x-request-id``).  So
    our encoder announces a table of capacity 0 (RFC 9204 lets it use less than
    the peer allows; see :class:`~quicframe.h3._quic.LiteralEncoder`), and our
    SETTINGS ask the client for the same: headers travel as static-table
    references and literals, and no header block waits for encoder
    instructions.  A client that ignores the setting is still decoded (the
    decoder keeps aioquic's limits).
    """

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.literal_encoder = LiteralEncoder(self._encoder)
        self._encoder = cast("Any", self.literal_encoder)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings[Setting.QPACK_MAX_TABLE_CAPACITY] = 0
        settings[Setting.QPACK_BLOCKED_STREAMS] = 0
        return settings


class _H3Session:
    """One HTTP/3 connection."""

    def __init__(self, gateway: Gateway, connection: Connection) -> None:
        self.gateway = gateway
        self.connection = connection
        self._server = gateway._server
        self._router = self._server._router
        self._options = self._server._options
        self._requests: dict[int, _Request] = {}
        self._quic: StreamQuic | None = None
        self._h3: H3Connection | None = None
        self._encoder: LiteralEncoder | None = None
        self._encoder_stream_id = -1
        # Header blocks of whole requests that need no dynamic table (all of
        # them from a client that honours our SETTINGS) are decoded here.
        self._decoder = pylsqpack.Decoder(0, 0)
        self._control: Stream | None = None
        self._nursery: trio.Nursery | None = None
        self._goaway_sent = False
        self._closing = False
        self._next_request_stream = 0
        self._in_flight = 0  # calls whose handler runs (run_call counts them)
        # Request streams from their first byte until answered (max_concurrent_calls).
        self._requests_open = 0
        self._subscriptions = 0  # GET /topics/... being served on this connection
        # Authorization header value -> principal, for this connection.
        self._principals: dict[str | None, str | None] = {}

    async def run(self) -> None:
        connection = self.connection
        try:
            uni = [await connection.open_stream(unidirectional=True) for _ in range(3)]
        except TERMINAL_ERRORS:
            return
        # H3Connection makes them its control, QPACK encoder and QPACK decoder
        # streams, in this order.
        self._control = uni[0]
        self._encoder_stream_id = uni[1].stream_id
        quic = self._quic = StreamQuic(connection, uni)
        h3 = self._h3 = _GatewayH3Connection(cast("QuicConnection", quic))
        self._encoder = h3.literal_encoder
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(quic.run_writer)
            if self._server._closing:
                self.send_goaway()
            await connection.serve_streams(self._serve_stream)
            nursery.cancel_scope.cancel()

    def send_goaway(self) -> None:
        if self._goaway_sent or self._quic is None or self._control is None:
            return
        self._goaway_sent = True
        # The first request stream we will not serve: every later one gets 503.
        frame = encode_frame(FrameType.GOAWAY, encode_uint_var(self._next_request_stream))
        self._quic.send_stream_data(self._control.stream_id, frame)

    # -- feeding H3Connection -------------------------------------------------------

    def _feed(self, stream_id: int, data: bytes, end: bool) -> None:
        assert self._h3 is not None
        events = self._h3.handle_event(
            StreamDataReceived(data=data, end_stream=end, stream_id=stream_id)
        )
        if events:
            self._dispatch(events)
        self._check_close()

    def _feed_reset(self, stream_id: int, code: int) -> None:
        assert self._h3 is not None
        self._h3.handle_event(StreamReset(error_code=code, stream_id=stream_id))
        self._check_close()

    def _dispatch(self, events: list[H3Event]) -> None:
        # Events may concern another stream than the one fed: a header block
        # waiting for QPACK encoder instructions is released by the encoder stream.
        limit = self._options.max_frame_size
        for event in events:
            if isinstance(event, HeadersReceived | DataReceived):
                request = self._requests.get(event.stream_id)
                if request is None:
                    continue
                if isinstance(event, HeadersReceived):
                    if request.headers is None:
                        request.headers = event.headers
                    # Trailers are accepted and ignored.
                elif not request.too_large:
                    if len(request.body) + len(event.data) > limit:
                        request.too_large = True
                        request.body.clear()
                    else:
                        request.body += event.data
                if event.stream_ended:
                    request.ended = True
                    if request.wakeup is not None:
                        request.wakeup.set()

    def _check_close(self) -> None:
        quic = self._quic
        if quic is None or quic.close_request is None or self._closing:
            return
        self._closing = True
        code, reason = quic.close_request
        logger.info("closing HTTP/3 connection from %s: %s", self.connection.remote_address, reason)
        assert self._nursery is not None
        self._nursery.start_soon(self.connection.aclose, code, reason)

    # -- streams ----------------------------------------------------------------------

    async def _read_unidirectional(self, stream: Stream) -> None:
        stream_id = stream.stream_id
        try:
            while True:
                data = await stream.receive_some()
                self._feed(stream_id, data, not data)
                if not data:
                    return
        except StreamResetByPeer as exc:
            self._feed_reset(stream_id, exc.code)
        except TERMINAL_ERRORS:
            return

    async def _serve_stream(self, stream: Stream) -> None:
        """Serve one stream the client opened: a unidirectional stream is fed
        to H3Connection; a request stream is read, answered and closed."""
        if stream.stream_id & 2:
            await self._read_unidirectional(stream)
            return
        # A request counts against max_concurrent_calls from its stream's first
        # byte (the stream task starts once that arrived) until it is answered,
        # as a native call does; a subscription stops counting once its headers
        # say so (_uncount).  One beyond the limit is refused before anything
        # of it is read.
        stream_id = stream.stream_id
        quic = self._quic
        assert quic is not None
        self._next_request_stream = max(self._next_request_stream, stream_id + 4)
        self._requests_open += 1
        request = _Request()
        try:
            if self._requests_open > self._options.max_concurrent_calls:
                self._refuse(
                    stream,
                    H3ErrorCode.H3_REQUEST_REJECTED,
                    ErrorCode.RESOURCE_EXHAUSTED,
                    "too many concurrent requests on this connection",
                )
                return
            quic.attach(stream)
            self._requests[stream_id] = request
            done = False
            try:
                data: bytes | None = None
                complete = False
                if stream._receive_eof:
                    # The FIN is in, so the whole request is buffered and reading it
                    # cannot wait: the common case, a request whose bytes came in
                    # one piece, is taken without a timeout scope, and without a
                    # scheduling round: the answer leaves in this task's first step.
                    data = stream.receive_nowait()
                    complete = (
                        bool(data)
                        and stream.receive_finished
                        and self._read_whole(stream_id, data, request)
                    )
                if not complete:
                    timed_out = True
                    with trio.move_on_after(self._options.request_read_timeout):
                        complete = await self._read_request(stream, request, data)
                        timed_out = False
                    if timed_out:
                        # Headers or body trickled in too slowly, or never ended (or
                        # the header block waited for QPACK instructions that never
                        # came): the request is let go without running.  Detached
                        # first, so that H3Connection, told to forget the stream,
                        # resets nothing itself (it would say H3_REQUEST_INCOMPLETE).
                        quic.detach(stream_id)
                        self._feed_reset(stream_id, H3ErrorCode.H3_REQUEST_CANCELLED)
                        self._forget_stream(stream_id)
                        self._refuse(
                            stream,
                            H3ErrorCode.H3_REQUEST_CANCELLED,
                            ErrorCode.LIMIT_EXCEEDED,
                            f"no complete request within {self._options.request_read_timeout} s",
                        )
                        done = True
                        return
                if complete:
                    await self._answer(stream, request)
                done = True
            except TERMINAL_ERRORS:
                pass  # the client or the connection went away: nobody to answer
            finally:
                del self._requests[stream_id]
                quic.detach(stream_id)
                if not done:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
        finally:
            if request.counted:
                self._requests_open -= 1

    def _refuse(self, stream: Stream, h3_code: int, code: int, why: str) -> None:
        """Reset both directions of a request stream whose request does not run."""
        logger.info(
            "HTTP/3 request stream %d from %s refused (%s): %s",
            stream.stream_id,
            self.connection.remote_address,
            code_name(code),
            why,
        )
        self.gateway.metrics.request_refused(code_name(code))
        stream.reset(h3_code)
        stream.stop_sending(h3_code)

    def _uncount(self, request: _Request) -> None:
        """A subscription, not a call: it stops counting against max_concurrent_calls."""
        if request.counted:
            request.counted = False
            self._requests_open -= 1

    async def _read_request(
        self, stream: Stream, request: _Request, data: bytes | None = None
    ) -> bool:
        """Read the request to its end; False if it was abandoned (nothing to answer).

        ``data``: what was already read of the stream (it did not make a whole
        request on its own), if anything.
        """
        stream_id = stream.stream_id
        quic = self._quic
        assert quic is not None
        eof = False
        first = data is None
        try:
            if data is not None:
                eof = not data or stream.receive_finished
                self._feed(stream_id, data, eof)
            while not request.ended:
                if request.too_large:
                    # Stop reading; the answer says why.
                    stream.stop_sending(H3ErrorCode.H3_NO_ERROR)
                    self._feed_reset(stream_id, H3ErrorCode.H3_NO_ERROR)
                    return True
                if eof:
                    if not quic.is_attached(stream_id):
                        return False  # H3Connection aborted it (no headers before FIN)
                    # Every byte is in, but the header block waits for QPACK
                    # instructions on the encoder stream.
                    request.wakeup = trio.Event()
                    await request.wakeup.wait()
                    continue
                data = await stream.receive_some()
                # A request usually arrives whole, FIN included: learn that now
                # rather than in one more receive_some round.
                eof = not data or stream.receive_finished
                if first and eof and data and self._read_whole(stream_id, data, request):
                    return True
                first = False
                self._feed(stream_id, data, eof)
        except StreamResetByPeer as exc:
            self._feed_reset(stream_id, exc.code)
            stream.reset(H3ErrorCode.H3_REQUEST_CANCELLED)
            return False
        return quic.is_attached(stream_id)

    def _read_whole(self, stream_id: int, data: bytes, request: _Request) -> bool:
        """Take a request that arrived whole in one read, without H3Connection.

        The common case: one HEADERS frame whose header block needs no dynamic
        table, DATA frames, FIN.  It is parsed, QPACK-decoded and checked here
        (:func:`_plainly_valid`), which spares H3Connection's per-stream state
        machine.  Anything else (a header block that refers to the dynamic
        table, unknown or reserved frame types, trailers, a request the check
        does not plainly accept) returns False without side effects, and the
        bytes go to H3Connection, which serves or refuses them as always.
        """
        buf = Buffer(data=data)
        try:
            if buf.pull_uint_var() != FrameType.HEADERS:
                return False
            block = buf.pull_bytes(buf.pull_uint_var())
            # The header block's prefix: a Required Insert Count of 0 (one zero
            # byte) means it refers to no dynamic table entry, so it decodes
            # without the QPACK encoder stream and needs no acknowledgement.
            if not block or block[0] != 0:
                return False
            if buf.eof():
                body = b""
            else:
                if buf.pull_uint_var() != FrameType.DATA:
                    return False
                body = buf.pull_bytes(buf.pull_uint_var())
                while not buf.eof():
                    if buf.pull_uint_var() != FrameType.DATA:
                        return False
                    body += buf.pull_bytes(buf.pull_uint_var())
        except BufferReadError:
            return False
        blocks = self.gateway._blocks
        known = blocks.get(block)
        if known is None:
            try:
                _, headers = self._decoder.feed_header(stream_id, block)
            except (pylsqpack.DecompressionFailed, pylsqpack.StreamBlocked):
                return False
            content_length = _plain_content_length(headers)
            if content_length is None:
                return False
            try:
                parsed = mapping.parse_request_headers(headers)
            except mapping.BadHeader:
                parsed = None
            known = _Block(headers, content_length, parsed)
            if len(block) <= _BLOCK_BYTES:
                if len(blocks) >= _BLOCKS_KEPT:
                    blocks.clear()  # a client cycling header blocks: start over
                blocks[block] = known
        if known.content_length >= 0 and known.content_length != len(body):
            return False
        request.headers = known.headers
        request.parsed = known.parsed
        request.direct = True
        request.ended = True
        if len(body) > self._options.max_frame_size:
            request.too_large = True
        else:
            request.body += body
        return True

    def _is_direct(self, stream_id: int) -> bool:
        request = self._requests.get(stream_id)
        return request is not None and request.direct

    def _send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        """``H3Connection.send_headers``, or its equivalent for a direct request."""
        if not self._is_direct(stream_id):
            assert self._h3 is not None
            self._h3.send_headers(stream_id, headers, end_stream)
            return
        assert self._quic is not None
        self._quic.send_stream_data(
            stream_id, encode_frame(FrameType.HEADERS, self._encode(stream_id, headers)), end_stream
        )

    def _send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """``H3Connection.send_data``, or its equivalent for a direct request."""
        if not self._is_direct(stream_id):
            assert self._h3 is not None
            self._h3.send_data(stream_id, data, end_stream)
            return
        assert self._quic is not None
        self._quic.send_stream_data(stream_id, encode_frame(FrameType.DATA, data), end_stream)

    def _encode(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        assert self._encoder is not None
        assert self._quic is not None
        instructions, block = self._encoder.encode(stream_id, headers)
        if instructions:  # never, with a table of capacity 0; sent as H3Connection would
            self._quic.send_stream_data(self._encoder_stream_id, instructions)
        return block

    # -- answering --------------------------------------------------------------------

    async def _answer(self, stream: Stream, request: _Request) -> None:
        assert request.headers is not None
        received_at = trio.current_time()
        request_id: str | None = None
        route_label = "other"
        instance: str | None = None
        opcode_label = "unknown"
        try:
            headers = request.parsed
            if headers is None:
                try:
                    headers = mapping.parse_request_headers(request.headers)
                except mapping.BadHeader as exc:
                    raise _Reply(400, ErrorCode.INVALID_ARGUMENT, str(exc)) from None
            request_id = headers.request_id or self._server._new_request_id()
            path, method = headers.path, headers.method
            instance = path
            if path.startswith(_RPC_PREFIX):
                route_label = "rpc"
                if method != "POST":
                    raise _Reply(
                        405,
                        ErrorCode.INVALID_ARGUMENT,
                        "calls are POST requests",
                        [(b"allow", b"POST")],
                    )
                router = self._router
                opcode_text = path[len(_RPC_PREFIX) :]
                opcode = mapping.parse_opcode(opcode_text)
                if opcode is None:
                    opcode = _opcode_named(router, opcode_text)
                route = None if opcode is None else router.route(opcode)
                if route is not None:
                    opcode_label = f"0x{route.opcode:04x}"
                await self._call(
                    stream,
                    request,
                    headers,
                    opcode_text,
                    request_id,
                    received_at,
                    route,
                    opcode_label,
                )
                return
            if path == "/healthz":
                route_label = "healthz"
                self._check_get(method)
                if self._server._closing or self._goaway_sent:
                    raise _Reply(503, ErrorCode.UNAVAILABLE, "draining")
                await self._respond(
                    stream, 200, b"ok", b"text/plain; charset=utf-8", request_id, route_label
                )
                return
            if path == "/metrics":
                route_label = "metrics"
                self._check_get(method)
                await self._respond(
                    stream,
                    200,
                    self.gateway.render_metrics(),
                    METRICS_CONTENT_TYPE.encode(),
                    request_id,
                    route_label,
                )
                return
            if path.startswith(_TOPICS_PREFIX):
                route_label = "topics"
                self._check_get(method)
                handler = self.gateway.subscription_handler
                if handler is None and self._router.topics:
                    from ._topics import serve_topic  # topics added after the start

                    handler = self.gateway.subscription_handler = serve_topic
                if handler is None:
                    raise _Reply(
                        501,
                        ErrorCode.UNIMPLEMENTED,
                        "this server has no topics and no subscription handler",
                    )
                if self._server._closing or self._goaway_sent:
                    raise _Reply(503, ErrorCode.UNAVAILABLE, "the server is shutting down")
                self._uncount(request)
                await self._subscribe(
                    stream, handler, path[len(_TOPICS_PREFIX) :], headers, request, request_id
                )
                return
            raise _Reply(404, ErrorCode.NOT_FOUND, f"no such resource: {path}")
        except _Reply as reply:
            if route_label == "rpc":
                self.gateway.metrics.call_finished(
                    opcode_label,
                    code_name(reply.code),
                    reply.status,
                    trio.current_time() - received_at,
                )
            await self._respond_problem(
                stream,
                reply.status,
                reply.code,
                reply.detail,
                request_id,
                route_label,
                instance=instance,
                headers=reply.headers,
                details=reply.details,
            )

    async def _subscribe(
        self,
        stream: Stream,
        handler: SubscriptionHandler,
        topic: str,
        headers: mapping.RequestHeaders,
        request: _Request,
        request_id: str,
    ) -> None:
        assert request.headers is not None
        fields: dict[str, str] = {}
        for name, value in request.headers:
            if not name.startswith(b":"):
                fields.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        topic_request = TopicRequest(
            self, stream, topic, headers.accept, request_id, fields, headers.query
        )
        try:
            await handler(topic_request)
        except _Reply:
            if topic_request.started:
                stream.reset(H3ErrorCode.H3_INTERNAL_ERROR)
                return
            raise
        except RemoteError as exc:
            if topic_request.started:
                stream.reset(H3ErrorCode.H3_INTERNAL_ERROR)
                return
            raise _Reply(
                mapping.http_status(exc.code), exc.code, exc.message, details=dict(exc.details)
            ) from None
        except TERMINAL_ERRORS:
            self._forget_stream(stream.stream_id)
            raise  # the client went away: nothing to answer
        except Exception as exc:
            logger.exception(
                "subscription %s to %r failed", request_id, topic, extra={"request_id": request_id}
            )
            if topic_request.started:
                stream.reset(H3ErrorCode.H3_INTERNAL_ERROR)
                return
            raise _Reply(500, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}") from None
        if not topic_request.started:
            raise _Reply(500, ErrorCode.INTERNAL, "the subscription handler sent nothing")
        quic = self._quic
        assert quic is not None
        self._send_data(stream.stream_id, b"", end_stream=True)
        data, _ = quic.take(stream.stream_id)
        try:
            await send_with_fin(stream, data)
        except TERMINAL_ERRORS:
            self._forget_stream(stream.stream_id)
            raise
        self.gateway.metrics.request_finished("topics", 200)

    def _forget_stream(self, stream_id: int) -> None:
        """The client stopped reading a response (STOP_SENDING) or left: tell
        H3Connection the send side is over so it forgets the stream."""
        if self._h3 is not None and not self._is_direct(stream_id):
            self._h3.handle_event(StopSendingReceived(error_code=0, stream_id=stream_id))

    @staticmethod
    def _check_get(method: str) -> None:
        if method != "GET":
            raise _Reply(405, ErrorCode.INVALID_ARGUMENT, "use GET", [(b"allow", b"GET")])

    async def _call(
        self,
        stream: Stream,
        request: _Request,
        headers: mapping.RequestHeaders,
        opcode_text: str,
        request_id: str,
        received_at: float,
        route: Route | None,
        opcode_label: str,
    ) -> None:
        """Check a call and run it: the answer is sent, or a _Reply raised."""
        server = self._server
        if request.too_large:
            raise _Reply(
                413,
                ErrorCode.FRAME_TOO_LARGE,
                f"the body exceeds {self._options.max_frame_size} bytes",
            )
        body = bytes(request.body)
        if not mapping.digest_matches(body, headers.payload_sha256):
            logger.warning(
                "call %s (%s): payload digest mismatch",
                request_id,
                opcode_text,
                extra={"request_id": request_id, "opcode": opcode_text},
            )
            raise _Reply(
                400, ErrorCode.INTEGRITY_MISMATCH, "the body does not match x-payload-sha256"
            )
        if server._closing or self._goaway_sent:
            raise _Reply(503, ErrorCode.UNAVAILABLE, "the server is shutting down")
        if route is None:
            raise _Reply(404, ErrorCode.NOT_FOUND, f"unknown opcode {opcode_text}")
        if stream.arrived_early and not route.idempotent:
            # 0-RTT data can be replayed by whoever recorded it: as for native
            # calls, only operations registered idempotent run from it.  425 Too
            # Early (RFC 8470): not run, so the client may send it again once
            # the handshake is done.
            raise _Reply(
                425,
                ErrorCode.UNAVAILABLE,
                "not idempotent: refused as 0-RTT early data",
                details={"early_data": True},
            )
        request_type = mapping.normalise_media_type(headers.content_type)
        if request_type not in (None, mapping.MSGPACK, mapping.JSON):
            raise _Reply(
                415, ErrorCode.INVALID_ARGUMENT, f"unsupported content-type {headers.content_type}"
            )
        if request_type is None and body:
            raise _Reply(
                415, ErrorCode.INVALID_ARGUMENT, "a body needs content-type msgpack or json"
            )
        response_type = mapping.choose_response_type(headers.accept, request_type)
        if response_type is None:
            raise _Reply(
                406,
                ErrorCode.INVALID_ARGUMENT,
                "the response is msgpack or json; Accept allows neither",
            )
        if headers.sla_class is not None:
            # The response is sent with the urgency of the caller's class, as a
            # native reply is.
            urgency = sla_urgency(headers.sla_class)
            if urgency != DEFAULT_CALL_URGENCY:
                stream.urgency = urgency
        principal = (
            None
            if self._options.authenticator is None
            else await self._authenticate(headers.authorization)
        )
        try:
            value = route.request_codec.decode(mapping.decode_body(body, request_type))
        except (RemoteProtocolError, ValueError) as exc:
            raise _Reply(
                400, ErrorCode.MALFORMED_BODY, f"the body does not decode: {exc}"
            ) from None

        budget_ns = None
        deadline = math.inf
        if headers.deadline_ms is not None:
            budget_ns = round(headers.deadline_ms * 1e6)
            deadline = received_at + headers.deadline_ms / 1000
        try:
            metadata = Metadata.build(
                request_id=request_id,
                deadline_budget_ns=budget_ns,
                sla_class=headers.sla_class,
                payload_sha256=headers.payload_sha256,
                trace_context=headers.traceparent,
            )
        except LocalProtocolError as exc:
            raise _Reply(400, ErrorCode.INVALID_ARGUMENT, exc.message) from None
        # The call's cancel scope is made when first needed (quicframe._deferred).
        ctx = DeferredCallContext(
            opcode=route.opcode,
            request_id=request_id,
            sla_class=headers.sla_class,
            deadline=deadline,
            budget_ns=budget_ns,
            principal=principal,
            metadata=metadata,
            peer_address=self.connection.remote_address,
            received_at=received_at,
            route_name=route.name,
        )
        ctx.state["protocol"] = "h3"
        pipeline = self._router.pipeline(route)
        result, error, cancelled = await run_call(
            stream,
            ctx,
            route.name,
            pipeline,
            ctx,
            value,
            self,
            server,
            lambda: {"request_id": request_id, "opcode": opcode_text},
        )
        metrics = self.gateway.metrics
        if cancelled:
            logger.debug(
                "call %s cancelled by the client",
                ctx.request_id,
                extra={"request_id": request_id, "opcode": opcode_text},
            )
            metrics.call_finished(
                opcode_label, "CANCELLED", 499, trio.current_time() - ctx.received_at
            )
            metrics.request_finished("rpc", 499)
            stream.reset(H3ErrorCode.H3_REQUEST_CANCELLED)
            return
        if error is None:
            try:
                body = mapping.encode_body(route.response_codec.encode(result), response_type)
            except LocalProtocolError as exc:
                logger.error(
                    "call %s: cannot send the response: %s",
                    ctx.request_id,
                    exc,
                    extra={"request_id": request_id, "opcode": opcode_text},
                )
                error = (ErrorCode.INTERNAL, f"the response cannot be sent: {exc.message}", {})
            else:
                metrics.call_finished(
                    opcode_label, "OK", 200, trio.current_time() - ctx.received_at
                )
                extra_headers = []
                if ctx.metadata.payload_sha256 is not None:
                    digest = hashlib.sha256(body).hexdigest().encode()
                    extra_headers.append((b"x-payload-sha256", digest))
                await self._respond(
                    stream,
                    200,
                    body,
                    response_type.encode(),
                    request_id,
                    "rpc",
                    extra_headers,
                )
                return
        code, message, details = error
        status = mapping.http_status(code)
        metrics.call_finished(
            opcode_label, code_name(code), status, trio.current_time() - ctx.received_at
        )
        await self._respond_problem(
            stream,
            status,
            code,
            message,
            ctx.request_id,
            "rpc",
            instance=f"{_RPC_PREFIX}{opcode_label}",
            details=details,
        )

    async def _authenticate(self, authorization: str | None) -> str | None:
        authenticator = self._options.authenticator
        if authenticator is None:
            return None
        if authorization in self._principals:
            return self._principals[authorization]
        credentials: dict[str, Any] = {}
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                credentials["token"] = token.strip()
            else:
                credentials["authorization"] = authorization
        hello = Hello(
            versions=list(SUPPORTED_VERSIONS), client_name="http3", credentials=credentials
        )
        try:
            principal = await authenticator(hello, self.connection)
        except HandshakeError as exc:
            raise _Reply(
                401,
                exc.code,
                exc.message or "credentials refused",
                [(b"www-authenticate", b"Bearer")],
            ) from None
        except Exception:
            logger.exception("the authenticator failed for %s", self.connection.remote_address)
            raise _Reply(500, ErrorCode.INTERNAL, "authentication failed") from None
        if len(self._principals) >= _PRINCIPALS_KEPT:
            self._principals.clear()  # a client cycling credentials: start over
        self._principals[authorization] = principal
        return principal

    async def _respond_problem(
        self,
        stream: Stream,
        status: int,
        code: int,
        detail: str,
        request_id: str | None,
        route_label: str,
        *,
        instance: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        body = mapping.problem_body(
            status, code, detail, request_id=request_id, instance=instance, details=details
        )
        extra = [(b"x-quicframe-code", str(code).encode()), *(headers or [])]
        await self._respond(
            stream, status, body, mapping.PROBLEM_JSON.encode(), request_id, route_label, extra
        )

    async def _respond(
        self,
        stream: Stream,
        status: int,
        body: bytes,
        content_type: bytes,
        request_id: str | None,
        route_label: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        data = self._response_bytes(
            stream, status, body, content_type, request_id, route_label, extra_headers
        )
        if data is None:
            return
        try:
            await send_with_fin(stream, data)
        except TERMINAL_ERRORS:
            # The client stopped reading (STOP_SENDING) or left: tell H3Connection
            # the send side is over so it forgets the stream.
            self._forget_stream(stream.stream_id)
            raise

    def _response_bytes(
        self,
        stream: Stream,
        status: int,
        body: bytes,
        content_type: bytes,
        request_id: str | None,
        route_label: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> bytes | None:
        """The response's HTTP/3 bytes, counted in the metrics (None: nothing to
        send, because the stream was detached or H3Connection produced no bytes)."""
        quic = self._quic
        assert quic is not None
        stream_id = stream.stream_id
        headers = [
            (b":status", str(status).encode()),
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
        ]
        if request_id is not None:
            headers.append((b"x-request-id", request_id.encode()))
        if extra_headers:
            headers.extend(extra_headers)
        self.gateway.metrics.request_finished(route_label, status)
        if not quic.is_attached(stream_id):
            return None
        if self._is_direct(stream_id):
            data = encode_frame(FrameType.HEADERS, self._encode(stream_id, headers))
            if body:
                data += encode_frame(FrameType.DATA, body)
        else:
            assert self._h3 is not None
            self._h3.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self._h3.send_data(stream_id, body, end_stream=True)
            data, _ = quic.take(stream_id)
            if not data:
                return None
        return data


def gateway_of(server: Server) -> Gateway:
    """The HTTP/3 gateway of a server started with ``http3=True``.

    Raises:
        LookupError: the server does not serve HTTP/3.
    """
    gateway = server._http3
    if gateway is None:
        raise LookupError("this server was started without http3=True")
    return gateway


def enable_http3(
    server: Server, config: ServerConfig
) -> tuple[ServerConfig, Callable[[Connection], Awaitable[None]]]:
    """Give ``server`` a gateway: the config to listen with (offering ``h3`` too)
    and the connection handler that dispatches on the negotiated ALPN."""
    gateway = server._http3 = Gateway(server)
    if H3_ALPN not in config.alpn_protocols:
        config = dataclasses.replace(config, alpn_protocols=[*config.alpn_protocols, H3_ALPN])
    return config, gateway.handle_connection


# What _plainly_valid accepts: a header name of visible ASCII without upper case,
# a colon only first; a value without NUL, CR or LF that neither starts nor ends
# with a space or a tab (RFC 9114 section 4.2, RFC 9113 section 8.2.1).
_PLAIN_NAME: Final = rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+"
_PLAIN_VALUE: Final = rb"(?:[^\x00\n\r\t ](?:[^\x00\n\r]*[^\x00\n\r\t ])?)?"
# Every name and value of a header list at once, joined with NUL (which neither
# may hold, so the pieces cannot be read any other way): one match per request.
_PLAIN_FIELDS: Final = re.compile(
    rb"%s\x00%s(?:\x00%s\x00%s)*" % (_PLAIN_NAME, _PLAIN_VALUE, _PLAIN_NAME, _PLAIN_VALUE)
)
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":authority", b":path"))


def _plainly_valid(headers: list[tuple[bytes, bytes]], body_length: int) -> bool:
    """True if the request is certainly well-formed, as aioquic's checks see it.

    A stricter, faster twin of ``aioquic.h3.connection.validate_request_headers``
    (which looks at every byte in Python) plus its content-length check: it
    accepts a subset of what those accept, and everything else (``:protocol``,
    ``te``, several content-lengths, anything malformed) goes to H3Connection,
    which then decides as it always did.
    """
    content_length = _plain_content_length(headers)
    return content_length is not None and (content_length < 0 or content_length == body_length)


def _plain_content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The content-length of a request :func:`_plainly_valid` may accept (-1
    for none), or None if it certainly does not accept it."""
    if _PLAIN_FIELDS.fullmatch(b"\x00".join(chain.from_iterable(headers))) is None:
        return None
    pseudo: dict[bytes, bytes] = {}
    regular = False
    content_length = -1
    for name, value in headers:
        if name[0] == 0x3A:  # ":": a pseudo-header, before the others, once
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                return None
            pseudo[name] = value
            continue
        regular = True
        if name == b"content-length":
            if content_length >= 0 or not value.isdigit():
                return None
            content_length = int(value)
        elif name == b"te" or name in CONNECTION_SPECIFIC_HEADERS:
            return None
    if b":method" not in pseudo or not pseudo.get(b":authority"):
        return None
    if pseudo.get(b":scheme") in (b"http", b"https") and not pseudo.get(b":path"):
        return None
    return content_length


def _opcode_named(router: Router, name: str) -> int | None:
    """The opcode of the route called ``name`` (the highest if several are), or None.

    A scan of the router's table on each call rather than a cached map: routes
    may be added while the server runs, and a router holds few of them.
    """
    found: int | None = None
    for opcode, route in router._routes.items():
        if route.name == name and (found is None or opcode > found):
            found = opcode
    return found
