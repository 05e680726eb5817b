"""The RPC client: ``connect`` yields a :class:`Client` whose ``call`` runs one RPC.

The client opens the control stream (stream 0) and sends HELLO; once WELCOME
arrives it serves the control stream in the background (PONGs, heartbeats,
GOAWAY).  Each call opens a stream of its own, writes REQUEST and FIN, and reads
RESPONSE or ERROR to the FIN.  The remaining time of the caller's cancel scope
travels as the deadline budget; a caller that gives up resets the stream and
stops the server's sending with CANCELLED.

Each connection's session state lives in a ``_Link``.  With a
:class:`~quicframe.ReconnectPolicy`, a supervisor task dials a new link when the
current one dies or receives GOAWAY; calls wait for it within their deadlines.
With several addresses (``connect``'s, then ``ClientConfig.addresses``), the
supervisor dials them in a ring, starting after the address it lost, and
subscriptions on a link that received GOAWAY leave it for the new link as soon
as that is ready (``Client._leave_after_goaway``).
New links resume the TLS session from the ticket store when they can.  With
``early_data``, a link whose ticket allows 0-RTT is offered to calls of
idempotent opcodes as soon as HELLO is written (before WELCOME), so those
requests travel as early data; every other call waits for WELCOME.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, final, overload

import trio

from ._config import ClientConfig
from ._policy import ReconnectPolicy
from ._util import (
    open_stream_now_or_later,
    read_one_frame,
    send_with_fin,
    unwrap_single_exception,
)
from ._version import __version__
from .errors import (
    ConnectionClosed,
    ConnectionLost,
    ErrorCode,
    HandshakeError,
    HandshakeTimeout,
    InsecureRejected,
    IntegrityError,
    QuicframeError,
    RemoteError,
    RemoteProtocolError,
    Unauthorized,
    Unavailable,
    VersionMismatch,
    code_name,
)
from .session import (
    SUPPORTED_VERSIONS,
    ControlChannel,
    GoAway,
    GoAwayReceived,
    Hello,
    PongReceived,
    RejectReceived,
    Welcome,
    WelcomeReceived,
    encode_request,
    error_from_frame,
    payload_matches,
    reply_frame_untrusted,
    sla_urgency,
)
from .transport import (
    Connection,
    SessionTicketStore,
    SocketFactory,
    Stream,
    connect as transport_connect,
)
from .wire import DEFAULT_MAX_FRAME_SIZE, Frame, FrameType, MsgpackCodec, check_max_frame_size

if TYPE_CHECKING:
    from ._subscription import Subscription

__all__ = [
    "Client",
    "ClientCallContext",
    "ClientStatistics",
    "Interceptor",
    "connect",
]

logger = logging.getLogger("quicframe.client")

T = TypeVar("T")

_HANDSHAKE_ERRORS: Final[dict[int, type[HandshakeError]]] = {
    ErrorCode.VERSION_MISMATCH: VersionMismatch,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.INSECURE: InsecureRejected,
    ErrorCode.HANDSHAKE_TIMEOUT: HandshakeTimeout,
}
_PING: Final = struct.Struct(">Q")
_CLOSE_BOUND: Final = 5.0  # how long a graceful close may wait for acknowledgements
_PLAIN: MsgpackCodec[Any] = MsgpackCodec()


@dataclasses.dataclass(slots=True, eq=False)
class ClientCallContext:
    """One outgoing call as interceptors see it; they may change its fields.

    Attributes:
        opcode: the operation called.
        request_id: the request id sent (generated unless the caller gave one).
        sla_class: the service class sent, or None.
        integrity: send a PAYLOAD_SHA256 of the body (and check the reply's).
        trace_context: a W3C ``traceparent`` value to send, or None.
        response_type: the dataclass the RESPONSE body decodes into, or None.
        state: free space for interceptors.
    """

    opcode: int
    request_id: str
    sla_class: int | None = None
    integrity: bool = False
    trace_context: str | None = None
    response_type: type[Any] | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


ClientCallNext = Callable[[ClientCallContext, Any], Awaitable[Any]]
Interceptor = Callable[[ClientCallContext, Any, ClientCallNext], Awaitable[Any]]
"""``async def interceptor(ctx, request, call_next) -> response``."""


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of a client.

    Attributes:
        rtt: the last application-level round trip (PING to PONG on the control
            stream), seconds, or None before the first.
        calls_in_flight: calls waiting for their reply.
        calls_completed: calls that returned a response.
        calls_failed: calls that failed, by error code name (CANCELLED for
            calls the caller gave up on).
        heartbeats: PINGs answered.
        reconnects: connections re-established after a loss or a GOAWAY.
        reconnect_failures: reconnection attempts that failed.
        retries: idempotent calls retried on a new connection.
        early_calls: calls sent on a new connection before its session
            handshake finished, as 0-RTT data (see ``connect(early_data=...)``).
        goaway: the GOAWAY the server sent on the current connection, or None.
        address: the ``(host, port)`` the current connection was dialled to: the
            one given to ``connect`` or one of ``ClientConfig.addresses``.
    """

    rtt: float | None
    calls_in_flight: int
    calls_completed: int
    calls_failed: dict[str, int]
    heartbeats: int
    reconnects: int
    reconnect_failures: int
    retries: int
    early_calls: int
    goaway: GoAway | None
    address: tuple[str, int]


class _Link:
    """The session state of one connection: control stream, WELCOME, pings."""

    def __init__(
        self, connection: Connection, max_frame_size: int, address: tuple[str, int]
    ) -> None:
        self.connection = connection
        self.address = address
        self.channel = ControlChannel(client=True, max_frame_size=max_frame_size)
        self.control: Stream | None = None
        self.control_lock = trio.Lock()
        self.welcome: Welcome | None = None
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.goaway: GoAway | None = None
        # Set once no new call may start here: GOAWAY arrived or the connection ended.
        self.unusable = trio.Event()
        # True while calls are written before WELCOME (0-RTT on a resumed session).
        self.early = False
        # Pings: payload -> [sent at, round trip or None].
        self.pings: dict[bytes, list[float | None]] = {}
        self.ping_lot = trio.lowlevel.ParkingLot()

    def retire(self) -> None:
        self.unusable.set()
        self.ping_lot.unpark_all()

    async def send_control(self, queue: Callable[[], None]) -> None:
        stream = self.control
        assert stream is not None
        async with self.control_lock:
            queue()
            await stream.send_all(self.channel.data_to_send())


@final
class Client:
    """A session with a quicframe server, from :func:`connect`.

    Never constructed by users.
    """

    def __init__(
        self,
        *,
        interceptors: Iterable[Interceptor],
        max_frame_size: int,
        heartbeat: bool,
        reconnect: ReconnectPolicy | None,
        idempotent: Iterable[int],
        addresses: Iterable[tuple[str, int]],
    ) -> None:
        self._interceptors = tuple(interceptors)
        self._max_frame_size = max_frame_size
        self._heartbeat = heartbeat
        # A policy that allows no attempt is no policy: nobody would reconnect.
        self._policy = reconnect if reconnect is not None and reconnect.max_retries > 0 else None
        self._idempotent = frozenset(idempotent)
        # Where to dial, in order: connect's address first (no duplicates).
        self._addresses = tuple(dict.fromkeys(addresses))
        self._link: _Link | None = None
        # A link still in its handshake that idempotent calls may use (0-RTT).
        self._early_link: _Link | None = None
        self._link_lot = trio.lowlevel.ParkingLot()  # woken when the link changes
        self._gave_up: BaseException | None = None
        self._closed = False
        self._codecs: dict[type[Any], MsgpackCodec[Any]] = {}
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = itertools.count(1)
        self._pipeline: ClientCallNext = self._compose()
        self._ping_counter = itertools.count(1)
        # Statistics.
        self._rtt: float | None = None
        self._heartbeats = 0
        self._in_flight = 0
        self._completed = 0
        self._failed: dict[str, int] = {}
        self._reconnects = 0
        self._reconnect_failures = 0
        self._retries = 0
        self._early_calls = 0
        # connect(socket_factory=...): tests run the client over a FakeNetwork.
        self._socket_factory: SocketFactory | None = None

    # -- properties -----------------------------------------------------------

    @property
    def _current(self) -> _Link:
        assert self._link is not None
        return self._link

    @property
    def connection(self) -> Connection:
        """The QUIC connection the session currently runs on."""
        return self._current.connection

    @property
    def welcome(self) -> Welcome:
        """What the server announced in WELCOME (version, limits, principal)."""
        welcome = self._current.welcome
        assert welcome is not None
        return welcome

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the current connection was dialled to."""
        return self._current.address

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every address the client may connect to, in the order it tries them."""
        return self._addresses

    @property
    def protocol_version(self) -> int:
        """The negotiated session protocol version."""
        return self.welcome.version

    @property
    def principal(self) -> str | None:
        """The identity the server's authenticator established, if any."""
        return self.welcome.principal

    def statistics(self) -> ClientStatistics:
        """A snapshot of the client's counters."""
        return ClientStatistics(
            rtt=self._rtt,
            calls_in_flight=self._in_flight,
            calls_completed=self._completed,
            calls_failed=dict(self._failed),
            heartbeats=self._heartbeats,
            reconnects=self._reconnects,
            reconnect_failures=self._reconnect_failures,
            retries=self._retries,
            early_calls=self._early_calls,
            goaway=None if self._link is None else self._link.goaway,
            address=self._addresses[0] if self._link is None else self._link.address,
        )

    # -- calls ----------------------------------------------------------------

    @overload
    async def call(
        self,
        opcode: int,
        request: Any,
        *,
        response: type[T],
        request_id: str | None = None,
        sla_class: int | None = None,
        integrity: bool = False,
        trace_context: str | None = None,
    ) -> T: ...

    @overload
    async def call(
        self,
        opcode: int,
        request: Any,
        *,
        response: None = None,
        request_id: str | None = None,
        sla_class: int | None = None,
        integrity: bool = False,
        trace_context: str | None = None,
    ) -> Any: ...

    async def call(
        self,
        opcode: int,
        request: Any,
        *,
        response: type[Any] | None = None,
        request_id: str | None = None,
        sla_class: int | None = None,
        integrity: bool = False,
        trace_context: str | None = None,
    ) -> Any:
        """Call ``opcode`` with ``request`` and return the server's response.

        A dataclass request travels as a msgpack map; anything else as a plain
        msgpack value.  The deadline is the caller's: wrap the call in
        ``trio.fail_after`` and the remaining time travels to the server, which
        runs the handler within it.  While a reconnect policy re-establishes a
        lost connection, calls wait for it (bounded by their deadline); a call
        to an opcode given in ``connect(idempotent=...)`` that was in flight
        when the connection died is sent again on the new connection (as 0-RTT
        data when ``connect(early_data=True)`` and the session ticket allow it).

        Args:
            opcode: the operation, 0x0000-0xFFFF.
            request: the request value.
            response: a dataclass to decode the response into (default: plain value).
            request_id: the request id to send (default: a fresh unique one).
            sla_class: the service class to send (``quicframe.SlaClass``).  It
                also sets the call's stream urgency, on this side and the
                server's: GOLD calls' data goes ahead of SILVER and unclassified
                calls', and those ahead of BRONZE calls' (``docs/PROTOCOL.md``
                section 7.5).
            integrity: send the SHA-256 of the body; the server refuses a body
                that does not match, and digests its response, which is checked.
            trace_context: a W3C ``traceparent`` value to send.

        Returns:
            The response value.

        Raises:
            quicframe.errors.RemoteError: the server answered ERROR; the subclass
                follows the code (NotFound, InvalidArgument, DeadlineExceeded,
                InternalError, ...).
            quicframe.errors.RemoteProtocolError: the server broke the protocol
                on this call's stream, or reset it with a protocol error code.
            quicframe.errors.Unavailable: the server sent GOAWAY (and there is
                no reconnect policy).
            quicframe.errors.ConnectionLost: the connection died during the call,
                or could not be re-established.
            quicframe.errors.ConnectionClosed: the connection was already closed.
            quicframe.errors.LocalProtocolError: the request cannot be encoded.

        Cancellation:
            A cancelled call resets its stream and sends STOP_SENDING, both with
            CANCELLED: the server cancels the handler's scope as soon as that
            arrives (about one network round trip).
        """
        ctx = ClientCallContext(
            opcode=opcode,
            request_id=request_id or f"{self._id_prefix}-{next(self._id_counter)}",
            sla_class=sla_class,
            integrity=integrity,
            trace_context=trace_context,
            response_type=response,
        )
        return await self._pipeline(ctx, request)

    def _compose(self) -> ClientCallNext:
        call: ClientCallNext = self._send_call
        for layer in reversed(self._interceptors):
            call = _wrap(layer, call)
        return call

    def _codec(self, cls: type[Any] | None) -> MsgpackCodec[Any]:
        if cls is None:
            return _PLAIN
        # Every type seen is cached, plain ones too: is_dataclass() costs more than
        # the lookup, and a client sees few types.
        codec = self._codecs.get(cls)
        if codec is None:
            codec = MsgpackCodec(cls) if dataclasses.is_dataclass(cls) else _PLAIN
            self._codecs[cls] = codec
        return codec

    def _fail(self, code: int) -> None:
        name = code_name(code)
        self._failed[name] = self._failed.get(name, 0) + 1

    async def _usable_link(self, opcode: int) -> _Link:
        """The link new calls go to; waits while a reconnect is under way.

        A call to an idempotent opcode may go to a link that is still in its
        handshake (only links dialled with early data are offered that way).
        """
        while True:
            link = self._current
            if not link.unusable.is_set() or self._policy is None:
                return link
            if self._closed:
                # The client is leaving: no reconnect is coming.
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("the client is closed")
            if self._gave_up is not None:
                self._fail(ErrorCode.CONNECTION_LOST)
                raise ConnectionLost(
                    f"the connection was lost and could not be re-established: {self._gave_up}",
                    code=ErrorCode.CONNECTION_LOST,
                ) from self._gave_up
            early = self._early_link
            if early is not None and opcode in self._idempotent and not early.unusable.is_set():
                return early
            await self._link_lot.park()

    async def _send_call(self, ctx: ClientCallContext, request: Any) -> Any:
        body = self._codec(type(request)).encode(request)
        while True:
            link = self._current
            if link.unusable.is_set():
                link = await self._usable_link(ctx.opcode)
            if link.goaway is not None:
                await trio.lowlevel.checkpoint()
                self._fail(ErrorCode.UNAVAILABLE)
                raise Unavailable(
                    f"the server is going away: {link.goaway.reason}", operation="call"
                )
            try:
                stream = await open_stream_now_or_later(
                    link.connection, urgency=sla_urgency(ctx.sla_class)
                )
            except ConnectionClosed:
                link.retire()
                if self._policy is not None:
                    continue  # nothing was sent: wait for the new connection
                self._fail(ErrorCode.CONNECTION_LOST)
                raise
            if link.early:
                self._early_calls += 1
            try:
                return await self._call_on(link, stream, ctx, body)
            except Unavailable as exc:
                # The call raced the server's GOAWAY and was not run: with a
                # reconnect policy, send it on the next connection.
                if self._policy is None or exc.details.get("draining") is not True:
                    raise
                link.retire()
                self._retries += 1
            except ConnectionLost:
                link.retire()
                if self._policy is None or ctx.opcode not in self._idempotent:
                    raise
                self._retries += 1
                logger.info(
                    "call %s (opcode 0x%04x) lost with its connection; retrying",
                    ctx.request_id,
                    ctx.opcode,
                    extra={"request_id": ctx.request_id, "opcode": ctx.opcode},
                )

    async def _call_on(
        self, link: _Link, stream: Stream, ctx: ClientCallContext, body: bytes
    ) -> Any:
        opcode = ctx.opcode
        deadline = trio.current_effective_deadline()
        budget = None
        if deadline != math.inf:
            budget = max(0, round((deadline - trio.current_time()) * 1e9))
        self._in_flight += 1
        code: int = ErrorCode.CANCELLED  # what the stream is reset with unless we finish
        reply: Frame | None = None
        try:
            frame = encode_request(
                opcode,
                body,
                request_id=ctx.request_id,
                deadline_budget_ns=budget,
                sla_class=ctx.sla_class,
                integrity=ctx.integrity,
                trace_context=ctx.trace_context,
                max_frame_size=link.peer_max_frame_size,
            )
            await send_with_fin(stream, frame)
            answer = await read_one_frame(stream, self._max_frame_size)
            reply = reply_frame_untrusted(answer, opcode)
            code = ErrorCode.NO_ERROR
        except RemoteProtocolError as exc:
            code = exc.code
            self._fail(code)
            raise
        except trio.BrokenResourceError as exc:
            # StreamResetByPeer: the server reset the call stream.
            code = ErrorCode.NO_ERROR
            self._fail(getattr(exc, "code", ErrorCode.UNKNOWN))
            raise _reset_error(exc, opcode) from exc
        except trio.ClosedResourceError as exc:
            # This side closed the connection: the client is leaving, or the session
            # handshake of a new connection failed (REJECT, no WELCOME) while early
            # calls ran on it.
            code = ErrorCode.NO_ERROR
            self._fail(ErrorCode.CONNECTION_LOST)
            if self._closed:
                raise
            raise ConnectionLost(
                "the connection was closed during the call",
                code=ErrorCode.CONNECTION_LOST,
                operation=f"opcode 0x{opcode:04x}",
            ) from exc
        except ConnectionClosed as exc:
            code = ErrorCode.NO_ERROR
            self._fail(ErrorCode.CONNECTION_LOST)
            raise ConnectionLost(
                f"the connection closed during the call: {exc}",
                code=ErrorCode.CONNECTION_LOST,
                reason=exc.reason,
                by_peer=exc.by_peer,
                operation=f"opcode 0x{opcode:04x}",
            ) from exc
        except BaseException:
            self._fail(ErrorCode.CANCELLED)
            raise
        finally:
            self._in_flight -= 1
            if code != ErrorCode.NO_ERROR:
                stream.reset(code)
                stream.stop_sending(code)
            if reply is None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            # else: FIN sent and the reply read to its FIN: the stream is already done.
        if reply.metadata.payload_sha256 is not None and not payload_matches(reply):
            self._fail(ErrorCode.INTEGRITY_MISMATCH)
            raise IntegrityError(
                "the response body does not match its PAYLOAD_SHA256",
                operation=f"opcode 0x{opcode:04x}",
            )
        if reply.type == FrameType.ERROR:
            error = error_from_frame(reply)
            self._fail(error.code)
            raise error
        value = self._codec(ctx.response_type).decode(reply.body)
        self._completed += 1
        return value

    # -- market data ----------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        *,
        from_seq: int | None = None,
        mode: str = "stream",
        policy: str | None = None,
        snapshot: bool = True,
        on_gap: str = "snapshot",
        queue_size: int = 0,
        buffer: int = 8192,
        clock: Callable[[], int] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Subscription[Any]]:
        """Subscribe to ``topic``: ``async with client.subscribe(name) as sub: async for v in sub``.

        Entering waits until the server accepted the subscription (SUBSCRIBED).  The
        values are the topic's decoded frames, in sequence order, never twice.
        With a reconnect policy, a lost connection is followed by a new
        subscription on the new connection that resumes after the last sequence
        number received (the server replays the rest from its history).  Leaving
        the block ends the subscription (UNSUBSCRIBE).

        Args:
            topic: the topic's name.
            from_seq: resume from this sequence number (None: start now).
            mode: ``"stream"`` (reliable, in order) or ``"datagram"`` (live frames
                as QUIC DATAGRAMs: latest value, no retransmission, losses counted
                as gaps; stream mode is used when the server does not support
                DATAGRAMs).
            policy: the server-side slow-consumer policy to ask for
                (``"conflate"``, ``"drop-oldest"``, ``"disconnect"``, ``"block"``;
                None: the topic's default).
            snapshot: when starting now, start with the latest value per key.
            on_gap: when the server's history no longer holds ``from_seq``:
                ``"snapshot"`` (the gap is counted, a snapshot follows) or
                ``"error"`` (iteration raises :class:`quicframe.pubsub.HistoryGap`).
            queue_size: the server-side queue capacity to ask for (0: the topic's).
            buffer: decoded values held for the application; while it is full the
                client stops reading (stream mode) or drops the oldest (datagram).
            clock: receive time in ns on the publisher's clock (default
                ``time.time_ns``), for the latency statistics.

        Raises (on entry):
            quicframe.errors.UnknownTopic: the server has no such topic.
            quicframe.errors.RemoteError: the server refused the subscription
                (SUBSCRIPTION_LIMIT, INVALID_ARGUMENT...).
            quicframe.pubsub.HistoryGap: ``on_gap="error"`` and the range is gone.
            quicframe.errors.ConnectionLost: no connection to subscribe on.
        """
        from ._subscription import subscribe

        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        return subscribe(
            self,
            topic,
            from_seq=from_seq,
            mode=mode,
            policy=policy,
            snapshot=snapshot,
            on_gap=on_gap,
            queue_size=queue_size,
            buffer=buffer,
            **kwargs,
        )

    # -- control stream -------------------------------------------------------

    async def ping(self) -> float:
        """Send PING on the control stream and wait for its PONG.

        Returns:
            The application-level round-trip time in seconds.

        Raises:
            quicframe.errors.ConnectionClosed: the connection closed first.

        Cancellation:
            The PING may already be sent; its PONG is then ignored.
        """
        return await self._ping(self._current)

    async def _ping(self, link: _Link) -> float:
        payload = _PING.pack(next(self._ping_counter))
        slot: list[float | None] = [trio.current_time(), None]
        link.pings[payload] = slot
        try:
            await link.send_control(lambda: link.channel.send_ping(payload))
            while (rtt := slot[1]) is None:
                closed = link.connection.closed
                if closed is not None:
                    raise closed
                await link.ping_lot.park()
        finally:
            link.pings.pop(payload, None)
        return rtt

    async def _handshake(self, link: _Link, hello: Hello) -> Welcome:
        connection = link.connection
        stream = await connection.open_stream()
        link.control = stream
        try:
            await link.send_control(lambda: link.channel.send_hello(hello))
            if link.early:
                # HELLO is on its way as 0-RTT data, on stream 0; call streams
                # opened from now on have higher ids and follow it.
                self._early_link = link
                self._link_lot.unpark_all()
            while True:
                data = await stream.receive_some()
                if not data:
                    raise HandshakeError("the server ended the control stream during the handshake")
                for event in link.channel.receive_data(data):
                    if isinstance(event, WelcomeReceived):
                        welcome = event.welcome
                        link.welcome = welcome
                        try:
                            link.peer_max_frame_size = check_max_frame_size(welcome.max_frame_size)
                        except QuicframeError:
                            link.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
                        return welcome
                    if isinstance(event, RejectReceived):
                        reject = event.reject
                        await connection.aclose(reject.code, reject.reason[:200])
                        cls = _HANDSHAKE_ERRORS.get(reject.code, HandshakeError)
                        raise cls(
                            f"the server refused the session: {reject.reason}", code=reject.code
                        )
        except ConnectionClosed as exc:
            # The server closed before we read its REJECT: its close code says why.
            if exc.is_transport or exc.code == ErrorCode.NO_ERROR:
                raise HandshakeError(f"the connection closed during the handshake: {exc}") from exc
            cls = _HANDSHAKE_ERRORS.get(exc.code, HandshakeError)
            raise cls(f"the server refused the session: {exc.reason}", code=exc.code) from exc
        except (RemoteProtocolError, trio.BrokenResourceError) as exc:
            await connection.aclose(getattr(exc, "code", ErrorCode.PROTOCOL_ERROR))
            raise HandshakeError(f"the handshake failed: {exc}") from exc

    async def _control_loop(self, link: _Link) -> None:
        stream = link.control
        assert stream is not None
        channel = link.channel
        try:
            while data := await stream.receive_some():
                for event in channel.receive_data(data):
                    if isinstance(event, PongReceived):
                        slot = link.pings.get(event.payload)
                        if slot is not None and slot[0] is not None:
                            slot[1] = self._rtt = trio.current_time() - slot[0]
                            self._heartbeats += 1
                            link.ping_lot.unpark_all()
                    elif isinstance(event, GoAwayReceived):
                        link.goaway = event.goaway
                        logger.info("server sent GOAWAY: %s", event.goaway.reason)
                        link.retire()
                reply = channel.data_to_send()
                if reply:
                    async with link.control_lock:
                        await stream.send_all(reply)
        except RemoteProtocolError as exc:
            logger.warning("protocol error on the control stream: %s", exc)
            await link.connection.aclose(exc.code, exc.message[:200])
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _heartbeat_loop(self, link: _Link, interval: float) -> None:
        with contextlib.suppress(
            ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            while True:
                await trio.sleep(interval)
                with trio.move_on_after(max(interval, 1.0)):
                    await self._ping(link)

    # -- connections ----------------------------------------------------------

    async def _run_link(
        self,
        config: ClientConfig,
        hello: Hello,
        early_data: bool,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[_Link] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Dial, handshake, then serve the control stream until the connection ends."""
        async with transport_connect(
            host, port, config, early_data=early_data, socket_factory=self._socket_factory
        ) as connection:
            link = _Link(connection, self._max_frame_size, (host, port))
            # The transport yields before the QUIC handshake completes only when
            # it may send 0-RTT data (early_data asked for, and the ticket allows it).
            link.early = not connection.handshake_complete
            previous = self._link
            if link.early and previous is not None:
                # Until WELCOME says otherwise, assume the limit the server had.
                link.peer_max_frame_size = previous.peer_max_frame_size
            try:
                with trio.move_on_after(config.handshake_timeout) as scope:
                    welcome = await self._handshake(link, hello)
                if scope.cancelled_caught:
                    await connection.aclose(ErrorCode.HANDSHAKE_TIMEOUT, "no WELCOME in time")
                    raise HandshakeTimeout(
                        f"no WELCOME from {host}:{port} within {config.handshake_timeout} s"
                    )
                link.early = False
                if previous is not None:
                    # Counted here, not when the supervisor resumes: a call on the
                    # new link can complete (and statistics be read) before that.
                    self._reconnects += 1
                self._link = link
                if self._early_link is link:
                    self._early_link = None
                self._link_lot.unpark_all()
                if connection.session_resumed:
                    logger.debug(
                        "resumed the TLS session with %s:%d (0-RTT %s)",
                        host,
                        port,
                        "accepted" if connection.early_data_accepted else "not used",
                    )
                task_status.started(link)
                async with trio.open_nursery() as nursery:
                    interval = welcome.heartbeat_interval_ms / 1000
                    if self._heartbeat and interval > 0:
                        nursery.start_soon(self._heartbeat_loop, link, interval)
                    await self._control_loop(link)
                    nursery.cancel_scope.cancel()
            finally:
                if self._early_link is link:
                    self._early_link = None
                link.retire()

    async def _first_link(self, nursery: trio.Nursery, dial: _Dial) -> None:
        """Connect to the first address that answers, each tried once, in order.

        When every one fails, the last failure is raised (with one address: its
        failure, as always).
        """
        *others, last = self._addresses
        for host, port in others:
            try:
                with unwrap_single_exception():
                    await nursery.start(dial, host, port)
            except (OSError, QuicframeError) as exc:
                logger.warning("could not connect to %s:%d, trying the next: %s", host, port, exc)
            else:
                return
        with unwrap_single_exception():
            await nursery.start(dial, *last)

    async def _supervise(self, nursery: trio.Nursery, dial: _Dial) -> None:
        """Re-establish the connection whenever the current one becomes unusable.

        Attempts go round the addresses, starting with the one after the address
        just lost (with a single address, that same one again).
        """
        policy = self._policy
        assert policy is not None
        addresses = self._addresses
        while True:
            lost = self._current
            await lost.unusable.wait()
            if self._closed:
                return
            failures = 0
            start = addresses.index(lost.address)
            while True:
                host, port = addresses[(start + failures + 1) % len(addresses)]
                try:
                    with unwrap_single_exception():
                        await nursery.start(dial, host, port)
                except (OSError, QuicframeError) as exc:
                    failures += 1
                    self._reconnect_failures += 1
                    logger.warning(
                        "reconnect attempt %d (%s:%d) failed: %s", failures, host, port, exc
                    )
                    if failures > policy.max_retries:
                        logger.error("giving up after %d failed reconnect attempts", failures)
                        self._gave_up = exc
                        self._link_lot.unpark_all()
                        return
                    await trio.sleep(policy.backoff(failures))
                else:
                    logger.info(
                        "reconnected to %s:%d (%d failed attempts before)", host, port, failures
                    )
                    break

    async def _leave_after_goaway(self, link: _Link, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` once ``link`` has received GOAWAY and a new link is ready.

        A subscription runs this beside its stream: the server that sent GOAWAY
        keeps serving it meanwhile, and the subscription resumes on the new link
        from its last sequence number.  Without a reconnect policy, after a lost
        connection, or when no new link comes (the client gave up or is closing),
        it returns and the stream ends as the old connection does.
        """
        if self._policy is None:
            return
        await link.unusable.wait()
        if link.goaway is None:
            return
        while True:
            if self._closed or self._gave_up is not None:
                return
            current = self._link
            if current is not None and current is not link and not current.unusable.is_set():
                scope.cancel()
                return
            await self._link_lot.park()

    async def _close_gracefully(self) -> None:
        self._closed = True
        link = self._link
        if link is not None:
            await link.connection.aclose()


_Dial = Callable[..., Awaitable[None]]
"""``Client._run_link`` with its settings bound: ``nursery.start(dial, host, port)``."""


def _wrap(layer: Interceptor, call_next: ClientCallNext) -> ClientCallNext:
    # A plain function returning the interceptor's coroutine: one coroutine per
    # layer, not two.
    def step(ctx: ClientCallContext, request: Any) -> Awaitable[Any]:
        return layer(ctx, request, call_next)

    return step


def _reset_error(exc: BaseException, opcode: int) -> Exception:
    code = getattr(exc, "code", ErrorCode.UNKNOWN)
    operation = f"opcode 0x{opcode:04x}"
    if code < 0x100:
        return RemoteProtocolError(
            f"the server reset the call stream: {code_name(code)}", code=code, operation=operation
        )
    return RemoteError.from_wire(code, f"the server reset the call stream: {code_name(code)}")


@contextlib.asynccontextmanager
async def connect(
    host: str,
    port: int,
    config: ClientConfig | None = None,
    *,
    credentials: Mapping[str, Any] | None = None,
    client_name: str = "quicframe",
    client_version: str = __version__,
    versions: Iterable[int] = SUPPORTED_VERSIONS,
    interceptors: Iterable[Interceptor] = (),
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    heartbeat: bool = True,
    reconnect: ReconnectPolicy | None = None,
    idempotent: Iterable[int] = (),
    early_data: bool = False,
    socket_factory: SocketFactory | None = None,
) -> AsyncIterator[Client]:
    """Connect to a quicframe server and yield a :class:`Client`.

    The QUIC handshake is followed by the session handshake (HELLO, then WELCOME
    or REJECT) on the control stream.  Leaving the block closes the connection.

    With ``config.addresses`` (several edge servers), ``host``/``port`` is tried
    first and then each of those in order, once, until one accepts the session;
    with a reconnect policy, a lost connection (or GOAWAY) is followed by
    attempts that go round the addresses starting after the one lost, and
    subscriptions resume on the new server from their last sequence number
    (``client.address`` tells where the client is).

    Args:
        host: the server's name or address (also the TLS server name unless
            ``config.server_name`` is set).
        port: the server's UDP port.
        config: QUIC and TLS settings, the reconnect policy and the other
            addresses (default ``ClientConfig()``).
        credentials: sent in HELLO for the server's authenticator.
        client_name: sent in HELLO, for the server's logs.
        client_version: sent in HELLO.
        versions: session protocol versions offered.
        interceptors: ``async def (ctx, request, call_next)`` around every call,
            outermost first.
        max_frame_size: the largest frame accepted from the server.
        heartbeat: send PINGs at the interval the server asks for (the round
            trip shows in ``statistics().rtt``).
        reconnect: re-establish a lost connection (or one the server sent
            GOAWAY on) in the background; None (the default) takes
            ``config.reconnect``, and ``ReconnectPolicy(max_retries=0)`` turns
            reconnecting off whatever the config says.  The first connection is
            not retried (each address is tried once): its failure raises here.
            Each attempt after a loss goes to the next address, each failed one
            counts against ``max_retries`` and waits its backoff before the
            next.  New connections resume the
            TLS session from ``config.session_tickets``; without a store the
            client keeps a private one for its own reconnects.
        idempotent: opcodes that may safely run twice: with ``reconnect``, a call
            to one of them that was in flight when the connection died is sent
            again on the new connection, within its deadline.
        early_data: allow 0-RTT data when a session ticket permits it.  HELLO
            then travels as early data, and on reconnects, calls to the
            ``idempotent`` opcodes that wait for the new connection are written
            before its handshake finishes, as early data.  0-RTT data can be
            replayed by an attacker who recorded it (the server's single-use
            tickets refuse a replay to the same server, but not everywhere), so
            only opcodes that are safe to run twice are ever sent that way; all
            other calls wait for WELCOME.  ``client.connection.early_data_accepted``
            tells whether the server took it.
        socket_factory: opens the UDP socket (default: a real one); tests pass
            ``quicframe.testing.FakeNetwork.socket_factory``.

    Yields:
        The connected client.

    Raises:
        quicframe.errors.VersionMismatch: no common protocol version.
        quicframe.errors.Unauthorized: the server refused the credentials.
        quicframe.errors.InsecureRejected: the server refuses unverified clients.
        quicframe.errors.HandshakeTimeout: no QUIC handshake or no WELCOME within
            ``config.handshake_timeout``.
        quicframe.errors.HandshakeError: any other handshake failure.
        With several addresses, the error is the one the last address raised.

    Cancellation:
        Cancelling during the handshake abandons it; leaving the block by an
        exception or cancellation closes the connection at once, leaving it
        normally closes it gracefully (NO_ERROR).
    """
    config = config if config is not None else ClientConfig()
    if reconnect is None:
        reconnect = config.reconnect
    max_frame_size = check_max_frame_size(max_frame_size)
    hello = Hello(
        versions=list(versions),
        client_name=client_name,
        client_version=client_version,
        credentials=dict(credentials or {}),
        max_frame_size=max_frame_size,
        insecure=config.insecure,
    )
    client = Client(
        interceptors=interceptors,
        max_frame_size=max_frame_size,
        heartbeat=heartbeat,
        reconnect=reconnect,
        idempotent=idempotent,
        addresses=[(host, port), *config.addresses],
    )
    client._socket_factory = socket_factory
    if client._policy is not None and config.session_tickets is None:
        # Reconnects resume the TLS session (and may use 0-RTT) from a store of our own.
        config = dataclasses.replace(config, session_tickets=SessionTicketStore())
    dial = functools.partial(client._run_link, config, hello, early_data)
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            await client._first_link(nursery, dial)
            if client._policy is not None:
                nursery.start_soon(client._supervise, nursery, dial)
            try:
                yield client
            except BaseException:
                client._closed = True
                raise
            else:
                with trio.move_on_after(_CLOSE_BOUND):
                    await client._close_gracefully()
            finally:
                client._closed = True
                nursery.cancel_scope.cancel()
