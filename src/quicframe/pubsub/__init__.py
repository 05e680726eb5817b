"""Market-data publish/subscribe, sans-IO: topics, queues, recovery, sequence tracking.

Importing this package loads neither trio nor aioquic (a test checks).  The trio
layer (``quicframe.Topic``, ``router.add_topic``, ``client.subscribe``) drives these
state machines over QUIC streams and DATAGRAMs; tests drive them directly.

- :class:`TopicCore`: numbers each published value, stamps its send time, encodes it
  once, appends it to the topic's log and puts the same bytes in every subscriber's
  queue.
- :class:`Backbone` / :class:`TopicLog` and :class:`InMemoryBackbone`: where the
  sequence, the bounded history and the last value per key live (pluggable: a
  NATS JetStream backbone will come later).
- :class:`SubscriberQueue` and :class:`Policy`: bounded per-subscriber queues with
  CONFLATE, DROP_OLDEST, DISCONNECT and BLOCK, and their statistics.
- :class:`ServerSubscription` / :class:`ClientSubscription`: the two ends of one
  subscription stream (SUBSCRIBE, SUBSCRIBED, SNAPSHOT, GAP, UNSUBSCRIBE; frame
  types 0x0A-0x0E, ``docs/PROTOCOL.md`` section 11), with snapshot and replay
  recovery.
- :class:`SequenceTracker`, :class:`LatencyStats`: gap/duplicate detection and
  send-to-receive latency on the client.
- :func:`encode_datagram` / :func:`decode_datagram`: DATAGRAM mode.
"""

from ._backbone import (
    DEFAULT_HISTORY as DEFAULT_HISTORY,
    Backbone as Backbone,
    Entry as Entry,
    InMemoryBackbone as InMemoryBackbone,
    InMemoryLog as InMemoryLog,
    Record as Record,
    Snapshot as Snapshot,
    TopicLog as TopicLog,
)
from ._client import (
    SAMPLES_PER_RUN as SAMPLES_PER_RUN,
    ClientStats as ClientStats,
    ClientSubscription as ClientSubscription,
    LatencyStats as LatencyStats,
    SequenceTracker as SequenceTracker,
)
from ._datagram import decode_datagram as decode_datagram, encode_datagram as encode_datagram
from ._errors import HistoryGap as HistoryGap, SlowConsumer as SlowConsumer
from ._messages import (
    GAP_CODEC as GAP_CODEC,
    MODE_DATAGRAM as MODE_DATAGRAM,
    MODE_STREAM as MODE_STREAM,
    ON_GAP_ERROR as ON_GAP_ERROR,
    ON_GAP_SNAPSHOT as ON_GAP_SNAPSHOT,
    SNAPSHOT_CODEC as SNAPSHOT_CODEC,
    SUBSCRIBE_CODEC as SUBSCRIBE_CODEC,
    SUBSCRIBED_CODEC as SUBSCRIBED_CODEC,
    UNSUBSCRIBE_CODEC as UNSUBSCRIBE_CODEC,
    Gap as Gap,
    SnapshotMarker as SnapshotMarker,
    Subscribe as Subscribe,
    Subscribed as Subscribed,
    Unsubscribe as Unsubscribe,
    decode_control as decode_control,
    encode_control as encode_control,
)
from ._queue import (
    DEFAULT_MAX_QUEUED_BYTES as DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_QUEUE_SIZE as DEFAULT_QUEUE_SIZE,
    Policy as Policy,
    SubscriberQueue as SubscriberQueue,
    SubscriptionStats as SubscriptionStats,
)
from ._server import (
    ReplayRequest as ReplayRequest,
    ServerSubscription as ServerSubscription,
    SnapshotRequest as SnapshotRequest,
    read_subscribe as read_subscribe,
)
from ._topic import TopicCore as TopicCore, Urgency as Urgency, make_stamper as make_stamper
