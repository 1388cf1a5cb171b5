// The example pages in headless Chromium, each against a real engine and its real
// backend started by the example's own run.sh: messages and presence appear, and the
// pages come back by themselves after the engine is killed and restarted.
// Screenshots go to tests/browser/output/.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Engine, freePort, sleep, waitFor } from "../../sdk-js/test/engine.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const output = path.join(here, "output");
mkdirSync(output, { recursive: true });

// The first run of an example installs its backend (virtualenv, Go build).
const START_MS = 300_000;
const WAIT_MS = 20_000;

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
});
after(() => browser?.close());

/** Runs examples/<name>/run.sh in its own process group; stopped when the test ends. */
async function runExample(t, name, env) {
  const port = await freePort();
  const proc = spawn("bash", [path.join(root, "examples", name, "run.sh")], {
    env: { ...process.env, PORT: String(port), ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let log = "";
  const keep = (d) => {
    log = (log + d.toString()).slice(-8000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  t.after(async () => {
    if (proc.exitCode === null) process.kill(-proc.pid, "SIGTERM");
    await exited;
  });
  const base = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (proc.exitCode !== null) throw new Error(`${name}/run.sh exited with ${proc.exitCode}:\n${log}`);
      try {
        return (await fetch(`${base}/config.json`)).ok;
      } catch {
        return false;
      }
    },
    `examples/${name} to serve its page`,
    START_MS,
  );
  return { base, log: () => log };
}

/** Opens a page; fails the test on any error the page throws. */
async function open(t, url) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err));
  page.on("console", (msg) => {
    // The browser itself logs each failed WebSocket attempt while the engine is down.
    if (msg.type() === "error" && !/^WebSocket connection to .* failed/.test(msg.text())) {
      errors.push(new Error(msg.text()));
    }
  });
  t.after(() => assert.deepEqual(errors, [], `errors in ${url}`));
  await page.goto(url);
  return page;
}

const text = (page, selector) => page.locator(selector).innerText();
const texts = (page, selector) => page.locator(selector).allInnerTexts();

async function waitText(page, selector, want, what) {
  await waitFor(async () => (await text(page, selector)) === want, `${what}: ${selector} = ${want}`, WAIT_MS);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(output, `${name}.png`) });
}

test("chat: messages and who is online, across an engine kill", { timeout: START_MS + 120_000 }, async (t) => {
  const engine = await Engine.start();
  t.after(() => engine.close());
  const chat = await runExample(t, "chat", {
    START_ENGINE: "0",
    HERALD_WS_ADDR: `127.0.0.1:${engine.wsPort}`,
    HERALD_GRPC_ADDR: `127.0.0.1:${engine.grpcPort}`,
  });
  const alice = await open(t, `${chat.base}/?user=alice&room=general`);
  const bob = await open(t, `${chat.base}/?user=bob&room=general`);
  const online = async (page, want, what) =>
    waitFor(async () => (await texts(page, "#online li")).join() === want.join(), `${what}: online = ${want}`, WAIT_MS);

  for (const page of [alice, bob]) {
    await waitText(page, "#state", "connected", "connected");
    await online(page, ["alice", "bob"], "both online");
  }
  assert.equal(await alice.locator("#login").isHidden(), true, "no login form once named");

  const say = async (page, words) => {
    await page.fill("#text", words);
    await page.click("#send button");
  };
  await say(alice, "hello from alice");
  await say(bob, "hi alice");
  for (const page of [alice, bob]) {
    await waitFor(
      async () => (await texts(page, "#messages li")).map((s) => s.replace(/^.*?(alice|bob)/, "$1")).join("|") ===
        "alice hello from alice|bob hi alice",
      "both messages, in order",
      WAIT_MS,
    );
  }
  await shot(alice, "chat-alice");

  // Kill the engine: both pages notice, then come back by themselves.
  await engine.stop("SIGKILL");
  for (const page of [alice, bob]) {
    await waitFor(async () => (await text(page, "#state")) !== "connected", "the page to notice", WAIT_MS);
  }
  assert.equal(await bob.locator("#online.stale").count(), 1, "the list is shown as out of date");
  await shot(bob, "chat-bob-engine-down");
  await engine.start();
  for (const page of [alice, bob]) {
    await waitText(page, "#state", "connected", "reconnected");
    // Commands are answered in order: once a ping is back, the resubscribe is done too
    // (a message published before it would not reach the page).
    await page.evaluate(() => window.herald.ping());
  }
  // The backend's presence watch reconnected too and republished the list; sending works again.
  await say(bob, "back again");
  for (const page of [alice, bob]) {
    await online(page, ["alice", "bob"], "both online after the restart");
    try {
      await waitFor(async () => (await texts(page, "#messages li")).length === 3, "the message after the restart", WAIT_MS);
    } catch (err) {
      err.message += ` (error shown to bob: ${JSON.stringify(await text(bob, "#error"))})`;
      throw err;
    }
    assert.match((await texts(page, "#messages li"))[2], /bob back again$/);
  }
  await shot(alice, "chat-alice-after-restart");

  // Bob leaves: alice's list follows.
  await bob.close();
  await online(alice, ["alice"], "bob gone");

  // Carol comes in through the login form.
  const carol = await open(t, `${chat.base}/`);
  assert.equal(await carol.locator("#chat").isHidden(), true);
  await carol.fill("#login-user", "carol");
  await carol.click("#login button");
  await carol.waitForURL(/\?user=carol&room=general$/);
  await waitText(carol, "#state", "connected", "carol connected");
  await online(alice, ["alice", "carol"], "carol joined");
  await shot(alice, "chat-alice-carol-joined");
});

