"""The streaming publishers carry many messages per PublishStream request (``more``):
order, per-message acks and errors inside a batch, the window, close and cancel
with messages in flight, and a stream that breaks, against a real engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
from collections.abc import Iterator

import pytest
from conftest import Engine, EngineFactory
from wsclient import AsyncWsClient, WsClient

import herald
from herald import _requests
from herald.v1 import herald_pb2 as pb

N = 3000


@pytest.fixture
def client(engine: Engine) -> Iterator[herald.Client]:
    with herald.Client(engine.target) as c:
        yield c


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of messages in each PublishStream request sent during the test."""
    sizes: list[int] = []
    build = _requests.publish_stream_request

    def counting(client_seq: int, msgs: list[pb.PublishRequest]) -> pb.PublishStreamRequest:
        sizes.append(len(msgs))
        return build(client_seq, msgs)

    monkeypatch.setattr(_requests, "publish_stream_request", counting)
    return sizes


def is_bad(i: int) -> bool:
    return i % 7 == 3


def message(topic: str, i: int) -> tuple[str, object]:
    """Message ``i``: every 7th one has a bad topic; the others go to one of three topics."""
    return ("bad::topic" if is_bad(i) else f"{topic}:{i % 3}"), {"i": i}


def check_results(topic: str, results: list[herald.PublishResult | BaseException]) -> None:
    """Each message got its own answer: errors exactly for the bad ones, and per topic
    the sequences 1, 2, 3, ... in publish order."""
    expected: dict[str, int] = {}
    for i, result in enumerate(results):
        if is_bad(i):
            assert isinstance(result, herald.InvalidArgument), (i, result)
            continue
        assert isinstance(result, herald.PublishResult), (i, result)
        t = message(topic, i)[0]
        expected[t] = expected.get(t, 0) + 1
        assert result == herald.PublishResult(expected[t]), (i, result)


def outcome(
    fut: concurrent.futures.Future[herald.PublishResult],
) -> herald.PublishResult | BaseException:
    exc = fut.exception(timeout=30)
    return exc if exc is not None else fut.result()


def test_many_messages_per_request_each_with_its_own_answer(
    client: herald.Client, engine: Engine, topic: str, batches: list[int]
) -> None:
    with WsClient(engine.ws_url()) as ws:
        ws.subscribe(f"{topic}:0")
        with client.publisher(max_in_flight=N) as pub:
            futures = [pub.publish(*message(topic, i)) for i in range(N)]
        check_results(topic, [outcome(f) for f in futures])
        # batching happened, within the engine's limit, and nothing was sent twice
        assert max(batches) > 1 and max(batches) <= _requests.MAX_STREAM_BATCH
        assert sum(batches) == N and len(batches) < N
        # what arrived is what was acked, in order
        want = [i for i in range(N) if i % 3 == 0 and not is_bad(i)]
        assert [ws.message()["data"]["i"] for _ in want] == want


def test_batches_never_exceed_the_engine_limit(
    client: herald.Client, topic: str, batches: list[int]
) -> None:
    # a window far larger than a request: the queue holds more than one request's worth
    with client.publisher(max_in_flight=5000) as pub:
        futures = [pub.publish(topic, b"x") for _ in range(5000)]
    assert [f.result(timeout=30).sequence for f in futures] == list(range(1, 5001))
    assert max(batches) <= _requests.MAX_STREAM_BATCH and sum(batches) == 5000


def test_threads_sharing_a_publisher_keep_their_own_order(
    client: herald.Client, topic: str
) -> None:
    results: dict[int, list[concurrent.futures.Future[herald.PublishResult]]] = {}
    with client.publisher(max_in_flight=64) as pub:

        def produce(n: int) -> None:
            results[n] = [pub.publish(f"{topic}:{n}", i) for i in range(500)]

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for futures in results.values():
        assert [f.result(timeout=5).sequence for f in futures] == list(range(1, 501))


