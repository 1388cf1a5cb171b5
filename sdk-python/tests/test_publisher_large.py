"""The streaming publishers keep every PublishStream request within the engine's gRPC
message limit however large the messages are: a burst of large messages is split into
requests of at most MAX_STREAM_BATCH_BYTES (a request larger than the engine's limit
would end the stream with OUT_OF_RANGE). Against a real engine with its default
limits (64 KiB payloads, about 394 KB per gRPC request)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Engine

import herald
from herald import _requests
from herald.v1 import herald_pb2 as pb

N = 40
SIZE = 60 * 1024  # within the default max_payload_bytes; 7 of them exceed the request limit


def data(i: int) -> bytes:
    return bytes([i % 256]) * SIZE


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[pb.PublishStreamRequest]:
    """Every PublishStream request sent during the test."""
    sent: list[pb.PublishStreamRequest] = []
    build = _requests.publish_stream_request

    def recording(client_seq: int, msgs: list[pb.PublishRequest]) -> pb.PublishStreamRequest:
        req = build(client_seq, msgs)
        sent.append(req)
        return req

    monkeypatch.setattr(_requests, "publish_stream_request", recording)
    return sent


@pytest.fixture
def client(engine: Engine) -> Iterator[herald.Client]:
    with herald.Client(engine.target) as c:
        yield c


def check_requests(sent: list[pb.PublishStreamRequest], total: int) -> None:
    """Each message was sent once, in order, and a request of more than one message kept
    within MAX_STREAM_BATCH_BYTES."""
    seqs = [req.client_seq for req in sent]
    counts = [1 + len(req.more) for req in sent]
    assert sum(counts) == total
    assert seqs == [1 + sum(counts[:i]) for i in range(len(sent))]
    for req in sent:
        assert not req.more or req.ByteSize() <= _requests.MAX_STREAM_BATCH_BYTES, (
            req.client_seq,
            len(req.more),
            req.ByteSize(),
        )
    payloads = [m.data for req in sent for m in [req.message, *req.more]]
    assert payloads[:N] == [data(i) for i in range(N)]


def test_a_burst_of_large_messages_keeps_the_stream(
    client: herald.Client, topic: str, requests: list[pb.PublishStreamRequest]
) -> None:
    with client.publisher() as pub:
        futures = [pub.publish(topic, data(i)) for i in range(N)]
        sequences = [f.result(timeout=30).sequence for f in futures]
        assert sequences == list(range(1, N + 1))
        # the stream is still there
        assert pub.publish(topic, b"after").result(timeout=30).sequence == N + 1
    check_requests(requests, N + 1)


async def test_a_burst_of_large_messages_keeps_the_stream_async(
    engine: Engine, topic: str, requests: list[pb.PublishStreamRequest]
) -> None:
    async with herald.AsyncClient(engine.target, timeout=10) as client:
        async with client.publisher() as pub:
            futures = [await pub.publish(topic, data(i)) for i in range(N)]
            sequences = [(await f).sequence for f in futures]
            assert sequences == list(range(1, N + 1))
            assert (await (await pub.publish(topic, b"after"))).sequence == N + 1
    check_requests(requests, N + 1)


def test_large_and_small_messages_mixed(
    client: herald.Client, topic: str, requests: list[pb.PublishStreamRequest]
) -> None:
    # a 60 KiB message every 10th: small ones still share requests with large ones
    sizes = [SIZE if i % 10 == 0 else 10 for i in range(1000)]
    with client.publisher() as pub:
        futures = [pub.publish(topic, b"y" * n) for n in sizes]
        assert [f.result(timeout=30).sequence for f in futures] == list(range(1, 1001))
    assert sum(1 + len(r.more) for r in requests) == 1000
    for req in requests:
        assert not req.more or req.ByteSize() <= _requests.MAX_STREAM_BATCH_BYTES


def test_stream_batch() -> None:
    cap = _requests.MAX_STREAM_BATCH_BYTES
    # the first message always goes, however large
    assert _requests.stream_batch([cap * 2, 1]) == (1, cap * 2)
    # then as many as fit in the byte cap
    assert _requests.stream_batch([cap // 4] * 10) == (4, cap)
    assert _requests.stream_batch([cap // 4, cap // 4, cap, 1]) == (2, cap // 2)
    # and in the count cap
    assert _requests.stream_batch([1] * 5000) == (_requests.MAX_STREAM_BATCH,) * 2


def test_sizes_bound_the_encoded_messages() -> None:
    cases = [
        ("room:a", b"x" * SIZE, None, None, None),
        ("room:a", {"k": "v"}, 3600, "key-1", None),
        ("room:ü", "text", 1, "ключ", "text/plain; charset=utf-8"),
        ("t", b"", None, None, None),
    ]
    for topic, payload, ttl, key, ctype in cases:
        msg, size = _requests.publish_sized(
            topic, payload, ttl=ttl, idempotency_key=key, content_type=ctype
        )
        # the size of the message inside a request's `more`: itself plus its tag and length
        inside = pb.PublishStreamRequest(more=[msg]).ByteSize()
        assert inside <= size <= inside + _requests.STREAM_MESSAGE_OVERHEAD, (topic, size, inside)