test("ticker: live prices, across an engine kill", { timeout: START_MS + 120_000 }, async (t) => {
  const engine = await Engine.start();
  t.after(() => engine.close());
  const ticker = await runExample(t, "ticker", {
    START_ENGINE: "0",
    HERALD_WS_ADDR: `127.0.0.1:${engine.wsPort}`,
    HERALD_GRPC_ADDR: `127.0.0.1:${engine.grpcPort}`,
  });
  const page = await open(t, `${ticker.base}/`);
  await waitText(page, "#state", "connected", "connected");
  const ticks = async () => Number(await text(page, "#ticks"));
  await waitFor(async () => (await ticks()) >= 10, "10 ticks", WAIT_MS);
  assert.match(await text(page, "#price"), /^\d+\.\d{5}$/);
  assert.equal(await text(page, "#symbol"), "EUR-USD");
  const points = (await page.locator("#line").getAttribute("points")).trim().split(" ");
  assert.ok(points.length >= 10, `chart has ${points.length} points`);
  await shot(page, "ticker");

  await engine.stop("SIGKILL");
  await waitFor(async () => (await text(page, "#state")) !== "connected", "the page to notice", WAIT_MS);
  await sleep(300);
  const before = await ticks();
  await sleep(700);
  assert.equal(await ticks(), before, "no ticks while the engine is down");
  await engine.start();
  await waitText(page, "#state", "connected", "reconnected");
  await waitText(page, "#reconnects", "1", "one reconnect counted");
  await waitFor(async () => (await ticks()) >= before + 10, "10 more ticks after the restart", WAIT_MS);
  await shot(page, "ticker-after-restart");
});

test("notifications: one user per tab, started with its own engine", { timeout: START_MS + 60_000 }, async (t) => {
  const [ws, grpc] = [await freePort(), await freePort()];
  const notes = await runExample(t, "notifications", {
    HERALD_WS_ADDR: `127.0.0.1:${ws}`,
    HERALD_GRPC_ADDR: `127.0.0.1:${grpc}`,
  });
  const alice = await open(t, `${notes.base}/?user=alice`);
  const bob = await open(t, `${notes.base}/?user=bob`);
  for (const page of [alice, bob]) await waitText(page, "#state", "connected", "connected");

  await alice.fill("#to", "bob");
  await alice.fill("#text", "your build is green");
  await alice.click("#send button");
  await waitText(alice, "#status", "sent to bob (1 tab connected)", "sent");
  await waitFor(async () => (await texts(bob, "#notes li")).length === 1, "bob's notification", WAIT_MS);
  assert.match((await texts(bob, "#notes li"))[0], /^from alice at .*\nyour build is green$/);

  await bob.fill("#to", "carol");
  await bob.fill("#text", "nobody here");
  await bob.click("#send button");
  await waitText(bob, "#status", "sent to carol (0 tabs connected)", "sent to nobody");
  await shot(bob, "notifications-bob");
  await bob.fill("#to", "bad id!");
  await bob.fill("#text", "x");
  await bob.evaluate(() => document.getElementById("send").requestSubmit());
  assert.equal(await text(bob, "#status"), "sent to carol (0 tabs connected)", "the form refuses a bad user id");
  // The backend refuses what the form would not send either.
  const res = await fetch(`${notes.base}/api/notify`, {
    method: "POST",
    body: JSON.stringify({ to: "bad id!", from: "bob", text: "x" }),
  });
  assert.equal(res.status, 400);
  assert.match((await res.json()).error, /to must be a user id/);
  await sleep(300);
  assert.deepEqual(await texts(alice, "#notes li"), [], "alice got nothing");
});

