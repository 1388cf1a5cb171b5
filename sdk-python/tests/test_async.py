"""The asyncio client against a real engine, checked by real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from conftest import Engine
from wsclient import AsyncWsClient

import herald


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[herald.AsyncClient]:
    async with herald.AsyncClient(engine.target, api_key="test-key", timeout=10) as c:
        yield c


@pytest.fixture
async def ws(engine: Engine) -> AsyncIterator[AsyncWsClient]:
    async with await AsyncWsClient.open(engine.ws_url(user="bob")) as w:
        yield w


async def test_health(client: herald.AsyncClient) -> None:
    assert await client.health() == herald.HealthStatus.SERVING
    assert await client.health("herald.v1.Herald") == herald.HealthStatus.SERVING
    with pytest.raises(herald.NotFound):
        await client.health("no.such.Service")


async def test_publish_payload_kinds(
    client: herald.AsyncClient, ws: AsyncWsClient, topic: str
) -> None:
    await ws.subscribe(topic)
    assert (await client.publish(topic, {"a": [1, "b"]})).sequence == 1
    assert (await client.publish(topic, "text")).sequence == 2
    assert (await client.publish(topic, b"\x00\x01")).sequence == 3
    m1, m2, m3 = [await ws.message() for _ in range(3)]
    assert (m1["seq"], m1["data"]) == (1, {"a": [1, "b"]})
    assert (m2["seq"], m2["text"]) == (2, "text")
    assert (m3["seq"], base64.b64decode(m3["b64"])) == (3, b"\x00\x01")


async def test_publish_errors(client: herald.AsyncClient, topic: str) -> None:
    with pytest.raises(herald.InvalidArgument) as e:
        await client.publish("room::x", "x")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.message
    with pytest.raises(herald.InvalidArgument):
        await client.publish(topic, b"[1,", content_type="application/json")


async def test_idempotency_key(client: herald.AsyncClient, ws: AsyncWsClient, topic: str) -> None:
    await ws.subscribe(topic)
    key = uuid.uuid4().hex
    first = await client.publish(topic, "once", idempotency_key=key, ttl=30)
    again = await client.publish(topic, "once", idempotency_key=key)
    assert again == herald.PublishResult(first.sequence, True)
    await client.publish(topic, "marker")
    assert [(await ws.message())["text"], (await ws.message())["text"]] == ["once", "marker"]


async def test_broadcast(client: herald.AsyncClient, ws: AsyncWsClient, topic: str) -> None:
    t1, t2 = f"{topic}:a", f"{topic}:b"
    await ws.subscribe(t1, t2)
    results = await client.broadcast([t1, t2], {"x": 1})
    assert results == [herald.PublishResult(1), herald.PublishResult(1)]
    got = {(m["topic"], m["seq"]) for m in [await ws.message(), await ws.message()]}
    assert got == {(t1, 1), (t2, 1)}
    with pytest.raises(herald.InvalidArgument):
        await client.broadcast([t1, "bad topic"], "x")


async def test_publisher(client: herald.AsyncClient, ws: AsyncWsClient, topic: str) -> None:
    await ws.subscribe(topic)
    async with client.publisher() as pub:
        futures = [await pub.publish(topic, {"i": i}) for i in range(100)]
        bad = await pub.publish("room::bad", "x")
        last = await pub.publish(topic, "last")
    assert [(await f).sequence for f in futures] == list(range(1, 101))
    assert isinstance(bad.exception(), herald.InvalidArgument)
    assert (await last).sequence == 101
    got = [await ws.message() for _ in range(101)]
    assert [m["seq"] for m in got] == list(range(1, 102))
    assert [m["data"]["i"] for m in got[:100]] == list(range(100))
    assert got[100]["text"] == "last"


async def test_publisher_concurrent_producers_keep_per_task_order(
    client: herald.AsyncClient, topic: str
) -> None:
    async with client.publisher(max_in_flight=8) as pub:

        async def produce(n: int) -> list[asyncio.Future[herald.PublishResult]]:
            return [await pub.publish(f"{topic}:{n}", i) for i in range(50)]

        batches = await asyncio.gather(*(produce(n) for n in range(4)))
    for futures in batches:
        assert [(await f).sequence for f in futures] == list(range(1, 51))


async def test_publisher_after_close_raises(client: herald.AsyncClient, topic: str) -> None:
    pub = client.publisher()
    assert (await (await pub.publish(topic, 1))).sequence == 1
    await pub.close()
    with pytest.raises(herald.Cancelled):
        await pub.publish(topic, 2)


def test_client_made_outside_the_event_loop(engine: Engine, topic: str) -> None:
    client = herald.AsyncClient(engine.target)

    async def use() -> herald.PublishResult:
        try:
            assert await client.health() == herald.HealthStatus.SERVING
            return await client.publish(topic, "x")
        finally:
            await client.close()

    assert asyncio.run(use()).sequence == 1
