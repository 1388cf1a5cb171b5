// The client against the real engine binary: messages, subscriptions, reconnects
// across engine kills and restarts, close codes, heartbeat.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WebSocket } from "ws";
import { Herald, HeraldError } from "../dist/index.js";
import { Engine, sleep, waitFor } from "./engine.mjs";

let uniq = 0;
const topic = (name = "t") => `test:${name}-${process.pid}-${++uniq}`;

/** A client with short delays, closed when the test ends. */
function client(t, url, opts = {}) {
  const c = new Herald(url, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300, connectTimeout: 2000, ...opts });
  t.after(() => c.close());
  return c;
}

/** Collects the messages of a topic; `next(n)` waits for the n-th. */
function collect(c, name) {
  const got = [];
  const sub = c.subscribe(name, (m) => got.push(m));
  return {
    got,
    sub,
    until: (n) => waitFor(() => got.length >= n, `${n} messages on ${name} (have ${got.length})`),
  };
}

describe("against one engine", () => {
  let engine;
  before(async () => {
    engine = await Engine.start();
  });
  after(() => engine.close());

  test("connects, receives JSON, text and bytes in order, tracks the last seq", async (t) => {
    const c = client(t, engine.wsUrl);
    const states = [];
    c.on("state", (s) => states.push(s));
    const events = [];
    c.on("connected", (e) => events.push(e));
    const name = topic();
    const m = collect(c, name);
    await c.connect();
    assert.equal(c.state, "connected");
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.match(c.connId, /^[0-9a-f]+$/);
    assert.equal(events[0].connId, c.connId);
    assert.equal(events[0].reconnected, false);
    assert.ok(events[0].pingIntervalMs > 0 && events[0].idleTimeoutMs > 0);
    await m.sub.ready;

    await engine.publish(name, { price: 101.5 });
    await engine.publish(name, "héllo");
    await engine.publish(name, Buffer.from([0, 1, 2, 255]), "application/x-raw");
    await engine.publish(name, Buffer.from("plain"));
    await m.until(4);
    const epoch = m.got[0].epoch;
    assert.match(epoch, /^[0-9a-f]{16}$/);
    assert.deepEqual(m.got, [
      { topic: name, seq: 1, epoch, data: { price: 101.5 } },
      { topic: name, seq: 2, epoch, text: "héllo" },
      { topic: name, seq: 3, epoch, b64: "AAEC/w==", contentType: "application/x-raw" },
      { topic: name, seq: 4, epoch, b64: Buffer.from("plain").toString("base64") },
    ]);
    assert.equal(c.lastSeq(name), 4);
    assert.deepEqual(c.position(name), { seq: 4, epoch });
    assert.equal(c.position("test:never"), undefined);
    assert.equal(c.lastSeq("test:never"), undefined);
  });

  test("ping measures a round trip", async (t) => {
    const c = client(t, engine.wsUrl);
    await assert.rejects(c.ping(), (e) => e instanceof HeraldError && e.code === "not_connected");
    await c.connect();
    const rtt = await c.ping();
    assert.ok(rtt >= 0 && rtt < 5000, `rtt ${rtt}`);
  });

  test("several handlers per topic; the topic is left when the last one goes", async (t) => {
    const c = client(t, engine.wsUrl);
    await c.connect();
    const [a, b] = [topic("a"), topic("b")];
    const firstA = [];
    const secondA = [];
    const all = [];
    c.on("message", (m) => all.push(m));
    const s1 = c.subscribe(a, (m) => firstA.push(m.seq));
    const s2 = c.subscribe(a, (m) => secondA.push(m.seq));
    const mb = collect(c, b);
    await Promise.all([s1.ready, s2.ready, mb.sub.ready]);
    assert.deepEqual(c.subscriptions.sort(), [a, b].sort());

    await engine.publish(a, { n: 1 });
    await waitFor(() => firstA.length === 1 && secondA.length === 1, "both handlers");
    s1.unsubscribe();
    await engine.publish(a, { n: 2 });
    await waitFor(() => secondA.length === 2, "the remaining handler");
    assert.deepEqual(firstA, [1]);

    s2.unsubscribe();
    assert.deepEqual(c.subscriptions, [b]);
    await c.ping(); // commands are answered in order: the unsubscribe is done
    await engine.publish(a, { n: 3 });
    await engine.publish(b, { n: 1 });
    await mb.until(1);
    assert.deepEqual(
      all.map((m) => `${m.topic === a ? "a" : "b"}${m.seq}`),
      ["a1", "a2", "b1"],
      "nothing from the left topic after the unsubscribe",
    );
  });

  test("a refused topic rejects its own subscription only", async (t) => {
    const c = client(t, engine.wsUrl);
    const good = topic("good");
    // Both asked for before connecting, so they go out in one subscribe command.
    const bad = c.subscribe("room::x", () => {});
    const m = collect(c, good);
    await c.connect();
    await assert.rejects(bad.ready, (e) => e instanceof HeraldError && e.code === "invalid_topic");
    await m.sub.ready;
    assert.deepEqual(c.subscriptions, [good]);
    await engine.publish(good, { ok: true });
    await m.until(1);
  });

  test("user and info reach presence; a token is passed along", async (t) => {
    const name = topic("presence");
    let calls = 0;
    const c = client(t, engine.wsUrl, {
      user: "alice",
      info: { name: "Alice & Co" },
      getToken: async () => `tok-${++calls}`,
    });
    await c.connect();
    await c.subscribe(name, () => {}).ready;
    const res = await engine.call("Presence", { topic: name });
    assert.equal(res.members.length, 1);
    assert.equal(res.members[0].connection_id, c.connId);
    assert.equal(res.members[0].user_id, "alice");
    assert.deepEqual(JSON.parse(res.members[0].info), { name: "Alice & Co" });
    assert.equal(calls, 1);
    // Every attempt asks for a fresh token.
    const first = c.connId;
    await engine.disconnect(first, 4100, "again", true);
    await waitFor(() => c.state === "connected" && c.connId !== first, "a new connection");
    assert.equal(calls, 2);
  });

  test("a failing getToken is reported and retried", async (t) => {
    let calls = 0;
    const c = client(t, engine.wsUrl, {
      getToken: () => {
        if (++calls < 3) throw new Error("token service down");
        return "ok";
      },
    });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    await c.connect();
    assert.equal(calls, 3);
    assert.equal(errors.length, 2);
    assert.equal(errors[0].code, "token");
    assert.match(errors[0].message, /token service down/);
  });

  test("a backend's Subscribe shows as serverSubscribed and its messages arrive", async (t) => {
    const c = client(t, engine.wsUrl);
    const name = topic("server");
    const subs = [];
    const msgs = [];
    c.on("serverSubscribed", (e) => subs.push(...e.topics));
    c.on("message", (m) => msgs.push(m));
    await c.connect();
    await engine.subscribe(c.connId, [name]);
    await waitFor(() => subs.includes(name), "serverSubscribed");
    await engine.publish(name, { hi: 1 });
    await waitFor(() => msgs.length === 1, "the message");
    assert.equal(msgs[0].topic, name);
  });

  test("Disconnect with reconnect=true: back with a new connection, resubscribed", async (t) => {
    const c = client(t, engine.wsUrl);
    const name = topic();
    const m = collect(c, name);
    const gone = [];
    c.on("disconnected", (e) => gone.push(e));
    await c.connect();
    await m.sub.ready;
    const first = c.connId;
    await engine.disconnect(first, 4100, "moved", true);
    await waitFor(() => c.state === "connected" && c.connId !== first, "a new connection");
    assert.deepEqual(gone, [{ code: 4100, reason: "moved", reconnect: true, announced: true }]);
    await waitFor(async () => (await engine.call("PresenceStats", { topic: name })).connections === 1, "resubscribed");
    await engine.publish(name, { after: true });
    await m.until(1);
  });

  test("Disconnect with reconnect=false (4500): closed for good", async (t) => {
    const c = client(t, engine.wsUrl);
    const gone = [];
    c.on("disconnected", (e) => gone.push(e));
    const retries = [];
    c.on("retry", (e) => retries.push(e));
    await c.connect();
    await engine.disconnect(c.connId, 0, "banned", false);
    await waitFor(() => c.state === "closed", "closed");
    assert.deepEqual(gone, [{ code: 4500, reason: "banned", reconnect: false, announced: true }]);
    await sleep(500);
    assert.equal(c.state, "closed");
    assert.deepEqual(retries, []);
    // connect() starts over explicitly.
    await c.connect();
    assert.equal(c.state, "connected");
  });

  test("connections dropped at once keep the backoff growing", async (t) => {
    const c = client(t, engine.wsUrl);
    const retries = [];
    c.on("retry", (e) => retries.push(e.attempt));
    await c.connect();
    for (let i = 0; i < 3; i++) {
      const id = c.connId;
      await engine.disconnect(id, 4001, "slow consumer", true);
      await waitFor(() => c.state === "connected" && c.connId !== id, "the reconnect");
    }
    assert.deepEqual(retries, [1, 2, 3]);
  });

  test("close() and connect() while a token is being fetched make one connection", async (t) => {
    const name = topic("epoch");
    const c = client(t, engine.wsUrl, { getToken: () => sleep(200).then(() => "t") });
    c.subscribe(name, () => {});
    const first = c.connect();
    first.catch(() => {});
    await sleep(50);
    c.close();
    await assert.rejects(first, (e) => e.code === "closed");
    await c.connect();
    await sleep(500);
    assert.equal((await engine.call("PresenceStats", { topic: name })).connections, 1);
  });

  test("close() stops the client and rejects a pending connect()", async (t) => {
    const c = client(t, "ws://127.0.0.1:9/ws"); // nothing listens on port 9
    const p = c.connect();
    await waitFor(() => c.state === "reconnecting", "a failed attempt");
    c.close();
    await assert.rejects(p, (e) => e.code === "closed");
    assert.equal(c.state, "closed");
  });
});

