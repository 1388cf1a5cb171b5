"""Unavailable engines: errors, and retries for idempotent calls only."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import EngineFactory, free_port

import herald

FAST = herald.RetryPolicy(max_attempts=50, initial_backoff=0.05, max_backoff=0.2)


def test_unreachable_engine_is_unavailable() -> None:
    with herald.Client(f"127.0.0.1:{free_port()}", retry=FAST, timeout=5) as client:
        with pytest.raises(herald.Unavailable) as e:
            client.publish("room:a", "x")
        assert e.value.code.name == "UNAVAILABLE"


def test_plain_publish_is_not_retried() -> None:
    with herald.Client(f"127.0.0.1:{free_port()}", retry=FAST, timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(herald.Unavailable):
            client.publish("room:a", "x")
        # one attempt only: far below the ~2.5 s FAST would spend retrying
        assert time.monotonic() - started < 1.0


def test_idempotent_calls_retry_until_the_engine_is_up(new_engine: EngineFactory) -> None:
    engine = new_engine()
    starter = threading.Timer(0.5, engine.start)
    with herald.Client(engine.target, retry=FAST, timeout=30) as client:
        starter.start()
        try:
            res = client.publish("room:retry", "x", idempotency_key="k-retry")
            assert res == herald.PublishResult(1, False)
        finally:
            starter.join()
        assert client.health() == herald.HealthStatus.SERVING


async def test_async_idempotent_retry(new_engine: EngineFactory) -> None:
    engine = new_engine()
    starter = threading.Timer(0.5, engine.start)
    async with herald.AsyncClient(engine.target, retry=FAST, timeout=30) as client:
        starter.start()
        try:
            res = await client.broadcast(["room:a", "room:b"], "x", idempotency_key="k")
            assert [r.sequence for r in res] == [1, 1]
        finally:
            await asyncio.to_thread(starter.join)
        assert await client.health() == herald.HealthStatus.SERVING


async def test_async_plain_publish_is_not_retried() -> None:
    async with herald.AsyncClient(f"127.0.0.1:{free_port()}", retry=FAST, timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(herald.Unavailable):
            await client.publish("room:a", "x")
        assert time.monotonic() - started < 1.0


def test_publisher_fails_pending_and_later_messages_when_the_engine_stops(
    new_engine: EngineFactory,
) -> None:
    engine = new_engine(shutdown_timeout="1s")
    engine.start()
    with herald.Client(engine.target) as client:
        pub = client.publisher()
        assert pub.publish("room:a", 1).result(timeout=5).sequence == 1
        engine.stop()
        # the stream's failure reaches the publisher: a message either fails or is refused
        deadline = time.monotonic() + 10
        with pytest.raises(herald.HeraldError):
            while time.monotonic() < deadline:
                pub.publish("room:a", 2).result(timeout=5)
                time.sleep(0.05)
        with pytest.raises(herald.HeraldError):
            pub.publish("room:a", 3)
        pub.close()


async def test_async_publisher_fails_when_the_engine_stops(new_engine: EngineFactory) -> None:
    engine = new_engine(shutdown_timeout="1s")
    engine.start()
    async with herald.AsyncClient(engine.target) as client:
        pub = client.publisher()
        assert (await (await pub.publish("room:a", 1))).sequence == 1
        await asyncio.to_thread(engine.stop)
        deadline = time.monotonic() + 10
        with pytest.raises(herald.HeraldError):
            while time.monotonic() < deadline:
                await (await pub.publish("room:a", 2))
                await asyncio.sleep(0.05)
        with pytest.raises(herald.HeraldError):
            await pub.publish("room:a", 3)
        await pub.close()
