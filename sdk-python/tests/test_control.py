"""Subscribe, Unsubscribe, Disconnect and the Control stream, sync and asyncio,
checked by real WebSocket clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from conftest import Engine, EngineFactory
from websockets.exceptions import ConnectionClosed
from wsclient import AsyncWsClient, WsClient

import herald


@pytest.fixture
def client(engine: Engine) -> Iterator[herald.Client]:
    with herald.Client(engine.target) as c:
        yield c


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def test_subscribe_connection(client: herald.Client, engine: Engine, topic: str) -> None:
    with WsClient(engine.ws_url()) as ws:
        assert client.subscribe(topic, connection_id=ws.conn_id) == 1
        push = ws.next("subscribed")
        assert push["topics"] == [topic] and push["server"] is True
        client.publish(topic, {"hi": 1})
        assert ws.message()["data"] == {"hi": 1}


def test_subscribe_every_connection_of_a_user(
    client: herald.Client, engine: Engine, topic: str
) -> None:
    u = user()
    with WsClient(engine.ws_url(user=u)) as a, WsClient(engine.ws_url(user=u)) as b:
        assert client.subscribe([topic, f"{topic}:x"], user_id=u) == 2
        for ws in (a, b):
            assert sorted(ws.next("subscribed")["topics"]) == sorted([topic, f"{topic}:x"])
        client.publish(f"{topic}:x", "both")
        assert a.message()["text"] == "both"
        assert b.message()["text"] == "both"


def test_subscribe_errors(client: herald.Client, engine: Engine, topic: str) -> None:
    with pytest.raises(herald.NotFound):
        client.subscribe(topic, connection_id="no-such-connection")
    with pytest.raises(herald.NotFound):
        client.subscribe(topic, user_id=user())
    with WsClient(engine.ws_url()) as ws:
        with pytest.raises(herald.InvalidArgument):
            client.subscribe("room::bad", connection_id=ws.conn_id)
    with pytest.raises(ValueError):
        client.subscribe(topic)  # type: ignore[call-overload]


def test_unsubscribe(client: herald.Client, engine: Engine, topic: str) -> None:
    u = user()
    with WsClient(engine.ws_url(user=u)) as ws:
        ws.subscribe(topic, f"{topic}:keep")
        assert client.unsubscribe(topic, user_id=u) == 1
        push = ws.next("unsubscribed")
        assert push["topics"] == [topic] and push["server"] is True
        client.publish(topic, "gone")
        client.publish(f"{topic}:keep", "marker")
        msg = ws.message()
        assert (msg["topic"], msg["text"]) == (f"{topic}:keep", "marker")
        assert client.unsubscribe(topic, connection_id=ws.conn_id) == 1  # not in it: ignored


def test_disconnect_connection(client: herald.Client, engine: Engine) -> None:
    with WsClient(engine.ws_url()) as ws:
        n = client.disconnect(connection_id=ws.conn_id, code=4100, reason="moved", reconnect=True)
        assert n == 1
        frame = ws.next("disconnect")
        assert frame == {"type": "disconnect", "code": 4100, "reason": "moved", "reconnect": True}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4100


def test_disconnect_user_default_code(client: herald.Client, engine: Engine) -> None:
    u = user()
    with WsClient(engine.ws_url(user=u)) as a, WsClient(engine.ws_url(user=u)) as b:
        assert client.disconnect(user_id=u, reason="banned") == 2
        for ws in (a, b):
            frame = ws.next("disconnect")
            assert (frame["code"], frame["reason"], frame["reconnect"]) == (4500, "banned", False)


def test_limits_and_bad_codes(new_engine: EngineFactory) -> None:
    engine = new_engine("--max-subscriptions", "2")
    engine.start()
    with herald.Client(engine.target) as client, WsClient(engine.ws_url()) as ws:
        assert client.subscribe(["a:1", "a:2"], connection_id=ws.conn_id) == 1
        with pytest.raises(herald.FailedPrecondition):
            client.subscribe("a:3", connection_id=ws.conn_id)
        with pytest.raises(herald.InvalidArgument):
            client.disconnect(connection_id=ws.conn_id, code=1000)
        with pytest.raises(herald.InvalidArgument):
            client.disconnect(connection_id=ws.conn_id, reason="x" * 121)


def test_control_stream(client: herald.Client, engine: Engine, topic: str) -> None:
    u = user()
    with WsClient(engine.ws_url(user=u)) as ws:
        with client.control() as ctl:
            sub = ctl.subscribe(topic, connection_id=ws.conn_id)
            missing = ctl.subscribe(topic, connection_id="no-such-connection")
            bad = ctl.subscribe("room::bad", user_id=u)
            unsub = ctl.unsubscribe(topic, user_id=u)
            sub_again = ctl.subscribe([topic], user_id=u)
        assert sub.result() == 1
        assert isinstance(missing.exception(), herald.NotFound)
        assert isinstance(bad.exception(), herald.InvalidArgument)
        assert unsub.result() == 1
        assert sub_again.result() == 1
        assert ws.next("subscribed")["topics"] == [topic]
        assert ws.next("unsubscribed")["topics"] == [topic]
        assert ws.next("subscribed")["topics"] == [topic]
        client.publish(topic, "in")
        assert ws.message()["text"] == "in"

        with client.control() as ctl:
            kicked = ctl.disconnect(connection_id=ws.conn_id, reason="bye")
        assert kicked.result() == 1
        assert ws.next("disconnect")["reason"] == "bye"


async def test_async_subscribe_unsubscribe_disconnect(engine: Engine, topic: str) -> None:
    u = user()
    async with herald.AsyncClient(engine.target) as client:
        async with await AsyncWsClient.open(engine.ws_url(user=u)) as ws:
            assert await client.subscribe(topic, connection_id=ws.conn_id) == 1
            assert (await ws.next("subscribed"))["topics"] == [topic]
            await client.publish(topic, "x")
            assert (await ws.message())["text"] == "x"
            assert await client.unsubscribe([topic], user_id=u) == 1
            assert (await ws.next("unsubscribed"))["topics"] == [topic]
            with pytest.raises(herald.NotFound):
                await client.subscribe(topic, user_id=user())
            assert await client.disconnect(user_id=u, code=4200, reason="r") == 1
            frame = await ws.next("disconnect")
            assert (frame["code"], frame["reason"], frame["reconnect"]) == (4200, "r", False)


async def test_async_control_stream(engine: Engine, topic: str) -> None:
    async with herald.AsyncClient(engine.target) as client:
        async with await AsyncWsClient.open(engine.ws_url()) as ws:
            async with client.control() as ctl:
                sub = await ctl.subscribe(topic, connection_id=ws.conn_id)
                missing = await ctl.subscribe(topic, user_id=user())
                kick = await ctl.disconnect(connection_id=ws.conn_id, reconnect=True)
            assert await sub == 1
            with pytest.raises(herald.NotFound):
                await missing
            assert await kick == 1
            assert (await ws.next("subscribed"))["topics"] == [topic]
            frame = await ws.next("disconnect")
            assert (frame["code"], frame["reconnect"]) == (4003, True)
