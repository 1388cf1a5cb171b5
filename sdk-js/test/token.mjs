// Mints HS256 JWTs for the tests, as an application's backend would (docs/protocol.md,
// "The token"): node's crypto only, no JWT library.
import { createHmac } from "node:crypto";

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 token over `claims`, signed with `secret`. */
export function mint(claims, secret) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Seconds since the epoch (the unit of `exp`). */
export const nowSecs = () => Math.floor(Date.now() / 1000);
