"""Payload encoding, error mapping and request building (no engine needed)."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from datetime import timedelta

import grpc
import pytest

import herald
from herald import _futures, _requests, payload
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
    assert _requests.publish_stream_results(ok, 1) == [herald.PublishResult(9, True)]
    bad = pb.PublishStreamResponse(client_seq=4, error=pb.Error(code=3, message="bad topic"))
    [err] = _requests.publish_stream_results(bad, 1)
    assert isinstance(err, herald.InvalidArgument) and err.message == "bad topic"
    ctl = pb.ControlResponse(request_id=7, disconnect=pb.DisconnectResponse(connections=2))
    assert _requests.control_result(ctl) == (7, 2)


def test_batched_stream_request_and_results() -> None:
    msgs = [_requests.publish(f"t:{i}", i, ttl=None, idempotency_key=None, content_type=None)
            for i in range(3)]  # fmt: skip
    req = _requests.publish_stream_request(10, msgs)
    assert req.client_seq == 10 and req.message == msgs[0] and list(req.more) == msgs[1:]
    assert not _requests.publish_stream_request(1, msgs[:1]).more

    resp = pb.PublishStreamResponse(
        client_seq=10,
        ack=pb.PublishResponse(sequence=1),
        more=[
            pb.PublishResult(error=pb.Error(code=5, message="gone")),
            pb.PublishResult(ack=pb.PublishResponse(sequence=2, duplicate=True)),
        ],
    )
    first, second, third = _requests.publish_stream_results(resp, 3)
    assert first == herald.PublishResult(1) and third == herald.PublishResult(2, True)
    assert isinstance(second, herald.NotFound) and second.message == "gone"
    # a message the answer says nothing about fails instead of vanishing
    *_, missing = _requests.publish_stream_results(resp, 4)
    assert isinstance(missing, herald.HeraldError) and "no result" in missing.message


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


def test_enums_print_as_names() -> None:
    assert str(herald.HealthStatus.SERVING) == "HealthStatus.SERVING"
    assert f"{herald.HealthStatus.NOT_SERVING}" == "HealthStatus.NOT_SERVING"
    assert f"{herald.PresenceEventKind.JOIN:>25}" == "   PresenceEventKind.JOIN"
    assert int(herald.HealthStatus.SERVING) == 1 and herald.HealthStatus(2).name == "NOT_SERVING"


def test_shared_condition_futures_behave_like_futures() -> None:
    make = _futures.factory()
    futs = [make() for _ in range(40)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futs)
    assert all(type(f) is _futures.SharedConditionFuture for f in futs)  # this Python's layout

    # result()/exception() with a timeout wait for their own future only
    other = threading.Timer(0.05, lambda: futs[1].set_result(herald.PublishResult(1)))
    other.start()
    started = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        futs[17].result(timeout=0.3)  # woken by futs[1] (same condition), still waits
    assert time.monotonic() - started >= 0.29
    with pytest.raises(concurrent.futures.TimeoutError):
        futs[17].exception(timeout=0.01)
    other.join()

    # blocking waits, callbacks, wait() and as_completed()
    seen: list[object] = []
    futs[2].add_done_callback(lambda f: seen.append(f.result()))
    setter = threading.Timer(0.05, lambda: futs[2].set_result(herald.PublishResult(2)))
    setter.start()
    assert futs[2].result() == herald.PublishResult(2)
    setter.join()
    assert seen == [herald.PublishResult(2)]
    futs[3].set_exception(herald.NotFound("x"))
    assert isinstance(futs[3].exception(), herald.NotFound)
    with pytest.raises(herald.NotFound):
        futs[3].result()
    assert futs[4].cancel() and futs[4].cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        futs[4].result()
    # (a cancelled future outside an executor is never "notified": wait() counts it
    # as pending, exactly as with a plain Future)
    done, pending = concurrent.futures.wait(futs[:5], timeout=0.01)
    assert done == set(futs[1:4]) and pending == {futs[0], futs[4]}
    later = threading.Timer(0.05, lambda: futs[0].set_result(herald.PublishResult(0)))
    later.start()
    assert len(list(concurrent.futures.as_completed(futs[:4], timeout=5))) == 4
    later.join()


def test_publisher_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        herald.Publisher(lambda requests: iter(()), max_in_flight=0)


def test_the_version_is_written_once() -> None:
    from importlib.metadata import version

    assert version("herald-sdk") == herald.__version__
