"""Watching presence (the WatchPresence RPC) without silently losing events.

:class:`PresenceWatch` (sync iterator) and :class:`AsyncPresenceWatch` (async
iterator) yield :class:`~herald.PresenceEvent` values. When the stream drops
(engine restart, network failure) they reopen it with exponential backoff; when
the engine says the watcher fell behind (a ``RESYNC`` event) they pass that event
on and reopen the stream at once (with backoff if it keeps happening). The stream
is opened when the watch is made, so it covers everything from then on.

Whenever events may have been missed the caller sees a ``RESYNC`` event first
(``local=True`` when the SDK made it after a reconnect), then, if a snapshot was
asked for, the current members again as ``SNAPSHOT`` events and one
``SNAPSHOT_END``. A caller that drops its view on ``RESYNC`` and rebuilds it from
what follows is never silently wrong.

Errors that retrying cannot fix (INVALID_ARGUMENT for a bad pattern,
UNIMPLEMENTED, ...) end the iteration with the matching :class:`~herald.HeraldError`;
so does running out of ``max_reconnects`` consecutive failed attempts. The error is
raised once; the iteration is over after it.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import grpc.aio

from herald._streams import AsyncStream, SyncStream
from herald.config import RetryPolicy, log
from herald.errors import HeraldError, Unavailable, from_rpc_error
from herald.models import PresenceEvent, PresenceEventKind
from herald.v1 import herald_pb2 as pb

#: Codes after which the watch reopens the stream (besides a stream that just ends).
#: RESOURCE_EXHAUSTED is how the engine ends the stream of a watcher that fell behind.
RECONNECT_ON = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

#: RESYNCs closer together than this (seconds) make the watch back off before reopening.
RESYNC_WINDOW = 10.0

_LOCAL_RESYNC = PresenceEvent(kind=PresenceEventKind.RESYNC, local=True)


class _Reconnects:
    """Decides, after the stream was lost, whether and when to reopen it."""

    def __init__(self, policy: RetryPolicy, max_reconnects: int | None) -> None:
        self._policy = policy
        self._max = max_reconnects
        self._failures = 0
        self._resyncs = 0
        self._last_resync = -RESYNC_WINDOW
        #: When (``time.monotonic()``) the stream may be reopened.
        self.reopen_at = 0.0
        # Whether events were handed out since the last (re)start: only then can the
        # caller's view be stale and a RESYNC be needed.
        self.dirty = False

    def on_event(self, ev: PresenceEvent) -> bool:
        """Record an event; True for an engine RESYNC: drop the stream, reopen it later.

        The first RESYNC reopens at once; RESYNCs in quick succession (a watcher
        that keeps falling behind) back off like failures do.
        """
        self._failures = 0
        if ev.kind != PresenceEventKind.RESYNC:
            self.dirty = True
            return False
        self.dirty = False
        now = time.monotonic()
        recent = now - self._last_resync < RESYNC_WINDOW
        self._resyncs = self._resyncs + 1 if recent else 1
        self._last_resync = now
        delay = 0.0 if self._resyncs == 1 else self._policy.backoff(self._resyncs - 2)
        log.warning(
            "presence watcher fell behind (RESYNC from node %s); starting over in %.2fs",
            ev.node_id,
            delay,
        )
        self.reopen_at = now + delay
        return True

    def on_lost(self, err: HeraldError | None) -> PresenceEvent | None:
        """Set when to reopen; return the local RESYNC to hand out first, if one is due.

        Raises ``err`` (or :class:`Unavailable`) when reopening is not worth it.
        """
        if err is not None and err.code not in RECONNECT_ON:
            raise err
        self._failures += 1
        if self._max is not None and self._failures > self._max:
            raise err or Unavailable("presence watch stream ended")
        resync, self.dirty = self.dirty, False
        delay = self._policy.backoff(self._failures - 1)
        log.warning(
            "presence watch stream lost (%s); reopening in %.2fs (attempt %d)",
            err or "stream ended",
            delay,
            self._failures,
        )
        self.reopen_at = time.monotonic() + delay
        return _LOCAL_RESYNC if resync else None


class PresenceWatch(SyncStream):
    """Sync iterator over presence events; get one from ``Client.watch_presence()``.

    Use it in a ``for`` loop; ``close()`` (from any thread) or leaving a ``with``
    block ends it.
    """

    def __init__(
        self,
        open_stream: Callable[[], Iterator[pb.PresenceEvent]],
        policy: RetryPolicy,
        max_reconnects: int | None,
    ) -> None:
        self._open = open_stream
        self._reconnects = _Reconnects(policy, max_reconnects)
        self._queue: collections.deque[PresenceEvent] = collections.deque()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        # Open now: the watch covers what happens from here on, iterated or not.
        self._call: Iterator[pb.PresenceEvent] | None = open_stream()

    def __iter__(self) -> PresenceWatch:
        return self

    def __next__(self) -> PresenceEvent:
        while True:
            if self._closed.is_set():
                raise StopIteration
            if self._queue:
                return self._queue.popleft()
            call = self._ensure_call()
            err: HeraldError | None = None
            try:
                ev = PresenceEvent.from_pb(next(call))
            except StopIteration:
                pass
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            else:
                if self._reconnects.on_event(ev):
                    self._drop_call()
                return ev
            self._drop_call()
            if self._closed.is_set():
                raise StopIteration
            try:
                resync = self._reconnects.on_lost(err)
            except HeraldError:
                self._closed.set()  # a final error ends the iteration
                raise
            if resync is not None:
                self._queue.append(resync)

    def _ensure_call(self) -> Iterator[pb.PresenceEvent]:
        if self._call is None and self._closed.wait(self._reconnects.reopen_at - time.monotonic()):
            raise StopIteration
        with self._lock:
            if self._closed.is_set():  # close() won the race: open nothing
                raise StopIteration
            if self._call is None:
                self._call = self._open()
            return self._call

    def _drop_call(self) -> None:
        with self._lock:
            call, self._call = self._call, None
        if isinstance(call, grpc.Future):
            call.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Stop watching; a blocked ``next()`` in another thread ends the iteration.

        (``timeout`` is accepted for symmetry with the other streams: nothing waits.)
        """
        self._closed.set()
        self._drop_call()

    def cancel(self) -> None:
        """The same as :meth:`close`: a watch has nothing to wait for."""
        self.close()


