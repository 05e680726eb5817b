"""Counters for ``GET /metrics``, rendered in the Prometheus text exposition format.

Plain in-memory counters (no trio, no I/O): the gateway and the server's
connection dispatch update them; :meth:`Metrics.render` writes format 0.0.4.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..pubsub import SubscriptionStats

__all__ = ["LATENCY_BUCKETS", "Metrics", "NativeSnapshot"]

LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_DROP_REASONS: Final = ("dropped", "conflated", "stale")


@dataclass(frozen=True, slots=True)
class NativeSnapshot:
    """What the native server counts, as the metrics page shows it."""

    calls_in_flight: int
    calls_completed: int
    calls_failed: dict[str, int]
    handshakes_rejected: int
    subscriptions: int = 0


class _Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds


class Metrics:
    """The gateway's counters.

    Opcode labels are registered opcodes only (``0x0101``) or ``unknown``, so a
    client cannot grow the label set.  HTTP/3 subscriptions report here as they
    open and close (:meth:`subscription_opened`, :meth:`subscription_closed`);
    the queue counters of those still open are added when rendering.
    """

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, int], int] = {}  # (opcode, code name, status)
        self.latency: dict[str, _Histogram] = {}  # opcode -> seconds
        self.requests: dict[tuple[str, int], int] = {}  # (route, status)
        # Request streams reset before their request was read, by quicframe code.
        self.refused: dict[str, int] = {}
        self.connections_open: dict[str, int] = {}
        self.connections_total: dict[str, int] = {}
        self.subscriptions = 0  # HTTP/3 subscriptions open now
        # Frames HTTP/3 subscriptions that ended lost, by reason.
        self.subscription_drops: dict[str, int] = dict.fromkeys(_DROP_REASONS, 0)
        self.reconnects = 0  # HTTP/3 subscriptions that resumed (from_seq)

    def connection_opened(self, alpn: str) -> None:
        self.connections_open[alpn] = self.connections_open.get(alpn, 0) + 1
        self.connections_total[alpn] = self.connections_total.get(alpn, 0) + 1

    def connection_closed(self, alpn: str) -> None:
        self.connections_open[alpn] = self.connections_open.get(alpn, 0) - 1

    def call_finished(self, opcode: str, code: str, status: int, seconds: float | None) -> None:
        key = (opcode, code, status)
        self.calls[key] = self.calls.get(key, 0) + 1
        if seconds is not None:
            histogram = self.latency.get(opcode)
            if histogram is None:
                histogram = self.latency[opcode] = _Histogram()
            histogram.observe(seconds)

    def request_finished(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def request_refused(self, code: str) -> None:
        """A request stream was reset unread (too many requests, or too slow)."""
        self.refused[code] = self.refused.get(code, 0) + 1

    def subscription_opened(self, *, resumed: bool) -> None:
        """An HTTP/3 subscription started (``resumed``: it gave ``from_seq``)."""
        self.subscriptions += 1
        if resumed:
            self.reconnects += 1

    def subscription_closed(self, stats: SubscriptionStats) -> None:
        """An HTTP/3 subscription ended with these queue counters."""
        self.subscriptions -= 1
        drops = self.subscription_drops
        drops["dropped"] += stats.dropped
        drops["conflated"] += stats.conflated
        drops["stale"] += stats.stale

    def render(
        self, native: NativeSnapshot | None = None, live: Sequence[SubscriptionStats] = ()
    ) -> bytes:
        """The metrics page (Prometheus text format 0.0.4).

        Args:
            native: the native server's counters.
            live: the queue counters of the HTTP/3 subscriptions open now.
        """
        out: list[str] = []
        _family(
            out,
            "quicframe_http3_calls_total",
            "counter",
            "HTTP/3 calls answered, by opcode, quicframe code and HTTP status.",
            (
                (f'opcode="{op}",code="{code}",status="{status}"', count)
                for (op, code, status), count in sorted(self.calls.items())
            ),
        )
        out.append(
            "# HELP quicframe_http3_call_duration_seconds Time from a complete HTTP/3 "
            "request to its response, by opcode."
        )
        out.append("# TYPE quicframe_http3_call_duration_seconds histogram")
        for opcode, histogram in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, None), histogram.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound is None else repr(bound)
                out.append(
                    f'quicframe_http3_call_duration_seconds_bucket{{opcode="{opcode}",le="{le}"}}'
                    f" {cumulative}"
                )
            name = "quicframe_http3_call_duration_seconds"
            out.append(f'{name}_sum{{opcode="{opcode}"}} {histogram.total!r}')
            out.append(f'{name}_count{{opcode="{opcode}"}} {histogram.count}')
        _family(
            out,
            "quicframe_http3_requests_total",
            "counter",
            "HTTP/3 requests answered, by route and HTTP status.",
            (
                (f'route="{route}",status="{status}"', count)
                for (route, status), count in sorted(self.requests.items())
            ),
        )
        _family(
            out,
            "quicframe_http3_requests_refused_total",
            "counter",
            "HTTP/3 request streams reset before their request was read, by quicframe "
            "code: RESOURCE_EXHAUSTED (beyond max_concurrent_calls, H3_REQUEST_REJECTED) "
            "and LIMIT_EXCEEDED (not complete within request_read_timeout, "
            "H3_REQUEST_CANCELLED).",
            ((f'code="{code}"', n) for code, n in sorted(self.refused.items())),
        )
        _family(
            out,
            "quicframe_connections",
            "gauge",
            "Connections open now, by negotiated ALPN.",
            ((f'alpn="{alpn}"', n) for alpn, n in sorted(self.connections_open.items())),
        )
        _family(
            out,
            "quicframe_connections_total",
            "counter",
            "Connections accepted, by negotiated ALPN.",
            ((f'alpn="{alpn}"', n) for alpn, n in sorted(self.connections_total.items())),
        )
        if native is not None:
            codes = {"NO_ERROR": native.calls_completed, **native.calls_failed}
            _family(
                out,
                "quicframe_native_calls_total",
                "counter",
                "Native (quicframe/1) calls answered, by quicframe code.",
                ((f'code="{code}"', n) for code, n in sorted(codes.items())),
            )
            _family(
                out,
                "quicframe_calls_in_flight",
                "gauge",
                "Calls being handled now (native and HTTP/3).",
                (("", native.calls_in_flight),),
            )
            _family(
                out,
                "quicframe_handshakes_rejected_total",
                "counter",
                "Native session handshakes refused.",
                (("", native.handshakes_rejected),),
            )
        subscriptions = [('protocol="h3"', self.subscriptions)]
        if native is not None:
            subscriptions.append(('protocol="native"', native.subscriptions))
        _family(
            out,
            "quicframe_subscriptions",
            "gauge",
            "Subscriptions open now, HTTP/3 and native.",
            subscriptions,
        )
        drops = dict(self.subscription_drops)
        for stats in live:
            drops["dropped"] += stats.dropped
            drops["conflated"] += stats.conflated
            drops["stale"] += stats.stale
        _family(
            out,
            "quicframe_subscription_drops_total",
            "counter",
            "Frames HTTP/3 subscriptions did not deliver, by reason: dropped "
            "(DROP_OLDEST, CONFLATE's key cap, or discarded at the end), conflated "
            "(replaced by a newer value of the same key), stale.",
            ((f'protocol="h3",reason="{reason}"', n) for reason, n in drops.items()),
        )
        _family(
            out,
            "quicframe_reconnects_total",
            "counter",
            "HTTP/3 subscriptions that resumed from a sequence number (from_seq or "
            "Last-Event-ID): clients reconnecting.",
            (('protocol="h3"', self.reconnects),),
        )
        out.append("")
        return "\n".join(out).encode()


def _family(
    out: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, int]]
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
