"""History and RemoveHistory, Subscribe with ``since``, and the epoch of publish results,
against a real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, EngineFactory
from wsclient import AsyncWsClient, Frame, WsClient

import herald

RULES = """
[[topics]]
pattern = "hist:*"
subscribe = "anyone"
history_size = 100
history_ttl = "2m"
"""


@pytest.fixture
def history_engine(new_engine: EngineFactory, tmp_path: Path) -> Iterator[Engine]:
    config = tmp_path / "herald.toml"
    config.write_text(RULES)
    eng = new_engine("--config", str(config))
    eng.start()
    yield eng


def test_history_pages_and_remove_history(history_engine: Engine) -> None:
    with herald.Client(history_engine.target) as client:
        results = [client.publish("hist:a", {"n": n}) for n in range(1, 6)]
        epoch = results[0].epoch
        assert len(epoch) == 16
        assert all(r.epoch == epoch for r in results)

        first = client.history("hist:a", limit=2)
        assert [m.sequence for m in first.messages] == [1, 2]
        assert first.messages[0].data == b'{"n":1}'
        assert first.messages[0].content_type == "application/json"
        assert first.position == herald.StreamPosition(5, epoch)
        assert first.first_sequence == 1

        since = herald.StreamPosition(2, epoch)
        assert [m.sequence for m in client.history("hist:a", since=since).messages] == [3, 4, 5]
        newest = client.history("hist:a", reverse=True, limit=2)
        assert [m.sequence for m in newest.messages] == [5, 4]

        with pytest.raises(herald.FailedPrecondition):
            client.history("hist:a", since=herald.StreamPosition(1, "0000000000000000"))

        assert client.remove_history("hist:a") == 5
        after = client.history("hist:a")
        assert after.messages == ()
        assert after.position.sequence == 5
        assert client.info().history_messages == 0


async def test_async_history(history_engine: Engine) -> None:
    async with herald.AsyncClient(history_engine.target) as client:
        result = await client.publish("hist:b", "plain text", content_type="text/plain")
        page = await client.history("hist:b")
        assert [(m.sequence, m.data, m.content_type) for m in page.messages] == [
            (1, b"plain text", "text/plain")
        ]
        assert page.position == herald.StreamPosition(1, result.epoch)
        assert (await client.info()).history_messages == 1
        assert await client.remove_history("hist:b") == 1


def _until_push(ws: WsClient) -> tuple[list[Frame], Frame]:
    """The messages that arrive before the next server-initiated ``subscribed`` push,
    and the push."""
    messages: list[Frame] = []
    while True:
        frame = ws.recv()
        if frame["type"] == "subscribed" and frame.get("server"):
            return messages, frame
        if frame["type"] == "message":
            messages.append(frame)


def test_subscribe_since_recovers_what_the_connection_missed(history_engine: Engine) -> None:
    with herald.Client(history_engine.target) as client, WsClient(history_engine.ws_url()) as ws:
        epoch = [client.publish("hist:r", {"n": n}) for n in range(1, 6)][0].epoch
        client.publish("plain:r", "x")  # no [[topics]] rule: no history

        result = client.subscribe_since(
            {"hist:r": herald.StreamPosition(2, epoch)},
            topics=["plain:r"],
            connection_id=ws.conn_id,
        )
        assert result.connections == 1
        assert result.recovered == {"hist:r": True}
        assert result.positions == {"hist:r": herald.StreamPosition(5, epoch)}
        assert result.not_recovered == []

        replayed, push = _until_push(ws)
        assert [(m["topic"], m["seq"], m["epoch"]) for m in replayed] == [
            ("hist:r", 3, epoch),
            ("hist:r", 4, epoch),
            ("hist:r", 5, epoch),
        ]
        assert sorted(push["topics"]) == ["hist:r", "plain:r"]
        assert push["recovered"] == {"hist:r": True}
        assert push["positions"] == {"hist:r": {"seq": 5, "epoch": epoch}}

        # Live messages follow the replay, no gap, no duplicate.
        client.publish("hist:r", {"n": 6})
        live = ws.message()
        assert (live["topic"], live["seq"]) == ("hist:r", 6)


def test_subscribe_since_reports_what_cannot_be_recovered(history_engine: Engine) -> None:
    with herald.Client(history_engine.target) as client, WsClient(history_engine.ws_url()) as ws:
        epoch = [client.publish("hist:s", n) for n in range(3)][0].epoch
        plain = [client.publish("plain:s", n) for n in range(3)][-1]

        result = client.subscribe_since(
            {
                # another epoch: the engine restarted, or the topic was created again
                "hist:s": herald.StreamPosition(1, "0000000000000000"),
                # behind, on a topic that keeps no history
                "plain:s": herald.StreamPosition(1, plain.epoch),
            },
            connection_id=ws.conn_id,
        )
        assert result.recovered == {"hist:s": False, "plain:s": False}
        assert result.not_recovered == ["hist:s", "plain:s"]
        assert result.positions["hist:s"] == herald.StreamPosition(3, epoch)
        assert result.positions["plain:s"] == herald.StreamPosition(3, plain.epoch)
        replayed, push = _until_push(ws)
        assert replayed == []
        assert push["recovered"] == {"hist:s": False, "plain:s": False}

        # Up to date recovers even without history; already subscribed is False.
        ws2 = WsClient(history_engine.ws_url())
        with ws2:
            again = client.subscribe_since(
                {"plain:s": herald.StreamPosition(3, plain.epoch)}, connection_id=ws2.conn_id
            )
            assert again.recovered == {"plain:s": True}
            twice = client.subscribe_since(
                {"plain:s": herald.StreamPosition(3, plain.epoch)}, connection_id=ws2.conn_id
            )
            assert twice.recovered == {"plain:s": False}

        with pytest.raises(herald.NotFound):
            client.subscribe_since(
                {"hist:s": herald.StreamPosition(0, epoch)}, user_id="nobody-here"
            )


async def test_async_subscribe_since(history_engine: Engine) -> None:
    async with (
        herald.AsyncClient(history_engine.target) as client,
        await AsyncWsClient.open(history_engine.ws_url(user="ann")) as ws,
    ):
        first = await client.publish("hist:t", {"n": 1})
        await client.publish("hist:t", {"n": 2})
        result = await client.subscribe_since(
            {"hist:t": herald.StreamPosition(1, first.epoch)}, user_id="ann"
        )
        assert result == herald.SubscribeResult(
            connections=1,
            recovered={"hist:t": True},
            positions={"hist:t": herald.StreamPosition(2, first.epoch)},
        )
        message = await ws.message()
        assert (message["seq"], message["data"]) == (2, {"n": 2})
