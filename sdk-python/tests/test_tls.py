"""The SDK against an engine that serves TLS on both listeners and checks API keys.

A test CA and a server certificate for localhost and 127.0.0.1 are made by
``trustme``; the engine gets them with --tls-cert/--tls-key and one --api-key.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from conftest import Engine, EngineFactory
from wsclient import WsClient

import herald

KEY = "tls-key-0123456789"
ONCE = herald.RetryPolicy(max_attempts=1)


@dataclass
class TlsEngine:
    engine: Engine
    credentials: grpc.ChannelCredentials
    ssl_context: ssl.SSLContext

    def wss_url(self, user: str) -> str:
        return self.engine.ws_url(user=user).replace("ws://", "wss://", 1)


@pytest.fixture
def tls_engine(new_engine: EngineFactory, tmp_path: Path) -> Iterator[TlsEngine]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    context = ssl.create_default_context()
    ca.configure_trust(context)
    eng = new_engine(
        "--tls-cert", str(cert), "--tls-key", str(key), "--api-key", KEY, credentials=credentials
    )
    eng.start()
    yield TlsEngine(eng, credentials, context)


def test_tls_with_api_key_publishes_to_a_wss_client(tls_engine: TlsEngine) -> None:
    target = tls_engine.engine.target
    with (
        herald.Client(target, api_key=KEY, credentials=tls_engine.credentials) as client,
        WsClient(tls_engine.wss_url("alice"), ssl_context=tls_engine.ssl_context) as ws,
    ):
        ws.subscribe("news:tls")
        assert client.info().node_id
        assert client.publish("news:tls", {"secure": True}).sequence == 1
        frame = ws.message()
        assert frame["topic"] == "news:tls"
        assert frame["data"] == {"secure": True}
        with client.publisher() as publisher:
            publisher.publish("news:tls", "streamed").result(timeout=10)
        assert ws.message()["text"] == "streamed"


async def test_async_client_over_tls_with_api_key(tls_engine: TlsEngine) -> None:
    async with herald.AsyncClient(
        tls_engine.engine.target, api_key=KEY, credentials=tls_engine.credentials
    ) as client:
        assert (await client.info()).node_id
        assert (await client.publish("news:async", "hi")).sequence == 1


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789"])
def test_a_missing_or_wrong_key_is_unauthenticated(tls_engine: TlsEngine, key: str | None) -> None:
    with herald.Client(
        tls_engine.engine.target, api_key=key, credentials=tls_engine.credentials, retry=ONCE
    ) as client:
        with pytest.raises(herald.Unauthenticated) as info:
            client.info()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(herald.Unauthenticated):
            client.publish("news:refused", "no")
        # Health stays open: probes carry no key.
        assert client.health() == herald.HealthStatus.SERVING


def test_a_plaintext_client_cannot_use_the_tls_port(tls_engine: TlsEngine) -> None:
    with herald.Client(tls_engine.engine.target, api_key=KEY, retry=ONCE, timeout=5) as client:
        with pytest.raises(herald.Unavailable):
            client.info()