describe("across engine restarts", () => {
  test("SIGKILL mid-stream: the client comes back by itself and resubscribes", async (t) => {
    const engine = await Engine.start();
    t.after(() => engine.close());
    const c = client(t, engine.wsUrl);
    const names = [topic("k1"), topic("k2")];
    const got = { [names[0]]: [], [names[1]]: [] };
    for (const n of names) c.subscribe(n, (m) => got[n].push(m.seq));
    const states = [];
    c.on("state", (s) => states.push(s));
    const conns = [];
    c.on("connected", (e) => conns.push(e));
    await c.connect();
    await waitFor(async () => (await engine.call("PresenceStats", { topic: names[1] })).connections === 1, "subscribed");

    // A producer publishing all along, also while the engine is down.
    let publishing = true;
    let published = 0;
    const producer = (async () => {
      while (publishing) {
        try {
          await engine.publish(names[published % 2], { n: published });
          published++;
        } catch {
          // the engine is down
        }
        await sleep(20);
      }
    })();
    t.after(async () => {
      publishing = false;
      await producer;
    });

    await waitFor(() => got[names[0]].length >= 5, "messages before the kill");
    const before = c.lastSeq(names[0]);
    await engine.restart("SIGKILL", 300);
    await waitFor(() => conns.length === 2, "the reconnect");
    assert.equal(conns[1].reconnected, true);
    assert.notEqual(conns[1].connId, conns[0].connId);
    // The new engine starts its sequences again; new messages arrive on both topics.
    const counts = names.map((n) => got[n].length);
    await waitFor(() => names.every((n, i) => got[n].length >= counts[i] + 5), "messages after the restart");
    assert.ok(states.includes("reconnecting"), states.join());
    assert.ok(c.lastSeq(names[0]) < before + 100);
    for (const n of names) {
      const restartAt = got[n].indexOf(1, 1);
      assert.ok(restartAt > 0, `a new sequence on ${n}: ${got[n]}`);
      const after = got[n].slice(restartAt);
      for (let i = 1; i < after.length; i++) assert.equal(after[i], after[i - 1] + 1, `in order on ${n}`);
    }
  });

  test("SIGTERM: the 1001 going-away notice is surfaced and the client reconnects", async (t) => {
    const engine = await Engine.start();
    t.after(() => engine.close());
    const c = client(t, engine.wsUrl);
    const gone = [];
    c.on("disconnected", (e) => gone.push(e));
    const name = topic();
    const m = collect(c, name);
    await c.connect();
    await m.sub.ready;
    await engine.restart("SIGTERM");
    await waitFor(() => c.state === "connected", "reconnected");
    assert.equal(gone[0].code, 1001);
    assert.equal(gone[0].reconnect, true);
    assert.equal(gone[0].announced, true);
    await waitFor(async () => (await engine.call("PresenceStats", { topic: name })).connections === 1, "resubscribed");
    await engine.publish(name, { back: true });
    await m.until(1);
  });

  test("a frozen engine is detected by the heartbeat, and the client returns when it thaws", async (t) => {
    const engine = await Engine.start("--ping-interval", "500ms");
    t.after(async () => {
      engine.resume();
      await engine.close();
    });
    const c = client(t, engine.wsUrl, { heartbeatGrace: 1500, connectTimeout: 1000 });
    const gone = [];
    c.on("disconnected", (e) => gone.push(e));
    const conns = [];
    c.on("connected", (e) => conns.push(e));
    const name = topic();
    const m = collect(c, name);
    await c.connect();
    await m.sub.ready;
    assert.equal(conns[0].pingIntervalMs, 500);
    // Quiet but alive: the client's pings keep the connection up.
    await sleep(2000);
    assert.equal(c.state, "connected");
    assert.equal(conns.length, 1);

    engine.pause();
    const frozenAt = Date.now();
    await waitFor(() => gone.length >= 1, "the heartbeat to give up", 8000);
    const took = Date.now() - frozenAt;
    assert.equal(gone[0].reason, "heartbeat timeout");
    assert.ok(took >= 1000 && took < 4500, `detected after ${took} ms`);
    engine.resume();
    await waitFor(() => conns.length === 2 && c.state === "connected", "the reconnect");
    await waitFor(async () => (await engine.call("PresenceStats", { topic: name })).connections === 1, "resubscribed");
    await engine.publish(name, { thawed: true });
    await m.until(1);
  });
});
