// The chat page: messages and "who is online" arrive over one Herald WebSocket;
// sending goes through the backend (POST /api/send), which publishes over gRPC.
import { Herald } from "/herald.min.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const user = params.get("user");
const room = params.get("room") || "general";

if (!user) {
  $("login").hidden = false;
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.search = new URLSearchParams({ user: $("login-user").value.trim(), room: $("login-room").value.trim() });
  });
} else {
  start().catch((err) => showError(String(err)));
}

async function start() {
  $("chat").hidden = false;
  $("room-name").textContent = `#${room}`;
  $("me").textContent = user;
  const config = await (await fetch("/config.json")).json();
  const url = config.ws_url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${config.ws_port}${config.ws_path}`;

  const herald = new Herald(url, { user, info: { name: user } });
  window.herald = herald; // for poking at it from the console
  herald.on("state", (state) => {
    $("state").textContent = state;
    $("state").dataset.state = state;
    // While away the list may be out of date; the backend republishes it once we are back.
    $("online").classList.toggle("stale", state !== "connected");
  });
  herald.on("disconnected", (e) => {
    if (!e.reconnect) showError(`disconnected for good: ${e.code} ${e.reason}`);
  });

  // The online list first: the backend publishes it when our own join shows up in
  // presence, which happens once we are in room:<room>.
  herald.subscribe(`online:${room}`, (msg) => showOnline(msg.data.users));
  herald.subscribe(`room:${room}`, (msg) => showMessage(msg.data, msg.seq));

  $("send").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("text").value;
    const res = await fetch("/api/send", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ room, user, text }),
    });
    if (res.ok) {
      $("text").value = "";
      showError("");
    } else {
      showError((await res.json()).error);
    }
  });

  await herald.connect();
}

function showMessage(m, seq) {
  const li = document.createElement("li");
  li.dataset.seq = seq;
  const who = document.createElement("b");
  who.textContent = m.user;
  const time = document.createElement("time");
  time.textContent = new Date(m.ts).toLocaleTimeString();
  li.append(time, who, document.createTextNode(` ${m.text}`));
  if (m.user === user) li.className = "mine";
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

function showOnline(users) {
  $("online").replaceChildren(
    ...users.map((u) => {
      const li = document.createElement("li");
      li.textContent = u;
      return li;
    }),
  );
  $("online-count").textContent = users.length;
}

function showError(text) {
  $("error").textContent = text;
}
