"""Fixtures for the cluster tests: real nats-server processes ($HERALD_NATS_SERVER,
with JetStream in a temporary store), real engine processes ($HERALD_BIN) joined to
them with --nats-url, the Python SDK for gRPC and WebSocket clients speaking
docs/protocol.md. Everything listens on 127.0.0.1 on free ports; every process a
test starts is killed when the test ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import herald
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0
HERALD_SERVICE = "herald.v1.Herald"

# How a history topic is configured for every test that needs one.
HISTORY_RULES = """
[[topics]]
pattern = "hist:*"
history_size = 10000
history_ttl = "10m"
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster_presence: presence and control across nodes (Presence, PresenceStats, "
        "WatchPresence, Subscribe/Unsubscribe/Disconnect by user on every node)",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_binary() -> str:
    if path := os.environ.get("HERALD_NATS_SERVER"):
        return path
    tools = ROOT / ".tools/bin/nats-server"
    if tools.exists():
        return str(tools)
    found = shutil.which("nats-server")
    if found is None:
        pytest.fail("no nats-server: run scripts/install-nats-server or set HERALD_NATS_SERVER")
    return found


def wait_until(cond: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Nats:
    """One nats-server with JetStream, optionally a member of a routed NATS cluster."""

    def __init__(
        self, store: Path, name: str, cluster_port: int = 0, routes: list[int] | None = None
    ) -> None:
        self.port = free_port()
        self.monitor_port = free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.store = store
        self.log_path = store.parent / f"nats-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        cmd += ["-m", str(self.monitor_port)]
        cmd += ["-sd", str(self.store), "-n", self.name]
        if self.routes:
            cmd += ["--cluster_name", "herald-test"]
            cmd += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            cmd += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while True:
            assert self.proc.poll() is None, f"nats-server exited:\n{self.log()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"nats-server did not start:\n{self.log()}"
                time.sleep(0.02)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class Node:
    """One engine process in the cluster."""

    def __init__(self, log_dir: Path, node_id: str, nats_urls: list[str], *extra: str) -> None:
        self.node_id = node_id
        self.ws_port = free_port()
        self.grpc_port = free_port()
        self.nats_urls = nats_urls
        self.extra = extra
        self.log_path = log_dir / f"herald-{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[herald.Client] = []

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def start(self) -> None:
        cmd = [os.environ["HERALD_BIN"], "--ws-addr", f"127.0.0.1:{self.ws_port}"]
        cmd += ["--grpc-addr", self.grpc, "--node-id", self.node_id, "--log-format", "text"]
        cmd += ["--shutdown-timeout", "2s"]
        for url in self.nats_urls:
            cmd += ["--nats-url", url]
        cmd += list(self.extra)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: self.health(HERALD_SERVICE) == "SERVING" or not self.alive(),
            WAIT,
            f"node {self.node_id} SERVING",
        )
        assert self.alive(), f"node {self.node_id} exited:\n{self.log()}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name of ``service``, or "UNREACHABLE"."""
        with grpc.insecure_channel(self.grpc) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            except grpc.RpcError:
                return "UNREACHABLE"
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def client(self, *, retry: bool = False, timeout: float = WAIT) -> herald.Client:
        """A gRPC client of this node (closed at teardown); without ``retry`` every
        call is made once."""
        policy = herald.RetryPolicy() if retry else herald.RetryPolicy(max_attempts=1)
        c = herald.Client(self.grpc, timeout=timeout, retry=policy)
        self._clients.append(c)
        return c

    def ws_client(self, user: str | None = None) -> WsClient:
        return WsClient(self.ws + (f"?user={user}" if user else ""))

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int | None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class WsClient:
    """A WebSocket client speaking docs/protocol.md. Frames that are not the answer
    to a command are kept in ``pushes`` in arrival order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection = connect(url, open_timeout=WAIT, max_queue=None).__enter__()
        hello = self.recv()
        assert hello["type"] == "connected", hello
        self.conn_id: str = hello["conn_id"]
        self._next_id = 0
        self.pushes: list[dict[str, Any]] = []

    def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, str)
        value: dict[str, Any] = json.loads(frame)
        return value

    def command(self, **cmd: Any) -> dict[str, Any]:
        self._next_id += 1
        cmd["id"] = self._next_id
        self.ws.send(json.dumps(cmd))
        deadline = time.monotonic() + WAIT
        while True:
            frame = self.recv(timeout=max(0.01, deadline - time.monotonic()))
            if frame.get("id") == self._next_id:
                return frame
            self.pushes.append(frame)

    def subscribe(self, *topics: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        cmd: dict[str, Any] = {"type": "subscribe", "topics": list(topics)}
        if since is not None:
            cmd["since"] = since
        reply = self.command(**cmd)
        assert reply["type"] == "subscribed", reply
        return reply

    def messages(self, n: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        """The next ``n`` message frames (pushes received before, first)."""
        out = [f for f in self.pushes if f["type"] == "message"]
        self.pushes = [f for f in self.pushes if f["type"] != "message"]
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(out)} of {n} messages within {timeout}s on {self.url}")
            frame = self.recv(timeout=left)
            if frame["type"] == "message":
                out.append(frame)
            else:
                self.pushes.append(frame)
        return out

    def quiet(self, for_s: float = 0.3) -> list[dict[str, Any]]:
        """Every frame that arrives within ``for_s`` (expected: none)."""
        got = []
        deadline = time.monotonic() + for_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.recv(timeout=left))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - already gone
            pass


class Collector:
    """Reads message frames of a WebSocket client on a thread until stopped, noting
    when each arrived; records how the connection ended."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        # Messages that came before the answer to the client's last command first.
        now = time.monotonic()
        self.frames: list[tuple[float, dict[str, Any]]] = [
            (now, f) for f in client.pushes if f["type"] == "message"
        ]
        client.pushes = [f for f in client.pushes if f["type"] != "message"]
        self.closed: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.client.recv(timeout=0.1)
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError) as e:
                self.closed = e
                return
            if frame["type"] == "message":
                self.frames.append((time.monotonic(), frame))

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(WAIT)
        return [f for _, f in self.frames]

    def data(self) -> list[Any]:
        return [f["data"] for _, f in self.frames]


