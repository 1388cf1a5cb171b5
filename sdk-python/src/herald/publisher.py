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
waits for the answers to everything sent; ``cancel()`` ends the stream at once and
fails every unanswered future with :class:`~herald.Cancelled`.

``publish`` only queues the message. One sender writes whatever is queued when the
stream is ready for its next write as one request (up to 1025 messages: the
request's ``message`` and its ``more``, and up to 256 KiB of them, so that a request
stays within the engine's gRPC message limit), and the engine answers each message
of it in one response. So a busy producer sends many messages per stream write while a
lone message still goes out at once. ``max_in_flight`` bounds the messages queued
or waiting for their answer: ``publish`` waits while that many are.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import grpc
import grpc.aio

from herald import _futures, _requests, payload
from herald._streams import (
    DEFAULT_MAX_IN_FLIGHT,
    AsyncStream,
    SyncStream,
    _closed_error,
    _fail_all,
    _settle,
)
from herald.errors import HeraldError, from_rpc_error
from herald.models import PublishResult
from herald.v1 import herald_pb2 as pb

_Call = grpc.aio.StreamStreamCall[pb.PublishStreamRequest, pb.PublishStreamResponse]
_Open = Callable[[Iterator[pb.PublishStreamRequest]], Iterator[pb.PublishStreamResponse]]

_NAME = "publisher"


def _check_window(max_in_flight: int) -> None:
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")


_F = TypeVar("_F")


class _Queue(Generic[_F]):
    """The messages queued and not sent yet, in publish order, with their futures and
    their sizes (see ``_requests.publish_sized``)."""

    __slots__ = ("msgs", "futs", "sizes", "bytes")

    def __init__(self) -> None:
        self.msgs: list[pb.PublishRequest] = []
        self.futs: list[_F] = []
        self.sizes: list[int] = []
        self.bytes = 0  # sum(self.sizes)

    def push(self, msg: pb.PublishRequest, size: int, fut: _F) -> None:
        self.msgs.append(msg)
        self.futs.append(fut)
        self.sizes.append(size)
        self.bytes += size

    def take(self) -> tuple[list[pb.PublishRequest], list[_F]]:
        """The messages of the next request (at least one) and their futures, off the
        front: everything queued when it fits in one request, else as much as does."""
        if (
            len(self.msgs) <= _requests.MAX_STREAM_BATCH
            and self.bytes <= _requests.MAX_STREAM_BATCH_BYTES
        ):
            msgs, futs = self.msgs, self.futs
            self.msgs, self.futs, self.sizes, self.bytes = [], [], [], 0
            return msgs, futs
        n, size = _requests.stream_batch(self.sizes)
        msgs, futs = self.msgs[:n], self.futs[:n]
        del self.msgs[:n], self.futs[:n], self.sizes[:n]
        self.bytes -= size
        return msgs, futs

    def clear(self) -> list[_F]:
        """Empty the queue; returns the futures it held."""
        futs = self.futs
        self.msgs, self.futs, self.sizes, self.bytes = [], [], [], 0
        return futs


class _Batcher:
    """The blocking publisher's machinery: a queue, one sender, one reader thread.

    gRPC's request-consuming thread pulls requests from :meth:`_requests` one write
    at a time; each pull takes everything queued (up to MAX_STREAM_BATCH messages and
    MAX_STREAM_BATCH_BYTES). The reader settles the futures of each answered request
    in order.
    """

    def __init__(self, open_stream: _Open, max_in_flight: int) -> None:
        _check_window(max_in_flight)
        self._max = max_in_flight
        self._new_future = _futures.factory()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # publishers waiting for the window
        self._work = threading.Condition(self._lock)  # the sender waiting for messages
        self._queue: _Queue[concurrent.futures.Future[PublishResult]] = _Queue()
        self._sent: dict[int, list[concurrent.futures.Future[PublishResult]]] = {}
        self._in_flight = 0  # queued + sent, not yet answered
        self._next_seq = 1
        self._closed = False  # no more publish(); the sender drains the queue and ends
        self._over = False  # the stream ended: nothing is sent any more
        self._error: HeraldError | None = None
        self._call = open_stream(self._requests())
        self._reader = threading.Thread(target=self._read, name="herald-publisher", daemon=True)
        self._reader.start()

    def publish(
        self, msg: pb.PublishRequest, size: int
    ) -> concurrent.futures.Future[PublishResult]:
        fut: concurrent.futures.Future[PublishResult] = self._new_future()
        with self._lock:
            while self._in_flight >= self._max and not (self._closed or self._over):
                self._room.wait()
            if self._closed or self._over:
                raise self._error or _closed_error(_NAME)
            self._in_flight += 1
            if not self._queue.msgs:
                self._work.notify()
            self._queue.push(msg, size, fut)
        return fut

    def _requests(self) -> Iterator[pb.PublishStreamRequest]:
        """The requests, as gRPC asks for them; ends when closed and drained."""
        queue = self._queue
        while True:
            with self._lock:
                while not queue.msgs and not (self._closed or self._over):
                    self._work.wait()
                if self._over or not queue.msgs:
                    return
                msgs, futs = queue.take()
                seq = self._next_seq
                self._next_seq += len(msgs)
                self._sent[seq] = futs
            yield _requests.publish_stream_request(seq, msgs)

    def _read(self) -> None:
        err: HeraldError
        try:
            for resp in self._call:
                with self._lock:
                    futs = self._sent.pop(resp.client_seq, None)
                if futs is None:
                    continue
                for fut, result in zip(
                    futs, _requests.publish_stream_results(resp, len(futs)), strict=True
                ):
                    _settle(fut, result)
                with self._lock:
                    self._in_flight -= len(futs)
                    self._room.notify(len(futs))
            err = _closed_error(_NAME)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
        except Exception as e:  # never leave futures unanswered, whatever went wrong
            err = HeraldError(f"publisher stream failed: {e!r}")
        self._end(err)

    def _end(self, err: HeraldError) -> None:
        """The stream is over: fail everything queued or unanswered with ``err``."""
        with self._lock:
            self._over = True
            if self._error is None and not self._closed:
                self._error = err
            pending = [f for futs in self._sent.values() for f in futs] + self._queue.clear()
            self._sent = {}
            self._in_flight = 0
            self._work.notify_all()
            self._room.notify_all()
        _fail_all(pending, err)

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._room.notify_all()
        self._reader.join(timeout)
        if self._reader.is_alive():
            self.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()
            self._room.notify_all()
        if isinstance(self._call, grpc.Future):
            self._call.cancel()
        self._reader.join()


class Publisher(SyncStream):
    """A PublishStream for the blocking client; get one from ``Client.publisher()``.

    Safe to use from several threads; messages from one thread keep their order.
    """

    def __init__(self, open_stream: _Open, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._core = self._batcher = _Batcher(open_stream, max_in_flight)

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

        Blocks while ``max_in_flight`` messages are queued or waiting for their answer.
        Raises :class:`~herald.Cancelled` after ``close()``, and the stream's error
        once the stream broke.
        """
        msg, size = _requests.publish_sized(
            topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        return self._batcher.publish(msg, size)


class _AsyncBatcher:
    """The asyncio publisher's machinery: a queue, one writer task, one reader task."""

    def __init__(self, call: _Call, max_in_flight: int) -> None:
        _check_window(max_in_flight)
        self._call = call
        self._max = max_in_flight
        self._loop = asyncio.get_running_loop()
        self._queue: _Queue[asyncio.Future[PublishResult]] = _Queue()
        self._sent: dict[int, list[asyncio.Future[PublishResult]]] = {}
        self._in_flight = 0
        self._room: collections.deque[asyncio.Future[None]] = collections.deque()
        self._wake: asyncio.Future[None] | None = None  # the idle writer
        self._next_seq = 1
        self._closed = False
        self._over = False
        self._error: HeraldError | None = None
        self._writer = self._loop.create_task(self._write())
        self._reader = self._loop.create_task(self._read())

    async def publish(self, msg: pb.PublishRequest, size: int) -> asyncio.Future[PublishResult]:
        while self._in_flight >= self._max and not (self._closed or self._over):
            waiter = self._loop.create_future()
            self._room.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._make_room()  # woken, then cancelled: pass the wake on
                raise
        if self._closed or self._over:
            raise self._error or _closed_error(_NAME)
        fut: asyncio.Future[PublishResult] = self._loop.create_future()
        self._in_flight += 1
        self._queue.push(msg, size, fut)
        self._wake_writer()
        return fut

    def _wake_writer(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _make_room(self) -> None:
        """Wake as many waiting publishers as there is room for (all once it is over)."""
        n = len(self._room) if self._closed or self._over else self._max - self._in_flight
        while n > 0 and self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    async def _write(self) -> None:
        queue = self._queue
        while True:
            while not queue.msgs and not (self._closed or self._over):
                self._wake = self._loop.create_future()
                await self._wake
            if self._over:
                return
            if not queue.msgs:  # closed and drained
                try:
                    await self._call.done_writing()
                except (grpc.RpcError, asyncio.InvalidStateError):
                    pass
                return
            msgs, futs = queue.take()
            seq = self._next_seq
            self._next_seq += len(msgs)
            self._sent[seq] = futs
            try:
                await self._call.write(_requests.publish_stream_request(seq, msgs))
            except (grpc.RpcError, asyncio.InvalidStateError):
                return  # the call is over: the reader fails what is pending

    async def _read(self) -> None:
        err: HeraldError
        try:
            async for resp in self._call:
                futs = self._sent.pop(resp.client_seq, None)
                if futs is None:
                    continue
                for fut, result in zip(
                    futs, _requests.publish_stream_results(resp, len(futs)), strict=True
                ):
                    _settle(fut, result)
                self._in_flight -= len(futs)
                self._make_room()
            err = _closed_error(_NAME)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
        except asyncio.CancelledError:
            err = _closed_error(_NAME)
        except Exception as e:  # never leave futures unanswered, whatever went wrong
            err = HeraldError(f"publisher stream failed: {e!r}")
        self._over = True
        if self._error is None and not self._closed:
            self._error = err
        pending = [f for futs in self._sent.values() for f in futs] + self._queue.clear()
        self._sent = {}
        self._in_flight = 0
        # The writer has nothing left to do; a write to a cancelled call can hang.
        self._writer.cancel()
        self._make_room()
        _fail_all(pending, err)

    async def close(self) -> None:
        self._closed = True
        self._wake_writer()
        self._make_room()
        await asyncio.gather(self._writer, return_exceptions=True)
        await asyncio.gather(self._reader, return_exceptions=True)

    async def cancel(self) -> None:
        self._closed = True
        self._call.cancel()
        self._writer.cancel()
        self._make_room()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)


class AsyncPublisher(AsyncStream):
    """A PublishStream for the asyncio client; get one from ``AsyncClient.publisher()``.

    ``await pub.publish(...)`` queues the message and returns an ``asyncio.Future``
    of its result (it waits only while ``max_in_flight`` messages are unanswered)::

        async with client.publisher() as pub:
            fut = await pub.publish("room:general", {"text": "hi"})
        print((await fut).sequence)

    Make it inside a running event loop (``AsyncClient.publisher()`` does).
    """

    def __init__(self, call: _Call, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._core = self._batcher = _AsyncBatcher(call, max_in_flight)

    async def publish(
        self,
        topic: str,
        data: payload.Payload,
        *,
        ttl: payload.TTL | None = None,
        idempotency_key: str | None = None,
        content_type: str | None = None,
    ) -> asyncio.Future[PublishResult]:
        """Queue one message; return the future of its :class:`PublishResult`.

        Raises :class:`~herald.Cancelled` after ``close()``, and the stream's error
        once the stream broke.
        """
        msg, size = _requests.publish_sized(
            topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
        )
        return await self._batcher.publish(msg, size)
