"""What the SDK's streams share.

:class:`SyncStream` and :class:`AsyncStream` are the bases of the six stream
classes (publisher, control stream and presence watch, blocking and asyncio): one
``close()`` / ``cancel()`` and one context manager each.

Control has one shape: every request carries an id chosen by the client and
receives exactly one response with that id. :class:`StreamMux` (threads) and
:class:`AsyncStreamMux` (asyncio) hand back a future per request, send requests in
the order they were submitted, and fail every pending future with the stream's
error if the stream breaks. (The publishers batch messages; see
:mod:`herald.publisher`.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import grpc
import grpc.aio

from herald.errors import Cancelled, HeraldError, from_rpc_error

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Result = TypeVar("Result")
_Result_contra = TypeVar("_Result_contra", contravariant=True)

DEFAULT_MAX_IN_FLIGHT = 1024

_S = TypeVar("_S", bound="SyncStream")
_A = TypeVar("_A", bound="AsyncStream")


class _SyncCore(Protocol):
    def close(self, timeout: float | None = None) -> None: ...
    def cancel(self) -> None: ...


class _AsyncCore(Protocol):
    async def close(self) -> None: ...
    async def cancel(self) -> None: ...


class SyncStream:
    """Base of the blocking streams: ``close()``, ``cancel()`` and ``with``.

    Leaving a ``with`` block closes the stream (even on an exception).
    """

    _core: _SyncCore

    def close(self, timeout: float | None = None) -> None:
        """End the stream gracefully: wait for the answers to everything sent.

        With a ``timeout`` (seconds), cancel the stream when the answers take longer.
        """
        self._core.close(timeout)

    def cancel(self) -> None:
        """End the stream now; unanswered futures fail with :class:`~herald.Cancelled`."""
        self._core.cancel()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStream:
    """Base of the asyncio streams: ``await close()``, ``await cancel()`` and ``async with``.

    Leaving an ``async with`` block closes the stream (even on an exception).
    """

    _core: _AsyncCore

    async def close(self) -> None:
        """End the stream gracefully: wait for the answers to everything sent."""
        await self._core.close()

    async def cancel(self) -> None:
        """End the stream now; unanswered futures fail with :class:`~herald.Cancelled`."""
        await self._core.cancel()

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _closed_error(what: str) -> HeraldError:
    return Cancelled(f"{what} is closed")


class _Future(Protocol[_Result_contra]):
    """What both ``concurrent.futures.Future`` and ``asyncio.Future`` offer."""

    def done(self) -> bool: ...
    def set_result(self, result: _Result_contra, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


def _settle(fut: _Future[Result], result: Result | HeraldError) -> None:
    """Resolve ``fut`` with a response's result, or fail it with its error."""
    try:
        if isinstance(result, HeraldError):
            fut.set_exception(result)
        else:
            fut.set_result(result)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # cancelled by its owner (from another thread) just now


def _fail_all(pending: Iterable[_Future[Result]], err: HeraldError) -> None:
    """Fail every future in ``pending`` that is not done yet with ``err``."""
    for fut in pending:
        _settle(fut, err)


class StreamMux(Generic[Req, Resp, Result]):
    """Thread-based multiplexer for the sync client."""

    def __init__(
        self,
        name: str,
        open_stream: Callable[[Iterator[Req]], Iterator[Resp]],
        parse: Callable[[Resp], tuple[int, Result | HeraldError]],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._name = name
        self._parse = parse
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future[Result]] = {}
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._outbox: queue.SimpleQueue[Req | None] = queue.SimpleQueue()
        self._closed = False
        self._error: HeraldError | None = None
        self._call = open_stream(self._requests())
        self._reader = threading.Thread(target=self._read, name=f"herald-{name}", daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[Req]:
        while True:
            req = self._outbox.get()
            if req is None:
                return
            yield req

    def submit(self, build: Callable[[int], Req]) -> concurrent.futures.Future[Result]:
        """Send ``build(id)`` and return the future of its result."""
        self._slots.acquire()
        fut: concurrent.futures.Future[Result] = concurrent.futures.Future()
        fut.add_done_callback(lambda _: self._slots.release())
        with self._lock:
            if self._error is not None or self._closed:
                err = self._error or _closed_error(self._name)
                fut.set_exception(err)
                raise err
            rid = next(self._ids)
            try:
                req = build(rid)
            except BaseException:
                fut.cancel()
                raise
            self._pending[rid] = fut
            self._outbox.put(req)
        return fut

    def _read(self) -> None:
        err: HeraldError
        try:
            for resp in self._call:
                rid, result = self._parse(resp)
                with self._lock:
                    fut = self._pending.pop(rid, None)
                if fut is not None:
                    _settle(fut, result)
            err = _closed_error(self._name)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
        self._fail_pending(err)

    def _fail_pending(self, err: HeraldError) -> None:
        with self._lock:
            if self._error is None and not self._closed:
                self._error = err
            pending, self._pending = self._pending, {}
        self._outbox.put(None)  # release the thread gRPC uses to send requests
        _fail_all(pending.values(), err)

    def close(self, timeout: float | None = None) -> None:
        """Stop sending, wait for the answers to everything sent, end the stream."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._outbox.put(None)
        self._reader.join(timeout)
        if self._reader.is_alive():
            self.cancel()

    def cancel(self) -> None:
        """Abort the stream now; pending futures fail with :class:`Cancelled`."""
        with self._lock:
            self._closed = True
        self._outbox.put(None)
        if isinstance(self._call, grpc.Future):
            self._call.cancel()
        self._reader.join()


class AsyncStreamMux(Generic[Req, Resp, Result]):
    """asyncio multiplexer for the asyncio client. Create it inside a running loop."""

    def __init__(
        self,
        name: str,
        call: grpc.aio.StreamStreamCall[Req, Resp],
        parse: Callable[[Resp], tuple[int, Result | HeraldError]],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._name = name
        self._call = call
        self._parse = parse
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[Result]] = {}
        self._slots = asyncio.BoundedSemaphore(max_in_flight)
        self._closed = False
        self._error: HeraldError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def submit(self, build: Callable[[int], Req]) -> asyncio.Future[Result]:
        """Send ``build(id)``; return (once it is written) the future of its result."""
        await self._slots.acquire()
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _: self._slots.release())
        try:
            async with self._write_lock:
                if self._error is not None or self._closed:
                    raise self._error or _closed_error(self._name)
                rid = next(self._ids)
                req = build(rid)
                self._pending[rid] = fut
                try:
                    await self._call.write(req)
                except grpc.RpcError as e:
                    self._pending.pop(rid, None)
                    raise from_rpc_error(e) from e
                except asyncio.InvalidStateError as e:  # the call already finished
                    self._pending.pop(rid, None)
                    raise self._error or _closed_error(self._name) from e
        except BaseException:
            fut.cancel()
            raise
        return fut

    async def _read(self) -> None:
        err: HeraldError
        try:
            async for resp in self._call:
                rid, result = self._parse(resp)
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    _settle(fut, result)
            err = _closed_error(self._name)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
        except asyncio.CancelledError:
            err = _closed_error(self._name)
        if self._error is None and not self._closed:
            self._error = err
        pending, self._pending = self._pending, {}
        _fail_all(pending.values(), err)

    async def close(self) -> None:
        """Stop sending, wait for the answers to everything sent, end the stream."""
        async with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self._error is None:
                try:
                    await self._call.done_writing()
                except (grpc.RpcError, asyncio.InvalidStateError):
                    pass
        await self._reader

    async def cancel(self) -> None:
        """Abort the stream now; pending futures fail with :class:`Cancelled`."""
        self._closed = True
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
