// Authentication against the real engine started with --token-hmac-secret: the token
// as a `connect` frame and as `?token=`, the refresh flow, reconnecting after expiry
// (4004) with a fresh token, and refusals that stop the client.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { WebSocket } from "ws";
import { Herald, HeraldError } from "../dist/index.js";
import { Engine, freePort, sleep, waitFor } from "./engine.mjs";
import { mint, nowSecs } from "./token.mjs";

const SECRET = "sdk-js-test-secret";
/** The engine's --token-refresh-before: `refresh_required` comes this long before `exp`. */
const REFRESH_BEFORE_S = 2;

let uniq = 0;
const topic = () => `auth:t-${process.pid}-${++uniq}`;
const token = (sub, ttlSecs = 600, extra = {}) => mint({ sub, exp: nowSecs() + ttlSecs, ...extra }, SECRET);

/** A `ws` WebSocket that records the URLs it opens and the frames it sends. */
function spyWebSocket() {
  const seen = { urls: [], sent: [] };
  class Spy extends WebSocket {
    constructor(url) {
      super(url);
      seen.urls.push(url);
    }
    send(data) {
      seen.sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  return { Spy, seen };
}

/** A client with short delays, closed when the test ends; records its events. */
function client(t, url, opts = {}) {
  const c = new Herald(url, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300, connectTimeout: 3000, ...opts });
  t.after(() => c.close());
  const ev = { errors: [], gone: [], retries: [], conns: [], refreshed: [] };
  c.on("error", (e) => ev.errors.push(e));
  c.on("disconnected", (e) => ev.gone.push(e));
  c.on("retry", (e) => ev.retries.push(e));
  c.on("connected", (e) => ev.conns.push(e));
  c.on("refreshed", (e) => ev.refreshed.push(e));
  return { c, ev };
}

async function presenceUser(engine, name, connId) {
  const res = await engine.call("Presence", { topic: name });
  return res.members.find((m) => m.connection_id === connId)?.user_id;
}

describe("with token authentication", () => {
  let engine;
  let dir;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "herald-sdk-js-"));
    const config = path.join(dir, "herald.toml");
    writeFileSync(
      config,
      '[[topics]]\npattern = "auth:*"\nsubscribe = "authenticated"\n\n' +
        '[[topics]]\npattern = "hist:*"\nhistory_size = 1000\n',
    );
    engine = await Engine.start(
      "--config", config,
      "--token-hmac-secret", SECRET,
      "--token-refresh-before", `${REFRESH_BEFORE_S}s`,
    );
  });
  after(async () => {
    await engine.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a token string goes in a connect frame, not in the URL", async (t) => {
    const { Spy, seen } = spyWebSocket();
    const tok = token("alice");
    const { c, ev } = client(t, engine.wsUrl, { WebSocket: Spy, token: tok });
    const name = topic();
    const sub = c.subscribe(name, () => {});
    await c.connect();
    await sub.ready;
    assert.deepEqual(seen.urls, [engine.wsUrl]);
    assert.deepEqual(seen.sent[0], { type: "connect", token: tok, since: {} });
    assert.equal(await presenceUser(engine, name, c.connId), "alice");
    assert.deepEqual(ev.errors, []);
  });

  test("a token's subscribe claim recovers what was missed through the connect frame", async (t) => {
    const name = `hist:c-${process.pid}-${++uniq}`;
    // Connections the test can cut and keep from coming back for a while.
    const deadPort = await freePort();
    const sockets = [];
    let block = false;
    class Net extends WebSocket {
      constructor(url) {
        super(block ? url.replace(/:\d+\//, `:${deadPort}/`) : url);
        sockets.push(this);
      }
    }
    const { c, ev } = client(t, engine.wsUrl, { WebSocket: Net, token: async () => token("erin", 600, { subscribe: [name] }) });
    const got = [];
    c.on("message", (m) => m.topic === name && got.push(m.seq));
    const recoveries = [];
    c.on("recovery", (e) => recoveries.push(e));
    await c.connect();
    const members = async () => (await engine.call("PresenceStats", { topic: name })).connections ?? 0;
    await waitFor(async () => (await members()) === 1, "the claim");
    for (let n = 1; n <= 3; n++) await engine.publish(name, { n });
    await waitFor(() => got.length === 3, "3 messages");
    block = true;
    sockets.at(-1).terminate();
    await waitFor(async () => (await members()) === 0, "the connection gone");
    for (let n = 4; n <= 6; n++) await engine.publish(name, { n });
    block = false;
    await waitFor(() => recoveries.length === 1, "the recovery event");
    assert.equal(recoveries[0].topic, name);
    assert.equal(recoveries[0].recovered, true);
    assert.equal(recoveries[0].position.seq, 6);
    await engine.publish(name, { n: 7 });
    await waitFor(() => got.length === 7, `7 messages (have ${got})`);
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(ev.errors, []);
  });

  test("tokenInQuery: the token goes in ?token=", async (t) => {
    const { Spy, seen } = spyWebSocket();
    const tok = token("bob");
    const { c, ev } = client(t, engine.wsUrl, { WebSocket: Spy, token: async () => tok, tokenInQuery: true });
    const name = topic();
    const sub = c.subscribe(name, () => {});
    await c.connect();
    await sub.ready;
    assert.deepEqual(seen.urls, [`${engine.wsUrl}?token=${encodeURIComponent(tok)}`]);
    assert.ok(!seen.sent.some((f) => f.type === "connect"), JSON.stringify(seen.sent));
    assert.equal(await presenceUser(engine, name, c.connId), "bob");
    assert.deepEqual(ev.errors, []);
  });

  test("refresh_required: the token function is asked again and the connection outlives the first token", async (t) => {
    let calls = 0;
    let firstExp = 0;
    const getToken = async () => {
      calls++;
      const exp = nowSecs() + REFRESH_BEFORE_S + 1;
      firstExp ||= exp;
      return mint({ sub: "carol", exp }, SECRET);
    };
    const { c, ev } = client(t, engine.wsUrl, { token: getToken });
    const name = topic();
    const sub = c.subscribe(name, () => {});
    await c.connect();
    await sub.ready;
    const connId = c.connId;
    await waitFor(() => ev.refreshed.length >= 1, "a refresh");
    assert.ok(ev.refreshed[0].expiresAt > firstExp, JSON.stringify(ev.refreshed));
    // Past the first token's expiry (with a margin): still the same connection.
    await waitFor(() => Date.now() / 1000 > firstExp + 1, "the first token's exp", 10000);
    assert.equal(c.state, "connected");
    assert.equal(c.connId, connId);
    assert.ok(calls >= 2, `${calls} calls`);
    assert.ok(await c.ping() >= 0);
    assert.equal(await presenceUser(engine, name, connId), "carol");
    assert.deepEqual(ev.gone, []);
    assert.deepEqual(ev.errors, []);
  });

  test("a refused refresh is reported; at expiry (4004) the client reconnects with a fresh token", async (t) => {
    const tokens = [
      token("dave", 2), // expires soon: refresh_required comes right away
      token("erin"), // the refresh names another user: refused, token_wrong_subject
      token("dave"), // the reconnect after 4004
    ];
    let calls = 0;
    const { c, ev } = client(t, engine.wsUrl, { token: () => tokens[calls++] });
    const name = topic();
    const sub = c.subscribe(name, () => {});
    await c.connect();
    await sub.ready;
    const first = c.connId;
    await waitFor(() => ev.conns.length === 2 && c.state === "connected", "the reconnect", 10000);
    assert.equal(calls, 3);
    assert.deepEqual(
      ev.errors.map((e) => e.code),
      ["token_wrong_subject"],
    );
    assert.equal(ev.gone.length, 1);
    assert.deepEqual(ev.gone[0], { code: 4004, reason: "token expired", reconnect: true, announced: true });
    assert.notEqual(c.connId, first);
    await waitFor(async () => (await presenceUser(engine, name, c.connId)) === "dave", "resubscribed");
  });

  test("an expired token at connect (4004) is retried with a fresh one", async (t) => {
    let calls = 0;
    const { c, ev } = client(t, engine.wsUrl, {
      token: () => (++calls === 1 ? token("fay", -60) : token("fay")),
    });
    await c.connect();
    assert.equal(calls, 2);
    assert.deepEqual(ev.errors.map((e) => e.code), ["token_expired"]);
    assert.equal(ev.gone[0].code, 4004);
    assert.equal(ev.gone[0].reconnect, true);
    assert.equal(ev.conns.length, 1);
  });

  test("an expired fixed token stops the client: it cannot get fresher", async (t) => {
    const { c, ev } = client(t, engine.wsUrl, { token: token("gus", -60) });
    await assert.rejects(c.connect(), (e) => e instanceof HeraldError && e.code === "token_expired");
    assert.equal(c.state, "closed");
    assert.deepEqual(ev.errors.map((e) => e.code), ["token_expired"]);
    assert.deepEqual(ev.gone.map((e) => [e.code, e.reconnect]), [[4004, false]]);
    assert.deepEqual(ev.retries, []);
  });

  test("a badly signed token stops the client with the server's code (connect frame)", async (t) => {
    let calls = 0;
    const bad = () => {
      calls++;
      return mint({ sub: "mallory", exp: nowSecs() + 600 }, "not-the-secret");
    };
    const { c, ev } = client(t, engine.wsUrl, { token: bad });
    await assert.rejects(c.connect(), (e) => e instanceof HeraldError && e.code === "token_bad_signature");
    assert.equal(c.state, "closed");
    assert.deepEqual(ev.errors.map((e) => e.code), ["token_bad_signature"]);
    assert.deepEqual(ev.gone.map((e) => [e.code, e.reconnect, e.announced]), [[4501, false, true]]);
    await sleep(400);
    assert.deepEqual(ev.retries, []);
    assert.equal(calls, 1);
  });

  test("a refused ?token= handshake (HTTP 401): a fixed token stops at once, a function after a second refusal", async (t) => {
    const bad = mint({ sub: "mallory", exp: nowSecs() + 600 }, "not-the-secret");
    const fixed = client(t, engine.wsUrl, { token: bad, tokenInQuery: true });
    await assert.rejects(fixed.c.connect(), (e) => e.code === "unauthorized");
    assert.deepEqual(fixed.ev.errors.map((e) => e.code), ["unauthorized"]);
    assert.deepEqual(fixed.ev.retries, []);

    let calls = 0;
    const fn = client(t, engine.wsUrl, { token: () => (calls++, bad), tokenInQuery: true });
    await assert.rejects(fn.c.connect(), (e) => e.code === "unauthorized");
    assert.equal(calls, 2);
    assert.deepEqual(fn.ev.errors.map((e) => e.code), ["unauthorized", "unauthorized"]);
    assert.equal(fn.ev.retries.length, 1);
    assert.equal(fn.c.state, "closed");
  });
});

describe("without authentication (open mode)", () => {
  let engine;
  before(async () => {
    engine = await Engine.start();
  });
  after(() => engine.close());

  test("a token is harmless: the server's already_connected answer is not an error", async (t) => {
    const { c, ev } = client(t, engine.wsUrl, { token: token("hal"), user: "hal" });
    await c.connect();
    assert.ok(await c.ping() >= 0); // the connect frame's answer has come by now
    assert.deepEqual(ev.errors, []);
    assert.equal(c.state, "connected");
  });
});
