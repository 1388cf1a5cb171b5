// Pure functions and argument checks (no engine needed).
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket } from "ws";
import { Herald, backoffDelay, shouldReconnect } from "../dist/index.js";

test("close codes: 4500–4999 and protocol errors stop, the rest reconnect", () => {
  for (const code of [1000, 1001, 1006, 1011, 4000, 4001, 4002, 4003, 4499]) assert.equal(shouldReconnect(code), true, `${code}`);
  for (const code of [1002, 1007, 1008, 1009, 4500, 4700, 4999]) assert.equal(shouldReconnect(code), false, `${code}`);
});

test("backoff: full jitter under a cap that doubles up to the maximum", () => {
  assert.equal(backoffDelay(1, 500, 20000, () => 0), 0);
  assert.equal(backoffDelay(1, 500, 20000, () => 0.999999), 499);
  assert.equal(backoffDelay(3, 500, 20000, () => 0.5), 1000);
  assert.equal(backoffDelay(10, 500, 20000, () => 0.5), 10000);
  assert.equal(backoffDelay(1000, 500, 20000, () => 0.999999), 19999);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(4, 500, 20000);
    assert.ok(d >= 0 && d < 4000);
  }
});

test("bad arguments are refused with clear errors", () => {
  assert.throws(() => new Herald("http://x/ws", { WebSocket }), /must start with ws:\/\/ or wss:\/\//);
  assert.throws(() => new Herald("ws://x/ws"), /no global WebSocket here.*WebSocket option/);
  assert.throws(() => new Herald("ws://x/ws", { WebSocket, user: "" }), /user must be a non-empty string/);
  assert.throws(() => new Herald("ws://x/ws", { WebSocket, minReconnectDelay: -1 }), /minReconnectDelay/);
  assert.throws(() => new Herald("ws://x/ws", { WebSocket, info: () => 1 }), /info must be a JSON value/);
  assert.throws(() => new Herald("ws://x/ws", { WebSocket, token: "" }), /token must be a non-empty string or a function/);
  assert.throws(() => new Herald("ws://x/ws", { WebSocket, token: 42 }), /token must be a non-empty string or a function/);
  assert.throws(() => new Herald("ws://x/ws", { WebSocket, getToken: "t" }), /getToken must be/);
  const c = new Herald("ws://x/ws", { WebSocket });
  assert.throws(() => c.subscribe("", () => {}), /non-empty string/);
  assert.throws(() => c.subscribe("a", null), /handler must be a function/);
  assert.equal(c.state, "disconnected");
  // An option given as undefined keeps its default.
  const d = new Herald("ws://x/ws", { WebSocket, minReconnectDelay: undefined, commandTimeout: undefined });
  assert.equal(d.opts.minReconnectDelay, 500);
  assert.equal(d.opts.commandTimeout, 10000);
});
