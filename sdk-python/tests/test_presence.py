"""Presence, PresenceStats, WatchPresence and Info, sync and asyncio."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from conftest import Engine, EngineFactory
from wsclient import AsyncWsClient, WsClient

import herald
from herald import PresenceEventKind as Kind


@pytest.fixture
def client(engine: Engine) -> Iterator[herald.Client]:
    with herald.Client(engine.target) as c:
        yield c


def test_presence_follows_pages(client: herald.Client, engine: Engine, topic: str) -> None:
    with ExitStack() as stack:
        clients = [
            stack.enter_context(WsClient(engine.ws_url(user=f"u{i % 3}", info={"i": i})))
            for i in range(7)
        ]
        for ws in clients:
            ws.subscribe(topic)
        members = list(client.presence(topic, page_size=2))
        assert sorted(m.connection_id for m in members) == sorted(ws.conn_id for ws in clients)
        by_conn = {m.connection_id: m for m in members}
        for i, ws in enumerate(clients):
            assert by_conn[ws.conn_id].user_id == f"u{i % 3}"
            assert json.loads(by_conn[ws.conn_id].info) == {"i": i}
        assert client.presence_stats(topic) == herald.PresenceStats(connections=7, users=3)
        # the default page size returns the same members
        assert sorted(m.connection_id for m in client.presence(topic)) == sorted(by_conn)
    assert list(client.presence(f"{topic}:empty")) == []
    assert client.presence_stats(f"{topic}:empty") == herald.PresenceStats(0, 0)


def test_presence_errors(client: herald.Client, topic: str) -> None:
    with pytest.raises(herald.InvalidArgument):
        list(client.presence("room::bad"))
    with pytest.raises(herald.InvalidArgument):
        list(client.presence(topic, page_size=10_001))
    with pytest.raises(herald.InvalidArgument):
        client.presence_stats("room::bad")


def test_watching_an_untracked_topic_is_failed_precondition(new_engine: EngineFactory) -> None:
    engine = new_engine("--presence-topics", "room:>")
    engine.start()
    with herald.Client(engine.target) as client:
        with pytest.raises(herald.FailedPrecondition) as e:
            next(client.watch_presence("other:x"))
        assert e.value.message
        assert next(client.watch_presence("room:x")).kind == Kind.SNAPSHOT_END


@pytest.mark.node_local(
    "Info counts the connections, subscriptions and deliveries of the node asked; "
    "the WebSocket client is on the other node"
)
def test_info(client: herald.Client, engine: Engine, topic: str) -> None:
    before = client.info()
    assert before.node_id and before.version
    with WsClient(engine.ws_url()) as ws:
        ws.subscribe(topic)
        client.publish(topic, 1)
        ws.message()
        after = client.info()
        assert after.node_id == before.node_id
        assert after.connections >= 1 and after.subscriptions >= 1 and after.topics >= 1
        assert after.messages_published >= before.messages_published + 1
        assert after.messages_delivered >= before.messages_delivered + 1
        assert after.uptime_seconds >= before.uptime_seconds


def test_watch_presence_snapshot_then_live(
    client: herald.Client, engine: Engine, topic: str
) -> None:
    with WsClient(engine.ws_url(user="early")) as early:
        early.subscribe(f"{topic}:a")
        with client.watch_presence(f"{topic}:*", include_snapshot=True) as watch:
            events = iter(watch)
            snap = next(events)
            assert snap.kind == Kind.SNAPSHOT and snap.topic == f"{topic}:a"
            assert snap.member is not None and snap.member.connection_id == early.conn_id
            assert next(events).kind == Kind.SNAPSHOT_END
            with WsClient(engine.ws_url(user="late")) as late:
                late.subscribe(f"{topic}:b")
                join = next(events)
                assert (join.kind, join.topic) == (Kind.JOIN, f"{topic}:b")
                assert join.member is not None and join.member.user_id == "late"
                assert join.node_id and join.timestamp_ms > 0
            leave = next(events)
            assert (leave.kind, leave.topic) == (Kind.LEAVE, f"{topic}:b")
            assert leave.member is not None and leave.member.connection_id == late.conn_id


def test_watch_presence_connections(client: herald.Client, engine: Engine) -> None:
    u = f"u-{uuid.uuid4().hex[:8]}"
    with client.watch_presence(
        f"none:{uuid.uuid4().hex[:8]}", include_snapshot=True, include_connections=True
    ) as watch:
        # the (empty) snapshot's end says the watch is live
        assert next(watch).kind == Kind.SNAPSHOT_END
        with WsClient(engine.ws_url(user=u)) as ws:
            conn_id = ws.conn_id
            ev = next(e for e in watch if e.member and e.member.user_id == u)
            assert ev.member is not None
            assert (ev.kind, ev.topic, ev.member.connection_id) == (Kind.CONNECT, "", conn_id)
        ev = next(e for e in watch if e.member and e.member.connection_id == conn_id)
        assert ev.kind == Kind.DISCONNECT


def test_close_from_another_thread_ends_a_blocked_iteration(
    client: herald.Client, topic: str
) -> None:
    watch = client.watch_presence(topic)
    assert next(watch).kind == Kind.SNAPSHOT_END
    closer = threading.Timer(0.3, watch.close)
    closer.start()
    started = time.monotonic()
    assert list(watch) == []  # blocked until close()
    assert 0.25 < time.monotonic() - started < 5
    closer.join()


def test_watch_presence_bad_pattern_ends_the_iteration(client: herald.Client) -> None:
    watch = client.watch_presence("ro*m", max_reconnects=None)
    with pytest.raises(herald.InvalidArgument) as e:
        next(watch)
    assert e.value.message
    assert list(watch) == []  # raised once, not retried


async def test_async_watch_presence_bad_pattern_ends_the_iteration(engine: Engine) -> None:
    async with herald.AsyncClient(engine.target) as client:
        watch = client.watch_presence("ro*m", max_reconnects=None)
        with pytest.raises(herald.InvalidArgument):
            await anext(watch)
        assert [e async for e in watch] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_watch_presence_reconnects_and_resnapshots(
    new_engine: EngineFactory, sig: signal.Signals
) -> None:
    engine = new_engine(shutdown_timeout="1s")
    engine.start()
    fast = herald.RetryPolicy(initial_backoff=0.05, max_backoff=0.5)
    with herald.Client(engine.target, retry=fast) as client:
        with WsClient(engine.ws_url(user="first")) as ws:
            ws.subscribe("room:watch")
            watch = client.watch_presence("room:>", max_reconnects=100)
            events = iter(watch)
            assert next(events).kind == Kind.SNAPSHOT
            assert next(events).kind == Kind.SNAPSHOT_END
        assert next(events).kind == Kind.LEAVE
        engine.stop(sig)
        engine.start()  # same ports, empty engine
        with WsClient(engine.ws_url(user="second")) as ws2:
            ws2.subscribe("room:watch")
            resync = next(events)
            assert resync.kind == Kind.RESYNC and resync.local is True
            rest = []
            for ev in events:
                rest.append(ev)
                if ev.kind == Kind.SNAPSHOT_END or len(rest) > 5:
                    break
            # the new view: ws2 may show up in the snapshot or as a live join
            seen = [e for e in rest if e.member and e.member.user_id == "second"]
            assert Kind.SNAPSHOT_END in [e.kind for e in rest]
            if not seen:
                join = next(events)
                assert join.kind == Kind.JOIN and join.member and join.member.user_id == "second"
        watch.close()
        assert list(watch) == []


async def test_async_presence_and_stats(engine: Engine, topic: str) -> None:
    async with herald.AsyncClient(engine.target) as client:
        async with (
            await AsyncWsClient.open(engine.ws_url(user="a")) as w1,
            await AsyncWsClient.open(engine.ws_url(user="a")) as w2,
        ):
            await w1.subscribe(topic)
            await w2.subscribe(topic)
            members = [m async for m in client.presence(topic, page_size=1)]
            assert sorted(m.connection_id for m in members) == sorted([w1.conn_id, w2.conn_id])
            assert await client.presence_stats(topic) == herald.PresenceStats(2, 1)
        info = await client.info()
        assert info.node_id


async def test_async_watch_presence(engine: Engine, topic: str) -> None:
    async with herald.AsyncClient(engine.target) as client:
        async with client.watch_presence([topic], include_snapshot=True) as watch:
            assert (await anext(watch)).kind == Kind.SNAPSHOT_END
            async with await AsyncWsClient.open(engine.ws_url(user="z")) as ws:
                await ws.subscribe(topic)
                join = await anext(watch)
                assert join.kind == Kind.JOIN and join.member and join.member.user_id == "z"
            leave = await anext(watch)
            assert leave.kind == Kind.LEAVE and leave.member and leave.member.user_id == "z"
        assert [e async for e in watch] == []


async def test_async_watch_presence_reconnects(new_engine: EngineFactory) -> None:
    engine = new_engine(shutdown_timeout="1s")
    engine.start()
    fast = herald.RetryPolicy(initial_backoff=0.05, max_backoff=0.5)
    async with herald.AsyncClient(engine.target, retry=fast) as client:
        watch = client.watch_presence(["room:*"], max_reconnects=100)
        assert (await anext(watch)).kind == Kind.SNAPSHOT_END
        async with await AsyncWsClient.open(engine.ws_url(user="one")) as ws:
            await ws.subscribe("room:x")
            assert (await anext(watch)).kind == Kind.JOIN
        assert (await anext(watch)).kind == Kind.LEAVE
        await asyncio.to_thread(engine.stop)
        await asyncio.to_thread(engine.start)
        resync = await anext(watch)
        assert resync.kind == Kind.RESYNC and resync.local
        assert (await anext(watch)).kind == Kind.SNAPSHOT_END  # the new engine is empty
        async with await AsyncWsClient.open(engine.ws_url(user="two")) as ws:
            await ws.subscribe("room:y")
            join = await anext(watch)
            assert (join.kind, join.topic) == (Kind.JOIN, "room:y")
        await watch.close()