def test_a_window_of_one_still_streams(client: herald.Client, topic: str) -> None:
    with client.publisher(max_in_flight=1) as pub:
        futures = [pub.publish(topic, i) for i in range(20)]
    assert [f.result().sequence for f in futures] == list(range(1, 21))
    with pytest.raises(ValueError):
        client.publisher(max_in_flight=0)


def test_close_answers_everything_queued_and_in_flight(client: herald.Client, topic: str) -> None:
    pub = client.publisher(max_in_flight=N)
    futures = [pub.publish(topic, i) for i in range(N)]
    pub.close()  # at once: most are still queued or unanswered
    assert all(f.done() for f in futures)
    assert [f.result().sequence for f in futures] == list(range(1, N + 1))
    with pytest.raises(herald.Cancelled):
        pub.publish(topic, "late")


@pytest.fixture
def paused(new_engine: EngineFactory) -> Iterator[Engine]:
    """An engine of its own; ``os.kill(pid, SIGSTOP)`` by the test holds its answers back."""
    engine = new_engine()
    engine.start()
    yield engine
    assert engine.proc is not None
    os.kill(engine.proc.pid, signal.SIGCONT)


def test_cancel_fails_what_is_unanswered_and_keeps_what_was_acked(
    paused: Engine, topic: str
) -> None:
    assert paused.proc is not None
    with herald.Client(paused.target) as client:
        pub = client.publisher(max_in_flight=20_000)
        futures = [pub.publish(topic, i) for i in range(10_000)]
        os.kill(paused.proc.pid, signal.SIGSTOP)  # from here on nothing is answered
        futures += [pub.publish(topic, i) for i in range(10_000, 20_000)]
        pub.cancel()
        assert all(f.done() for f in futures)
        acked = [f.result().sequence for f in futures if f.exception() is None]
        failed = [f.exception() for f in futures if f.exception() is not None]
        # the acks are a prefix in order; everything after them failed with Cancelled
        assert acked == list(range(1, len(acked) + 1))
        assert len(failed) >= 10_000 and all(isinstance(e, herald.Cancelled) for e in failed)
        with pytest.raises(herald.Cancelled):
            pub.publish(topic, "late")
        os.kill(paused.proc.pid, signal.SIGCONT)
        # the stream is gone, the client is not
        assert client.publish(topic, "after", timeout=10).sequence > len(acked)


def test_a_cancelled_future_does_not_disturb_the_others(client: herald.Client, topic: str) -> None:
    with client.publisher(max_in_flight=N) as pub:
        futures = [pub.publish(topic, i) for i in range(N)]
        futures[-1].cancel()  # may be too late; either way the others are answered
    assert [f.result().sequence for f in futures[:-1]] == list(range(1, N))


def test_a_broken_stream_fails_every_message_in_flight(new_engine: EngineFactory) -> None:
    engine = new_engine()
    engine.start()
    with herald.Client(engine.target) as client:
        pub = client.publisher(max_in_flight=50_000)
        assert pub.publish("room:a", 0).result(timeout=5).sequence == 1
        futures = [pub.publish("room:a", i) for i in range(30_000)]
        engine.stop(signal.SIGKILL)
        done, pending = concurrent.futures.wait(futures, timeout=30)
        assert not pending
        errors = [f.exception() for f in futures if f.exception() is not None]
        assert errors and all(isinstance(e, herald.HeraldError) for e in errors)
        with pytest.raises(herald.HeraldError):
            pub.publish("room:a", "late")
        pub.close()


# --- asyncio ------------------------------------------------------------------------


async def aoutcome(
    fut: asyncio.Future[herald.PublishResult],
) -> herald.PublishResult | BaseException:
    try:
        return await fut
    except herald.HeraldError as e:
        return e


