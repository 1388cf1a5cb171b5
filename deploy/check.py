#!/usr/bin/env python3
"""Checks the deployment files in deploy/ against schemas, linters and the real engine.

Run it through deploy/check.sh, which installs the tools this needs into deploy/.venv.

What is checked:
  Dockerfile    parsed (dockerfile-parse) and linted (hadolint); multi-stage, distroless
                and non-root at the end; every COPY source exists and is let through by
                Dockerfile.dockerignore; the copied files alone make a complete Cargo
                workspace; the engine binary needs no library that distroless/cc lacks
  compose       the Compose specification's JSON schema; three nodes and NATS with
                JetStream on a named volume, the nodes' cluster flags and advertised
                addresses against their published ports, limits, health checks and
                stop grace period
  Kubernetes    the Kubernetes schemas (kubernetes-validate --strict); probes, ports,
                security context and termination grace period against the config;
                several replicas, the NATS URL, node id and advertised addresses from
                the downward API; the NATS StatefulSet with JetStream on a volume
  systemd       systemd-analyze verify and security on a copy that runs the real binary;
                TimeoutStopSec and LimitNOFILE; the commented cluster settings are
                options of the engine
  NATS          the image tags are the nats-server release the tests pin
                (scripts/install-nats-server); the shipped NATS configuration loads in
                nats-server ($HERALD_NATS_SERVER, .tools/bin or PATH)
  engine        every flag, HERALD_* variable and config file used here is accepted by
                the engine ($HERALD_BIN): each shipped config file is run, the health
                probe commands of the image, compose and Kubernetes files are run against
                it (SERVING, then NOT_SERVING after SIGTERM), and it must exit 0. With a
                nats-server, the Kubernetes and systemd configurations also run as
                cluster nodes against the shipped NATS configuration: herald.v1.Herald
                SERVING once connected, NOT_SERVING while NATS is stopped, the server
                ("") and /readyz serving throughout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "herald.service"
UNIT_TOML = DEPLOY / "systemd" / "herald.toml"

NATS_K8S = K8S / "nats.yaml"
NATS_INSTALL = ROOT / "scripts" / "install-nats-server"
# The gRPC health service that follows the node's NATS connection.
HERALD_SERVICE = "herald.v1.Herald"
PROBE_IN_IMAGE = "/usr/local/bin/grpc-health-probe"
HERALD_IN_IMAGE = "/usr/local/bin/herald"
# What gcr.io/distroless/cc provides besides the dynamic loader.
DISTROLESS_CC_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
}
MIN_NOFILE = 65536
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Failed(Exception):
    """A check found something wrong."""


class Skipped(Exception):
    """A check cannot run on this machine."""


def need(cond: object, message: str) -> None:
    if not cond:
        raise Failed(message)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)


def duration(text: str) -> float:
    """Seconds in a humantime-style duration as the engine reads it ("250ms", "5s", "1m 30s")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total, pos = 0.0, 0
    text = text.strip()
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        need(m.start() == pos and m.group(2) in units, f"cannot read the duration {text!r}")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    need(pos == len(text) and pos > 0, f"cannot read the duration {text!r}")
    return total


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- the engine's interface ---------------------------------------------------------


