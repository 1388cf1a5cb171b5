#!/usr/bin/env python3
"""Chat example backend: serves the page, publishes messages, relays presence.

- ``GET /`` serves the page (``static/``) and ``/herald.min.js`` the JavaScript SDK
  bundle (``sdk-js/dist``); ``/config.json`` tells the page where the engine's
  WebSocket endpoint is.
- ``POST /api/send`` with ``{"room", "user", "text"}`` publishes the message to
  ``room:<room>`` over gRPC; every page in the room receives it over WebSocket.
- A ``WatchPresence("room:>")`` stream keeps a view of who is in each room and
  publishes the room's list to ``online:<room>`` whenever it changes, so pages get
  "who is online" over the same WebSocket. When the stream drops (the engine
  restarts) the SDK reports a RESYNC and replays a snapshot: the view is rebuilt and
  every room's list published again.

::

    python examples/chat/server.py --listen 127.0.0.1:8000 --grpc 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import herald
from herald import PresenceEventKind as Kind

HERE = Path(__file__).resolve().parent
SDK_BUNDLE = HERE.parent.parent / "sdk-js" / "dist" / "herald.min.js"
STATIC = {
    "/": (HERE / "static" / "index.html", "text/html; charset=utf-8"),
    "/app.js": (HERE / "static" / "app.js", "text/javascript; charset=utf-8"),
    "/style.css": (HERE / "static" / "style.css", "text/css; charset=utf-8"),
    "/herald.min.js": (SDK_BUNDLE, "text/javascript; charset=utf-8"),
}
ROOM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT = 2000
MAX_USER = 32


class Presence:
    """Who is in which room, rebuilt from every RESYNC + snapshot."""

    def __init__(self, client: herald.Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        # room -> connection id -> user id
        self.rooms: dict[str, dict[str, str]] = {}
        self.live = False
        # Rooms of the view dropped at the last RESYNC: republished (maybe empty) once rebuilt.
        self.stale: set[str] = set()
        self.watch: herald.PresenceWatch | None = None

    def online(self, room: str) -> list[str]:
        with self.lock:
            return sorted(set(self.rooms.get(room, {}).values()))

    def publish(self, room: str) -> None:
        users = self.online(room)
        try:
            self.client.publish(
                f"online:{room}",
                {"room": room, "users": users},
                idempotency_key=f"online-{uuid.uuid4()}",
            )
        except herald.HeraldError as e:
            print(f"presence publish to online:{room} failed: {e}", file=sys.stderr)

    def run(self) -> None:
        self.watch = self.client.watch_presence(
            "room:>", include_snapshot=True, max_reconnects=None
        )
        with self.watch as events:
            for ev in events:
                self.handle(ev)

    def handle(self, ev: herald.PresenceEvent) -> None:
        if ev.kind == Kind.RESYNC:
            with self.lock:
                self.stale = set(self.rooms)
                self.rooms.clear()
                self.live = False
            return
        if ev.kind == Kind.SNAPSHOT_END:
            with self.lock:
                self.live = True
                rooms = set(self.rooms) | self.stale
                self.stale = set()
            for room in sorted(rooms):
                self.publish(room)
            return
        if ev.member is None or not ev.topic.startswith("room:"):
            return
        room = ev.topic.removeprefix("room:")
        user = ev.member.user_id or "anonymous"
        with self.lock:
            members = self.rooms.setdefault(room, {})
            if ev.kind in (Kind.SNAPSHOT, Kind.JOIN):
                members[ev.member.connection_id] = user
            elif ev.kind == Kind.LEAVE:
                members.pop(ev.member.connection_id, None)
                if not members:
                    del self.rooms[room]
            live = self.live
        if live and ev.kind in (Kind.JOIN, Kind.LEAVE):
            self.publish(room)


def make_handler(client: herald.Client, presence: Presence, config: dict[str, Any]) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "herald-chat-example"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def json(self, status: int, value: Any) -> None:
            self.reply(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/config.json":
                self.json(HTTPStatus.OK, config)
            elif path == "/api/online":
                room = self.path.partition("room=")[2]
                if not ROOM.match(room):
                    self.json(
                        HTTPStatus.BAD_REQUEST, {"error": "room must be 1-64 of A-Z a-z 0-9 _ -"}
                    )
                else:
                    self.json(HTTPStatus.OK, {"room": room, "users": presence.online(room)})
            elif path in STATIC:
                file, ctype = STATIC[path]
                try:
                    self.reply(HTTPStatus.OK, file.read_bytes(), ctype)
                except FileNotFoundError:
                    self.json(
                        HTTPStatus.NOT_FOUND, {"error": f"{file} is missing (build sdk-js first)"}
                    )
            else:
                self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/api/send":
                self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > 16384:
                    raise ValueError("request too large")
                body = json.loads(self.rfile.read(length) or b"null")
                room, user, text = body["room"], body["user"], body["text"]
                if not isinstance(room, str) or not ROOM.match(room):
                    raise ValueError("room must be 1-64 of A-Z a-z 0-9 _ -")
                if not isinstance(user, str) or not 0 < len(user) <= MAX_USER:
                    raise ValueError(f"user must be 1-{MAX_USER} characters")
                if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_TEXT:
                    raise ValueError(f"text must be 1-{MAX_TEXT} characters")
            except (ValueError, KeyError, TypeError) as e:
                self.json(HTTPStatus.BAD_REQUEST, {"error": f"bad message: {e}"})
                return
            msg = {"user": user, "text": text.strip(), "ts": int(time.time() * 1000)}
            try:
                # With an idempotency key the SDK retries while the engine is unreachable
                # (a restart), and a retry that was in fact delivered is not sent twice.
                result = client.publish(f"room:{room}", msg, idempotency_key=f"chat-{uuid.uuid4()}")
            except herald.HeraldError as e:
                self.json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"publish failed: {e.message}"})
                return
            self.json(HTTPStatus.OK, {"seq": result.sequence})

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description="Herald chat example backend")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HTTP address of the page")
    parser.add_argument("--grpc", default="127.0.0.1:50051", help="engine gRPC address")
    parser.add_argument(
        "--ws-port", type=int, default=8080, help="engine WebSocket port (for the page)"
    )
    parser.add_argument("--ws-url", default=None, help="engine WebSocket URL, instead of --ws-port")
    args = parser.parse_args()

    host, _, port = args.listen.rpartition(":")
    config = {"ws_url": args.ws_url, "ws_port": args.ws_port, "ws_path": "/ws"}
    # Reconnect to the engine quickly after it restarts (gRPC's default backoff reaches minutes).
    client = herald.Client(
        args.grpc,
        timeout=10.0,
        channel_options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )
    presence = Presence(client)
    threading.Thread(target=presence.run, name="presence", daemon=True).start()
    httpd = ThreadingHTTPServer((host, int(port)), make_handler(client, presence, config))
    print(f"chat: http://{args.listen}/ (engine gRPC {args.grpc})", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        if presence.watch is not None:
            presence.watch.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
