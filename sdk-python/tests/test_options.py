"""Connection options against the real engine: API key and metadata, TLS
credentials, per-call and default timeouts.

The shared engine runs without API keys and without TLS: a client sending a key and
metadata works end to end (the headers themselves are built by ``Settings``, tested
in test_units.py), and a client given TLS credentials speaks TLS, which the
plaintext port refuses. An engine with keys and TLS is tested in test_tls.py.
Deadlines are exceeded against an engine paused with SIGSTOP.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from conftest import Engine, EngineFactory
from wsclient import AsyncWsClient, WsClient

import herald
from herald import PresenceEventKind as Kind

ONCE = herald.RetryPolicy(max_attempts=1)


def test_api_key_and_metadata_work_end_to_end(engine: Engine, topic: str) -> None:
    with (
        herald.Client(engine.target, api_key="k-123", metadata=[("X-Tenant", "t1")]) as client,
        WsClient(engine.ws_url(user="keyed")) as ws,
    ):
        with client.watch_presence(topic) as watch:
            assert next(watch).kind == Kind.SNAPSHOT_END
            ws.subscribe(topic)
            assert next(watch).kind == Kind.JOIN
        assert client.publish(topic, {"k": 1}).sequence == 1
        assert ws.message()["data"] == {"k": 1}
        assert [m.connection_id for m in client.presence(topic)] == [ws.conn_id]
        assert client.info().messages_published >= 1


async def test_async_api_key_and_metadata_work_end_to_end(engine: Engine, topic: str) -> None:
    async with (
        herald.AsyncClient(engine.target, api_key="k-9", metadata=[("x-a", "b")]) as client,
        await AsyncWsClient.open(engine.ws_url(user="keyed")) as ws,
    ):
        async with client.watch_presence(topic) as watch:
            assert (await anext(watch)).kind == Kind.SNAPSHOT_END
            await ws.subscribe(topic)
            assert (await anext(watch)).kind == Kind.JOIN
        assert (await client.publish(topic, "hi")).sequence == 1
        assert (await ws.message())["text"] == "hi"
        assert [m.connection_id async for m in client.presence(topic)] == [ws.conn_id]
        assert (await client.info()).messages_published >= 1


def test_tls_client_speaks_tls(engine: Engine) -> None:
    tls = grpc.ssl_channel_credentials()
    with herald.Client(engine.target, credentials=tls, retry=ONCE, timeout=5) as client:
        with pytest.raises(herald.Unavailable):  # the plaintext port refuses the handshake
            client.info()
    with herald.Client(engine.target, timeout=5) as plain:
        assert plain.info().node_id


async def test_async_tls_client_speaks_tls(engine: Engine) -> None:
    tls = grpc.ssl_channel_credentials()
    async with herald.AsyncClient(engine.target, credentials=tls, retry=ONCE, timeout=5) as client:
        with pytest.raises(herald.Unavailable):
            await client.info()


@pytest.fixture
def paused_engine(new_engine: EngineFactory) -> Iterator[Engine]:
    """An engine stopped with SIGSTOP: it accepts TCP connections but answers nothing.

    (Against a running engine on loopback even a microsecond deadline is not reliably
    exceeded: the answer can arrive before the deadline timer fires.)"""
    engine = new_engine()
    engine.start()
    assert engine.proc is not None
    pid = engine.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield engine
    finally:
        os.kill(pid, signal.SIGCONT)


def test_per_call_timeout(paused_engine: Engine) -> None:
    with herald.Client(paused_engine.target, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(herald.DeadlineExceeded):
            client.info(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5


def test_default_timeout(paused_engine: Engine, topic: str) -> None:
    with herald.Client(paused_engine.target, timeout=0.3) as client:
        with pytest.raises(herald.DeadlineExceeded):
            client.publish(topic, "x")
        with pytest.raises(herald.DeadlineExceeded):  # retried until the deadline
            client.presence_stats(topic)


async def test_async_per_call_timeout(paused_engine: Engine) -> None:
    async with herald.AsyncClient(paused_engine.target, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(herald.DeadlineExceeded):
            await client.info(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5


async def test_async_default_timeout(paused_engine: Engine, topic: str) -> None:
    async with herald.AsyncClient(paused_engine.target, timeout=0.3) as client:
        with pytest.raises(herald.DeadlineExceeded):
            await client.publish(topic, "x")