test("the SDK bundle in Chromium: payloads, ping, close codes, heartbeat on a frozen engine", { timeout: 120_000 }, async (t) => {
  const engine = await Engine.start("--ping-interval", "500ms");
  t.after(async () => {
    engine.resume();
    await engine.close();
  });
  // A blank page and the bundle, from a server of the test's own.
  const bundle = readFileSync(path.join(root, "sdk-js/dist/herald.min.js"));
  const server = http.createServer((req, res) => {
    if (req.url === "/herald.min.js") {
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(bundle);
    } else {
      res.writeHead(200, { "Content-Type": "text/html" }).end('<!doctype html><link rel="icon" href="data:,"><title>sdk</title>');
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  const page = await open(t, `http://127.0.0.1:${server.address().port}/`);

  await page.evaluate(async (url) => {
    const { Herald } = await import("/herald.min.js");
    const herald = new Herald(url, { user: "browser", minReconnectDelay: 50, maxReconnectDelay: 300, heartbeatGrace: 1500, connectTimeout: 1000 });
    window.herald = herald;
    window.log = { messages: [], disconnected: [], connected: [], states: [] };
    herald.on("message", (m) => window.log.messages.push(m));
    herald.on("disconnected", (e) => window.log.disconnected.push(e));
    herald.on("connected", (e) => window.log.connected.push(e));
    herald.on("state", (s) => window.log.states.push(s));
    const sub = herald.subscribe("browser:test", () => {});
    await herald.connect();
    await sub.ready;
  }, engine.wsUrl);
  const log = () => page.evaluate(() => window.log);
  const connId = () => page.evaluate(() => window.herald.connId);
  await waitFor(async () => (await engine.call("PresenceStats", { topic: "browser:test" })).connections === 1, "subscribed");

  await engine.publish("browser:test", { n: 1 });
  await engine.publish("browser:test", "two");
  await engine.publish("browser:test", Buffer.from([3]));
  await waitFor(async () => (await log()).messages.length === 3, "three messages");
  // Every message carries the topic's epoch (16 hex digits), the same for all three.
  const messages = (await log()).messages;
  const epoch = messages[0].epoch;
  assert.match(epoch, /^[0-9a-f]{16}$/);
  assert.deepEqual(messages, [
    { topic: "browser:test", seq: 1, epoch, data: { n: 1 } },
    { topic: "browser:test", seq: 2, epoch, text: "two" },
    { topic: "browser:test", seq: 3, epoch, b64: "Aw==" },
  ]);
  assert.equal(await page.evaluate(() => window.herald.lastSeq("browser:test")), 3);
  const rtt = await page.evaluate(() => window.herald.ping());
  assert.ok(rtt >= 0 && rtt < 5000);

  // 4100 from a backend: back with a new connection and resubscribed.
  const first = await connId();
  await engine.disconnect(first, 4100, "moved", true);
  await waitFor(async () => (await log()).connected.length === 2, "the reconnect");
  assert.deepEqual((await log()).disconnected, [{ code: 4100, reason: "moved", reconnect: true, announced: true }]);
  await waitFor(async () => (await engine.call("PresenceStats", { topic: "browser:test" })).connections === 1, "resubscribed");

  // A frozen engine: the browser cannot see WebSocket pings, the client's own pings find it.
  await sleep(1500);
  assert.equal((await log()).connected.length, 2, "a quiet connection stays up");
  engine.pause();
  await waitFor(async () => (await log()).disconnected.length === 2, "the heartbeat to give up", 8000);
  assert.equal((await log()).disconnected[1].reason, "heartbeat timeout");
  engine.resume();
  await waitFor(async () => (await log()).connected.length === 3, "the reconnect after the thaw");

  // 4500: closed for good, no more attempts.
  await engine.disconnect(await connId(), 0, "banned", false);
  await waitFor(async () => (await page.evaluate(() => window.herald.state)) === "closed", "closed");
  assert.deepEqual((await log()).disconnected[2], { code: 4500, reason: "banned", reconnect: false, announced: true });
  await sleep(500);
  assert.equal((await log()).connected.length, 3);
  assert.equal(await page.evaluate(() => window.herald.state), "closed");
});
