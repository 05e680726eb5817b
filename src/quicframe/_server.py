"""The RPC server: ``serve`` / ``open_server`` run a :class:`Router` over QUIC.

Per connection, a :class:`_Session` reads HELLO on the control stream, answers
WELCOME or REJECT, then runs each call stream in a task of its own: read the
REQUEST to its FIN, check it, run the router's pipeline in a cancel scope whose
deadline is the caller's budget, and write RESPONSE or ERROR and FIN.  A caller
that gives up sends STOP_SENDING; a callback on the stream turns that into a
cancellation of exactly that call's scope.  The reply stream takes the urgency of
the request's SLA class (``quicframe.session.sla_urgency``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import trio

from ._config import ServerConfig
from ._deferred import DeferredCallContext, cancelled_caught, run_in_scope
from ._router import Router
from ._util import read_one_frame, receive_now_or_later, send_with_fin, unwrap_single_exception
from .errors import (
    ConnectionClosed,
    ErrorCode,
    HandshakeError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    code_name,
)
from .session import (
    DEFAULT_CALL_URGENCY,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_MAX_CONCURRENT_CALLS,
    SUPPORTED_VERSIONS,
    ControlChannel,
    GoAway,
    Hello,
    HelloReceived,
    Reject,
    Welcome,
    choose_version,
    digest_matches,
    encode_error,
    encode_response,
    request_frame_untrusted,
    sla_urgency,
)
from .transport import Connection, Listener, SocketFactory, Stream, serve as transport_serve
from .wire import DEFAULT_MAX_FRAME_SIZE, Frame, FrameType, check_max_frame_size, decode_frame

if TYPE_CHECKING:
    from .h3 import Gateway

__all__ = ["Authenticator", "Server", "ServerStatistics", "open_server", "serve"]

logger = logging.getLogger("quicframe.server")

Authenticator = Callable[[Hello, Connection], Awaitable[str | None]]
"""``async def authenticator(hello, connection) -> principal``: raise
:class:`quicframe.errors.Unauthorized` (or another HandshakeError) to refuse."""

# How long a server that sent REJECT waits for the client to read it and close.
_REJECT_LINGER: Final = 2.0
# How long closing one connection at shutdown may wait for acknowledgements.
_CLOSE_BOUND: Final = 1.0


@dataclass(frozen=True, slots=True)
class _Options:
    authenticator: Authenticator | None
    versions: tuple[int, ...]
    allow_insecure: bool
    max_concurrent_calls: int
    heartbeat_interval: float
    max_frame_size: int
    handshake_timeout: float
    shutdown_grace_period: float
    server_name: str
    request_read_timeout: float


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server.

    Attributes:
        connections: sessions currently established.
        calls_in_flight: calls being handled now.
        calls_completed: calls answered with RESPONSE.
        calls_failed: calls answered with ERROR (or reset), by code name.
        handshakes_rejected: HELLOs answered with REJECT.
    """

    connections: int
    calls_in_flight: int
    calls_completed: int
    calls_failed: dict[str, int]
    handshakes_rejected: int