class EngineCli:
    """The flags and HERALD_* variables that `herald --help` lists."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        out = run([str(binary), "--help"], timeout=30)
        if out.returncode != 0:
            raise Failed(f"{binary} --help failed: {out.stderr}")
        self.flags = set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", out.stdout, re.M))
        # Secrets are listed as `[env: HERALD_NATS_TOKEN]`, without their value.
        self.envs = set(re.findall(r"\[env: (HERALD_[A-Z0-9_]+)[=\]]", out.stdout))
        need(
            "config" in self.flags and "grpc-addr" in self.flags, "cannot read the options in `herald --help`"
        )

    def check_args(self, args: list[str], where: str) -> None:
        for arg in args:
            if not arg.startswith("--"):
                continue
            flag = arg[2:].split("=", 1)[0]
            need(flag in self.flags, f"{where}: the engine has no option --{flag}")

    def check_env(self, names: list[str], where: str) -> None:
        for name in names:
            need(
                not name.startswith("HERALD_") or name in self.envs,
                f"{where}: the engine reads no variable {name}",
            )

    def check_keys(self, keys: list[str], where: str) -> None:
        for key in keys:
            need(key.replace("_", "-") in self.flags, f"{where}: the engine has no setting {key}")


def engine_binary() -> Path:
    path = Path(os.environ.get("HERALD_BIN", ROOT / "target" / "release" / "herald"))
    if not path.is_absolute():
        path = ROOT / path
    if not os.access(path, os.X_OK):
        raise Failed(
            f"no engine binary at {path}: build it with `cargo build --release -p herald` or set HERALD_BIN"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One engine process on loopback ports, started with a shipped config file."""

    def __init__(self, binary: Path, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {}), "NO_COLOR": "1"},
            )
        self.grpc_addr = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = re.search(r"herald is serving.*?grpc_addr\W+(127\.0\.0\.1:\d+)", self.log())
            if m:
                self.grpc_addr = m.group(1)
                return
            if self.proc.poll() is not None:
                raise Failed(f"the engine exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise Failed(f"the engine did not log 'herald is serving' within 20 s:\n{self.log()}")

    def log(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- Dockerfile ---------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(DOCKERFILE))
    return parser


def stages(parser: DockerfileParser) -> list[dict[str, Any]]:
    """The instructions grouped by build stage: [{'from': ..., 'name': ..., 'instructions': [...]}]."""
    out: list[dict[str, Any]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            out.append({"from": words[0], "name": name, "instructions": []})
        elif out:
            out[-1]["instructions"].append(ins)
    return out


def arg_defaults(parser: DockerfileParser) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in parser.structure:
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            k, v = ins["value"].split("=", 1)
            args[k.strip()] = v.strip().strip('"')
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def copy_sources(ins: dict[str, Any]) -> tuple[list[str], str | None]:
    words = shlex.split(ins["value"])
    from_stage = None
    plain = []
    for w in words:
        if w.startswith("--from="):
            from_stage = w.split("=", 1)[1]
        elif not w.startswith("--"):
            plain.append(w)
    return plain[:-1], from_stage


def check_dockerfile_structure(notes: list[str]) -> None:
    parser = dockerfile()
    args = arg_defaults(parser)
    st = stages(parser)
    need(len(st) >= 2, "the Dockerfile must be multi-stage")
    names = [s["name"] for s in st]
    final = st[-1]
    base = expand(final["from"], args)
    need(base.startswith("gcr.io/distroless/"), f"the runtime image must be distroless, not {base}")
    users = [i["value"].strip() for i in final["instructions"] if i["instruction"] == "USER"]
    need(users, "the runtime stage sets no USER")
    user = users[-1].split(":")[0]
    need(user not in ("0", "root"), f"the runtime stage runs as {user}")
    need(user.isdigit() or user == "nonroot", f"USER {user}: use a numeric id so runAsNonRoot can verify it")
    for s in st:
        for ins in s["instructions"]:
            if ins["instruction"] != "COPY":
                continue
            _, src_stage = copy_sources(ins)
            if src_stage is not None:
                need(src_stage in names, f"COPY --from={src_stage}: no such stage")
    entry = [i["value"] for i in final["instructions"] if i["instruction"] == "ENTRYPOINT"]
    need(
        entry and entry[-1].startswith(f'["{HERALD_IN_IMAGE}"'),
        f"ENTRYPOINT must be the exec form of {HERALD_IN_IMAGE}",
    )
    exposed = {p for i in final["instructions"] if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    need({"8080", "50051", "9090"} <= exposed, f"EXPOSE lists {sorted(exposed)}; want 8080 50051 9090")
    copied_to = {shlex.split(i["value"])[-1] for i in final["instructions"] if i["instruction"] == "COPY"}
    need(
        {HERALD_IN_IMAGE, PROBE_IN_IMAGE} <= copied_to,
        f"the runtime image must hold {HERALD_IN_IMAGE} and {PROBE_IN_IMAGE}",
    )
    health = [i["value"] for i in final["instructions"] if i["instruction"] == "HEALTHCHECK"]
    need(health and PROBE_IN_IMAGE in health[-1], "the HEALTHCHECK must run grpc-health-probe")
    builds = [
        i["value"]
        for s in st
        for i in s["instructions"]
        if i["instruction"] == "RUN" and "cargo build" in i["value"]
    ]
    need(builds, "no RUN cargo build")
    need(
        all("--locked" in b and "-p herald" in b and "--release" in b for b in builds),
        "cargo build must be --release --locked -p herald",
    )

    # The Rust toolchain of the builder is at least the workspace's rust-version.
    with (ROOT / "Cargo.toml").open("rb") as f:
        workspace = tomllib.load(f)
    want = workspace["workspace"]["package"]["rust-version"]
    have = args.get("RUST_VERSION", "")

    def version(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", v))

    need(
        have and version(have) >= version(want),
        f"ARG RUST_VERSION={have} is older than the workspace's rust-version {want}",
    )

    # The probe in the image is the version the Go SDK's tests use.
    tools = (ROOT / "sdk-go" / "scripts" / "tools.sh").read_text()
    m = re.search(r"^GRPC_HEALTH_PROBE_VERSION=(\S+)", tools, re.M)
    if m:
        need(
            args.get("GRPC_HEALTH_PROBE_VERSION") == m.group(1),
            f"GRPC_HEALTH_PROBE_VERSION {args.get('GRPC_HEALTH_PROBE_VERSION')} differs from "
            f"sdk-go/scripts/tools.sh ({m.group(1)})",
        )


def context_sources() -> list[str]:
    """The COPY sources that come from the build context (the repository root)."""
    srcs: list[str] = []
    for s in stages(dockerfile()):
        for ins in s["instructions"]:
            if ins["instruction"] == "COPY":
                paths, from_stage = copy_sources(ins)
                if from_stage is None:
                    srcs += paths
    return srcs


def check_dockerfile_context(notes: list[str]) -> None:
    srcs = context_sources()
    need(srcs, "the Dockerfile copies nothing from the build context")
    allowed = {
        line[1:].strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")
    }
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    need(
        "*" in lines, "Dockerfile.dockerignore must start from '*' (ignore everything) and let paths through"
    )
    for src in srcs:
        path = src.rstrip("/")
        need((ROOT / path).exists(), f"COPY {src}: no such path in the repository")
        need(path in allowed, f"COPY {src}: Dockerfile.dockerignore does not let it through (add !{src})")
    # The copied paths alone are a complete workspace for the locked build.
    cargo = shutil.which("cargo")
    if cargo is None:
        raise Skipped("no cargo: cannot check that the copied files make a complete workspace")
    with tempfile.TemporaryDirectory() as tmp:
        for src in srcs:
            path = src.rstrip("/")
            if (ROOT / path).is_dir():
                shutil.copytree(
                    ROOT / path, Path(tmp) / path, ignore=shutil.ignore_patterns("target", ".venv", "results")
                )
            else:
                shutil.copy2(ROOT / path, Path(tmp) / path)
        out = run([cargo, "metadata", "--format-version", "1", "--locked"], cwd=tmp, timeout=600)
        need(
            out.returncode == 0, f"cargo metadata --locked on the copied files failed:\n{out.stderr[-2000:]}"
        )
        out = run([cargo, "pkgid", "-p", "herald"], cwd=tmp)
        need(out.returncode == 0, f"the copied workspace has no package herald:\n{out.stderr}")


def check_hadolint(notes: list[str]) -> None:
    hadolint = VENV_BIN / "hadolint"
    need(hadolint.exists(), f"{hadolint} is missing: run deploy/check.sh")
    out = run([str(hadolint), "--no-color", str(DOCKERFILE)])
    need(out.returncode == 0, f"hadolint:\n{out.stdout}{out.stderr}")


def check_binary_libraries(notes: list[str]) -> None:
    binary = engine_binary()
    ldd = shutil.which("ldd")
    if ldd is None:
        raise Skipped("no ldd: cannot list the engine's shared libraries")
    out = run([ldd, str(binary)])
    if "not a dynamic executable" in out.stdout + out.stderr:
        return
    need(out.returncode == 0, f"ldd {binary}: {out.stderr}")
    libs = set()
    for line in out.stdout.splitlines():
        name = line.strip().split(" ", 1)[0]
        if name.startswith(("linux-vdso", "linux-gate")) or "ld-linux" in name:
            continue
        libs.add(name)
    extra = libs - DISTROLESS_CC_LIBS
    need(not extra, f"the engine links {sorted(extra)}, which gcr.io/distroless/cc does not have")


# ---- compose ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    docs = load_yaml_docs(COMPOSE)
    need(len(docs) == 1, "compose.yaml must be one YAML document")
    return docs[0]


def herald_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if str(s.get("image", "")).startswith("herald")}


def check_compose_schema(notes: list[str]) -> None:
    out = run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    need(out.returncode == 0, f"compose.yaml against the Compose specification:\n{out.stdout}{out.stderr}")


def env_list(env: Any) -> dict[str, str]:
    if isinstance(env, dict):
        return {k: str(v) for k, v in env.items()}
    return dict(str(e).split("=", 1) for e in env or [])


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == f"--{flag}" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"--{flag}="):
            return a.split("=", 1)[1]
    return None


def check_compose(notes: list[str]) -> None:
    doc = compose()
    services = doc["services"]
    nodes = herald_services(doc)
    need(len(nodes) == 3, f"want three Herald nodes, found {sorted(nodes)}")
    need("nats" in services, "no nats service")
    nats_cmd = [str(c) for c in services["nats"].get("command", [])]
    nats_port = flag_value(nats_cmd, "port") or "4222"
    need("healthcheck" in services["nats"], "the nats service has no healthcheck")
    need(
        "--jetstream" in nats_cmd or "-js" in nats_cmd,
        "nats: JetStream must be on (--jetstream): topic history lives there",
    )
    store = flag_value(nats_cmd, "store_dir") or flag_value(nats_cmd, "sd")
    need(store, "nats: --store_dir must be set, on a volume")
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["nats"].get("volumes", [])}
    need(
        mounts.get(store) in (doc.get("volumes") or {}),
        f"nats: the store {store} must be a named volume declared under volumes:",
    )
    host_ports: list[str] = []
    node_ids = set()
    images = {s["image"] for s in nodes.values()}
    need(len(images) == 1, f"the nodes must run one image, not {sorted(images)}")
    for name, svc in nodes.items():
        build = svc.get("build")
        need(build, f"{name}: no build section")
        context = (COMPOSE.parent / build["context"]).resolve()
        need(context == ROOT, f"{name}: the build context must be the repository root, not {context}")
        need(
            (context / build["dockerfile"]).resolve() == DOCKERFILE,
            f"{name}: build.dockerfile must be {DOCKERFILE}",
        )
        cmd = [str(c) for c in svc.get("command", [])]
        nats = flag_value(cmd, "nats-url")
        need(
            nats == f"nats://nats:{nats_port}",
            f"{name}: --nats-url must be nats://nats:{nats_port}, not {nats}",
        )
        node_id = flag_value(cmd, "node-id")
        need(node_id and node_id not in node_ids, f"{name}: needs its own --node-id")
        node_ids.add(node_id)
        # The advertised addresses are the node's published ports on the host.
        published = {
            str(p).rsplit(":", 1)[1]: str(p).rsplit(":", 1)[0] for p in svc.get("ports", [])
        }
        ws_url = flag_value(cmd, "advertise-ws-url") or ""
        m = re.fullmatch(r"ws://([^/]+)(/.*)", ws_url)
        need(
            m and m.group(1) == published.get("8080") and m.group(2) == "/ws",
            f"{name}: --advertise-ws-url {ws_url!r} must be ws://{published.get('8080')}/ws",
        )
        grpc = flag_value(cmd, "advertise-grpc-addr")
        need(
            grpc == published.get("50051"),
            f"{name}: --advertise-grpc-addr {grpc!r} must be {published.get('50051')}",
        )
        admin = flag_value(cmd, "admin-addr") or ""
        need(admin.endswith(":9090") and "9090" in published, f"{name}: --admin-addr on 9090, published")
        need(
            svc.get("depends_on", {}).get("nats", {}).get("condition") == "service_healthy",
            f"{name}: must depend on nats being healthy",
        )
        nofile = svc.get("ulimits", {}).get("nofile", {})
        soft = int(nofile.get("soft", 0)) if isinstance(nofile, dict) else int(nofile)
        need(soft >= MIN_NOFILE, f"{name}: ulimits.nofile must be at least {MIN_NOFILE}")
        test = svc.get("healthcheck", {}).get("test", [])
        need(PROBE_IN_IMAGE in test, f"{name}: the healthcheck must run {PROBE_IN_IMAGE}")
        env = env_list(svc.get("environment"))
        grace = duration(env.get("HERALD_SHUTDOWN_DELAY", "0s")) + duration(
            env.get("HERALD_SHUTDOWN_TIMEOUT", "10s")
        )
        stop = duration(str(svc.get("stop_grace_period", "10s")))
        need(
            stop > grace,
            f"{name}: stop_grace_period {stop:g}s must be longer than shutdown delay + timeout ({grace:g}s)",
        )
        for p in svc.get("ports", []):
            host = str(p).rsplit(":", 1)[0]
            need(host not in host_ports, f"{name}: host port {host} is published twice")
            host_ports.append(host)
        need(
            svc.get("read_only") is True and "ALL" in svc.get("cap_drop", []),
            f"{name}: read_only and cap_drop ALL",
        )


# ---- Kubernetes ---------------------------------------------------------------------


def k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    kust = load_yaml_docs(K8S / "kustomization.yaml")[0]
    out = {}
    for res in kust["resources"]:
        for doc in load_yaml_docs(K8S / res):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def check_k8s_schema(notes: list[str]) -> None:
    kust = load_yaml_docs(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    need(listed == files, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(files)}")
    out = run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", *[str(K8S / f) for f in sorted(files)]]
    )
    need(
        out.returncode == 0 and not out.stdout.strip(),
        f"kubernetes-validate --strict:\n{out.stdout}{out.stderr}",
    )


def k8s_config_toml(
    res: dict[tuple[str, str], dict[str, Any]], deployment: dict[str, Any]
) -> tuple[str, str]:
    """The config file the Deployment passes with --config: (path in the pod, contents)."""
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    path = flag_value(container.get("args", []), "config")
    need(path, "the Deployment passes no --config")
    mount = next(
        (m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")),
        None,
    )
    need(mount, f"--config {path}: no volume is mounted there")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = res.get(("ConfigMap", volume["configMap"]["name"]))
    need(cm, f"no ConfigMap {volume['configMap']['name']}")
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    need(key in cm["data"], f"ConfigMap {cm['metadata']['name']} has no key {key}")
    return path, cm["data"][key]


def check_k8s(notes: list[str]) -> None:
    res = k8s_resources()
    dep = res.get(("Deployment", "herald"))
    need(dep, "no Deployment herald")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    need(
        dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
        "the selector does not match the pod",
    )
    need(dep["spec"].get("replicas", 1) > 1, "the Deployment must run more than one replica")
    c = spec["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    field = {n: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for n, e in env.items()}
    need(field.get("HERALD_NODE_ID") == "metadata.name", "HERALD_NODE_ID must be the pod name")
    pod_ip = next((n for n, f in field.items() if f == "status.podIP"), None)
    need(pod_ip, "no variable holds the pod's IP (status.podIP)")
    need(
        env.get("HERALD_ADVERTISE_WS_URL", {}).get("value") == f"ws://$({pod_ip}):8080/ws"
        and env.get("HERALD_ADVERTISE_GRPC_ADDR", {}).get("value") == f"$({pod_ip}):50051",
        "HERALD_ADVERTISE_WS_URL and HERALD_ADVERTISE_GRPC_ADDR must be the pod's IP and ports",
    )
    names = list(env)
    need(names.index(pod_ip) < names.index("HERALD_ADVERTISE_WS_URL"), f"{pod_ip} must come before its uses")
    urls = env.get("HERALD_NATS_URLS", {}).get("value", "")
    need(urls, "the Deployment must set HERALD_NATS_URLS")
    for url in urls.split(","):
        m = re.fullmatch(r"(?:nats|tls)://([a-z0-9.-]+):(\d+)", url.strip())
        need(m, f"HERALD_NATS_URLS: cannot read {url!r}")
        nats_svc = res.get(("Service", m.group(1).split(".")[0]))
        need(nats_svc, f"HERALD_NATS_URLS: no Service {m.group(1)} in the manifests")
        need(
            int(m.group(2)) in [p["port"] for p in nats_svc["spec"]["ports"]],
            f"HERALD_NATS_URLS: Service {m.group(1)} has no port {m.group(2)}",
        )
    pdb = res.get(("PodDisruptionBudget", "herald"))
    need(
        pdb and pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
        "no PodDisruptionBudget herald matching the pods",
    )
    check_k8s_nats(res)
    _, toml_text = k8s_config_toml(res, dep)
    config = tomllib.loads(toml_text)
    grace = duration(config.get("shutdown_delay", "0s")) + duration(config.get("shutdown_timeout", "10s"))
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    need(
        tgps > grace,
        f"terminationGracePeriodSeconds {tgps} must be longer than shutdown delay + timeout ({grace:g}s)",
    )

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    grpc_port = int(config.get("grpc_addr", "0.0.0.0:50051").rsplit(":", 1)[1])
    ws_port = int(config.get("ws_addr", "0.0.0.0:8080").rsplit(":", 1)[1])
    admin = flag_value(c["args"], "admin-addr")
    need(admin, "the Deployment must pass --admin-addr for /readyz")
    admin_port = int(admin.rsplit(":", 1)[1])
    need(
        ports.get("grpc") == grpc_port and ports.get("ws") == ws_port,
        f"container ports {ports} differ from the config",
    )
    need(ports.get("admin") == admin_port, f"container port admin must be {admin_port}")
    for kind in ("startupProbe", "livenessProbe"):
        probe = c.get(kind, {}).get("exec", {}).get("command", [])
        need(probe[:1] == [PROBE_IN_IMAGE], f"{kind} must run {PROBE_IN_IMAGE}")
        need(f"-addr=127.0.0.1:{grpc_port}" in probe, f"{kind} must probe 127.0.0.1:{grpc_port}")
    ready = c.get("readinessProbe", {}).get("httpGet", {})
    need(ready.get("path") == "/readyz", "the readinessProbe must GET /readyz")
    need(ready.get("port") in ("admin", admin_port), "the readinessProbe must use the admin port")
    psc = spec.get("securityContext", {})
    csc = c.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "the pod must run as non-root")
    need(
        csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True,
        "container securityContext",
    )
    need("ALL" in csc.get("capabilities", {}).get("drop", []), "the container must drop ALL capabilities")

    svc = res.get(("Service", "herald"))
    need(svc, "no Service herald")
    need(
        svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(),
        "the Service selector does not match the pod",
    )
    for p in svc["spec"]["ports"]:
        need(
            p["targetPort"] in ports or p["targetPort"] in ports.values(),
            f"Service port {p['name']}: no container port {p['targetPort']}",
        )


def nats_k8s_conf(res: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The nats.conf the NATS StatefulSet runs with."""
    sts = res.get(("StatefulSet", "nats"))
    need(sts, "no StatefulSet nats")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    conf = flag_value(c.get("args", []), "config")
    need(conf, "the NATS StatefulSet passes no --config")
    mount = next(m for m in c["volumeMounts"] if conf.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = res[("ConfigMap", volume["configMap"]["name"])]
    return str(cm["data"][conf.rsplit("/", 1)[1]])


def check_k8s_nats(res: dict[tuple[str, str], dict[str, Any]]) -> None:
    sts = res.get(("StatefulSet", "nats"))
    need(sts, "no StatefulSet nats")
    svc = res.get(("Service", sts["spec"]["serviceName"]))
    need(svc and svc["spec"].get("clusterIP") == "None", "the NATS StatefulSet needs its headless Service")
    spec = sts["spec"]["template"]["spec"]
    c = spec["containers"][0]
    conf = nats_k8s_conf(res)
    need(re.search(r"^\s*jetstream\s*\{", conf, re.M), "nats.conf must enable JetStream")
    m = re.search(r"^\s*store_dir:\s*(\S+)", conf, re.M)
    need(m, "nats.conf: JetStream needs a store_dir")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    need(
        any(vm["mountPath"] == m.group(1) and vm["name"] in claims for vm in c["volumeMounts"]),
        f"the JetStream store {m.group(1)} must be on a volumeClaimTemplate",
    )
    for kind in ("livenessProbe", "readinessProbe"):
        path = c.get(kind, {}).get("httpGet", {}).get("path", "")
        need(path.startswith("/healthz"), f"nats {kind}: must GET /healthz")
    csc = c.get("securityContext", {})
    need(
        spec.get("securityContext", {}).get("runAsNonRoot") is True
        and csc.get("readOnlyRootFilesystem") is True,
        "nats: non-root with a read-only root file system",
    )


# ---- NATS ---------------------------------------------------------------------------


def nats_release() -> str:
    """The nats-server release the engine's tests pin, e.g. "2.15.2"."""
    m = re.search(r'^version="v([\d.]+)"', NATS_INSTALL.read_text(), re.M)
    need(m, f"cannot read the pinned version in {NATS_INSTALL}")
    return m.group(1)


def nats_server() -> Path | None:
    """nats-server on this machine: $HERALD_NATS_SERVER, .tools/bin (scripts/install-nats-server) or PATH."""
    for candidate in (
        os.environ.get("HERALD_NATS_SERVER"),
        ROOT / ".tools" / "bin" / "nats-server",
        shutil.which("nats-server"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def check_nats(notes: list[str]) -> None:
    release = nats_release()
    images = {"compose": str(compose()["services"]["nats"]["image"])}
    for (kind, name), doc in k8s_resources().items():
        if kind == "StatefulSet":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                images[f"kubernetes {name}"] = c["image"]
    for where, image in images.items():
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        need(
            tag.split("-")[0] == release,
            f"{where}: image {image}: use nats-server {release}, the release the tests run",
        )
    binary = nats_server()
    if binary is None:
        raise Skipped(
            "no nats-server (scripts/install-nats-server, or set HERALD_NATS_SERVER): configs not loaded"
        )
    version = run([str(binary), "--version"]).stdout
    if release not in version:
        notes.append(f"{binary} is {version.strip()}, not {release}")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nats.conf"
        conf.write_text(nats_k8s_conf(k8s_resources()))
        out = run([str(binary), "-c", str(conf), "-t"], env={**os.environ, "POD_NAME": "nats-0"}, timeout=30)
        need(out.returncode == 0, f"kubernetes nats.conf: {(out.stdout + out.stderr).strip()}")
    # nats-server checks flags only when it runs: the compose command's must be in its --help.
    usage = run([str(binary), "--help"], timeout=30)
    known = set(re.findall(r"(?:^|[\s,])(--?[a-z_]+)", usage.stdout + usage.stderr))
    for arg in compose()["services"]["nats"]["command"]:
        if str(arg).startswith("-"):
            need(str(arg).split("=", 1)[0] in known, f"compose nats: nats-server has no option {arg}")


# ---- systemd ------------------------------------------------------------------------


def unit_values(text: str, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", text, re.M)]


def systemd_cluster_settings() -> dict[str, Any]:
    """herald.toml's commented settings (`#key = value`), uncommented and read as TOML."""
    lines = re.findall(r"^#([a-z_]+ = .*)$", UNIT_TOML.read_text(), re.M)
    try:
        return tomllib.loads("\n".join(lines))
    except tomllib.TOMLDecodeError as e:
        raise Failed(f"herald.toml: the commented settings are not TOML: {e}") from None


def check_systemd(notes: list[str]) -> None:
    text = UNIT.read_text()
    exec_start = unit_values(text, "ExecStart")
    need(len(exec_start) == 1, "the unit needs one ExecStart")
    argv = shlex.split(exec_start[0])
    need(argv[0] == "/usr/local/bin/herald", "ExecStart must run /usr/local/bin/herald")
    config_path = flag_value(argv, "config")
    need(config_path == "/etc/herald/herald.toml", "ExecStart must pass --config /etc/herald/herald.toml")
    config = tomllib.loads(UNIT_TOML.read_text())
    grace = duration(config.get("shutdown_delay", "0s")) + duration(config.get("shutdown_timeout", "10s"))
    stop = unit_values(text, "TimeoutStopSec")
    need(
        stop and duration(stop[-1]) > grace,
        f"TimeoutStopSec must be longer than shutdown delay + timeout ({grace:g}s)",
    )
    nofile = unit_values(text, "LimitNOFILE")
    need(nofile and int(nofile[-1].split(":")[0]) >= MIN_NOFILE, f"LimitNOFILE must be at least {MIN_NOFILE}")
    cluster = systemd_cluster_settings()
    need("nats_url" in cluster, "herald.toml: the commented cluster settings must include nats_url")
    EngineCli(engine_binary()).check_keys(list(cluster), "herald.toml (commented)")

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise Skipped(
            "systemd-analyze is not installed (Debian package systemd): the unit file was not verified"
        )
    binary = engine_binary()
    with tempfile.TemporaryDirectory() as tmp:
        # The same unit, with ExecStart pointing at a copy of the real binary and config.
        shutil.copy2(binary, Path(tmp) / "herald")
        shutil.copy2(UNIT_TOML, Path(tmp) / "herald.toml")
        unit = Path(tmp) / "herald.service"
        unit.write_text(
            text.replace("/usr/local/bin/herald", f"{tmp}/herald").replace(
                "/etc/herald/herald.toml", f"{tmp}/herald.toml"
            )
        )
        out = run([analyze, "verify", str(unit)], timeout=60)
        report = (out.stdout + out.stderr).strip()
        need(out.returncode == 0 and not report, f"systemd-analyze verify:\n{report}")
        # Exposure 0.0-10.0, as `systemd-analyze security` scores it; the threshold is x10.
        out = run([analyze, "security", "--offline=yes", "--threshold=20", str(unit)], timeout=60)
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
        need(
            out.returncode == 0,
            f"systemd-analyze security: exposure above 2.0:\n{out.stdout[-3000:]}{out.stderr}",
        )
        if score:
            notes.append(f"systemd: exposure level {score.group(1)} (systemd-analyze security)")


# ---- the engine with the shipped files ----------------------------------------------


def check_flags(notes: list[str]) -> None:
    cli = EngineCli(engine_binary())
    for name, svc in herald_services(compose()).items():
        cli.check_args([str(c) for c in svc.get("command", [])], f"compose {name}")
        cli.check_env(list(env_list(svc.get("environment")).keys()), f"compose {name}")
    for doc in k8s_resources().values():
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            cli.check_args(c.get("args", []), f"kubernetes {doc['metadata']['name']}")
            cli.check_env([e["name"] for e in c.get("env", [])], f"kubernetes {doc['metadata']['name']}")
    cli.check_args(shlex.split(unit_values(UNIT.read_text(), "ExecStart")[0]), "systemd")
    cli.check_env(
        [e.split("=", 1)[0] for v in unit_values(UNIT.read_text(), "Environment") for e in shlex.split(v)],
        "systemd",
    )


def health_probe() -> Path | None:
    """grpc-health-probe on this machine: $HEALTH_PROBE, the Go SDK's tools, or deploy/.tools."""
    for candidate in (
        os.environ.get("HEALTH_PROBE"),
        DEPLOY / ".tools" / "bin" / "grpc-health-probe",
        ROOT / "sdk-go" / ".tools" / "bin" / "grpc-health-probe",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def probe_commands() -> list[tuple[str, list[str]]]:
    """Every grpc-health-probe command line the deployment files run."""
    cmds: list[tuple[str, list[str]]] = []
    for ins in dockerfile().structure:
        if ins["instruction"] == "HEALTHCHECK":
            m = re.search(r"CMD\s+(\[.*\])", ins["value"])
            need(m, "HEALTHCHECK must use the exec form")
            cmds.append(("Dockerfile HEALTHCHECK", yaml.safe_load(m.group(1))))
    for name, svc in herald_services(compose()).items():
        test = svc["healthcheck"]["test"]
        need(test[0] == "CMD", f"compose {name}: the healthcheck must use CMD (the image has no shell)")
        cmds.append((f"compose {name} healthcheck", test[1:]))
    for doc in k8s_resources().values():
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                    cmd = c.get(kind, {}).get("exec", {}).get("command")
                    if cmd:
                        cmds.append((f"kubernetes {kind}", cmd))
    return cmds


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def run_config(name: str, toml_text: str, extra: list[str], notes: list[str]) -> None:
    """Runs the engine with a shipped config file on loopback, probes it and stops it with SIGTERM."""
    binary = engine_binary()
    probe = health_probe()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "herald.toml"
        conf.write_text(toml_text)
        args = ["--config", str(conf), "--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]
        admin = None
        if "admin-addr" in extra:
            admin = f"127.0.0.1:{free_port()}"
            args += ["--admin-addr", admin]
        node = Node(binary, args, Path(tmp) / "herald.log")
        try:
            if probe is not None:
                for where, cmd in probe_commands():
                    need(cmd[0] == PROBE_IN_IMAGE, f"{where}: runs {cmd[0]}, not {PROBE_IN_IMAGE}")
                    argv = [str(probe)] + [
                        f"-addr={node.grpc_addr}" if a.startswith("-addr=") else a for a in cmd[1:]
                    ]
                    out = run(argv, timeout=30)
                    need(
                        out.returncode == 0,
                        f"{where}: `{shlex.join(cmd)}` exited {out.returncode} on a serving node: "
                        + first_line(out.stderr),
                    )
            if admin is not None:
                need(http_status(f"http://{admin}/readyz") == 200, "/readyz is not 200 on a serving node")
            delay = duration(tomllib.loads(toml_text).get("shutdown_delay", "0s"))
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            if probe is not None and delay >= 1:
                # During shutdown_delay the node still runs but reports NOT_SERVING (exit 4).
                out = run([str(probe), f"-addr={node.grpc_addr}"], timeout=30)
                if time.monotonic() - started < delay:
                    need(
                        out.returncode == 4,
                        f"grpc-health-probe exited {out.returncode} during the shutdown delay, "
                        "want 4 (NOT_SERVING)",
                    )
                if admin is not None:
                    need(
                        http_status(f"http://{admin}/readyz") != 200,
                        "/readyz is still 200 during the shutdown delay",
                    )
            limit = delay + duration(tomllib.loads(toml_text).get("shutdown_timeout", "10s")) + 5
            try:
                code = node.proc.wait(limit)
            except subprocess.TimeoutExpired:
                raise Failed(f"the engine did not exit within {limit:g}s of SIGTERM:\n{node.log()}") from None
            need(code == 0, f"the engine exited {code} after SIGTERM:\n{node.log()}")
        finally:
            node.kill()
        if probe is None:
            raise Skipped(
                f"{name}: ran and stopped, but no grpc-health-probe to run the probe commands "
                "(set HEALTH_PROBE)"
            )


def check_run_systemd_config(notes: list[str]) -> None:
    run_config("systemd herald.toml", UNIT_TOML.read_text(), [], notes)


def check_run_k8s_config(notes: list[str]) -> None:
    res = k8s_resources()
    dep = res[("Deployment", "herald")]
    _, toml_text = k8s_config_toml(res, dep)
    flags = [a[2:].split("=", 1)[0] for a in dep["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    run_config("kubernetes ConfigMap herald.toml", toml_text, flags, notes)


# ---- the engine as cluster nodes -----------------------------------------------------


def probe_status(probe: Path, addr: str, service: str = "") -> int:
    """grpc-health-probe's exit code: 0 SERVING, 4 NOT_SERVING, 2 no connection."""
    argv = [str(probe), f"-addr={addr}", "-connect-timeout=2s", "-rpc-timeout=2s"]
    if service:
        argv.append(f"-service={service}")
    return run(argv, timeout=30).returncode


def wait_status(probe: Path, addr: str, service: str, want: int, within: float) -> int:
    deadline = time.monotonic() + within
    while True:
        code = probe_status(probe, addr, service)
        if code == want or time.monotonic() > deadline:
            return code
        time.sleep(0.2)


class NatsProcess:
    """nats-server with the Kubernetes nats.conf, moved to loopback ports and a temporary store."""

    def __init__(self, binary: Path, conf_text: str, tmp: Path) -> None:
        self.port, http = free_port(), free_port()
        text = re.sub(r"^(\s*)port:.*$", rf"\1port: {self.port}", conf_text, flags=re.M)
        text = re.sub(r"^(\s*)http_port:.*$", rf"\1http: 127.0.0.1:{http}", text, flags=re.M)
        text = re.sub(r"^(\s*)store_dir:.*$", rf'\1store_dir: "{tmp / "jetstream"}"', text, flags=re.M)
        self.conf = tmp / "nats.conf"
        self.conf.write_text(f"host: 127.0.0.1\n{text}")
        self.log_path = tmp / "nats.log"
        self.binary = binary
        self.healthz = f"http://127.0.0.1:{http}/healthz"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "POD_NAME": "nats-0"},
            )
        deadline = time.monotonic() + 20
        while http_status(self.healthz) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failed(f"nats-server did not come up:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def k8s_pod_env(nats_url: str) -> dict[str, str]:
    """The Deployment's environment as a pod would get it, with the NATS URL and pod IP on loopback."""
    res = k8s_resources()
    c = res[("Deployment", "herald")]["spec"]["template"]["spec"]["containers"][0]
    fields = {"metadata.name": "herald-7f9c-abcde", "status.podIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            # Kubernetes expands $(NAME) from the variables defined before.
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        else:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    env["HERALD_NATS_URLS"] = nats_url
    return env


def systemd_cluster_toml(nats_url: str) -> str:
    """herald.toml with its commented cluster settings on, pointing at nats_url (files left out)."""
    settings = systemd_cluster_settings()
    text = UNIT_TOML.read_text()
    for key, value in settings.items():
        if key in ("nats_creds", "nats_tls_ca", "nats_tls_cert", "nats_tls_key"):
            continue
        if key == "nats_url":
            value = [nats_url]
        text += f"\n{key} = {json.dumps(value)}"
    return text + "\n"


def check_run_cluster(notes: list[str]) -> None:
    binary = engine_binary()
    nats_binary = nats_server()
    probe = health_probe()
    if nats_binary is None or probe is None:
        raise Skipped("needs nats-server (HERALD_NATS_SERVER) and grpc-health-probe (HEALTH_PROBE)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        nats = NatsProcess(nats_binary, nats_k8s_conf(k8s_resources()), tmp)
        nodes: dict[str, tuple[Node, str]] = {}
        try:
            res = k8s_resources()
            _, k8s_toml = k8s_config_toml(res, res[("Deployment", "herald")])
            for name, toml_text, env in (
                ("kubernetes", k8s_toml, k8s_pod_env(nats.url)),
                ("systemd", systemd_cluster_toml(nats.url), {}),
            ):
                conf = tmp / f"{name}.toml"
                conf.write_text(toml_text)
                admin = f"127.0.0.1:{free_port()}"
                args = ["--config", str(conf), "--ws-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]
                node = Node(binary, [*args, "--admin-addr", admin], tmp / f"{name}.log", env)
                nodes[name] = (node, admin)

            def expect(service: str, want: int, within: float, when: str) -> None:
                label = service or '""'
                for name, (node, admin) in nodes.items():
                    code = wait_status(probe, node.grpc_addr, service, want, within)
                    need(
                        code == want,
                        f"{name} node {when}: health of {label} is exit {code}, want {want}:\n" + node.log(),
                    )
                    need(
                        http_status(f"http://{admin}/readyz") == 200,
                        f"{name} node {when}: /readyz is not 200",
                    )

            expect(HERALD_SERVICE, 0, 15, "with NATS")
            for where, cmd in probe_commands():
                for name, (node, _) in nodes.items():
                    argv = [str(probe)] + [
                        f"-addr={node.grpc_addr}" if a.startswith("-addr=") else a for a in cmd[1:]
                    ]
                    need(run(argv, timeout=30).returncode == 0, f"{where} fails on the {name} cluster node")
            nats.stop()
            expect(HERALD_SERVICE, 4, 10, "without NATS")
            expect("", 0, 0, "without NATS")
            nats.start()
            expect(HERALD_SERVICE, 0, 15, "once NATS is back")
            for name, (node, _) in nodes.items():
                node.proc.send_signal(signal.SIGTERM)
            for name, (node, _) in nodes.items():
                try:
                    code = node.proc.wait(60)
                except subprocess.TimeoutExpired:
                    raise Failed(
                        f"the {name} cluster node did not exit after SIGTERM:\n{node.log()}"
                    ) from None
                need(code == 0, f"the {name} cluster node exited {code} after SIGTERM:\n{node.log()}")
        finally:
            for node, _ in nodes.values():
                node.kill()
            nats.stop()


CHECKS: list[tuple[str, Callable[[list[str]], None]]] = [
    ("Dockerfile: structure", check_dockerfile_structure),
    ("Dockerfile: hadolint", check_hadolint),
    ("Dockerfile: build context is a complete workspace", check_dockerfile_context),
    ("Dockerfile: engine needs only what distroless/cc has", check_binary_libraries),
    ("compose: Compose specification schema", check_compose_schema),
    ("compose: three nodes and NATS", check_compose),
    ("kubernetes: schemas (strict)", check_k8s_schema),
    ("kubernetes: probes, ports, shutdown, security", check_k8s),
    ("systemd: unit", check_systemd),
    ("NATS: release and configuration", check_nats),
    ("engine: flags and variables", check_flags),
    ("engine: runs with the systemd config", check_run_systemd_config),
    ("engine: runs with the Kubernetes config", check_run_k8s_config),
    ("engine: runs as cluster nodes with the Kubernetes and systemd configs", check_run_cluster),
]


def main() -> int:
    passed = failed = skipped = 0
    for name, check in CHECKS:
        notes: list[str] = []
        try:
            check(notes)
        except Skipped as e:
            skipped += 1
            print(f"SKIP  {name}: {e}")
        except (Failed, subprocess.TimeoutExpired, KeyError, ValueError, OSError) as e:
            failed += 1
            kind = "" if isinstance(e, Failed) else f"{type(e).__name__}: "
            print(f"FAIL  {name}: {kind}{e}")
        else:
            passed += 1
            print(f"ok    {name}")
        for note in dict.fromkeys(notes):
            print(f"      note: {note}")
    summary = f"{passed} passed, {failed} failed"
    if skipped:
        summary += f", {skipped} skipped"
    print(f"deploy: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
