"""Streaming publish (the PublishStream RPC): one future per message, order kept.

::

    with client.publisher() as pub:
        futures = [pub.publish("prices:EUR-USD", {"bid": 1.08 + i / 1e4}) for i in range(100)]
    print([f.result().sequence for f in futures])

Messages are sent in the order ``publish`` is called, and the engine applies them
in that order, so the order within a topic is kept. A refused message fails only
its own future (with the matching :class:`~herald.HeraldError`); the stream goes on.
If the stream itself breaks, every pending future fails with the stream's error
and later ``publish`` calls raise it. Leaving the ``with`` block (or ``close()``)
waits for the answers to everything sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from types import TracebackType

import grpc.aio

from herald import _requests, payload
from herald._streams import DEFAULT_MAX_IN_FLIGHT, AsyncStreamMux, StreamMux
from herald.models import PublishResult
from herald.v1 import herald_pb2 as pb

_Call = grpc.aio.StreamStreamCall[pb.PublishStreamRequest, pb.PublishStreamResponse]


class Publisher:
    """A PublishStream for the sync client; get one from ``Client.publisher()``."""

    def __init__(
        self,
        open_stream: Callable[
            [Iterator[pb.PublishStreamRequest]], Iterator[pb.PublishStreamResponse]
        ],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._mux: StreamMux[pb.PublishStreamRequest, pb.PublishStreamResponse, PublishResult]
        self._mux = StreamMux(
            "publisher", open_stream, _requests.publish_stream_result, max_in_flight
        )

    def publish(
        self,
        topic: str,
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
    ) -> concurrent.futures.Future[PublishResult]:
        """Queue one message; the future resolves with its :class:`PublishResult`.

        Blocks while ``max_in_flight`` messages are waiting for their answer.
        """
        msg = _requests.publish(
            topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        return self._mux.submit(lambda seq: _requests.publish_stream_request(seq, msg))

    def close(self, timeout: float | None = None) -> None:
        """Wait for the answers to everything sent, then end the stream."""
        self._mux.close(timeout)

    def cancel(self) -> None:
        """End the stream now; unanswered futures fail with :class:`~herald.Cancelled`."""
        self._mux.cancel()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPublisher:
    """A PublishStream for the asyncio client; get one from ``AsyncClient.publisher()``.

    ``await pub.publish(...)`` returns once the message is written, with an
    ``asyncio.Future`` of its result::

        async with client.publisher() as pub:
            fut = await pub.publish("room:general", {"text": "hi"})
        print((await fut).sequence)
    """

    def __init__(self, call: _Call, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._mux: AsyncStreamMux[pb.PublishStreamRequest, pb.PublishStreamResponse, PublishResult]
        self._mux = AsyncStreamMux(
            "publisher", call, _requests.publish_stream_result, max_in_flight
        )

    async def publish(
        self,
        topic: str,
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
    ) -> asyncio.Future[PublishResult]:
        """Send one message; return the future of its :class:`PublishResult`."""
        msg = _requests.publish(
            topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        return await self._mux.submit(lambda seq: _requests.publish_stream_request(seq, msg))

    async def close(self) -> None:
        """Wait for the answers to everything sent, then end the stream."""
        await self._mux.close()

    async def cancel(self) -> None:
        """End the stream now; unanswered futures fail with :class:`~herald.Cancelled`."""
        await self._mux.cancel()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
