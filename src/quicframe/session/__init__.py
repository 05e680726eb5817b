"""The sans-IO session engine: handshake bodies, the control stream and call framing.

Importing this package loads neither trio nor aioquic.  The trio client and server
(``quicframe.connect``, ``quicframe.serve``) drive it over QUIC streams.
"""

from ._engine import (
    DEFAULT_CALL_URGENCY as DEFAULT_CALL_URGENCY,
    SLA_URGENCY as SLA_URGENCY,
    ControlChannel as ControlChannel,
    ControlEvent as ControlEvent,
    GoAwayReceived as GoAwayReceived,
    HelloReceived as HelloReceived,
    OneFrameReader as OneFrameReader,
    PingReceived as PingReceived,
    PongReceived as PongReceived,
    RejectReceived as RejectReceived,
    WelcomeReceived as WelcomeReceived,
    choose_version as choose_version,
    digest_matches as digest_matches,
    encode_error as encode_error,
    encode_request as encode_request,
    encode_response as encode_response,
    error_from_frame as error_from_frame,
    payload_matches as payload_matches,
    reply_frame_untrusted as reply_frame_untrusted,
    request_frame_untrusted as request_frame_untrusted,
    sla_urgency as sla_urgency,
)
from ._messages import (
    DEFAULT_HEARTBEAT_INTERVAL_MS as DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_MAX_CONCURRENT_CALLS as DEFAULT_MAX_CONCURRENT_CALLS,
    ERROR_CODEC as ERROR_CODEC,
    GOAWAY_CODEC as GOAWAY_CODEC,
    HELLO_CODEC as HELLO_CODEC,
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    REJECT_CODEC as REJECT_CODEC,
    SUPPORTED_VERSIONS as SUPPORTED_VERSIONS,
    WELCOME_CODEC as WELCOME_CODEC,
    ErrorBody as ErrorBody,
    GoAway as GoAway,
    Hello as Hello,
    Reject as Reject,
    Welcome as Welcome,
)
