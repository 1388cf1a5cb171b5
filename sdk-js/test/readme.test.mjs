// The Node example in README.md runs as written (against a real engine; only the
// engine address is replaced by the test engine's).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Engine } from "./engine.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

test("the README's Node example", async (t) => {
  const readme = readFileSync(path.join(here, "../README.md"), "utf8");
  const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.equal(blocks.length, 1);
  const engine = await Engine.start();
  t.after(() => engine.close());
  // Inside the package, so that "@heraldrt/client" resolves to this package's build.
  const dir = mkdtempSync(path.join(here, ".readme-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, "example.mjs");
  writeFileSync(file, blocks[0].replaceAll("ws://127.0.0.1:8080/ws", engine.wsUrl));
  const { stdout } = await promisify(execFile)(process.execPath, [file], { timeout: 20000 });
  assert.match(stdout, /^connected as [0-9a-f]+\nround trip \d+(\.\d+)? ms\nlast seq undefined\n/);
});

test("the README states the bundle's current size", async () => {
  const { gzipSync } = await import("node:zlib");
  const readme = readFileSync(path.join(here, "../README.md"), "utf8");
  const min = readFileSync(path.join(here, "../dist/herald.min.js"));
  const gz = gzipSync(min, { level: 9 }).length;
  const fmt = (n) => n.toLocaleString("en-US");
  assert.ok(
    readme.includes(`is ${fmt(min.length)} bytes minified, **${fmt(gz)} bytes minified +`),
    `README.md should say ${fmt(min.length)} bytes minified, ${fmt(gz)} gzipped (node scripts/size.mjs)`,
  );
});
