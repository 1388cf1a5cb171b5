"""How watch_presence recovers, against real engines: the engine's RESYNC for a
watcher that fell behind, backoff when that repeats, and giving up after
max_reconnects. (Reconnecting across an engine restart is in test_presence.py.)

A watcher falls behind when the events meant for it do not fit its buffer: the
engines here run with ``--presence-watch-buffer 8`` while the test stops reading
the watch and a WebSocket client joins and leaves a few hundred topics per
command. The client's HTTP/2 windows are kept small so that what the engine
cannot send piles up in that buffer quickly.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import Engine, EngineFactory
from wsclient import AsyncWsClient, WsClient

import herald
from herald import PresenceEventKind as Kind

FAST = herald.RetryPolicy(initial_backoff=0.05, max_backoff=0.2)
#: No BDP probing and a 64 KiB lookahead: the windows stay small, so an unread
#: watch fills them after a few hundred events.
SMALL_WINDOWS: list[tuple[str, str | int]] = [
    ("grpc.http2.lookahead_bytes", 65535),
    ("grpc.http2.bdp_probe", 0),
]
#: Topics per subscribe / unsubscribe command (the engine's default maximum).
BATCH = 256


def flood(engine: Engine, prefix: str, rounds: int = 20) -> int:
    """Joins and leaves ``BATCH`` topics ``rounds`` times; returns the events made."""
    topics = [f"{prefix}:flood{i}" for i in range(BATCH)]
    with WsClient(engine.ws_url(user="flood")) as ws:
        for _ in range(rounds):
            ws.subscribe(*topics)
            ws.unsubscribe(*topics)
    return 2 * BATCH * rounds


def reopen_attempts(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The attempt numbers of the watch's "reopening" warnings."""
    found = (re.search(r"reopening .*\(attempt (\d+)\)$", r.getMessage()) for r in caplog.records)
    return [int(m.group(1)) for m in found if m]


def members(events: list[herald.PresenceEvent]) -> set[tuple[str, str]]:
    return {(e.topic, e.member.connection_id) for e in events if e.member is not None}


def until_resync(events: Iterator[herald.PresenceEvent], limit: int) -> herald.PresenceEvent:
    """Reads what the engine queued before it gave up on the watcher: joins and
    leaves, then its RESYNC."""
    for n, ev in enumerate(events):
        if ev.kind == Kind.RESYNC:
            return ev
        assert ev.kind in (Kind.JOIN, Kind.LEAVE), ev
        assert n < limit, "no RESYNC after every event made"
    raise AssertionError("the watch ended")


def snapshot(events: Iterator[herald.PresenceEvent]) -> list[herald.PresenceEvent]:
    """The SNAPSHOT events up to SNAPSHOT_END."""
    got: list[herald.PresenceEvent] = []
    for ev in events:
        if ev.kind == Kind.SNAPSHOT_END:
            return got
        assert ev.kind == Kind.SNAPSHOT, ev
        got.append(ev)
    raise AssertionError("the watch ended")


@pytest.fixture
def small_buffer_engine(new_engine: EngineFactory) -> Engine:
    engine = new_engine("--presence-watch-buffer", "8")
    engine.start()
    return engine


def test_engine_resync_then_a_fresh_snapshot(small_buffer_engine: Engine) -> None:
    engine, prefix = small_buffer_engine, f"r{uuid.uuid4().hex[:8]}"
    with (
        herald.Client(engine.target, retry=FAST, channel_options=SMALL_WINDOWS) as client,
        WsClient(engine.ws_url(user="keeper")) as keeper,
        WsClient(engine.ws_url(user="late")) as late,
    ):
        keeper.subscribe(f"{prefix}:keep")
        with client.watch_presence(f"{prefix}:>", include_snapshot=True) as watch:
            assert members(snapshot(watch)) == {(f"{prefix}:keep", keeper.conn_id)}
            # not reading: the engine cannot send, its buffer for this watcher overflows
            made = flood(engine, prefix)
            late.subscribe(f"{prefix}:late")  # lost with the rest: only the snapshot has it
            resync = until_resync(watch, made)
            assert (resync.kind, resync.local) == (Kind.RESYNC, False)
            assert resync.node_id and resync.member is None
            # the engine ends that stream with RESOURCE_EXHAUSTED; the watch reopens it
            # with a snapshot of exactly the current members, and no RESYNC of its own
            assert members(snapshot(watch)) == {
                (f"{prefix}:keep", keeper.conn_id),
                (f"{prefix}:late", late.conn_id),
            }
            late.subscribe(f"{prefix}:live")
            join = next(watch)
            assert (join.kind, join.topic) == (Kind.JOIN, f"{prefix}:live")
            assert join.member is not None and join.member.connection_id == late.conn_id


