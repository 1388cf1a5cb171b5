// One user per tab (/?user=alice): the tab receives what the backend publishes to
// user:<id>, and can send notifications to other users through the backend.
import { Herald } from "/herald.min.js";

const $ = (id) => document.getElementById(id);
const user = new URLSearchParams(location.search).get("user");

if (!user || !/^[A-Za-z0-9_-]{1,64}$/.test(user)) {
  $("hint").hidden = false;
} else {
  $("me").textContent = user;
  $("send").hidden = false;
  const config = await (await fetch("/config.json")).json();
  const url = config.ws_url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${config.ws_port}${config.ws_path}`;

  // The engine takes the user id from the URL for now; with authentication it will
  // come from the token and only this user may subscribe to user:<id>.
  const herald = new Herald(url, { user });
  window.herald = herald;
  herald.on("state", (state) => {
    $("state").textContent = state;
    $("state").dataset.state = state;
  });
  herald.subscribe(`user:${user}`, (msg) => {
    const { from, text, ts } = msg.data;
    const li = document.createElement("li");
    const meta = document.createElement("small");
    meta.textContent = `from ${from} at ${new Date(ts).toLocaleTimeString()}`;
    li.append(meta, document.createTextNode(text));
    $("notes").prepend(li);
  });

  $("send").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const to = $("to").value.trim();
    const res = await fetch("/api/notify", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ to, from: user, text: $("text").value }),
    });
    const body = await res.json();
    if (res.ok) {
      $("text").value = "";
      $("status").textContent = `sent to ${to} (${body.tabs} tab${body.tabs === 1 ? "" : "s"} connected)`;
    } else {
      $("status").textContent = body.error;
    }
  });

  herald.connect();
}
