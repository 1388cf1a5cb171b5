"""The reconnect and RESYNC logic of watch_presence, on scripted streams (no engine)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import herald
from herald import PresenceEventKind as Kind
from herald.presence import AsyncPresenceWatch, PresenceWatch
from herald.v1 import herald_pb2 as pb

FAST = herald.RetryPolicy(initial_backoff=0.001, max_backoff=0.01)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def ev(kind: pb.PresenceEventKind.ValueType, conn: str = "") -> pb.PresenceEvent:
    member = pb.Member(connection_id=conn) if conn else None
    return pb.PresenceEvent(kind=kind, topic="room:a" if conn else "", member=member, node_id="n1")


SNAP = ev(pb.PRESENCE_EVENT_KIND_SNAPSHOT, "c1")
END = ev(pb.PRESENCE_EVENT_KIND_SNAPSHOT_END)
JOIN = ev(pb.PRESENCE_EVENT_KIND_JOIN, "c2")
RESYNC = ev(pb.PRESENCE_EVENT_KIND_RESYNC)

# One script per opened stream: events, then an optional error to raise.
Script = tuple[list[pb.PresenceEvent], grpc.RpcError | None]


class Streams:
    """Hands out one scripted stream per open; counts the opens."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.opened = 0

    def next_script(self) -> Script:
        self.opened += 1
        if not self.scripts:
            raise AssertionError("opened more streams than scripted")
        return self.scripts.pop(0)

    def open_sync(self) -> Iterator[pb.PresenceEvent]:
        events, err = self.next_script()

        def gen() -> Iterator[pb.PresenceEvent]:
            yield from events
            if err is not None:
                raise err

        return gen()

    def open_async(self) -> Any:
        events, err = self.next_script()

        class Call:
            def cancel(self) -> bool:
                return True

            async def __aiter__(self) -> AsyncIterator[pb.PresenceEvent]:
                for e in events:
                    yield e
                if err is not None:
                    raise err

        return Call()


def kinds(events: list[herald.PresenceEvent]) -> list[tuple[Kind, bool]]:
    return [(e.kind, e.local) for e in events]


def take(watch: PresenceWatch, n: int) -> list[herald.PresenceEvent]:
    return [next(watch) for _ in range(n)]


def test_dropped_stream_reconnects_with_a_local_resync_and_a_new_snapshot() -> None:
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "gone")
    streams = Streams(
        ([SNAP, END, JOIN], unavailable),
        ([], unavailable),  # still down: no second RESYNC for this one
        ([SNAP, END], None),
        ([JOIN], None),
    )
    watch = PresenceWatch(streams.open_sync, FAST, max_reconnects=None)
    got = take(watch, 9)
    assert kinds(got) == [
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.JOIN, False),
        (Kind.RESYNC, True),
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.RESYNC, True),  # the stream ended after events: gap possible
        (Kind.JOIN, False),
        (Kind.RESYNC, True),
    ]
    assert streams.opened == 4
    assert got[0].member == herald.Member("c1", "", "")
    assert got[3].member is None and got[3].node_id == ""
    watch.close()


def test_engine_resync_is_passed_on_and_the_stream_reopened_at_once() -> None:
    streams = Streams(([SNAP, END, RESYNC], None), ([SNAP, END, JOIN], None))
    watch = PresenceWatch(streams.open_sync, FAST, max_reconnects=0)
    got = take(watch, 6)
    assert kinds(got) == [
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.RESYNC, False),  # from the engine
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.JOIN, False),
    ]
    assert streams.opened == 2
    watch.close()
    assert list(watch) == []


def test_resource_exhausted_after_falling_behind_reconnects() -> None:
    exhausted = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "fell behind")
    streams = Streams(([SNAP, END, JOIN], exhausted), ([END], None))
    watch = PresenceWatch(streams.open_sync, FAST, max_reconnects=3)
    assert kinds(take(watch, 5)) == [
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.JOIN, False),
        (Kind.RESYNC, True),
        (Kind.SNAPSHOT_END, False),
    ]


def test_final_errors_end_the_iteration() -> None:
    bad = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad pattern")
    watch = PresenceWatch(Streams(([], bad)).open_sync, FAST, max_reconnects=None)
    with pytest.raises(herald.InvalidArgument, match="bad pattern"):
        next(watch)


def test_max_reconnects_gives_up() -> None:
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
    streams = Streams(([], down), ([], down), ([], down))
    watch = PresenceWatch(streams.open_sync, FAST, max_reconnects=2)
    with pytest.raises(herald.Unavailable):
        next(watch)
    assert streams.opened == 3


async def test_async_watch_reconnects_and_passes_engine_resyncs() -> None:
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
    streams = Streams(
        ([SNAP, END, JOIN], down),
        ([SNAP, END, RESYNC], None),
        ([END, JOIN], None),
    )
    watch = AsyncPresenceWatch(streams.open_async, FAST, max_reconnects=None)
    got = [await anext(watch) for _ in range(9)]
    assert kinds(got) == [
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.JOIN, False),
        (Kind.RESYNC, True),
        (Kind.SNAPSHOT, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.RESYNC, False),
        (Kind.SNAPSHOT_END, False),
        (Kind.JOIN, False),
    ]
    await watch.close()
    assert [e async for e in watch] == []


async def test_async_watch_final_error() -> None:
    bad = FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "not yet")
    watch = AsyncPresenceWatch(Streams(([], bad)).open_async, FAST, max_reconnects=None)
    with pytest.raises(herald.Unimplemented):
        await anext(watch)


def test_repeated_engine_resyncs_back_off() -> None:
    slow = herald.RetryPolicy(initial_backoff=0.2, max_backoff=0.2, jitter=0)
    streams = Streams(([RESYNC], None), ([RESYNC], None), ([JOIN], None))
    watch = PresenceWatch(streams.open_sync, slow, max_reconnects=None)
    t0 = time.monotonic()
    assert next(watch).kind == Kind.RESYNC
    assert next(watch).kind == Kind.RESYNC  # reopened at once after the first
    t1 = time.monotonic()
    assert next(watch).kind == Kind.JOIN  # the second one in a row waits
    t2 = time.monotonic()
    assert t1 - t0 < 0.15
    assert t2 - t1 >= 0.19
    watch.close()
