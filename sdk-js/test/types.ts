// Compile-time checks of the public types (run by `npm run typecheck`, never executed).
import {
  Herald,
  HeraldError,
  type Message,
  type Position,
  type RecoveryEvent,
  type RefreshedEvent,
  type State,
  type TokenSource,
} from "../src/index.js";

declare const WS: import("../src/index.js").WebSocketConstructor;
const h = new Herald("ws://127.0.0.1:8080/ws", { WebSocket: WS, user: "u", getToken: async () => "t" });
new Herald("ws://127.0.0.1:8080/ws", { WebSocket: WS, token: "t", tokenInQuery: true });
const source: TokenSource = async () => "t";
new Herald("ws://127.0.0.1:8080/ws", { WebSocket: WS, token: source });
h.on("refreshed", (e: RefreshedEvent) => e.expiresAt + 1);
// @ts-expect-error: a token is a string or a function returning one
new Herald("ws://127.0.0.1:8080/ws", { WebSocket: WS, token: 42 });
const off = h.on("state", (state: State, previous: State) => void [state, previous]);
off();
h.on("connected", (e) => e.connId.toUpperCase() + e.pingIntervalMs.toFixed());
h.on("disconnected", (e) => (e.reconnect ? e.code : e.reason));
h.on("message", (m: Message) => m.seq + 1);
h.on("error", (e: HeraldError) => e.code);
const sub = h.subscribe("room:general", (m) => m.topic);
void sub.ready.then(() => sub.unsubscribe());
const last: number | undefined = h.lastSeq("room:general");
void last;
const pos: Position | undefined = h.position("room:general");
void pos?.epoch.toUpperCase();
h.on("recovery", (e: RecoveryEvent) => (e.recovered ? e.position.seq : e.topic));
h.on("message", (m) => m.epoch?.length);
// @ts-expect-error: not an event
h.on("nope", () => {});
// @ts-expect-error: the state listener gets states, not numbers
h.on("state", (s: number) => s);
