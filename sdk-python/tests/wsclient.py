"""Minimal WebSocket clients speaking docs/protocol.md, to see what really arrives."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as aconnect
from websockets.sync.client import ClientConnection, connect

Frame = dict[str, Any]
TIMEOUT = 5.0


class WsClient:
    """A blocking client: connects, reads ``connected``, subscribes, reads pushes."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=TIMEOUT, legacy=True, ssl=ssl_context)
        self.ids = itertools.count(1)
        self.backlog: list[Frame] = []
        hello = self.recv()
        assert hello["type"] == "connected", hello
        self.conn_id: str = hello["conn_id"]

    def recv(self, timeout: float = TIMEOUT) -> Frame:
        frame: Frame = json.loads(self.ws.recv(timeout=timeout))
        return frame

    def next(self, type_: str, timeout: float = TIMEOUT) -> Frame:
        """The next frame of a type; frames of other types are kept in ``backlog``."""
        while True:
            frame = self.recv(timeout)
            if frame["type"] == type_:
                return frame
            self.backlog.append(frame)

    def subscribe(self, *topics: str) -> None:
        rid = next(self.ids)
        self.ws.send(json.dumps({"type": "subscribe", "id": rid, "topics": list(topics)}))
        while True:
            frame = self.recv()
            if frame.get("id") == rid:
                assert frame["type"] == "subscribed", frame
                return
            self.backlog.append(frame)

    def unsubscribe(self, *topics: str) -> None:
        rid = next(self.ids)
        self.ws.send(json.dumps({"type": "unsubscribe", "id": rid, "topics": list(topics)}))
        while True:
            frame = self.recv()
            if frame.get("id") == rid:
                assert frame["type"] == "unsubscribed", frame
                return
            self.backlog.append(frame)

    def message(self, timeout: float = TIMEOUT) -> Frame:
        return self.next("message", timeout)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWsClient:
    """The asyncio twin of :class:`WsClient`; create with ``await AsyncWsClient.open(url)``."""

    def __init__(self, ws: AsyncConnection, conn_id: str) -> None:
        self.ws = ws
        self.conn_id = conn_id
        self.ids = itertools.count(1)
        self.backlog: list[Frame] = []

    @classmethod
    async def open(cls, url: str) -> AsyncWsClient:
        ws = await aconnect(url, open_timeout=TIMEOUT)
        hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert hello["type"] == "connected", hello
        return cls(ws, hello["conn_id"])

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        frame: Frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        return frame

    async def next(self, type_: str, timeout: float = TIMEOUT) -> Frame:
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == type_:
                return frame
            self.backlog.append(frame)

    async def subscribe(self, *topics: str) -> None:
        rid = next(self.ids)
        await self.ws.send(json.dumps({"type": "subscribe", "id": rid, "topics": list(topics)}))
        while True:
            frame = await self.recv()
            if frame.get("id") == rid:
                assert frame["type"] == "subscribed", frame
                return
            self.backlog.append(frame)

    async def message(self, timeout: float = TIMEOUT) -> Frame:
        return await self.next("message", timeout)

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> AsyncWsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
