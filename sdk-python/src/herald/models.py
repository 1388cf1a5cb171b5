"""Plain result types returned by the clients (converted from the herald.v1 messages)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from herald.v1 import herald_pb2 as pb


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The result of one accepted publish."""

    #: The message's sequence number in its topic (1, 2, 3, ...).
    sequence: int
    #: True when the idempotency key matched an earlier publish: nothing was sent again.
    duplicate: bool = False
    #: The topic's epoch (the random id of this incarnation of the topic): sequences
    #: count within it. WebSocket messages carry the same epoch. Not part of
    #: equality, so results compare by sequence and duplicate as before.
    epoch: str = field(default="", compare=False)

    @classmethod
    def from_pb(cls, msg: pb.PublishResponse) -> PublishResult:
        return cls(sequence=msg.sequence, duplicate=msg.duplicate, epoch=msg.epoch)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a topic: a sequence number and the epoch it counts in."""

    sequence: int
    #: Empty: not checked (History) / the topic does not exist on the node.
    epoch: str = ""

    @classmethod
    def from_pb(cls, msg: pb.StreamPosition) -> StreamPosition:
        return cls(sequence=msg.sequence, epoch=msg.epoch)

    def to_pb(self) -> pb.StreamPosition:
        return pb.StreamPosition(sequence=self.sequence, epoch=self.epoch)


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """The answer to a subscribe with ``since`` (:meth:`herald.Client.subscribe_since`)."""

    #: How many connections the command reached.
    connections: int
    #: Per topic named in ``since``: True when every connection reached was sent all
    #: it missed (then the live messages, no gap, no duplicate); False when the
    #: engine no longer had it all (new epoch, beyond the history, no history, or a
    #: connection already in the topic): the client should reload its state.
    recovered: Mapping[str, bool]
    #: Per topic named in ``since``: where live delivery continues (for the last
    #: connection reached).
    positions: Mapping[str, StreamPosition]

    @classmethod
    def from_pb(cls, msg: pb.SubscribeResponse) -> SubscribeResult:
        return cls(
            connections=msg.connections,
            recovered=dict(msg.recovered),
            positions={t: StreamPosition.from_pb(p) for t, p in msg.positions.items()},
        )

    @property
    def not_recovered(self) -> list[str]:
        """The topics of ``since`` that did not recover, sorted."""
        return sorted(t for t, ok in self.recovered.items() if not ok)


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """One kept message of a topic."""

    sequence: int
    #: The payload as published.
    data: bytes
    content_type: str
    #: When it was published, in milliseconds since the Unix epoch.
    timestamp_ms: int

    @classmethod
    def from_pb(cls, msg: pb.HistoryMessage) -> HistoryMessage:
        return cls(
            sequence=msg.sequence,
            data=msg.data,
            content_type=msg.content_type,
            timestamp_ms=msg.timestamp_ms,
        )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of a topic's history (the ``History`` RPC)."""

    #: Oldest first (newest first when asked with ``reverse=True``).
    messages: tuple[HistoryMessage, ...]
    #: The topic's current sequence and epoch (empty epoch: not held by the node).
    position: StreamPosition
    #: The oldest sequence still kept; 0 when none is.
    first_sequence: int

    @classmethod
    def from_pb(cls, msg: pb.HistoryResponse) -> HistoryPage:
        return cls(
            messages=tuple(HistoryMessage.from_pb(m) for m in msg.messages),
            position=StreamPosition.from_pb(msg.position),
            first_sequence=msg.first_sequence,
        )


