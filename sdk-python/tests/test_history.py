"""History and RemoveHistory, and the epoch of publish results, against a real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, EngineFactory

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
