"""End to end across the pieces: the engine binary, the Go SDK (the ticker example
and heraldctl), the Python SDK and WebSocket clients, together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import herald
from conftest import WAIT, Engine, WsClient, start_engine
from websockets.exceptions import ConnectionClosed


def test_go_ticker_reaches_every_websocket_client(engine: Engine) -> None:
    clients = [engine.ws_client() for _ in range(3)]
    for c in clients:
        c.subscribe("broadcast:global")
    subprocess.run(
        [os.environ["TICKER"], "-addr", engine.grpc, "-count", "5", "-interval", "20ms"],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    for c in clients:
        for seq in range(1, 6):
            msg = c.next_message()
            assert msg["topic"] == "broadcast:global"
            assert msg["seq"] == seq
            assert msg["data"]["symbol"] == "EUR-USD", "JSON arrives as a JSON value"
            assert isinstance(msg["data"]["price"], float)


def test_python_moves_a_user_and_go_publishes_to_it(engine: Engine) -> None:
    phone = engine.ws_client("?user=alice")
    laptop = engine.ws_client("?user=alice")
    bob = engine.ws_client("?user=bob")
    with engine.client() as py:
        assert py.subscribe("room:py", user_id="alice") == 2
        for c in (phone, laptop):
            assert c.recv() == {"type": "subscribed", "topics": ["room:py"], "server": True}

        [published] = engine.ctl("publish", "-topic", "room:py", "-json", '{"from":"go"}')
        assert published["sequence"] == 1
        for c in (phone, laptop):
            assert c.next_message()["data"] == {"from": "go"}

        members = sorted(m.connection_id for m in py.presence("room:py"))
        assert members == sorted([phone.conn_id, laptop.conn_id])
        [stats] = engine.ctl("stats", "room:py")
        assert stats == {"connections": 2, "users": 1}

    # bob was never moved: his next frame is the answer to his own ping.
    assert bob.command(type="ping")["type"] == "pong"


def test_go_watches_what_clients_and_python_do(engine: Engine) -> None:
    watch = subprocess.Popen(
        [os.environ["HERALDCTL"], "-addr", engine.grpc, "watch", "-snapshot", "-n", "5", "room:*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watch.stderr is not None
    assert watch.stderr.readline().strip() == b"watching"
    time.sleep(0.3)  # let the stream open before the first change

    carol = engine.ws_client("?user=carol")
    carol.subscribe("room:a")  # client-initiated
    with engine.client() as py:
        assert py.subscribe("room:b", user_id="carol") == 1  # producer-initiated
        assert py.disconnect(user_id="carol", code=4321, reason="bye", reconnect=True) == 1

    frames = []
    while True:
        frame = carol.ws.recv(timeout=WAIT)
        frames.append(frame)
        if '"disconnect"' in str(frame):
            break
    assert '"code":4321' in str(frames[-1])

    out, _ = watch.communicate(timeout=WAIT)
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [(e["kind"], e["topic"]) for e in events]
    assert kinds == [
        ("SNAPSHOT_END", ""),
        ("JOIN", "room:a"),
        ("JOIN", "room:b"),
        ("LEAVE", "room:a"),
        ("LEAVE", "room:b"),
    ]
    assert all(e["conn"] == carol.conn_id and e["user"] == "carol" for e in events[1:])


def test_sigterm_reports_not_serving_and_sends_going_away() -> None:
    engine = start_engine("--shutdown-delay", "1s")
    clients = [engine.ws_client() for _ in range(5)]
    for c in clients:
        c.subscribe("room:x")
    with engine.client() as py:
        assert py.health() == herald.HealthStatus.SERVING
        engine.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        status = py.health()
        while status == herald.HealthStatus.SERVING and time.monotonic() < deadline:
            time.sleep(0.02)
            status = py.health()
        assert status == herald.HealthStatus.NOT_SERVING

    notices: list[dict[str, object]] = []
    codes: list[int | None] = []

    def drain(c: WsClient) -> None:
        try:
            while True:
                notices.append(c.recv())
        except ConnectionClosed as closed:
            codes.append(closed.rcvd.code if closed.rcvd else None)

    threads = [threading.Thread(target=drain, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert codes == [1001] * 5
    assert [n for n in notices if n.get("type") == "disconnect"] == [
        {"type": "disconnect", "code": 1001, "reason": "server shutting down", "reconnect": True}
    ] * 5
    assert engine.proc.wait(timeout=WAIT) == 0
