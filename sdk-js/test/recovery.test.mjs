// Recovery against the real engine with a history rule: a client that loses its
// connection resubscribes with the position of the last message it received and gets
// what it missed, with no gap and no duplicate; a new epoch (an engine restart) or a
// topic without history says recovered: false.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { WebSocket } from "ws";
import { Herald } from "../dist/index.js";
import { Engine, freePort, sleep, waitFor } from "./engine.mjs";

let uniq = 0;
const topic = (prefix) => `${prefix}:r-${process.pid}-${++uniq}`;

function historyConfig() {
  const file = path.join(mkdtempSync(path.join(tmpdir(), "herald-js-")), "herald.toml");
  writeFileSync(
    file,
    '[[topics]]\npattern = "hist:*"\nsubscribe = "anyone"\nhistory_size = 10000\nhistory_ttl = "5m"\n',
  );
  return file;
}

/**
 * A WebSocket whose connections the test can cut (`cut()`: the TCP connection just dies,
 * as on a network failure: close code 1006) and keep from coming back (`block`: new
 * connections go to a port where nothing listens).
 */
async function flakyNetwork() {
  const deadPort = await freePort();
  const net = { block: false, sockets: [] };
  net.WebSocket = class extends WebSocket {
    constructor(url) {
      super(net.block ? url.replace(/:\d+\//, `:${deadPort}/`) : url);
      net.sockets.push(this);
    }
  };
  net.cut = () => net.sockets.at(-1).terminate();
  return net;
}

function client(t, url, opts = {}) {
  const c = new Herald(url, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 100, connectTimeout: 2000, ...opts });
  t.after(() => c.close());
  return c;
}

/** Publishes {n: 1..count} to `name` one after another, a little apart. */
async function publishAll(engine, name, count) {
  for (let n = 1; n <= count; n++) {
    await engine.publish(name, { n });
    if (n % 10 === 0) await sleep(5);
  }
}

describe("recovery with history", () => {
  let engine;
  before(async () => {
    engine = await Engine.start("--config", historyConfig());
  });
  after(() => engine.close());

  test("connections cut while a publisher sends: every message once, in order", async (t) => {
    const net = await flakyNetwork();
    const c = client(t, engine.wsUrl, { WebSocket: net.WebSocket });
    const name = topic("hist");
    const got = [];
    c.subscribe(name, (m) => got.push(m.seq));
    const recoveries = [];
    c.on("recovery", (e) => recoveries.push(e));
    await c.connect();
    await waitFor(async () => (await engine.call("PresenceStats", { topic: name })).connections === 1, "subscribed");

    const total = 600;
    const publishing = publishAll(engine, name, total);
    let missedWhileDown = 0;
    for (const at of [100, 250, 400]) {
      await waitFor(() => got.length >= at, `${at} messages (have ${got.length})`);
      // Cut, and stay away while the publisher goes on.
      const before = got.length;
      const id = c.connId;
      net.block = true;
      net.cut();
      await sleep(150);
      net.block = false;
      await waitFor(() => c.state === "connected" && c.connId !== id, "the reconnect");
      missedWhileDown = Math.max(missedWhileDown, (await engine.call("History", { topic: name, reverse: true, limit: 1 })).position.sequence - before);
    }
    await publishing;
    await waitFor(() => got.length >= total, `${total} messages (have ${got.length})`);
    await sleep(200); // a duplicate would show up now
    assert.deepEqual(got, Array.from({ length: total }, (_, i) => i + 1));
    assert.ok(missedWhileDown > 0, "messages were published while the client was away");
    assert.equal(recoveries.length, 3);
    const epoch = c.position(name).epoch;
    for (const e of recoveries) {
      assert.equal(e.topic, name);
      assert.equal(e.recovered, true);
      assert.equal(e.position.epoch, epoch);
    }
    assert.deepEqual(c.position(name), { seq: total, epoch });
  });

  test("a topic without history: recovered false, live messages go on", async (t) => {
    const net = await flakyNetwork();
    const c = client(t, engine.wsUrl, { WebSocket: net.WebSocket });
    const name = topic("plain");
    const got = [];
    c.subscribe(name, (m) => got.push(m.seq));
    const recoveries = [];
    c.on("recovery", (e) => recoveries.push(e));
    await c.connect();
    await waitFor(async () => (await engine.call("PresenceStats", { topic: name })).connections === 1, "subscribed");
    await engine.publish(name, { n: 1 });
    await waitFor(() => got.length === 1, "the first message");

    const id = c.connId;
    net.block = true;
    net.cut();
    await waitFor(() => c.state === "reconnecting", "the loss");
    await engine.publish(name, { n: 2 }); // missed for good
    net.block = false;
    await waitFor(() => recoveries.length === 1 && c.connId !== id, "the recovery event");
    assert.equal(recoveries[0].recovered, false);
    assert.equal(recoveries[0].position.seq, 2);
    await engine.publish(name, { n: 3 });
    await waitFor(() => got.length === 2, "the live message");
    assert.deepEqual(got, [1, 3]);

    // Up to date: nothing missed, recovered even without history.
    net.cut();
    await waitFor(() => recoveries.length === 2, "the second recovery event");
    assert.equal(recoveries[1].recovered, true);
    assert.deepEqual(recoveries[1].position, c.position(name));
  });
});

describe("recovery across an engine restart", () => {
  test("a new epoch: recovered false, the new sequence is followed", async (t) => {
    const engine = await Engine.start("--config", historyConfig());
    t.after(() => engine.close());
    const c = client(t, engine.wsUrl);
    const name = topic("hist");
    const got = [];
    c.subscribe(name, (m) => got.push(m));
    const recoveries = [];
    c.on("recovery", (e) => recoveries.push(e));
    await c.connect();
    await waitFor(async () => (await engine.call("PresenceStats", { topic: name })).connections === 1, "subscribed");
    for (let n = 1; n <= 3; n++) await engine.publish(name, { n });
    await waitFor(() => got.length === 3, "3 messages");
    const old = c.position(name);
    assert.equal(old.seq, 3);

    await engine.restart("SIGKILL", 200);
    await waitFor(() => recoveries.length === 1, "the recovery event");
    assert.equal(recoveries[0].recovered, false);
    assert.notEqual(recoveries[0].position.epoch, old.epoch);
    await engine.publish(name, { n: "new" });
    await waitFor(() => got.length === 4, "a message of the new epoch");
    assert.deepEqual(got[3], { topic: name, seq: 1, epoch: recoveries[0].position.epoch, data: { n: "new" } });
    assert.deepEqual(c.position(name), { seq: 1, epoch: recoveries[0].position.epoch });
  });
});