class AsyncPresenceWatch(AsyncStream):
    """Async iterator over presence events; get one from ``AsyncClient.watch_presence()``.

    Use it in an ``async for`` loop; ``close()`` or leaving an ``async with`` block
    ends it.
    """

    def __init__(
        self,
        open_stream: Callable[
            [], grpc.aio.UnaryStreamCall[pb.WatchPresenceRequest, pb.PresenceEvent]
        ],
        policy: RetryPolicy,
        max_reconnects: int | None,
    ) -> None:
        self._open = open_stream
        self._reconnects = _Reconnects(policy, max_reconnects)
        self._call: grpc.aio.UnaryStreamCall[pb.WatchPresenceRequest, pb.PresenceEvent] | None = (
            None
        )
        self._events: AsyncIterator[pb.PresenceEvent] | None = None
        self._queue: collections.deque[PresenceEvent] = collections.deque()
        self._closed = False
        # Open now when a loop runs (the watch covers what happens from here on);
        # otherwise on the first iteration.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._start()

    def _start(self) -> AsyncIterator[pb.PresenceEvent]:
        self._call = self._open()
        self._events = self._call.__aiter__()
        return self._events

    def __aiter__(self) -> AsyncPresenceWatch:
        return self

    async def __anext__(self) -> PresenceEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._queue:
                return self._queue.popleft()
            events = self._events
            if events is None:
                await asyncio.sleep(max(0.0, self._reconnects.reopen_at - time.monotonic()))
                if self._closed:
                    raise StopAsyncIteration
                events = self._start()
            err: HeraldError | None = None
            try:
                ev = PresenceEvent.from_pb(await events.__anext__())
            except StopAsyncIteration:
                pass
            except asyncio.CancelledError:
                if self._closed:  # close() cancelled the call under us
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            else:
                if self._reconnects.on_event(ev):
                    self._drop_call()
                return ev
            self._drop_call()
            if self._closed:
                raise StopAsyncIteration
            try:
                resync = self._reconnects.on_lost(err)
            except HeraldError:
                self._closed = True  # a final error ends the iteration
                raise
            if resync is not None:
                self._queue.append(resync)

    def _drop_call(self) -> None:
        call, self._call, self._events = self._call, None, None
        if call is not None:
            call.cancel()

    async def close(self) -> None:
        """Stop watching."""
        self._closed = True
        self._drop_call()

    async def cancel(self) -> None:
        """The same as :meth:`close`: a watch has nothing to wait for."""
        await self.close()