class Cluster:
    """What one test started; everything is killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nats: list[Nats] = []
        self.nodes: list[Node] = []
        self.ws_clients: list[WsClient] = []
        self.config: Path | None = None

    def start_nats(self) -> Nats:
        server = Nats(self.tmp / f"nats-{len(self.nats)}", f"n{len(self.nats)}")
        self.nats.append(server)
        server.start()
        return server

    def start_nats_cluster(self, size: int = 3) -> list[Nats]:
        ports = [free_port() for _ in range(size)]
        servers = [Nats(self.tmp / f"nats-{i}", f"n{i}", ports[i], ports) for i in range(size)]
        self.nats.extend(servers)
        for s in servers:
            s.start()
        return servers

    def history_config(self) -> Path:
        if self.config is None:
            self.config = self.tmp / "herald.toml"
            self.config.write_text(HISTORY_RULES)
        return self.config

    def start_node(self, *extra: str, nats: list[Nats] | None = None) -> Node:
        urls = [s.url for s in (nats or self.nats)]
        node = Node(
            self.tmp,
            f"node-{len(self.nodes)}-{uuid.uuid4().hex[:6]}",
            urls,
            "--config",
            str(self.history_config()),
            *extra,
        )
        self.nodes.append(node)
        node.start()
        return node

    def ws(self, node: Node, user: str | None = None) -> WsClient:
        c = node.ws_client(user)
        self.ws_clients.append(c)
        return c

    def logs(self) -> str:
        parts = [f"--- {n.node_id}\n{n.log()}" for n in self.nodes]
        parts += [f"--- nats {s.name}\n{s.log()}" for s in self.nats]
        return "\n".join(parts)

    def teardown(self) -> None:
        for c in self.ws_clients:
            c.close()
        for n in self.nodes:
            n.kill()
        for s in self.nats:
            s.kill()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(c.logs())
    c.teardown()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def topic() -> str:
    """A topic without history that no other test uses."""
    return f"plain:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hist_topic() -> str:
    """A topic with history (the hist:* rule) that no other test uses."""
    return f"hist:{uuid.uuid4().hex[:12]}"
