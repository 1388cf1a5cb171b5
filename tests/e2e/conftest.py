"""Fixtures for the end-to-end tests: a real engine binary on free ports, the Python
SDK, the Go SDK command-line driver, and WebSocket clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import herald
import pytest
from websockets.sync.client import ClientConnection, connect

WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    ws: str
    grpc: str

    def client(self) -> herald.Client:
        return herald.Client(self.grpc, timeout=WAIT)

    def ws_client(self, query: str = "") -> WsClient:
        return WsClient(f"ws://{self.ws}/ws{query}")

    def ctl(self, *args: str) -> list[dict[str, Any]]:
        """Runs the Go SDK driver and returns the JSON lines it printed."""
        out = subprocess.run(
            [os.environ["HERALDCTL"], "-addr", self.grpc, *args],
            check=True,
            capture_output=True,
            timeout=WAIT + 5,
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


class WsClient:
    """A WebSocket client speaking docs/protocol.md."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=WAIT).__enter__()
        hello = self.recv()
        assert hello["type"] == "connected", hello
        self.conn_id: str = hello["conn_id"]
        self._next_id = 0

    def recv(self) -> dict[str, Any]:
        frame = self.ws.recv(timeout=WAIT)
        assert isinstance(frame, str)
        value: dict[str, Any] = json.loads(frame)
        return value

    def command(self, **cmd: Any) -> dict[str, Any]:
        self._next_id += 1
        cmd["id"] = self._next_id
        self.ws.send(json.dumps(cmd))
        while True:
            frame = self.recv()
            if frame.get("id") == self._next_id:
                return frame

    def subscribe(self, *topics: str) -> None:
        assert self.command(type="subscribe", topics=list(topics))["type"] == "subscribed"

    def next_message(self) -> dict[str, Any]:
        while True:
            frame = self.recv()
            if frame["type"] == "message":
                return frame

    def close(self) -> None:
        self.ws.close()


def start_engine(*extra: str) -> Engine:
    binary = os.environ["HERALD_BIN"]
    ws, grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [binary, "--ws-addr", ws, "--grpc-addr", grpc, "--log", "warn", *extra],
        stdout=subprocess.DEVNULL,
    )
    engine = Engine(proc, ws, grpc)
    deadline = time.monotonic() + WAIT
    with engine.client() as c:
        while True:
            try:
                if c.health(timeout=1.0) == herald.HealthStatus.SERVING:
                    return engine
            except herald.HeraldError:
                pass
            assert proc.poll() is None, "the engine exited during start-up"
            assert time.monotonic() < deadline, "the engine did not become SERVING"
            time.sleep(0.05)


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = start_engine()
    yield e
    if e.proc.poll() is None:
        e.proc.send_signal(signal.SIGTERM)
        e.proc.wait(timeout=WAIT + 5)