@dataclass(frozen=True, slots=True)
class Member:
    """One connection in a topic."""

    connection_id: str
    #: Empty for an anonymous connection.
    user_id: str
    #: The client info given at connect time (JSON text), empty if none.
    info: str

    @classmethod
    def from_pb(cls, msg: pb.Member) -> Member:
        return cls(connection_id=msg.connection_id, user_id=msg.user_id, info=msg.info)


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """Counts for one topic."""

    connections: int
    users: int

    @classmethod
    def from_pb(cls, msg: pb.PresenceStatsResponse) -> PresenceStats:
        return cls(connections=msg.connections, users=msg.users)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Node identity and counters since start (the ``Info`` RPC)."""

    node_id: str
    version: str
    uptime_seconds: int
    connections: int
    topics: int
    subscriptions: int
    messages_published: int
    messages_delivered: int
    messages_dropped: int
    slow_disconnects: int
    #: Whether WebSocket clients must authenticate with a token; ``False`` means the
    #: node runs open (any client may claim any user id).
    client_auth: bool = False
    #: Bytes held by topic history (bounded by the engine's history_max_bytes).
    history_bytes: int = 0
    #: Messages held by topic history.
    history_messages: int = 0

    @classmethod
    def from_pb(cls, msg: pb.InfoResponse) -> NodeInfo:
        return cls(
            node_id=msg.node_id,
            version=msg.version,
            uptime_seconds=msg.uptime_seconds,
            connections=msg.connections,
            topics=msg.topics,
            subscriptions=msg.subscriptions,
            messages_published=msg.messages_published,
            messages_delivered=msg.messages_delivered,
            messages_dropped=msg.messages_dropped,
            slow_disconnects=msg.slow_disconnects,
            client_auth=msg.client_auth,
            history_bytes=msg.history_bytes,
            history_messages=msg.history_messages,
        )


class _NamedIntEnum(enum.IntEnum):
    """An IntEnum that prints as its name (``HealthStatus.SERVING``), not as a number."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


class PresenceEventKind(_NamedIntEnum):
    """The kind of a presence event (mirrors ``herald.v1.PresenceEventKind``)."""

    UNSPECIFIED = pb.PRESENCE_EVENT_KIND_UNSPECIFIED
    SNAPSHOT = pb.PRESENCE_EVENT_KIND_SNAPSHOT
    SNAPSHOT_END = pb.PRESENCE_EVENT_KIND_SNAPSHOT_END
    JOIN = pb.PRESENCE_EVENT_KIND_JOIN
    LEAVE = pb.PRESENCE_EVENT_KIND_LEAVE
    CONNECT = pb.PRESENCE_EVENT_KIND_CONNECT
    DISCONNECT = pb.PRESENCE_EVENT_KIND_DISCONNECT
    RESYNC = pb.PRESENCE_EVENT_KIND_RESYNC


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """One presence event from ``watch_presence``.

    A ``RESYNC`` event means the view built so far can no longer be trusted: drop
    it. ``watch_presence`` then starts over by itself and, when a snapshot was
    asked for, the current members follow again as ``SNAPSHOT`` events and one
    ``SNAPSHOT_END``. ``local`` tells who decided: False when the engine sent the
    RESYNC (the watcher fell behind), True when the SDK made it because the stream
    dropped and had to be reopened (events in between may have been missed).
    """

    kind: PresenceEventKind
    #: The topic, for SNAPSHOT, JOIN and LEAVE; empty otherwise.
    topic: str = ""
    #: The connection concerned; None for SNAPSHOT_END and RESYNC.
    member: Member | None = None
    #: The node that saw the event (empty for a local RESYNC).
    node_id: str = ""
    #: When the event happened, in milliseconds since the Unix epoch.
    timestamp_ms: int = 0
    #: True for a RESYNC made by the SDK after a reconnect (see above).
    local: bool = False

    @classmethod
    def from_pb(cls, msg: pb.PresenceEvent) -> PresenceEvent:
        try:
            kind = PresenceEventKind(msg.kind)
        except ValueError:
            kind = PresenceEventKind.UNSPECIFIED
        return cls(
            kind=kind,
            topic=msg.topic,
            member=Member.from_pb(msg.member) if msg.HasField("member") else None,
            node_id=msg.node_id,
            timestamp_ms=msg.timestamp_ms,
        )


class HealthStatus(_NamedIntEnum):
    """The serving status reported by the standard grpc.health.v1 service.

    ``print(client.health())`` prints ``HealthStatus.SERVING``; the values are the
    protocol's numbers (``HealthStatus.SERVING == 1``).
    """

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3
