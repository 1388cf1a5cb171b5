"""The examples in examples/python run against a real engine."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT, Engine
from wsclient import WsClient

EXAMPLES = REPO_ROOT / "examples" / "python"


def test_producer_publishes_ticks(engine: Engine, topic: str) -> None:
    for extra in ([], ["--stream"]):
        with WsClient(engine.ws_url()) as ws:
            ws.subscribe(topic)
            out = subprocess.run(
                [sys.executable, str(EXAMPLES / "producer.py"), "--target", engine.target,
                 "--topic", topic, "--count", "3", "--interval", "0", *extra],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            ticks = [ws.message() for _ in range(3)]
        assert [t["data"]["n"] for t in ticks] == [0, 1, 2]
        assert all(isinstance(t["data"]["bid"], float) for t in ticks)
        assert len(out.stdout.splitlines()) == 3


def test_producer_reports_an_unreachable_engine() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "producer.py"), "--target", "127.0.0.1:1", "--count", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "cannot reach the engine" in out.stderr


def test_watch_presence_example_prints_joins(engine: Engine, topic: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "watch_presence.py"), f"{topic}:>",
         "--target", engine.target],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("-- snapshot complete: 0 members")
        with WsClient(engine.ws_url(user="walt")) as ws:
            ws.subscribe(f"{topic}:room")
            assert proc.stdout.readline().split() == ["join", f"{topic}:room", "walt"]
        assert proc.stdout.readline().split() == ["leave", f"{topic}:room", "walt"]
    finally:
        proc.terminate()
        proc.wait(10)
