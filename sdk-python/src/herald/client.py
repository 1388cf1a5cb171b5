"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TypeVar, overload

import grpc
from grpc_health.v1 import health_pb2

from herald import _requests, payload
from herald.config import DEFAULT_TIMEOUT, HEALTH_CHECK, RetryPolicy, Settings
from herald.config import HEALTH_CHECK_METHOD as HEALTH_CHECK_METHOD
from herald.control import ControlStream
from herald.models import (
    HealthStatus,
    HistoryPage,
    Member,
    NodeInfo,
    PresenceStats,
    PublishResult,
    StreamPosition,
    SubscribeResult,
)
from herald.presence import PresenceWatch
from herald.publisher import Publisher
from herald.v1 import herald_pb2 as pb
from herald.v1 import herald_pb2_grpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class Client:
    """A blocking client for one Herald engine node.

    ::

        with herald.Client("127.0.0.1:50051") as client:
            client.publish("room:general", {"text": "hi"})

    Args:
        target: the engine's gRPC address, ``host:port`` (any gRPC target works).
        api_key: sent with every call as ``authorization: Bearer <api_key>``.
        metadata: more ``(key, value)`` pairs sent with every call.
        credentials: TLS credentials (for example ``grpc.ssl_channel_credentials()``);
            None for a plaintext connection.
        timeout: default deadline of a unary call in seconds, retries included
            (None: no deadline). Every call also takes its own ``timeout=``.
        retry: how calls that are safe to repeat are retried on UNAVAILABLE.
        channel_options: extra gRPC channel options.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        channel_options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        self._settings = Settings(
            target,
            api_key=api_key,
            metadata=metadata,
            credentials=credentials,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            channel_options=channel_options,
        )
        self._channel = self._settings.channel(grpc.insecure_channel, grpc.secure_channel)
        self._stub = herald_pb2_grpc.HeraldStub(self._channel)
        self._health = self._channel.unary_unary(*HEALTH_CHECK)

    # --- plumbing -------------------------------------------------------------------

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        idempotent: bool,
        timeout: float | None,
    ) -> _Resp:
        attempts = self._settings.attempts(idempotent, timeout)
        while True:
            try:
                return method(request, timeout=attempts.timeout(), metadata=self._settings.metadata)
            except grpc.RpcError as e:
                delay = attempts.after_failure(e)
            time.sleep(delay)

    def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- publishing -----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> PublishResult:
        """Publish one message to one topic.

        ``data`` is bytes, str (sent as text) or a JSON-serialisable value (sent as
        JSON); see :mod:`herald.payload`. ``ttl`` (seconds or a timedelta) drops the
        message from connection queues once it is that old. With an
        ``idempotency_key`` the call is retried on UNAVAILABLE, and a repeat is
        answered with the original sequence and ``duplicate=True``.
        """
        req = _requests.publish(
            topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        resp = self._unary(
            self._stub.Publish, req, idempotent=idempotency_key is not None, timeout=timeout
        )
        return PublishResult.from_pb(resp)

    def broadcast(
        self,
        topics: Iterable[str],
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> list[PublishResult]:
        """Publish one payload to many topics; one result per topic, in order.

        All topics are checked first: one bad topic and nothing is published
        (:class:`~herald.InvalidArgument`).
        """
        req = _requests.broadcast(
            topics, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        resp = self._unary(
            self._stub.Broadcast, req, idempotent=idempotency_key is not None, timeout=timeout
        )
        return _requests.broadcast_results(resp)

    def publisher(self, *, max_in_flight: int = 1024) -> Publisher:
        """Open a PublishStream; see :class:`~herald.publisher.Publisher`."""
        return Publisher(
            lambda requests: self._stub.PublishStream(requests, metadata=self._settings.metadata),
            max_in_flight,
        )

    # --- subscribe-control ------------------------------------------------------------

    @overload
    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
        timeout: float | None = None,
    ) -> int: ...
    @overload
    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
        timeout: float | None = None,
    ) -> int: ...
    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Put a connection (or every connection of a user) into topics.

        Returns how many connections were reached; :class:`~herald.NotFound` for an
        unknown connection or user.
        """
        req = _requests.subscribe(topics, connection_id, user_id)
        return self._unary(self._stub.Subscribe, req, idempotent=True, timeout=timeout).connections

    @overload
    def subscribe_since(
        self,
        since: Mapping[str, StreamPosition],
        *,
        topics: str | Iterable[str] = (),
        connection_id: str,
        user_id: None = None,
        timeout: float | None = None,
    ) -> SubscribeResult: ...
    @overload
    def subscribe_since(
        self,
        since: Mapping[str, StreamPosition],
        *,
        topics: str | Iterable[str] = (),
        connection_id: None = None,
        user_id: str,
        timeout: float | None = None,
    ) -> SubscribeResult: ...
    def subscribe_since(
        self,
        since: Mapping[str, StreamPosition],
        *,
        topics: str | Iterable[str] = (),
        connection_id: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> SubscribeResult:
        """Put a connection (or every connection of a user) into topics, recovering
        what it missed since the given positions.

        ``since`` maps a topic to the last position the client saw (the ``seq`` and
        ``epoch`` of its last WebSocket message); those topics are subscribed too,
        besides ``topics``. The client is first sent every message after that
        position, in order, then the live ones, with no gap and no duplicate, when
        the topic still keeps them all. The result says per topic whether that
        worked (``recovered``) and where live delivery continues (``positions``);
        the client's ``subscribed`` push carries the same. :class:`~herald.NotFound`
        for an unknown connection or user.
        """
        req = _requests.subscribe_since(since, topics, connection_id, user_id)
        resp = self._unary(self._stub.Subscribe, req, idempotent=True, timeout=timeout)
        return SubscribeResult.from_pb(resp)

    @overload
    def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
        timeout: float | None = None,
    ) -> int: ...
    @overload
    def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
        timeout: float | None = None,
    ) -> int: ...
    def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Take a connection (or every connection of a user) out of topics."""
        req = _requests.unsubscribe(topics, connection_id, user_id)
        return self._unary(
            self._stub.Unsubscribe, req, idempotent=True, timeout=timeout
        ).connections

    @overload
    def disconnect(
        self,
        *,
        connection_id: str,
        user_id: None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
        timeout: float | None = None,
    ) -> int: ...
    @overload
    def disconnect(
        self,
        *,
        connection_id: None = None,
        user_id: str,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
        timeout: float | None = None,
    ) -> int: ...
    def disconnect(
        self,
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Close a connection (or every connection of a user); returns how many.

        ``code`` is a WebSocket close code 4000-4999 (0: 4003 if ``reconnect``
        else 4500); the client gets ``reason`` and ``reconnect`` before the close.
        """
        req = _requests.disconnect(connection_id, user_id, code, reason, reconnect)
        return self._unary(
            self._stub.Disconnect, req, idempotent=False, timeout=timeout
        ).connections

    def control(self, *, max_in_flight: int = 1024) -> ControlStream:
        """Open a Control stream; see :class:`~herald.control.ControlStream`."""
        return ControlStream(
            lambda requests: self._stub.Control(requests, metadata=self._settings.metadata),
            max_in_flight,
        )

    # --- presence ---------------------------------------------------------------------

    def presence(
        self, topic: str, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[Member]:
        """The members of a topic, fetching page after page as the iteration goes.

        ``page_size`` is the members per call (0: the engine's default, at most 10000).
        """
        req = pb.PresenceRequest(topic=topic, limit=page_size)
        while True:
            resp = self._unary(self._stub.Presence, req, idempotent=True, timeout=timeout)
            for m in resp.members:
                yield Member.from_pb(m)
            if not resp.next_cursor:
                return
            req.cursor = resp.next_cursor

    def presence_stats(self, topic: str, *, timeout: float | None = None) -> PresenceStats:
        """Connections and distinct users in a topic."""
        req = pb.PresenceStatsRequest(topic=topic)
        return PresenceStats.from_pb(
            self._unary(self._stub.PresenceStats, req, idempotent=True, timeout=timeout)
        )

    def watch_presence(
        self,
        topics: str | Iterable[str],
        *,
        include_snapshot: bool = True,
        include_connections: bool = False,
        max_reconnects: int | None = None,
    ) -> PresenceWatch:
        """Follow joins and leaves in topics and patterns (``room:*``, ``room:>``).

        Returns an iterator of :class:`~herald.PresenceEvent` that reconnects by
        itself and reports any gap as a ``RESYNC`` event; see :mod:`herald.presence`.
        ``max_reconnects``: consecutive failed attempts before giving up (None: never).
        """
        req = _requests.watch(topics, include_snapshot, include_connections)
        return PresenceWatch(
            lambda: self._stub.WatchPresence(req, metadata=self._settings.metadata),
            self._settings.retry,
            max_reconnects,
        )

    # --- history ----------------------------------------------------------------------

    def history(
        self,
        topic: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        timeout: float | None = None,
    ) -> HistoryPage:
        """A page of a topic's kept messages.

        Oldest first after ``since``; with ``reverse``, newest first before ``since``
        (from the newest without it). ``limit`` 0 means the engine's default (100),
        at most 10000. Page forward by passing the last message's position as the
        next ``since``, backward (``reverse``) the oldest's.
        :class:`~herald.FailedPrecondition` when ``since`` names another epoch.
        """
        req = _requests.history(topic, since, limit, reverse)
        resp = self._unary(self._stub.History, req, idempotent=True, timeout=timeout)
        return HistoryPage.from_pb(resp)

    def remove_history(self, topic: str, *, timeout: float | None = None) -> int:
        """Drop a topic's kept messages; returns how many there were."""
        req = pb.RemoveHistoryRequest(topic=topic)
        resp = self._unary(self._stub.RemoveHistory, req, idempotent=True, timeout=timeout)
        return resp.removed

    # --- node -------------------------------------------------------------------------

    def info(self, *, timeout: float | None = None) -> NodeInfo:
        """Node identity, version, uptime and counters."""
        resp = self._unary(self._stub.Info, pb.InfoRequest(), idempotent=True, timeout=timeout)
        return NodeInfo.from_pb(resp)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """The grpc.health.v1 status of ``service`` ("" for the whole server,
        "herald.v1.Herald" for the API)."""
        req = health_pb2.HealthCheckRequest(service=service)
        resp = self._unary(self._health, req, idempotent=True, timeout=timeout)
        return HealthStatus(resp.status)
