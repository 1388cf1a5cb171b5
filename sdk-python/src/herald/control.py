"""The Control stream: subscribe / unsubscribe / disconnect commands over one stream.

Each command returns a future of the number of connections it reached; a failing
command (for example :class:`~herald.NotFound` for an unknown connection) fails
only its own future and the stream goes on::

    with client.control() as ctl:
        joined = ctl.subscribe(["room:vip"], user_id="alice")
        kicked = ctl.disconnect(connection_id=conn_id, reason="bye")
    print(joined.result(), kicked.result())
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import overload

import grpc.aio

from herald import _requests
from herald._streams import (
    DEFAULT_MAX_IN_FLIGHT,
    AsyncStream,
    AsyncStreamMux,
    StreamMux,
    SyncStream,
)
from herald.v1 import herald_pb2 as pb

_Call = grpc.aio.StreamStreamCall[pb.ControlRequest, pb.ControlResponse]


class ControlStream(SyncStream):
    """A Control stream for the sync client; get one from ``Client.control()``."""

    def __init__(
        self,
        open_stream: Callable[[Iterator[pb.ControlRequest]], Iterator[pb.ControlResponse]],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._core = self._mux = StreamMux[pb.ControlRequest, pb.ControlResponse, int](
            "control stream", open_stream, _requests.control_result, max_in_flight
        )

    def _send(self, command: _requests.ControlCommand) -> concurrent.futures.Future[int]:
        return self._mux.submit(lambda rid: _requests.control_request(rid, command))

    @overload
    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
    ) -> concurrent.futures.Future[int]: ...
    @overload
    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
    ) -> concurrent.futures.Future[int]: ...
    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
    ) -> concurrent.futures.Future[int]:
        """Put a connection, or every connection of a user, into topics."""
        return self._send(_requests.subscribe(topics, connection_id, user_id))

    @overload
    def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
    ) -> concurrent.futures.Future[int]: ...
    @overload
    def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
    ) -> concurrent.futures.Future[int]: ...
    def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
    ) -> concurrent.futures.Future[int]:
        """Take a connection, or every connection of a user, out of topics."""
        return self._send(_requests.unsubscribe(topics, connection_id, user_id))

    @overload
    def disconnect(
        self,
        *,
        connection_id: str,
        user_id: None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
    ) -> concurrent.futures.Future[int]: ...
    @overload
    def disconnect(
        self,
        *,
        connection_id: None = None,
        user_id: str,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
    ) -> concurrent.futures.Future[int]: ...
    def disconnect(
        self,
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
    ) -> concurrent.futures.Future[int]:
        """Close a connection, or every connection of a user."""
        return self._send(_requests.disconnect(connection_id, user_id, code, reason, reconnect))


class AsyncControlStream(AsyncStream):
    """A Control stream for the asyncio client; get one from ``AsyncClient.control()``.

    A command takes two steps: ``await ctl.subscribe(...)`` writes it (waiting only
    while ``max_in_flight`` commands are unanswered) and returns an ``asyncio.Future``;
    awaiting that future gives the number of connections reached or raises the
    command's error. Send a batch, then collect the answers::

        async with client.control() as ctl:
            joined = await ctl.subscribe("room:vip", user_id="alice")
            kicked = await ctl.disconnect(connection_id=conn_id, reason="bye")
        print(await joined, await kicked)

    For one command, ``await client.subscribe(...)`` (unary) returns the count at once.
    """

    def __init__(self, call: _Call, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._core = self._mux = AsyncStreamMux[pb.ControlRequest, pb.ControlResponse, int](
            "control stream", call, _requests.control_result, max_in_flight
        )

    async def _send(self, command: _requests.ControlCommand) -> asyncio.Future[int]:
        return await self._mux.submit(lambda rid: _requests.control_request(rid, command))

    @overload
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
    ) -> asyncio.Future[int]: ...
    @overload
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
    ) -> asyncio.Future[int]: ...
    async def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
    ) -> asyncio.Future[int]:
        """Put a connection, or every connection of a user, into topics."""
        return await self._send(_requests.subscribe(topics, connection_id, user_id))

    @overload
    async def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str,
        user_id: None = None,
    ) -> asyncio.Future[int]: ...
    @overload
    async def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: None = None,
        user_id: str,
    ) -> asyncio.Future[int]: ...
    async def unsubscribe(
        self,
        topics: str | Iterable[str],
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
    ) -> asyncio.Future[int]:
        """Take a connection, or every connection of a user, out of topics."""
        return await self._send(_requests.unsubscribe(topics, connection_id, user_id))

    @overload
    async def disconnect(
        self,
        *,
        connection_id: str,
        user_id: None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
    ) -> asyncio.Future[int]: ...
    @overload
    async def disconnect(
        self,
        *,
        connection_id: None = None,
        user_id: str,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
    ) -> asyncio.Future[int]: ...
    async def disconnect(
        self,
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
        code: int = 0,
        reason: str = "",
        reconnect: bool = False,
    ) -> asyncio.Future[int]:
        """Close a connection, or every connection of a user."""
        return await self._send(
            _requests.disconnect(connection_id, user_id, code, reason, reconnect)
        )
