"""Connection options against an in-process gRPC server that records what it gets:
the API key and metadata headers, TLS credentials, per-call timeouts."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import herald
from herald.v1 import herald_pb2 as pb


class Recorder:
    """Answers Publish and keeps the metadata of every call."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def publish(
        self, request: pb.PublishRequest, context: grpc.ServicerContext
    ) -> pb.PublishResponse:
        with self.lock:
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
            seq = len(self.metadata)
        if request.topic == "slow":
            time.sleep(1.0)
        return pb.PublishResponse(sequence=seq)


def serve(
    recorder: Recorder, creds: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(
        recorder.publish,
        request_deserializer=pb.PublishRequest.FromString,
        response_serializer=pb.PublishResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("herald.v1.Herald", {"Publish": handler}),)
    )
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    server, port = serve(rec)
    yield rec, f"127.0.0.1:{port}"
    server.stop(None)


def test_api_key_and_metadata_are_sent(recorder: tuple[Recorder, str]) -> None:
    rec, target = recorder
    with herald.Client(target, api_key="k-123", metadata=[("X-Tenant", "t1")]) as client:
        assert client.publish("room:a", "x").sequence == 1
    md = rec.metadata[0]
    assert md["authorization"] == "Bearer k-123"
    assert md["x-tenant"] == "t1"
    assert md["user-agent"].startswith(f"herald-sdk-python/{herald.__version__}")


async def test_async_api_key_and_metadata_are_sent(recorder: tuple[Recorder, str]) -> None:
    rec, target = recorder
    async with herald.AsyncClient(target, api_key="k-9", metadata=[("x-a", "b")]) as client:
        await client.publish("room:a", "x")
    assert rec.metadata[0]["authorization"] == "Bearer k-9"
    assert rec.metadata[0]["x-a"] == "b"


def test_no_key_no_authorization_header(recorder: tuple[Recorder, str]) -> None:
    rec, target = recorder
    with herald.Client(target) as client:
        client.publish("room:a", "x")
    assert "authorization" not in rec.metadata[0]


def test_per_call_timeout(recorder: tuple[Recorder, str]) -> None:
    _, target = recorder
    with herald.Client(target, timeout=30) as client:
        with pytest.raises(herald.DeadlineExceeded):
            client.publish("slow", "x", timeout=0.2)


async def test_async_default_timeout(recorder: tuple[Recorder, str]) -> None:
    _, target = recorder
    async with herald.AsyncClient(target, timeout=0.2) as client:
        with pytest.raises(herald.DeadlineExceeded):
            await client.publish("slow", "x")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_credentials(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    rec = Recorder()
    server, port = serve(rec, creds)
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with herald.Client(f"localhost:{port}", credentials=tls, api_key="k") as client:
            assert client.publish("room:a", "x").sequence == 1
        assert rec.metadata[0]["authorization"] == "Bearer k"
        # a plaintext client cannot talk to a TLS server
        with herald.Client(f"localhost:{port}", timeout=2) as plain:
            with pytest.raises(herald.Unavailable):
                plain.publish("room:a", "x")
    finally:
        server.stop(None)