@final
class Server:
    """A running RPC server: what ``serve`` hands to ``task_status.started``.

    Never constructed by users.
    """

    def __init__(self, router: Router, options: _Options) -> None:
        self._router = router
        self._options = options
        self._listener: Listener | None = None
        self._cancel_scope = trio.CancelScope()
        self._sessions: set[_Session] = set()
        self._closing = False
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = itertools.count(1)
        self._in_flight = 0
        self._completed = 0
        self._failed: dict[str, int] = {}
        self._rejected = 0
        # The HTTP/3 gateway (quicframe.h3) when serve(..., http3=True).
        self._http3: Gateway | None = None

    @property
    def port(self) -> int:
        """The bound UDP port (useful after binding port 0)."""
        assert self._listener is not None
        return self._listener.port

    @property
    def address(self) -> Any:
        """The bound socket address."""
        assert self._listener is not None
        return self._listener.address

    @property
    def router(self) -> Router:
        return self._router

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` began: no new calls are accepted."""
        return self._closing

    def statistics(self) -> ServerStatistics:
        """A snapshot of the server's counters."""
        return ServerStatistics(
            connections=len(self._sessions),
            calls_in_flight=self._in_flight,
            calls_completed=self._completed,
            calls_failed=dict(self._failed),
            handshakes_rejected=self._rejected,
        )

    async def aclose(self) -> None:
        """Shut down gracefully: GOAWAY, drain, close, stop listening.

        Every connection gets GOAWAY on its control stream; calls arriving after it
        are answered UNAVAILABLE; calls in flight may finish within the
        ``shutdown_grace_period`` given to ``serve``; then every connection is
        closed with NO_ERROR and ``serve`` returns.  Calling it again is a no-op.

        Raises:
            Nothing but trio.Cancelled.

        Cancellation:
            A cancelled ``aclose`` stops draining: the remaining calls are
            cancelled and ``serve`` stops at once.
        """
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        grace = self._options.shutdown_grace_period
        try:
            for session in list(self._sessions):
                await session.send_goaway(grace)
            if self._http3 is not None:
                self._http3.send_goaway()
            with trio.move_on_after(grace):
                while self._in_flight:
                    await self._drain_lot.park()
            for session in list(self._sessions):
                with trio.move_on_after(_CLOSE_BOUND):
                    await session.connection.aclose()
            if self._http3 is not None:
                await self._http3.aclose_connections()
        finally:
            self._cancel_scope.cancel()

    # -- internals ------------------------------------------------------------

    def _new_request_id(self) -> str:
        return f"s{self._id_prefix}-{next(self._id_counter)}"

    def _count(self, code: int) -> None:
        if code == ErrorCode.NO_ERROR:
            self._completed += 1
        else:
            name = code_name(code)
            self._failed[name] = self._failed.get(name, 0) + 1

    async def _handle_connection(self, connection: Connection) -> None:
        session = _Session(self, connection)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)


class _CallState:
    __slots__ = ("peer_cancelled",)

    def __init__(self) -> None:
        self.peer_cancelled = False


class _CountsCalls(Protocol):
    _in_flight: int


CallError = tuple[int, str, dict[str, Any]]


async def run_call(
    stream: Stream,
    ctx: DeferredCallContext,
    route_name: str,
    call: Callable[[Any, Any], Awaitable[Any]],
    first: Any,
    second: Any,
    session: _CountsCalls,
    server: Server,
    log_extra: Callable[[], dict[str, Any]],
    answer: Callable[[Any], CallError | None] | None = None,
) -> tuple[Any, CallError | None, bool]:
    """Run ``call(first, second)`` (the handler, or the middleware pipeline) in
    ``ctx.cancel_scope``, counted in flight.

    STOP_SENDING from the peer cancels exactly this call, through the
    transport's callback rather than with a watcher task per call.  Returns
    the result, the error to answer with (DEADLINE_EXCEEDED when the deadline
    ran out) and whether the peer cancelled the call (then there is no answer).

    ``answer``, when given, is called with the handler's result as soon as the
    handler returned and its scope was left (it must not wait): the reply
    leaves before the bookkeeping is unwound.  It returns None once it
    answered, or the error to answer with instead; the result returned is then
    None.

    A call without a deadline has its scope made and entered only once
    something could observe it (``quicframe._deferred``): a handler that
    returns without a checkpoint never pays for it.
    """
    state = _CallState()

    def peer_gave_up(code: int) -> None:
        state.peer_cancelled = True
        ctx.cancel_scope.cancel()

    if stream._send_error is not None:
        peer_gave_up(stream._send_error)  # it arrived before the handler started
    else:
        stream._stop_callback = peer_gave_up
    session._in_flight += 1
    server._in_flight += 1
    result: Any = None
    error: CallError | None = None
    try:
        try:
            result = await run_in_scope(ctx, call, first, second)
        except RemoteError as exc:
            error = (exc.code, exc.message, exc.details)
        except Exception as exc:
            logger.exception(
                "call %s (opcode 0x%04x, %s) failed",
                ctx.request_id,
                ctx.opcode,
                route_name,
                extra=log_extra(),
            )
            error = (ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", {})
        else:
            if answer is not None and not cancelled_caught(ctx):
                # Outside the handler's try: what sending raises (the caller
                # went away) is not the handler's failure.
                error = answer(result)
                result = None
    finally:
        stream._stop_callback = None
        session._in_flight -= 1
        server._in_flight -= 1
        if server._drain_lot:
            server._drain_lot.unpark_all()
    caught = cancelled_caught(ctx)
    if caught and not state.peer_cancelled:
        budget_ms = (ctx.deadline - ctx.received_at) * 1000
        error = (
            ErrorCode.DEADLINE_EXCEEDED,
            f"the deadline ran out after {budget_ms:.1f} ms",
            {},
        )
    return result, error, caught and state.peer_cancelled


_TERMINAL_ERRORS: Final = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


def _request_only(frame: Frame) -> Frame:
    """``frame`` if it is a REQUEST; else RemoteProtocolError UNEXPECTED_FRAME."""
    if frame.type != FrameType.REQUEST:
        request_frame_untrusted(frame)  # raises UNEXPECTED_FRAME
    return frame


# What a subscription stream (served by quicframe._topic) starts with.
_SUBSCRIBE_TYPE: Final = bytes([FrameType.SUBSCRIBE])


class _Session:
    """One client connection after its QUIC handshake."""

    def __init__(self, server: Server, connection: Connection) -> None:
        self.server = server
        self.connection = connection
        self._options = server._options
        self._router = server._router
        self._channel = ControlChannel(client=False, max_frame_size=self._options.max_frame_size)
        self._control: Stream | None = None
        self._control_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._principal: str | None = None
        self._peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._in_flight = 0  # calls whose handler runs (run_call counts them)
        # Call streams from their first byte until answered (max_concurrent_calls).
        self._calls_open = 0

    async def run(self) -> None:
        connection = self.connection
        with trio.move_on_after(self._options.handshake_timeout) as scope:
            accepted = await self._handshake()
        if scope.cancelled_caught:
            logger.info("no HELLO from %s in time", connection.remote_address)
            await connection.aclose(ErrorCode.HANDSHAKE_TIMEOUT, "no HELLO in time")
            return
        if not accepted:
            return
        self.server._sessions.add(self)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._control_loop)
            # serve_streams starts each call's task straight from the event that
            # announced its stream (no accept_stream round through the scheduler),
            # and lets the driver hold its flush for the reply, so the response
            # and the ACK of the request leave in one packet.
            with contextlib.suppress(*_TERMINAL_ERRORS):
                await connection.serve_streams(self._run_call)
            nursery.cancel_scope.cancel()

    # -- handshake ------------------------------------------------------------

    async def _handshake(self) -> bool:
        connection = self.connection
        channel = self._channel
        try:
            stream = await connection.accept_stream()
            self._control = stream
            if stream.stream_id != 0:
                await connection.aclose(
                    ErrorCode.PROTOCOL_ERROR, "stream 0 must be the control stream"
                )
                return False
            hello: Hello | None = None
            while hello is None:
                data = await stream.receive_some()
                if not data:
                    channel.receive_eof()
                    await connection.aclose(ErrorCode.HANDSHAKE_FAILED, "no HELLO")
                    return False
                for event in channel.receive_data(data):
                    if isinstance(event, HelloReceived):
                        hello = event.hello
        except RemoteProtocolError as exc:
            logger.warning("bad HELLO from %s: %s", connection.remote_address, exc)
            await connection.aclose(exc.code, exc.message[:200])
            return False
        except _TERMINAL_ERRORS:
            return False

        options = self._options
        reject: Reject | None = None
        version = choose_version(hello.versions, options.versions)
        if version is None:
            reject = Reject(
                ErrorCode.VERSION_MISMATCH,
                f"no common protocol version: client offers {hello.versions}, "
                f"server speaks {list(options.versions)}",
                list(options.versions),
            )
        elif hello.insecure and not options.allow_insecure:
            reject = Reject(
                ErrorCode.INSECURE, "this server refuses clients that skip verification"
            )
        elif options.authenticator is not None:
            try:
                self._principal = await options.authenticator(hello, connection)
            except HandshakeError as exc:
                reject = Reject(exc.code, exc.message or "credentials refused")
            except Exception:
                logger.exception("the authenticator failed for %s", connection.remote_address)
                reject = Reject(ErrorCode.HANDSHAKE_FAILED, "authentication failed")
        if reject is not None:
            await self._reject(stream, reject)
            return False
        try:
            self._peer_max_frame_size = check_max_frame_size(hello.max_frame_size)
        except Exception:
            self._peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        assert version is not None
        channel.send_welcome(
            Welcome(
                version=version,
                max_frame_size=options.max_frame_size,
                max_concurrent_calls=options.max_concurrent_calls,
                heartbeat_interval_ms=round(options.heartbeat_interval * 1000),
                server_name=options.server_name,
                principal=self._principal,
            )
        )
        try:
            await stream.send_all(channel.data_to_send())
        except _TERMINAL_ERRORS:
            return False
        return True

    async def _reject(self, stream: Stream, reject: Reject) -> None:
        connection = self.connection
        self.server._rejected += 1
        logger.info(
            "rejected %s: %s %s", connection.remote_address, code_name(reject.code), reject.reason
        )
        self._channel.send_reject(reject)
        try:
            await stream.send_all(self._channel.data_to_send())
            await stream.send_eof()
            # The client closes the connection once it has read REJECT; wait for
            # that (bounded) so our close does not overtake the REJECT.
            with trio.move_on_after(_REJECT_LINGER):
                while await stream.receive_some():
                    pass
        except _TERMINAL_ERRORS:
            pass
        await connection.aclose(reject.code, reject.reason[:200])

    # -- control stream -------------------------------------------------------

    async def _control_loop(self) -> None:
        stream = self._control
        assert stream is not None
        channel = self._channel
        try:
            while data := await stream.receive_some():
                channel.receive_data(data)  # PINGs are answered by the channel
                reply = channel.data_to_send()
                if reply:
                    async with self._control_lock:
                        await stream.send_all(reply)
            channel.receive_eof()
        except RemoteProtocolError as exc:
            logger.warning(
                "protocol error on the control stream of %s: %s",
                self.connection.remote_address,
                exc,
            )
            await self.connection.aclose(exc.code, exc.message[:200])
        except _TERMINAL_ERRORS:
            pass

    async def send_goaway(self, grace: float) -> None:
        stream = self._control
        if stream is None or self._channel.state != "established":
            return
        self._channel.send_goaway(
            GoAway(
                code=ErrorCode.GOING_AWAY,
                reason="server shutting down",
                grace_period_ms=round(grace * 1000),
            )
        )
        try:
            async with self._control_lock:
                await stream.send_all(self._channel.data_to_send())
        except _TERMINAL_ERRORS:
            pass

    # -- calls ----------------------------------------------------------------

    async def _run_call(self, stream: Stream) -> None:
        # A call counts against max_concurrent_calls from its stream's first byte
        # (the stream exists once its first frame arrived) until it is answered,
        # so call streams being read are bounded as well as running handlers.
        options = self._options
        self._calls_open += 1
        counted = True
        # Set once both directions are over (FIN or reset after the request's
        # FIN): the transport has let the stream go, and aclose() is not needed.
        finished = False
        first: bytes | None
        frame: Frame | None
        try:
            try:
                if stream._receive_eof:
                    # The FIN is in, so the whole request is buffered and reading
                    # it cannot wait: no timeout (a cancel scope costs ~5 us).
                    # The common case, a call whose request came in one piece,
                    # is read and decoded right here, in the handler's first step.
                    data = stream.receive_nowait()
                    first, frame = self._classify(stream, data) or await self._read_request(
                        stream, data
                    )
                    timed_out = False
                else:
                    first = frame = None
                    timed_out = True
                    with trio.move_on_after(options.request_read_timeout):
                        first, frame = await self._read_call(stream)
                        timed_out = False
            except RemoteProtocolError as exc:
                logger.warning(
                    "protocol error on call stream %d from %s: %s",
                    stream.stream_id,
                    self.connection.remote_address,
                    exc,
                )
                stream.reset(exc.code)
                stream.stop_sending(exc.code)
                finished = True
                return
            if frame is not None:
                await self._serve_request(stream, frame)
            elif first is not None:
                self._calls_open -= 1  # a subscription: not a call
                counted = False
                from ._topic import serve_subscription

                await serve_subscription(
                    self._router,
                    self.connection,
                    stream,
                    first,
                    max_frame_size=options.max_frame_size,
                )
            elif not timed_out:  # beyond max_concurrent_calls: nothing was read
                self._refuse(
                    stream,
                    ErrorCode.RESOURCE_EXHAUSTED,
                    "too many concurrent calls on this connection",
                )
            else:
                # Opened and never (or too slowly) sent: the stream is let go.
                self._refuse(
                    stream,
                    ErrorCode.LIMIT_EXCEEDED,
                    f"no complete request within {options.request_read_timeout} s",
                )
            finished = True  # every way here ends both directions
        except _TERMINAL_ERRORS:
            pass  # the caller or the connection went away: nobody to answer
        finally:
            if counted:
                self._calls_open -= 1
            if not finished:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _read_call(self, stream: Stream) -> tuple[bytes | None, Frame | None]:
        """Read what the stream starts with.

        Returns (its first bytes, None) for a subscription, (None, the REQUEST)
        for a call within ``max_concurrent_calls``, and (None, None) for a call
        beyond it, of which nothing more is read.

        Raises:
            RemoteProtocolError: the call stream does not hold exactly one valid
                REQUEST frame.
            And whatever ``receive_some`` raises.
        """
        data = await receive_now_or_later(stream)
        return self._classify(stream, data) or await self._read_request(stream, data)

    def _classify(self, stream: Stream, data: bytes) -> tuple[bytes | None, Frame | None] | None:
        """What ``_read_call`` returns, when the stream's first bytes ``data`` decide
        it without reading more (the common case: a REQUEST in one piece with its
        FIN); None when the rest of a REQUEST must be read first."""
        # Market data: a stream starting with SUBSCRIBE is a subscription, served
        # to its end by quicframe._topic (a router without that topic answers
        # UNKNOWN_TOPIC); any other stream is a call.
        if data[:1] == _SUBSCRIBE_TYPE:
            return data, None
        options = self._options
        if self._calls_open > options.max_concurrent_calls:
            return None, None
        if not (data and stream.receive_finished):
            return None
        return None, _request_only(decode_frame(data, max_frame_size=options.max_frame_size))

    async def _read_request(self, stream: Stream, data: bytes) -> tuple[None, Frame]:
        """The REQUEST that starts with ``data``, read to the FIN."""
        frame = await read_one_frame(stream, self._options.max_frame_size, data)
        return None, _request_only(frame)

    def _refuse(self, stream: Stream, code: int, why: str) -> None:
        """Reset a call stream whose request was not read, with ``code``."""
        logger.info(
            "call stream %d from %s refused (%s): %s",
            stream.stream_id,
            self.connection.remote_address,
            code_name(code),
            why,
        )
        self.server._count(code)
        stream.reset(code)
        stream.stop_sending(code)

    async def _serve_request(self, stream: Stream, frame: Frame) -> None:
        received_at = trio.current_time()
        server = self.server
        metadata = frame.metadata
        opcode = frame.opcode
        request_id, budget, sla_class, digest = metadata.call_fields()
        if request_id is None:
            request_id = server._new_request_id()
        deadline = math.inf if budget is None else received_at + budget / 1e9
        route = self._router.route(opcode)
        if sla_class is not None:
            # The reply (or error) is sent with the urgency of the caller's class.
            urgency = sla_urgency(sla_class)
            if urgency != DEFAULT_CALL_URGENCY:
                stream.urgency = urgency

        if not digest_matches(frame.body, digest):
            logger.warning(
                "call %s (opcode 0x%04x): payload digest mismatch",
                request_id,
                opcode,
                extra={"request_id": request_id, "opcode": opcode},
            )
            await self._fail(
                stream,
                opcode,
                request_id,
                ErrorCode.INTEGRITY_MISMATCH,
                "the body does not match PAYLOAD_SHA256",
            )
            return
        if server._closing or self._channel.goaway is not None:
            # Not run: the caller may send it again elsewhere (PROTOCOL.md 7.4).
            await self._fail(
                stream,
                opcode,
                request_id,
                ErrorCode.UNAVAILABLE,
                "the server is shutting down",
                {"draining": True},
            )
            return
        if route is None:
            await self._fail(
                stream, opcode, request_id, ErrorCode.NOT_FOUND, f"unknown opcode 0x{opcode:04x}"
            )
            return
        if stream.arrived_early and not route.idempotent:
            # 0-RTT data can be replayed by whoever recorded it: only operations
            # registered as idempotent run from it (PROTOCOL.md 7.2).  Not run, so
            # the caller may send it again once the handshake is done.
            await self._fail(
                stream,
                opcode,
                request_id,
                ErrorCode.UNAVAILABLE,
                "not idempotent: refused as 0-RTT early data",
                {"early_data": True},
            )
            return
        try:
            request = route.request_codec.decode(frame.body)
        except RemoteProtocolError as exc:
            logger.warning(
                "call %s: %s", request_id, exc, extra={"request_id": request_id, "opcode": opcode}
            )
            server._count(exc.code)
            stream.reset(exc.code)
            stream.stop_sending(exc.code)
            return

        # Run the handler (through the middleware) in the call's own cancel scope,
        # made when first needed (quicframe._deferred).
        ctx = DeferredCallContext(
            opcode=opcode,
            request_id=request_id,
            sla_class=sla_class,
            deadline=deadline,
            budget_ns=budget,
            principal=self._principal,
            metadata=metadata,
            peer_address=self.connection.remote_address,
            received_at=received_at,
            route_name=route.name,
        )
        router = self._router
        call: Callable[[Any, Any], Awaitable[Any]]
        if router._middleware:
            call, first, second = router.pipeline(route), ctx, request
        else:
            call, first, second = route.handler, request, ctx

        unsent: list[bytes] = []

        def answer(result: Any) -> CallError | None:
            # Called as the handler returns, inside its scope: the RESPONSE and
            # its FIN leave now (see run_call).
            try:
                reply = encode_response(
                    opcode,
                    route.response_codec.encode(result),
                    request_id=ctx.request_id,  # a middleware may have changed it
                    integrity=ctx.metadata.payload_sha256 is not None,
                    max_frame_size=self._peer_max_frame_size,
                )
            except LocalProtocolError as exc:
                logger.error(
                    "call %s: cannot send the response: %s",
                    ctx.request_id,
                    exc,
                    extra={"request_id": ctx.request_id, "opcode": opcode},
                )
                return (ErrorCode.INTERNAL, f"the response cannot be sent: {exc.message}", {})
            server._completed += 1
            try:
                stream.send_nowait(reply, eof=True)
            except trio.WouldBlock:
                unsent.append(reply)  # over the high-water mark: sent below, waiting
            return None

        _, error, cancelled = await run_call(
            stream,
            ctx,
            route.name,
            call,
            first,
            second,
            self,
            server,
            lambda: {"request_id": ctx.request_id, "opcode": opcode},
            answer,
        )
        request_id = ctx.request_id  # a middleware may have changed it
        if cancelled:
            server._count(ErrorCode.CANCELLED)
            logger.debug(
                "call %s cancelled by the caller",
                request_id,
                extra={"request_id": request_id, "opcode": opcode},
            )
            stream.reset(ErrorCode.CANCELLED)
            return
        if error is None:
            if unsent:
                await send_with_fin(stream, unsent[0])
            return
        await self._fail(stream, opcode, request_id, *error)

    async def _fail(
        self,
        stream: Stream,
        opcode: int,
        request_id: str,
        code: int,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Answer the call with ERROR ``code``."""
        self.server._count(code)
        await send_with_fin(
            stream, encode_error(opcode, code, message, details, request_id=request_id)
        )


def _options(
    *,
    authenticator: Authenticator | None,
    versions: Iterable[int],
    allow_insecure: bool,
    max_concurrent_calls: int,
    heartbeat_interval: float,
    max_frame_size: int,
    handshake_timeout: float,
    shutdown_grace_period: float,
    server_name: str,
    request_read_timeout: float = 10.0,
) -> _Options:
    versions = tuple(versions)
    if not versions:
        raise ValueError("versions must name at least one protocol version")
    if max_concurrent_calls < 1:
        raise ValueError("max_concurrent_calls must be at least 1")
    if handshake_timeout <= 0 or shutdown_grace_period < 0 or heartbeat_interval < 0:
        raise ValueError("timeouts must be positive")
    if not request_read_timeout > 0:
        raise ValueError("request_read_timeout must be positive")
    return _Options(
        authenticator=authenticator,
        versions=versions,
        allow_insecure=allow_insecure,
        max_concurrent_calls=max_concurrent_calls,
        heartbeat_interval=heartbeat_interval,
        max_frame_size=check_max_frame_size(max_frame_size),
        handshake_timeout=handshake_timeout,
        shutdown_grace_period=shutdown_grace_period,
        server_name=server_name,
        request_read_timeout=request_read_timeout,
    )


async def serve(
    router: Router,
    host: str,
    port: int,
    config: ServerConfig,
    *,
    authenticator: Authenticator | None = None,
    versions: Iterable[int] = SUPPORTED_VERSIONS,
    allow_insecure: bool = True,
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_MS / 1000,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    handshake_timeout: float = 10.0,
    shutdown_grace_period: float = 5.0,
    server_name: str = "quicframe",
    request_read_timeout: float = 10.0,
    http3: bool = False,
    socket_factory: SocketFactory | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``router`` on ``host``:``port`` until cancelled or ``Server.aclose()``.

    Args:
        router: the operations to serve.
        host: local address to bind.
        port: local UDP port; 0 picks a free one (see ``Server.port``).
        config: QUIC and TLS settings (certificate, limits).
        authenticator: ``async def (hello, connection) -> principal``; raise
            :class:`quicframe.errors.Unauthorized` to refuse the client.
        versions: session protocol versions offered.
        allow_insecure: accept clients that skip certificate verification.
        max_concurrent_calls: calls per connection at once, each counted from
            its stream's first byte until it is answered (so requests still
            being read count too); a call stream beyond it is reset with
            RESOURCE_EXHAUSTED before its request is read.
        heartbeat_interval: the PING period asked of clients, seconds (0: none).
        max_frame_size: the largest frame accepted.
        handshake_timeout: how long a connection may take to send HELLO.
        shutdown_grace_period: how long :meth:`Server.aclose` lets calls finish.
        server_name: sent in WELCOME, for the client's logs.
        request_read_timeout: seconds a call stream may take from its first
            byte to the end of its request; a slower one (or one that never
            sends) is reset with LIMIT_EXCEEDED and never runs.
        http3: also offer ALPN ``h3`` and serve the connections that choose it
            with the HTTP/3 gateway (``quicframe.h3``, see ``docs/http3.md``).
        socket_factory: opens the UDP socket (default: a real one); tests pass
            ``quicframe.testing.FakeNetwork.socket_factory``.
        task_status: receives the :class:`Server` once the socket is bound.

    Raises:
        OSError: the address could not be bound.
        ValueError: an option is out of range.

    Cancellation:
        Cancelling ``serve`` cancels every call in flight (their callers see the
        connection close with GOING_AWAY); use ``Server.aclose()`` to drain first.
    """
    options = _options(
        authenticator=authenticator,
        versions=versions,
        allow_insecure=allow_insecure,
        max_concurrent_calls=max_concurrent_calls,
        heartbeat_interval=heartbeat_interval,
        max_frame_size=max_frame_size,
        handshake_timeout=handshake_timeout,
        shutdown_grace_period=shutdown_grace_period,
        server_name=server_name,
        request_read_timeout=request_read_timeout,
    )
    server = Server(router, options)
    handler: Callable[[Connection], Awaitable[None]] = server._handle_connection
    if http3:
        from .h3._gateway import enable_http3  # imported only when HTTP/3 is on

        config, handler = enable_http3(server, config)
    with unwrap_single_exception(), server._cancel_scope:
        async with trio.open_nursery() as nursery:
            server._listener = await nursery.start(
                functools.partial(transport_serve, socket_factory=socket_factory),
                host,
                port,
                config,
                handler,
            )
            task_status.started(server)


@contextlib.asynccontextmanager
async def open_server(
    router: Router,
    host: str,
    port: int,
    config: ServerConfig,
    **options: Any,
) -> AsyncIterator[Server]:
    """Run :func:`serve` for the duration of an ``async with`` block.

    Takes the same arguments as :func:`serve`.  Leaving the block normally shuts
    the server down gracefully (:meth:`Server.aclose`: GOAWAY, then the calls in
    flight drain); leaving it by an exception stops it at once.

    Yields:
        The running :class:`Server`.

    Raises:
        OSError: the address could not be bound.

    Cancellation:
        Cancelling the block (or the graceful shutdown at its end) cancels the
        calls in flight and stops the server at once.
    """
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                _serve_with_options, router, host, port, config, options
            )
            try:
                yield server
            except BaseException:
                # Failing or cancelled: stop at once rather than drain.
                server._cancel_scope.cancel()
                raise
            else:
                await server.aclose()


async def _serve_with_options(
    router: Router,
    host: str,
    port: int,
    config: ServerConfig,
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Server],
) -> None:
    await serve(router, host, port, config, task_status=task_status, **options)
