// Starts the real engine binary ($HERALD_BIN, default target/release/herald from the
// repository root) on free loopback ports, and talks to it over real gRPC.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WAIT_MS = 15000;

export function heraldBin() {
  const bin = process.env.HERALD_BIN || "target/release/herald";
  return path.isAbsolute(bin) ? bin : path.join(root, bin);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails after `ms`. */
export async function waitFor(fn, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

const pkg = protoLoader.loadSync(path.join(root, "proto/herald/v1/herald.proto"), {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
const HeraldService = grpc.loadPackageDefinition(pkg).herald.v1.Herald;

/** One engine process; `restart()` brings it back on the same ports. */
export class Engine {
  static async start(...args) {
    const e = new Engine(await freePort(), await freePort(), args);
    await e.start();
    return e;
  }

  constructor(wsPort, grpcPort, args) {
    this.wsPort = wsPort;
    this.grpcPort = grpcPort;
    this.args = args;
    this.proc = null;
    this.log = "";
    this.grpc = null;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}/ws`;
  }

  async start() {
    const bin = heraldBin();
    if (!existsSync(bin)) {
      throw new Error(`no engine binary at ${bin}: build it with \`cargo build --release -p herald\` or set HERALD_BIN`);
    }
    const proc = spawn(
      bin,
      [
        "--ws-addr", `127.0.0.1:${this.wsPort}`,
        "--grpc-addr", `127.0.0.1:${this.grpcPort}`,
        "--shutdown-timeout", "2s",
        "--log", "warn",
        ...this.args,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
    const keep = (d) => {
      this.log = (this.log + d.toString()).slice(-4000);
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`engine exited with ${proc.exitCode}:\n${this.log}`);
      return (await canConnect(this.wsPort)) && (await canConnect(this.grpcPort));
    }, "the engine to listen");
    this.grpc ??= new HeraldService(`127.0.0.1:${this.grpcPort}`, grpc.credentials.createInsecure());
  }

  /** Ends the process with `signal` (SIGTERM: graceful, clients get 1001) and waits for it. */
  async stop(signal = "SIGTERM") {
    const proc = this.proc;
    if (!proc) return;
    this.proc = null;
    if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    const t = setTimeout(() => proc.kill("SIGKILL"), WAIT_MS);
    await this.exited;
    clearTimeout(t);
  }

  async restart(signal = "SIGKILL", downMs = 0) {
    await this.stop(signal);
    if (downMs) await sleep(downMs);
    await this.start();
  }

  pause() {
    this.proc.kill("SIGSTOP");
  }

  resume() {
    this.proc.kill("SIGCONT");
  }

  async close() {
    await this.stop();
    this.grpc?.close();
    this.grpc = null;
  }

  call(method, req) {
    return new Promise((resolve, reject) => {
      this.grpc[method](req, { deadline: Date.now() + WAIT_MS }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  /** Publishes a JSON value (or a string as text/plain, or a Buffer as octet-stream). */
  publish(topic, payload, contentType) {
    let data = payload;
    let ct = contentType;
    if (Buffer.isBuffer(payload)) ct ??= "";
    else if (typeof payload === "string") ct ??= "text/plain; charset=utf-8";
    else {
      data = JSON.stringify(payload);
      ct ??= "application/json";
    }
    return this.call("Publish", { topic, data: Buffer.from(data), content_type: ct });
  }

  disconnect(connectionId, code, reason, reconnect) {
    return this.call("Disconnect", { target: { connection_id: connectionId }, code, reason, reconnect });
  }

  subscribe(connectionId, topics) {
    return this.call("Subscribe", { target: { connection_id: connectionId }, topics });
  }
}
