"""Payload encoding, error mapping and request building (no engine needed)."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest

import herald
from herald import _requests, payload
from herald.config import RetryPolicy, Settings
from herald.errors import error_for_number
from herald.v1 import herald_pb2 as pb


@pytest.mark.parametrize(
    ("data", "body", "ctype"),
    [
        (b"\x00\xff", b"\x00\xff", ""),
        (bytearray(b"ab"), b"ab", ""),
        ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
        ({"a": [1, 2.5, None, True]}, b'{"a":[1,2.5,null,true]}', "application/json"),
        ([1, "é"], '[1,"é"]'.encode(), "application/json"),
        (42, b"42", "application/json"),
        (None, b"null", "application/json"),
    ],
)
def test_encode(data: object, body: bytes, ctype: str) -> None:
    assert payload.encode(data) == (body, ctype)


def test_encode_explicit_content_type() -> None:
    assert payload.encode(b"\x08\x01", "application/x-protobuf") == (
        b"\x08\x01",
        "application/x-protobuf",
    )
    assert payload.encode('{"a":1}', "application/json") == (b'{"a":1}', "application/json")
    assert payload.encode({"a": 1}, "application/cloudevents+json")[1] == (
        "application/cloudevents+json"
    )
    with pytest.raises(TypeError):
        payload.encode({"a": 1}, "text/plain")


def test_encode_rejects_non_json() -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        payload.encode({"a": object()})
    with pytest.raises(TypeError):
        payload.encode(float("nan"))


def test_ttl() -> None:
    assert payload.ttl_ms(None) is None
    assert payload.ttl_ms(1.5) == 1500
    assert payload.ttl_ms(timedelta(minutes=1)) == 60_000
    for bad in (0, -1, 2**32):
        with pytest.raises(ValueError):
            payload.ttl_ms(bad)


def test_publish_request() -> None:
    req = _requests.publish("room:a", {"x": 1}, ttl=2, idempotency_key="k1", content_type=None)
    assert req.topic == "room:a"
    assert json.loads(req.data) == {"x": 1}
    assert req.content_type == "application/json"
    assert req.idempotency_key == "k1" and req.ttl_ms == 2000
    plain = _requests.publish("room:a", b"x", ttl=None, idempotency_key=None, content_type=None)
    assert not plain.HasField("idempotency_key") and not plain.HasField("ttl_ms")


def test_broadcast_request_takes_one_topic_string_as_one_topic() -> None:
    req = _requests.broadcast(["a", "b"], "x", ttl=None, idempotency_key=None, content_type=None)
    assert list(req.topics) == ["a", "b"]
    assert list(_requests.subscribe("room:a", "c1", None).topics) == ["room:a"]


def test_target() -> None:
    assert _requests.target("c1", None) == pb.Target(connection_id="c1")
    assert _requests.target(None, "alice") == pb.Target(user_id="alice")
    for args in ((None, None), ("c1", "alice")):
        with pytest.raises(ValueError):
            _requests.target(*args)


def test_error_mapping() -> None:
    err = error_for_number(5, "no connection c1")
    assert isinstance(err, herald.NotFound) and isinstance(err, herald.HeraldError)
    assert err.code == grpc.StatusCode.NOT_FOUND and err.message == "no connection c1"
    assert str(err) == "NOT_FOUND: no connection c1"
    assert isinstance(error_for_number(3, ""), herald.InvalidArgument)
    assert isinstance(error_for_number(8, ""), herald.ResourceExhausted)
    assert isinstance(error_for_number(12, ""), herald.Unimplemented)
    assert isinstance(error_for_number(14, ""), herald.Unavailable)
    odd = error_for_number(999, "?")
    assert type(odd) is herald.Unknown and odd.code == grpc.StatusCode.UNKNOWN


def test_stream_results() -> None:
    ok = pb.PublishStreamResponse(client_seq=3, ack=pb.PublishResponse(sequence=9, duplicate=True))
    assert _requests.publish_stream_result(ok) == (3, herald.PublishResult(9, True))
    bad = pb.PublishStreamResponse(client_seq=4, error=pb.Error(code=3, message="bad topic"))
    seq, err = _requests.publish_stream_result(bad)
    assert seq == 4 and isinstance(err, herald.InvalidArgument) and err.message == "bad topic"
    ctl = pb.ControlResponse(request_id=7, disconnect=pb.DisconnectResponse(connections=2))
    assert _requests.control_result(ctl) == (7, 2)


def test_settings_metadata() -> None:
    s = Settings(
        "x",
        api_key="sekret",
        metadata=[("X-Tenant", "t1")],
        credentials=None,
        timeout=1.0,
        retry=RetryPolicy(),
        channel_options=(),
    )
    assert s.metadata == (("x-tenant", "t1"), ("authorization", "Bearer sekret"))
    assert s.channel_options[0] == (
        "grpc.primary_user_agent",
        f"herald-sdk-python/{herald.__version__}",
    )


def test_retry_policy() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=0.3, jitter=0)
    assert [policy.backoff(i) for i in range(4)] == [0.1, 0.2, 0.3, 0.3]
    s = Settings(
        "x",
        api_key=None,
        metadata=(),
        credentials=None,
        timeout=None,
        retry=policy,
        channel_options=(),
    )
    unavailable = herald.Unavailable("down")
    attempts = s.attempts(idempotent=True, timeout=None)
    assert attempts.next_delay(unavailable) == 0.1
    assert attempts.next_delay(unavailable) == 0.2
    assert attempts.next_delay(unavailable) is None  # 3 attempts made
    assert s.attempts(idempotent=False, timeout=None).next_delay(unavailable) is None
    assert s.attempts(idempotent=True, timeout=None).next_delay(herald.NotFound("x")) is None
    # the call's timeout bounds the attempts
    assert s.attempts(idempotent=True, timeout=0.05).next_delay(unavailable) is None
