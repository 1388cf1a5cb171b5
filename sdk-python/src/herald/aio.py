"""The asyncio client: the same calls as :class:`herald.Client`, awaitable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias, TypeVar, overload

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from herald import _requests, payload
from herald.config import DEFAULT_TIMEOUT, HEALTH_CHECK, RetryPolicy, Settings
from herald.control import AsyncControlStream
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
from herald.presence import AsyncPresenceWatch
from herald.publisher import AsyncPublisher
from herald.v1 import herald_pb2 as pb
from herald.v1 import herald_pb2_grpc

if TYPE_CHECKING:
    from herald.v1.herald_pb2_grpc import HeraldAsyncStub

_HealthCheck: TypeAlias = grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AsyncClient:
    """An asyncio client for one Herald engine node (built on ``grpc.aio``).

    ::

        async with herald.AsyncClient("127.0.0.1:50051") as client:
            await client.publish("room:general", {"text": "hi"})

    Takes the same arguments as :class:`herald.Client`. Its gRPC channel is opened
    on the first call, in the running event loop; use one client per event loop.
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
        # The channel is made on first use, so that it belongs to the event loop
        # that runs the calls (the client itself may be made outside any loop).
        self._channel: grpc.aio.Channel | None = None
        self._stub_: HeraldAsyncStub | None = None
        self._health_: _HealthCheck | None = None

    def _connect(self) -> tuple[HeraldAsyncStub, _HealthCheck]:
        if self._stub_ is None or self._health_ is None:
            channel = self._settings.channel(grpc.aio.insecure_channel, grpc.aio.secure_channel)
            self._channel = channel
            self._stub_ = herald_pb2_grpc.HeraldStub(channel)
            self._health_ = channel.unary_unary(*HEALTH_CHECK)
        return self._stub_, self._health_

    @property
    def _stub(self) -> HeraldAsyncStub:
        return self._connect()[0]

    @property
    def _health(self) -> _HealthCheck:
        return self._connect()[1]

    # --- plumbing -------------------------------------------------------------------

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        idempotent: bool,
        timeout: float | None,
    ) -> _Resp:
        attempts = self._settings.attempts(idempotent, timeout)
        while True:
            try:
                return await method(
                    request, timeout=attempts.timeout(), metadata=self._settings.metadata
                )
            except grpc.RpcError as e:
                delay = attempts.after_failure(e)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        channel, self._channel, self._stub_, self._health_ = self._channel, None, None, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- publishing -----------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> PublishResult:
        """Publish one message to one topic (see :meth:`herald.Client.publish`)."""
        req = _requests.publish(
            topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        resp = await self._unary(
            self._stub.Publish, req, idempotent=idempotency_key is not None, timeout=timeout
        )
        return PublishResult.from_pb(resp)

    async def broadcast(
        self,
        topics: Iterable[str],
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> list[PublishResult]:
        """Publish one payload to many topics (see :meth:`herald.Client.broadcast`)."""
        req = _requests.broadcast(
            topics, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        resp = await self._unary(
            self._stub.Broadcast, req, idempotent=idempotency_key is not None, timeout=timeout
        )
        return _requests.broadcast_results(resp)

    def publisher(self, *, max_in_flight: int = 1024) -> AsyncPublisher:
        """Open a PublishStream; see :class:`~herald.publisher.AsyncPublisher`."""
        return AsyncPublisher(
            self._stub.PublishStream(metadata=self._settings.metadata), max_in_flight
        )

    # --- subscribe-control ------------------------------------------------------------

    @overload
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
        timeout: float | None = None,
    ) -> int: ...
    @overload
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
        timeout: float | None = None,
    ) -> int: ...
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Put a connection (or every connection of a user) into topics."""
        req = _requests.subscribe(topics, connection_id, user_id)
        resp = await self._unary(self._stub.Subscribe, req, idempotent=True, timeout=timeout)
        return resp.connections

    @overload
    async def subscribe_since(
        self,
        since: Mapping[str, StreamPosition],
        *,
        topics: str | Iterable[str] = (),
        connection_id: str,
        user_id: None = None,
        timeout: float | None = None,
    ) -> SubscribeResult: ...
    @overload
    async def subscribe_since(
        self,
        since: Mapping[str, StreamPosition],
        *,
        topics: str | Iterable[str] = (),
        connection_id: None = None,
        user_id: str,
        timeout: float | None = None,
    ) -> SubscribeResult: ...
    async def subscribe_since(
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
        resp = await self._unary(self._stub.Subscribe, req, idempotent=True, timeout=timeout)
        return SubscribeResult.from_pb(resp)

    @overload
    async def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
        timeout: float | None = None,
    ) -> int: ...
    @overload
    async def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
        timeout: float | None = None,
    ) -> int: ...
    async def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Take a connection (or every connection of a user) out of topics."""
        req = _requests.unsubscribe(topics, connection_id, user_id)
        resp = await self._unary(self._stub.Unsubscribe, req, idempotent=True, timeout=timeout)
        return resp.connections

    @overload
    async def disconnect(
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
    async def disconnect(
        self,
        *,
        connection_id: None = None,
        user_id: str,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
        timeout: float | None = None,
    ) -> int: ...
    async def disconnect(
        self,
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Close a connection (or every connection of a user); returns how many."""
        req = _requests.disconnect(connection_id, user_id, code, reason, reconnect)
        resp = await self._unary(self._stub.Disconnect, req, idempotent=False, timeout=timeout)
        return resp.connections

    def control(self, *, max_in_flight: int = 1024) -> AsyncControlStream:
        """Open a Control stream; see :class:`~herald.control.AsyncControlStream`."""
        return AsyncControlStream(
            self._stub.Control(metadata=self._settings.metadata), max_in_flight
        )

    # --- presence ---------------------------------------------------------------------

    async def presence(
        self, topic: str, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Member]:
        """The members of a topic, fetching page after page as the iteration goes."""
        req = pb.PresenceRequest(topic=topic, limit=page_size)
        while True:
            resp = await self._unary(self._stub.Presence, req, idempotent=True, timeout=timeout)
            for m in resp.members:
                yield Member.from_pb(m)
            if not resp.next_cursor:
                return
            req.cursor = resp.next_cursor

    async def presence_stats(self, topic: str, *, timeout: float | None = None) -> PresenceStats:
        """Connections and distinct users in a topic."""
        req = pb.PresenceStatsRequest(topic=topic)
        return PresenceStats.from_pb(
            await self._unary(self._stub.PresenceStats, req, idempotent=True, timeout=timeout)
        )

    def watch_presence(
        self,
        topics: str | Iterable[str],
        *,
        include_snapshot: bool = True,
        include_connections: bool = False,
        max_reconnects: int | None = None,
    ) -> AsyncPresenceWatch:
        """Follow joins and leaves (see :meth:`herald.Client.watch_presence`)."""
        req = _requests.watch(topics, include_snapshot, include_connections)
        return AsyncPresenceWatch(
            lambda: self._stub.WatchPresence(req, metadata=self._settings.metadata),
            self._settings.retry,
            max_reconnects,
        )

    # --- history ----------------------------------------------------------------------

    async def history(
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
        resp = await self._unary(self._stub.History, req, idempotent=True, timeout=timeout)
        return HistoryPage.from_pb(resp)

    async def remove_history(self, topic: str, *, timeout: float | None = None) -> int:
        """Drop a topic's kept messages; returns how many there were."""
        req = pb.RemoveHistoryRequest(topic=topic)
        resp = await self._unary(self._stub.RemoveHistory, req, idempotent=True, timeout=timeout)
        return resp.removed

    # --- node -------------------------------------------------------------------------

    async def info(self, *, timeout: float | None = None) -> NodeInfo:
        """Node identity, version, uptime and counters."""
        resp = await self._unary(
            self._stub.Info, pb.InfoRequest(), idempotent=True, timeout=timeout
        )
        return NodeInfo.from_pb(resp)

    async def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """The grpc.health.v1 status of ``service`` ("" for the whole server)."""
        req = health_pb2.HealthCheckRequest(service=service)
        resp = await self._unary(self._health, req, idempotent=True, timeout=timeout)
        return HealthStatus(resp.status)
