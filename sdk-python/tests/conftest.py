"""Runs the tests against a real Herald engine built from this repository.

The engine binary is $HERALD_BIN (a relative path is taken from the repository
root), by default target/release/herald. Build it first with
``cargo build --release -p herald`` from the repository root.

With HERALD_TEST_CLUSTER=1 the shared engine is a two-node cluster instead: a
nats-server ($HERALD_NATS_SERVER, else .tools/bin/nats-server) with JetStream and
two engines joined to it, gRPC calls going to one node and WebSocket clients to the
other, so that every message a test sees has crossed NATS. Every topic keeps
history there (a ``>`` rule), so that Publish answers with the cluster-wide
sequence the tests check (topics without history answer 0 in a cluster: their
sequence is per node). Tests marked ``node_local`` check what only one node can
know and are skipped in that run.
Engines a test starts for itself (``new_engine``) are single nodes either way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
CLUSTER = os.environ.get("HERALD_TEST_CLUSTER") == "1"

# The config of both cluster nodes: every topic keeps history (see the module doc).
CLUSTER_CONFIG = """
[[topics]]
pattern = ">"
history_size = 10000
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "node_local(reason): checks what only the node itself knows; skipped in the "
        "cluster run (HERALD_TEST_CLUSTER=1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not CLUSTER:
        return
    for item in items:
        marker = item.get_closest_marker("node_local")
        if marker is not None:
            reason = marker.args[0] if marker.args else "node-local"
            item.add_marker(pytest.mark.skip(reason=f"node-local in a cluster: {reason}"))


def herald_bin() -> Path:
    path = Path(os.environ.get("HERALD_BIN", "target/release/herald"))
    return path if path.is_absolute() else REPO_ROOT / path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


def _serving(target: str, credentials: grpc.ChannelCredentials | None = None) -> bool:
    with _channel(target, credentials) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            for service in ("", "herald.v1.Herald"):
                resp = check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if resp.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
            return True
        except grpc.RpcError:
            return False


class Engine:
    """One engine process on free loopback ports."""

    def __init__(
        self,
        log_dir: Path,
        *extra_args: str,
        shutdown_timeout: str = "5s",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``credentials``: how to reach an engine started with ``--tls-cert``."""
        self.binary = herald_bin()
        if not self.binary.is_file():
            pytest.fail(
                f"engine binary {self.binary} not found: build it with "
                "`cargo build --release -p herald` or point HERALD_BIN at it",
                pytrace=False,
            )
        self.ws_port = free_port()
        self.grpc_port = free_port()
        self.extra_args = extra_args
        self.shutdown_timeout = shutdown_timeout
        self.credentials = credentials
        self.log_path = log_dir / f"herald-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ws_url(self, user: str | None = None, info: dict[str, Any] | None = None) -> str:
        from urllib.parse import urlencode

        query = {}
        if user is not None:
            query["user"] = user
        if info is not None:
            query["info"] = json.dumps(info)
        qs = f"?{urlencode(query)}" if query else ""
        return f"ws://127.0.0.1:{self.ws_port}/ws{qs}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--ws-addr",
                f"127.0.0.1:{self.ws_port}",
                "--grpc-addr",
                f"127.0.0.1:{self.grpc_port}",
                "--shutdown-timeout",
                self.shutdown_timeout,
                "--log-format",
                "text",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"engine exited with {self.proc.returncode}:\n{self.log()}", pytrace=False
                )
            if _serving(self.target, self.credentials):
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"engine not SERVING after {STARTUP_TIMEOUT}s:\n{self.log()}", pytrace=False)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM: a graceful shutdown), then wait (SIGKILL after 15 s);
        returns the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class EngineFactory:
    log_dir: Path

    def __call__(
        self,
        *extra_args: str,
        shutdown_timeout: str = "5s",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> Engine:
        return Engine(
            self.log_dir, *extra_args, shutdown_timeout=shutdown_timeout, credentials=credentials
        )


def nats_server_binary() -> Path:
    if path := os.environ.get("HERALD_NATS_SERVER"):
        return Path(path)
    return REPO_ROOT / ".tools/bin/nats-server"


class NatsServer:
    """A nats-server with JetStream on a free loopback port, its store in ``store``."""

    def __init__(self, store: Path) -> None:
        self.binary = nats_server_binary()
        if not self.binary.is_file():
            pytest.fail(
                f"nats-server {self.binary} not found: run scripts/install-nats-server "
                "or point HERALD_NATS_SERVER at it",
                pytrace=False,
            )
        self.port = free_port()
        self.store = store
        self.log_path = store.parent / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js"]
            + ["-sd", str(self.store)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server exited with {self.proc.returncode}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("nats-server did not start", pytrace=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait()


class ClusterEngine(Engine):
    """Node A of a two-node cluster: gRPC calls go to it, WebSocket clients to node
    B (``peer``), so every message crosses NATS."""

    def __init__(self, log_dir: Path, nats: NatsServer) -> None:
        config = log_dir / "cluster.toml"
        config.write_text(CLUSTER_CONFIG)
        args = ("--nats-url", nats.url, "--config", str(config))
        super().__init__(log_dir, *args, "--node-id", "node-a")
        self.peer = Engine(log_dir, *args, "--node-id", "node-b")
        self.nats = nats

    def ws_url(self, user: str | None = None, info: dict[str, Any] | None = None) -> str:
        return self.peer.ws_url(user, info)

    def start(self) -> None:
        self.nats.start()
        self.peer.start()
        super().start()
        # Node A learns of node B from B's next heartbeat; until then presence and
        # control on A would not see B's connections. Info lists the nodes A knows.
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.known_nodes() < 2:
            if time.monotonic() > deadline:
                pytest.fail("node A did not hear of node B", pytrace=False)
            time.sleep(0.05)

    def known_nodes(self) -> int:
        from herald.v1 import herald_pb2, herald_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            resp = herald_pb2_grpc.HeraldStub(channel).Info(herald_pb2.InfoRequest(), timeout=5)
        return len(resp.nodes)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        code = super().stop(sig)
        self.peer.stop(sig)
        self.nats.stop()
        return code


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The engine shared by the whole session (a two-node cluster with
    HERALD_TEST_CLUSTER=1, see the module doc)."""
    log_dir = tmp_path_factory.mktemp("engine")
    eng = ClusterEngine(log_dir, NatsServer(log_dir / "nats")) if CLUSTER else Engine(log_dir)
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture
def new_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    """Make engines of one's own (for tests that stop or restart them)."""
    made: list[Engine] = []

    class _Factory(EngineFactory):
        def __call__(
            self,
            *extra_args: str,
            shutdown_timeout: str = "5s",
            credentials: grpc.ChannelCredentials | None = None,
        ) -> Engine:
            eng = super().__call__(
                *extra_args, shutdown_timeout=shutdown_timeout, credentials=credentials
            )
            made.append(eng)
            return eng

    yield _Factory(tmp_path)
    for eng in made:
        eng.stop()


@pytest.fixture
def topic() -> str:
    """A topic no other test uses."""
    return f"test:{uuid.uuid4().hex[:12]}"