def test_repeated_engine_resyncs_back_off(small_buffer_engine: Engine) -> None:
    engine, prefix = small_buffer_engine, f"b{uuid.uuid4().hex[:8]}"
    backoff = 1.5
    policy = herald.RetryPolicy(initial_backoff=backoff, max_backoff=backoff, jitter=0)
    with (
        herald.Client(engine.target, retry=policy, channel_options=SMALL_WINDOWS) as client,
        client.watch_presence(f"{prefix}:>", include_snapshot=True) as watch,
    ):
        assert snapshot(watch) == []
        reopened = []
        for _ in range(2):  # two RESYNCs well within herald.presence.RESYNC_WINDOW
            until_resync(watch, flood(engine, prefix))
            started = time.monotonic()
            assert snapshot(watch) == []
            reopened.append(time.monotonic() - started)
        assert reopened[0] < backoff - 0.5  # the first RESYNC: reopened at once
        # The second in a row: after a backoff. The backoff runs from the moment the
        # RESYNC arrived, a moment before this test sees it (and starts its clock).
        assert reopened[1] >= backoff - 0.05


def test_max_reconnects_gives_up(
    new_engine: EngineFactory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = new_engine(shutdown_timeout="1s")
    engine.start()
    with herald.Client(engine.target, retry=FAST) as client:
        watch = client.watch_presence(topic, max_reconnects=2)
        assert next(watch).kind == Kind.SNAPSHOT_END
        engine.stop()  # for good
        with caplog.at_level(logging.WARNING, logger="herald"):
            lost = next(watch)
            assert (lost.kind, lost.local) == (Kind.RESYNC, True)
            with pytest.raises(herald.Unavailable):
                next(watch)
        attempts = reopen_attempts(caplog)
        assert attempts == [1, 2]  # the stream lost, then two failed reopens, then the error
        assert list(watch) == []


async def test_async_engine_resync_then_a_fresh_snapshot(small_buffer_engine: Engine) -> None:
    engine, prefix = small_buffer_engine, f"a{uuid.uuid4().hex[:8]}"
    async with (
        herald.AsyncClient(engine.target, retry=FAST, channel_options=SMALL_WINDOWS) as client,
        await AsyncWsClient.open(engine.ws_url(user="keeper")) as keeper,
    ):
        await keeper.subscribe(f"{prefix}:keep")
        async with client.watch_presence([f"{prefix}:>"], include_snapshot=True) as watch:
            first = await anext(watch)
            assert (first.kind, first.topic) == (Kind.SNAPSHOT, f"{prefix}:keep")
            assert (await anext(watch)).kind == Kind.SNAPSHOT_END
            made = await asyncio.to_thread(flood, engine, prefix)
            await keeper.subscribe(f"{prefix}:later")
            resync = await async_until_resync(watch, made)
            assert (resync.kind, resync.local) == (Kind.RESYNC, False)
            fresh = []
            async for ev in watch:
                if ev.kind == Kind.SNAPSHOT_END:
                    break
                assert ev.kind == Kind.SNAPSHOT, ev
                fresh.append(ev)
            assert members(fresh) == {
                (f"{prefix}:keep", keeper.conn_id),
                (f"{prefix}:later", keeper.conn_id),
            }
            await keeper.subscribe(f"{prefix}:live")
            join = await anext(watch)
            assert (join.kind, join.topic) == (Kind.JOIN, f"{prefix}:live")


async def async_until_resync(
    events: AsyncIterator[herald.PresenceEvent], limit: int
) -> herald.PresenceEvent:
    n = 0
    async for ev in events:
        if ev.kind == Kind.RESYNC:
            return ev
        assert ev.kind in (Kind.JOIN, Kind.LEAVE), ev
        n += 1
        assert n <= limit, "no RESYNC after every event made"
    raise AssertionError("the watch ended")


async def test_async_max_reconnects_gives_up(
    new_engine: EngineFactory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = new_engine(shutdown_timeout="1s")
    engine.start()
    async with herald.AsyncClient(engine.target, retry=FAST) as client:
        watch = client.watch_presence(topic, max_reconnects=2)
        assert (await anext(watch)).kind == Kind.SNAPSHOT_END
        await asyncio.to_thread(engine.stop)
        with caplog.at_level(logging.WARNING, logger="herald"):
            lost = await anext(watch)
            assert (lost.kind, lost.local) == (Kind.RESYNC, True)
            with pytest.raises(herald.Unavailable):
                await anext(watch)
        attempts = reopen_attempts(caplog)
        assert attempts == [1, 2]
        assert [e async for e in watch] == []
