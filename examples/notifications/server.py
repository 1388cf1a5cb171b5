#!/usr/bin/env python3
"""Notifications example backend: per-user notifications over Herald.

Each browser tab is one user (``/?user=alice``): the page connects to the engine
with ``?user=alice`` and subscribes to ``user:alice``. ``POST /api/notify`` with
``{"to", "from", "text"}`` publishes a notification to ``user:<to>`` over gRPC;
every tab of that user shows it, nobody else's does.

::

    python examples/notifications/server.py --listen 127.0.0.1:8002 --grpc 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import herald

HERE = Path(__file__).resolve().parent
FILES = {
    "/": (HERE / "static" / "index.html", "text/html; charset=utf-8"),
    "/app.js": (HERE / "static" / "app.js", "text/javascript; charset=utf-8"),
    "/herald.min.js": (
        HERE.parent.parent / "sdk-js" / "dist" / "herald.min.js",
        "text/javascript; charset=utf-8",
    ),
}
# A user id is one topic segment (docs/protocol.md, "Topic names").
USER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEXT = 500


def make_handler(client: herald.Client, config: dict[str, Any]) -> type:
    class Handler(BaseHTTPRequestHandler):
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
            elif path in FILES:
                file, ctype = FILES[path]
                try:
                    self.reply(HTTPStatus.OK, file.read_bytes(), ctype)
                except FileNotFoundError:
                    self.json(
                        HTTPStatus.NOT_FOUND, {"error": f"{file} is missing (build sdk-js first)"}
                    )
            else:
                self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/api/notify":
                self.json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > 8192:
                    raise ValueError("request too large")
                body = json.loads(self.rfile.read(length) or b"null")
                to, sender, text = body["to"], body["from"], body["text"]
                for name, value in (("to", to), ("from", sender)):
                    if not isinstance(value, str) or not USER.match(value):
                        raise ValueError(f"{name} must be a user id: 1-64 of A-Z a-z 0-9 _ -")
                if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_TEXT:
                    raise ValueError(f"text must be 1-{MAX_TEXT} characters")
            except (ValueError, KeyError, TypeError) as e:
                self.json(HTTPStatus.BAD_REQUEST, {"error": f"bad notification: {e}"})
                return
            note = {"from": sender, "text": text.strip(), "ts": int(time.time() * 1000)}
            try:
                # With an idempotency key the SDK retries while the engine is unreachable.
                result = client.publish(f"user:{to}", note, idempotency_key=f"note-{uuid.uuid4()}")
                # How many tabs of that user are connected right now (0: nobody saw it).
                tabs = client.presence_stats(f"user:{to}").connections
            except herald.HeraldError as e:
                self.json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"publish failed: {e.message}"})
                return
            self.json(HTTPStatus.OK, {"seq": result.sequence, "tabs": tabs})

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description="Herald notifications example backend")
    parser.add_argument("--listen", default="127.0.0.1:8002", help="HTTP address of the page")
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
    httpd = ThreadingHTTPServer((host, int(port)), make_handler(client, config))
    print(f"notifications: http://{args.listen}/?user=alice (engine gRPC {args.grpc})", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