async def test_async_many_messages_per_request_each_with_its_own_answer(
    engine: Engine, topic: str, batches: list[int]
) -> None:
    async with (
        herald.AsyncClient(engine.target) as client,
        await AsyncWsClient.open(engine.ws_url()) as ws,
    ):
        await ws.subscribe(f"{topic}:0")
        async with client.publisher(max_in_flight=N) as pub:
            futures = [await pub.publish(*message(topic, i)) for i in range(N)]
        check_results(topic, [await aoutcome(f) for f in futures])
        assert max(batches) > 1 and max(batches) <= _requests.MAX_STREAM_BATCH
        assert sum(batches) == N and len(batches) < N
        want = [i for i in range(N) if i % 3 == 0 and not is_bad(i)]
        assert [(await ws.message())["data"]["i"] for _ in want] == want


async def test_async_window_makes_publish_wait(engine: Engine, topic: str) -> None:
    async with herald.AsyncClient(engine.target) as client:
        async with client.publisher(max_in_flight=4) as pub:

            async def produce(n: int) -> list[asyncio.Future[herald.PublishResult]]:
                return [await pub.publish(f"{topic}:{n}", i) for i in range(300)]

            batches = await asyncio.gather(*(produce(n) for n in range(3)))
        for futures in batches:
            assert [(await f).sequence for f in futures] == list(range(1, 301))
        with pytest.raises(ValueError):
            client.publisher(max_in_flight=0)


async def test_async_close_answers_everything_queued(engine: Engine, topic: str) -> None:
    async with herald.AsyncClient(engine.target) as client:
        pub = client.publisher(max_in_flight=N)
        futures = [await pub.publish(topic, i) for i in range(N)]
        await pub.close()
        assert all(f.done() for f in futures)
        assert [f.result().sequence for f in futures] == list(range(1, N + 1))
        with pytest.raises(herald.Cancelled):
            await pub.publish(topic, "late")


async def test_async_cancel_with_messages_in_flight(paused: Engine, topic: str) -> None:
    assert paused.proc is not None
    async with herald.AsyncClient(paused.target) as client:
        pub = client.publisher(max_in_flight=20_000)
        futures = [await pub.publish(topic, i) for i in range(10_000)]
        await asyncio.sleep(0.2)  # let some go out and be answered
        os.kill(paused.proc.pid, signal.SIGSTOP)
        futures += [await pub.publish(topic, i) for i in range(10_000, 20_000)]
        await asyncio.sleep(0)  # the writer may start sending them: they stay unanswered
        await pub.cancel()
        assert all(f.done() for f in futures)
        acked = [f.result().sequence for f in futures if f.exception() is None]
        failed = [f.exception() for f in futures if f.exception() is not None]
        assert acked == list(range(1, len(acked) + 1))
        assert len(failed) >= 10_000 and all(isinstance(e, herald.Cancelled) for e in failed)
        with pytest.raises(herald.Cancelled):
            await pub.publish(topic, "late")
        os.kill(paused.proc.pid, signal.SIGCONT)
        assert (await client.publish(topic, "after", timeout=10)).sequence > len(acked)


async def test_async_publisher_waiting_for_room_is_released_by_close(
    engine: Engine, topic: str
) -> None:
    async with herald.AsyncClient(engine.target) as client:
        pub = client.publisher(max_in_flight=2)
        first = [await pub.publish(topic, i) for i in range(2)]
        waiting = asyncio.ensure_future(pub.publish(topic, "third"))
        await pub.close()
        assert [f.result().sequence for f in first] == [1, 2]
        # the waiting publish either got in before the close or was refused by it
        try:
            third = await waiting
        except herald.Cancelled:
            pass
        else:
            assert (await third).sequence == 3


async def test_async_broken_stream_fails_every_message_in_flight(
    new_engine: EngineFactory,
) -> None:
    engine = new_engine()
    engine.start()
    async with herald.AsyncClient(engine.target) as client:
        pub = client.publisher(max_in_flight=50_000)
        assert (await (await pub.publish("room:a", 0))).sequence == 1
        futures = [await pub.publish("room:a", i) for i in range(30_000)]
        engine.stop(signal.SIGKILL)
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), timeout=30
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors and all(isinstance(e, herald.HeraldError) for e in errors)
        with pytest.raises(herald.HeraldError):
            await pub.publish("room:a", "late")
        await pub.close()
