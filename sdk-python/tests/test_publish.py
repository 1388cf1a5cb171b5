"""Publish, Broadcast, PublishStream and health with the sync client, checked by
real WebSocket clients connected to a real engine."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import grpc
import pytest
from conftest import Engine
from wsclient import WsClient

import herald


@pytest.fixture
def client(engine: Engine) -> Iterator[herald.Client]:
    with herald.Client(engine.target, api_key="test-key", timeout=10) as c:
        yield c


@pytest.fixture
def ws(engine: Engine) -> Iterator[WsClient]:
    with WsClient(engine.ws_url(user="alice")) as w:
        yield w


def test_health(client: herald.Client) -> None:
    assert client.health() == herald.HealthStatus.SERVING
    assert client.health("herald.v1.Herald") == herald.HealthStatus.SERVING
    with pytest.raises(herald.NotFound) as e:
        client.health("no.such.Service")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_publish_json_arrives_as_json_value(
    client: herald.Client, ws: WsClient, topic: str
) -> None:
    ws.subscribe(topic)
    value = {"text": "héllo", "n": [1, 2.5, None, True]}
    res = client.publish(topic, value)
    assert res == herald.PublishResult(sequence=1, duplicate=False)
    msg = ws.message()
    assert msg["topic"] == topic and msg["seq"] == 1
    assert msg["data"] == value
    assert "text" not in msg and "b64" not in msg


def test_publish_str_arrives_as_text(client: herald.Client, ws: WsClient, topic: str) -> None:
    ws.subscribe(topic)
    client.publish(topic, "plain text, not JSON: {")
    msg = ws.message()
    assert msg["text"] == "plain text, not JSON: {"
    assert "data" not in msg and "b64" not in msg


def test_publish_bytes_arrive_as_b64(client: herald.Client, ws: WsClient, topic: str) -> None:
    ws.subscribe(topic)
    raw = bytes(range(256))
    client.publish(topic, raw)
    msg = ws.message()
    assert base64.b64decode(msg["b64"]) == raw
    assert "content_type" not in msg

    client.publish(topic, b"\x08\x01", content_type="application/x-protobuf")
    msg = ws.message()
    assert base64.b64decode(msg["b64"]) == b"\x08\x01"
    assert msg["content_type"] == "application/x-protobuf"


def test_sequences_follow_each_other(client: herald.Client, ws: WsClient, topic: str) -> None:
    ws.subscribe(topic)
    seqs = [client.publish(topic, i).sequence for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    got = [ws.message() for _ in range(5)]
    assert [(m["seq"], m["data"]) for m in got] == [(i + 1, i) for i in range(5)]


def test_publish_with_ttl_is_delivered(client: herald.Client, ws: WsClient, topic: str) -> None:
    ws.subscribe(topic)
    client.publish(topic, {"price": 101.5}, ttl=30)
    assert ws.message()["data"] == {"price": 101.5}


def test_idempotency_key_publishes_once(client: herald.Client, ws: WsClient, topic: str) -> None:
    ws.subscribe(topic)
    key = uuid.uuid4().hex
    first = client.publish(topic, "once", idempotency_key=key)
    again = client.publish(topic, "once", idempotency_key=key)
    assert first.duplicate is False
    assert again == herald.PublishResult(sequence=first.sequence, duplicate=True)
    client.publish(topic, "marker")
    assert ws.message()["text"] == "once"
    assert ws.message()["text"] == "marker"  # the duplicate was never delivered


@pytest.mark.parametrize("bad", ["", "room::x", "room:", "has space", "room.x", "room:*"])
def test_bad_topic_is_invalid_argument(client: herald.Client, bad: str) -> None:
    with pytest.raises(herald.InvalidArgument) as e:
        client.publish(bad, "x")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message  # the server says what was wrong


def test_invalid_json_and_text_are_refused(client: herald.Client, topic: str) -> None:
    with pytest.raises(herald.InvalidArgument):
        client.publish(topic, b"{not json", content_type="application/json")
    with pytest.raises(herald.InvalidArgument):
        client.publish(topic, b"\xff\xfe", content_type="text/plain")


def test_oversize_payload_is_refused(client: herald.Client, topic: str) -> None:
    with pytest.raises(herald.InvalidArgument):
        client.publish(topic, b"x" * (64 * 1024 + 1))


def test_broadcast(client: herald.Client, topic: str, engine: Engine) -> None:
    t1, t2, t3 = f"{topic}:a", f"{topic}:b", f"{topic}:c"
    with WsClient(engine.ws_url()) as w1, WsClient(engine.ws_url()) as w2:
        w1.subscribe(t1)
        w2.subscribe(t2, t3)
        results = client.broadcast([t1, t2, t3], {"alert": "all"})
        assert results == [
            herald.PublishResult(1),
            herald.PublishResult(1),
            herald.PublishResult(1),
        ]
        m1 = w1.message()
        assert (m1["topic"], m1["seq"], m1["data"]) == (t1, 1, {"alert": "all"})
        got = {w2.message()["topic"], w2.message()["topic"]}
        assert got == {t2, t3}


def test_broadcast_with_a_bad_topic_publishes_nothing(
    client: herald.Client, ws: WsClient, topic: str
) -> None:
    ws.subscribe(topic)
    with pytest.raises(herald.InvalidArgument):
        client.broadcast([topic, "room::bad"], "never")
    client.publish(topic, "marker")
    msg = ws.message()
    assert (msg["text"], msg["seq"]) == ("marker", 1)


def test_broadcast_idempotency_key(client: herald.Client, topic: str) -> None:
    key = uuid.uuid4().hex
    first = client.broadcast([f"{topic}:a", f"{topic}:b"], "x", idempotency_key=key)
    again = client.broadcast([f"{topic}:a", f"{topic}:b"], "x", idempotency_key=key)
    assert [r.duplicate for r in first] == [False, False]
    assert again == [herald.PublishResult(r.sequence, True) for r in first]


def test_publisher_keeps_order_and_resolves_every_future(
    client: herald.Client, ws: WsClient, topic: str
) -> None:
    ws.subscribe(topic)
    with client.publisher() as pub:
        futures = [pub.publish(topic, {"i": i}) for i in range(200)]
    assert [f.result(timeout=5).sequence for f in futures] == list(range(1, 201))
    got = [ws.message() for _ in range(200)]
    assert [m["data"]["i"] for m in got] == list(range(200))
    assert [m["seq"] for m in got] == list(range(1, 201))


def test_publisher_bad_message_fails_alone(client: herald.Client, ws: WsClient, topic: str) -> None:
    ws.subscribe(topic)
    with client.publisher() as pub:
        ok1 = pub.publish(topic, "one")
        bad = pub.publish("room::bad", "x")
        bad_json = pub.publish(topic, b"{", content_type="application/json")
        ok2 = pub.publish(topic, "two", ttl=10)
    assert ok1.result().sequence == 1
    assert isinstance(bad.exception(), herald.InvalidArgument)
    assert isinstance(bad_json.exception(), herald.InvalidArgument)
    assert ok2.result().sequence == 2
    assert [ws.message()["text"], ws.message()["text"]] == ["one", "two"]


def test_publisher_after_close_raises(client: herald.Client, topic: str) -> None:
    pub = client.publisher()
    assert pub.publish(topic, 1).result(timeout=5).sequence == 1
    pub.close()
    with pytest.raises(herald.Cancelled):
        pub.publish(topic, 2)


def test_publisher_idempotency(client: herald.Client, topic: str) -> None:
    key = uuid.uuid4().hex
    with client.publisher() as pub:
        a = pub.publish(topic, "x", idempotency_key=key)
        b = pub.publish(topic, "x", idempotency_key=key)
    assert b.result() == herald.PublishResult(a.result().sequence, True)
