// The ticker page: live prices from the Go producer, over one Herald WebSocket.
import { Herald } from "/herald.min.js";

const $ = (id) => document.getElementById(id);
const HISTORY = 200;
const prices = [];
let ticks = 0;
let reconnects = 0;

const config = await (await fetch("/config.json")).json();
const url = config.ws_url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${config.ws_port}${config.ws_path}`;
$("topic").textContent = config.topic;

const herald = new Herald(url);
window.herald = herald;
herald.on("state", (state) => {
  $("state").textContent = state;
  $("state").dataset.state = state;
});
herald.on("connected", (e) => {
  if (e.reconnected) $("reconnects").textContent = ++reconnects;
});

herald.subscribe(config.topic, (msg) => {
  const { symbol, price, ts } = msg.data;
  const prev = prices.at(-1);
  prices.push(price);
  if (prices.length > HISTORY) prices.shift();
  $("symbol").textContent = symbol;
  $("price").textContent = price.toFixed(5);
  $("price").className = prev === undefined || price === prev ? "" : price > prev ? "up" : "down";
  $("ticks").textContent = ++ticks;
  $("seq").textContent = msg.seq;
  $("age").textContent = `${Math.max(0, Date.now() - ts)} ms`;
  draw();
});

function draw() {
  const lo = Math.min(...prices);
  const hi = Math.max(...prices);
  const span = hi - lo || 1;
  const step = 200 / (Math.max(prices.length, 2) - 1);
  $("line").setAttribute(
    "points",
    prices.map((p, i) => `${(i * step).toFixed(2)},${(95 - ((p - lo) / span) * 90).toFixed(2)}`).join(" "),
  );
}

herald.connect();
