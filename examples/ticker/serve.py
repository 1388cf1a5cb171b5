#!/usr/bin/env python3
"""Serves the ticker page, the JavaScript SDK bundle and /config.json (where the
engine's WebSocket endpoint is). Standard library only.

::

    python3 examples/ticker/serve.py --listen 127.0.0.1:8001 --ws-port 8080
"""

from __future__ import annotations

import argparse
import json
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FILES = {
    "/": (HERE / "static" / "index.html", "text/html; charset=utf-8"),
    "/app.js": (HERE / "static" / "app.js", "text/javascript; charset=utf-8"),
    "/herald.min.js": (
        HERE.parent.parent / "sdk-js" / "dist" / "herald.min.js",
        "text/javascript; charset=utf-8",
    ),
}


def make_handler(config: dict[str, Any]) -> type:
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

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/config.json":
                self.reply(HTTPStatus.OK, json.dumps(config).encode(), "application/json")
                return
            if path not in FILES:
                self.reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
                return
            file, ctype = FILES[path]
            try:
                self.reply(HTTPStatus.OK, file.read_bytes(), ctype)
            except FileNotFoundError:
                self.reply(
                    HTTPStatus.NOT_FOUND,
                    f"{file} is missing (build sdk-js first)\n".encode(),
                    "text/plain",
                )

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve the Herald ticker page")
    parser.add_argument("--listen", default="127.0.0.1:8001", help="HTTP address of the page")
    parser.add_argument(
        "--ws-port", type=int, default=8080, help="engine WebSocket port (for the page)"
    )
    parser.add_argument("--ws-url", default=None, help="engine WebSocket URL, instead of --ws-port")
    parser.add_argument("--topic", default="broadcast:global", help="topic the page subscribes to")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    config = {"ws_url": args.ws_url, "ws_port": args.ws_port, "ws_path": "/ws", "topic": args.topic}
    httpd = ThreadingHTTPServer((host, int(port)), make_handler(config))
    print(f"ticker page: http://{args.listen}/", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
