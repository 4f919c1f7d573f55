"""The operator's status page served at ``GET /``: one self-contained HTML document.

No build step and no external asset: the CSS and the vanilla JavaScript are inline,
and a Content-Security-Policy (in a meta tag) lets only these two blocks run, by hash,
and lets the script talk to this node only.

The page is served to anyone, so the HTML itself holds nothing but the org name (HTML
escaped). Everything else comes from the bearer-token API, which the script polls
every 2 s once it has the token, and is put into the page with ``textContent`` only
(org names and errors are chosen by peers).

The token: typed into a password field and kept in ``sessionStorage`` (this tab only;
never in the URL, localStorage or a cookie). "Forget token" drops it. A script or a
test may hand it over once in the URL *fragment*, ``/#token=...``, which the browser
never sends to the server: the page moves it into sessionStorage and removes it from
the address bar and the history entry at once (``history.replaceState``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json

TOKEN_KEY = "dfs-api-token"
POLL_SECONDS = 2

_CSS = """
:root {
  color-scheme: light dark;
  --bg: #f5f6f8; --card: #ffffff; --fg: #1d2330; --muted: #5e6778; --line: #e2e5eb;
  --accent: #2458c6; --ok: #1a7f43; --ok-bg: #e3f4ea; --warn: #8a5a00; --warn-bg: #fbf0d6;
  --bad: #b42318; --bad-bg: #fde7e5; --idle: #5e6778; --idle-bg: #eceef2;
  --bar: #dfe3ea; --on-accent: #ffffff;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #12151b; --card: #1b2029; --fg: #e6e9ef; --muted: #98a1b3; --line: #2b323e;
    --accent: #7aa5ff; --ok: #5fd08d; --ok-bg: #173425; --warn: #f0c060; --warn-bg: #3a2e12;
    --bad: #ff8a80; --bad-bg: #3d1c1a; --idle: #98a1b3; --idle-bg: #262c37;
    --bar: #2b323e; --on-accent: #0b1220;
  }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif;
}
.wrap { max-width: 1120px; margin: 0 auto; padding: 20px 16px 40px; }
header.top { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; }
header.top .title { flex: 1 1 auto; min-width: 0; }
.actions { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; }
h2 .count { text-transform: none; letter-spacing: 0; font-weight: 400; margin-left: 6px; }
table.held td { padding-left: 0; }
table.held td.num { padding-right: 0; }
.eyebrow {
  margin: 0; color: var(--muted); font-size: 12px; letter-spacing: .06em;
  text-transform: uppercase;
}
h1 { margin: 2px 0 0; font-size: 26px; line-height: 1.2; overflow-wrap: anywhere; }
h2 {
  margin: 0 0 10px; font-size: 13px; letter-spacing: .05em; text-transform: uppercase;
  color: var(--muted); font-weight: 600;
}
.intro { color: var(--muted); max-width: 70ch; margin: 10px 0 18px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; }
.note, .banner {
  border-radius: 10px; padding: 10px 14px; margin: 0 0 16px;
  background: var(--warn-bg); color: var(--warn);
}
.banner.bad { background: var(--bad-bg); color: var(--bad); }
.card {
  background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  padding: 16px; min-width: 0;
}
.grid {
  display: grid; gap: 16px; margin-bottom: 16px;
  grid-template-columns: repeat(auto-fit, minmax(280px, 1fr));
}
.stack > .card { margin-bottom: 16px; }
dl.kv { display: grid; grid-template-columns: auto 1fr; gap: 6px 14px; margin: 0; }
dl.kv dt { color: var(--muted); white-space: nowrap; }
dl.kv dd { margin: 0; text-align: right; overflow-wrap: anywhere;
  font-variant-numeric: tabular-nums; }
.live { display: flex; align-items: center; gap: 8px; color: var(--muted); font-size: 13px; }
.dot { width: 9px; height: 9px; border-radius: 50%; background: var(--ok); flex: none; }
.live.stale .dot { background: var(--bad); }
button, input {
  font: inherit; border-radius: 8px; border: 1px solid var(--line); padding: 8px 12px;
  background: var(--card); color: var(--fg);
}
button { cursor: pointer; }
button.primary { background: var(--accent); border-color: var(--accent);
  color: var(--on-accent); font-weight: 600; }
button:hover { filter: brightness(1.07); }
input:focus-visible, button:focus-visible { outline: 2px solid var(--accent);
  outline-offset: 1px; }
.login { max-width: 460px; }
.login label { display: block; font-weight: 600; margin-bottom: 6px; }
.login .row { display: flex; gap: 8px; flex-wrap: wrap; }
.login input { flex: 1 1 200px; min-width: 0; }
.hint { color: var(--muted); font-size: 13px; margin: 10px 0 0; }
.error { color: var(--bad); margin: 10px 0 0; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0 -16px;
  padding: 0 16px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 8px 10px; border-bottom: 1px solid var(--line);
  white-space: nowrap; vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
tbody tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; }
td.err { white-space: normal; min-width: 12ch; max-width: 32ch; color: var(--bad);
  overflow-wrap: anywhere; }
td.name { white-space: normal; min-width: 20ch; max-width: 48ch; overflow-wrap: break-word; }
tr.under td { background: var(--warn-bg); }
.empty { color: var(--muted); }
.badge {
  display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; background: var(--idle-bg); color: var(--idle);
}
.badge.ok { background: var(--ok-bg); color: var(--ok); }
.badge.warn { background: var(--warn-bg); color: var(--warn); }
.badge.bad { background: var(--bad-bg); color: var(--bad); }
.big { font-size: 30px; font-weight: 700; line-height: 1.1; }
.big.ok { color: var(--ok); }
.big.warn { color: var(--warn); }
.sub { color: var(--muted); margin: 4px 0 12px; }
.bar { height: 6px; border-radius: 3px; background: var(--bar); overflow: hidden;
  margin-top: 4px; min-width: 60px; }
.bar > span { display: block; height: 100%; background: var(--accent); }
.bar.full > span { background: var(--bad); }
h3 { font-size: 13px; margin: 14px 0 6px; color: var(--muted); font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
@media (max-width: 600px) {
  .wrap { padding: 14px 12px 32px; }
  h1 { font-size: 22px; }
  .intro { font-size: 14px; }
  .card { padding: 14px; border-radius: 10px; }
  .scroll { margin: 0 -14px; padding: 0 14px; }
  th, td { padding: 7px 8px; }
}
"""

_JS = """
"use strict";
(() => {
  const KEY = __KEY__;
  const POLL_MS = __POLL_MS__;
  const DASH = "\\u2013";
  const $ = (id) => document.getElementById(id);
  let timer = 0;
  let generation = 0;
  let lastOk = 0;

  // One-shot hand-off: /#token=... (the fragment never reaches the server).
  const frag = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (frag.has("token")) {
    const given = (frag.get("token") || "").trim();
    if (given) sessionStorage.setItem(KEY, given);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  const isNum = (v) => typeof v === "number" && isFinite(v);
  function size(n) {
    if (!isNum(n)) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = n, i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }
  function duration(s) {
    if (!isNum(s)) return DASH;
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = s % 60;
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + sec + " s";
    return sec + " s";
  }
  const rtt = (v) => isNum(v) ? (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms" : DASH;
  const short = (id) => typeof id === "string" && id ? id.slice(0, 12) : DASH;
  function when(t) {
    if (!isNum(t)) return DASH;
    const d = new Date(t * 1000);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }
  function stateClass(state) {
    if (state === "connected") return "ok";
    if (state === "connecting") return "warn";
    if (state === "refused" || state === "failed") return "bad";
    return "";
  }
  function kv(dl, label, value, title) {
    dl.appendChild(el("dt", label));
    const dd = el("dd", value);
    if (title) dd.title = title;
    dl.appendChild(dd);
  }
  function cell(tr, text, cls, title) {
    const td = el("td", text, cls);
    if (title) td.title = title;
    tr.appendChild(td);
    return td;
  }
  function emptyRow(tbody, cols, text) {
    const tr = el("tr");
    const td = el("td", text, "empty");
    td.colSpan = cols;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }

  class Unauthorized extends Error {}
  async function getJson(path, token) {
    const r = await fetch(path, {
      headers: { "Authorization": "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (r.status === 401) throw new Unauthorized("token rejected");
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { const body = await r.json(); if (body && body.error) msg += ": " + body.error; }
      catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  function showLogin(message) {
    generation++;
    clearTimeout(timer);
    $("dash").hidden = true;
    $("banner").hidden = true;
    $("live").hidden = true;
    $("forget").hidden = true;
    for (const id of ["node", "storage", "held", "health", "peers-body", "files-body",
                      "peer-count", "files-count"]) {
      $(id).replaceChildren();
    }
    $("login").hidden = false;
    const err = $("login-error");
    err.textContent = message || "";
    err.hidden = !message;
    $("token").focus();
  }

  function start() {
    $("login").hidden = true;
    $("forget").hidden = false;
    generation++;
    clearTimeout(timer);
    poll(generation);
  }

  async function poll(gen) {
    const token = sessionStorage.getItem(KEY);
    if (!token) { showLogin(""); return; }
    try {
      const status = await getJson("v1/status", token);
      let files = null, filesError = "";
      try { files = await getJson("v1/files", token); }
      catch (e) { if (e instanceof Unauthorized) throw e; filesError = String(e.message || e); }
      if (gen !== generation) return;
      render(status, files, filesError);
      lastOk = Date.now();
      $("banner").hidden = true;
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(KEY);
        showLogin("The node rejected this token.");
        return;
      }
      const b = $("banner");
      b.textContent = "Cannot reach the node (" + String(e.message || e) +
        "); retrying every " + POLL_MS / 1000 + " s." +
        (lastOk ? " Showing data from " + new Date(lastOk).toLocaleTimeString() + "." : "");
      b.hidden = false;
      $("live").hidden = false;
      $("live").classList.add("stale");
      $("updated").textContent = "offline";
    }
    if (gen === generation && !document.hidden) {
      timer = setTimeout(() => poll(gen), POLL_MS);
    }
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && $("login").hidden && sessionStorage.getItem(KEY)) start();
  });

  function render(status, files, filesError) {
    const peers = Array.isArray(status.peers) ? status.peers : [];
    const storage = status.storage || {};
    const connected = peers.filter((p) => p.state === "connected").length;
    const orgOf = new Map();
    for (const p of peers) if (p.node_id) orgOf.set(p.node_id, p.org);
    if (typeof status.org === "string") {
      $("org").textContent = status.org;
      document.title = status.org + " \\u00b7 dfs node";
    }

    const node = $("node");
    node.replaceChildren();
    kv(node, "Org", status.org ?? DASH);
    kv(node, "Node id", short(status.node_id), status.node_id);
    kv(node, "Version", status.version ?? DASH);
    kv(node, "Uptime", duration(status.uptime));
    kv(node, "Peers connected", connected + " of " + peers.length);

    const st = $("storage");
    st.replaceChildren();
    const held = storage.held_for_others || {};
    const heldTotal = Object.values(held).reduce((a, b) => a + (isNum(b) ? b : 0), 0);
    kv(st, "This org's files", size(storage.own_bytes), String(storage.own_bytes ?? ""));
    kv(st, "Held for others", size(heldTotal), String(heldTotal));
    kv(st, "Free disk", size(storage.free_bytes));
    kv(st, "Quota per org", size(storage.quota_bytes));
    kv(st, "Reserve", size(storage.reserve_bytes));
    const hb = $("held");
    hb.replaceChildren();
    const owners = Object.keys(held).sort();
    if (!owners.length) emptyRow(hb, 2, "Nothing held for other orgs yet.");
    for (const owner of owners) {
      const tr = el("tr");
      cell(tr, orgOf.get(owner) || short(owner), "", owner);
      const td = cell(tr, size(held[owner]), "num", held[owner] + " bytes");
      if (isNum(storage.quota_bytes) && storage.quota_bytes > 0) {
        const pct = Math.min(100, 100 * held[owner] / storage.quota_bytes);
        const bar = el("div", null, pct >= 100 ? "bar full" : "bar");
        const fill = el("span");
        fill.style.width = pct.toFixed(1) + "%";
        bar.appendChild(fill);
        bar.title = pct.toFixed(1) + "% of the quota";
        td.appendChild(bar);
      }
      hb.appendChild(tr);
    }

    const pb = $("peers-body");
    pb.replaceChildren();
    if (!peers.length) emptyRow(pb, 9, "No peers configured or connected.");
    for (const p of peers) {
      const tr = el("tr", null, "peer");
      cell(tr, p.org ?? DASH);
      cell(tr, short(p.node_id), "mono", p.node_id || "");
      cell(tr, p.address ?? DASH, "mono");
      const st = cell(tr, "");
      st.appendChild(el("span", p.state ?? "unknown", "badge " + stateClass(p.state)));
      cell(tr, p.direction ?? DASH);
      cell(tr, rtt(p.rtt_ms), "num");
      cell(tr, size(p.bytes_in), "num", isNum(p.bytes_in) ? p.bytes_in + " bytes" : "");
      cell(tr, size(p.bytes_out), "num", isNum(p.bytes_out) ? p.bytes_out + " bytes" : "");
      cell(tr, p.last_error || DASH, p.last_error ? "err" : "");
      pb.appendChild(tr);
    }
    $("peer-count").textContent = connected + " / " + peers.length + " connected";

    const want = 1 + connected;
    const fb = $("files-body");
    fb.replaceChildren();
    const list = Array.isArray(files) ? files : [];
    let under = 0;
    for (const f of list) {
      const low = isNum(f.replicas) && f.replicas < want;
      if (low) under++;
      const tr = el("tr", null, low ? "file under" : "file");
      cell(tr, f.name ?? "", "name");
      cell(tr, size(f.size), "num", isNum(f.size) ? f.size + " bytes" : "");
      cell(tr, isNum(f.replicas) ? f.replicas + " / " + want : DASH, "num");
      cell(tr, when(f.mtime));
      const s = cell(tr, "");
      s.appendChild(low ? el("span", "under-replicated", "badge warn")
                        : el("span", "ok", "badge ok"));
      fb.appendChild(tr);
    }
    if (filesError) emptyRow(fb, 5, "Cannot list files: " + filesError);
    else if (!list.length) emptyRow(fb, 5, "No files stored by this org yet.");
    const total = list.reduce((a, f) => a + (isNum(f.size) ? f.size : 0), 0);
    $("files-count").textContent = files ? list.length + " \\u00b7 " + size(total) : "";

    const h = $("health");
    h.replaceChildren();
    if (files) {
      h.appendChild(el("div", String(under), "big " + (under ? "warn" : "ok")));
      h.appendChild(el("p", "of " + list.length + (list.length === 1 ? " file" : " files") +
        " under-replicated. Full replication: " + want + " copies (this node and " +
        connected + " connected " + (connected === 1 ? "peer" : "peers") + ").", "sub"));
    } else {
      h.appendChild(el("p", "File list unavailable.", "sub"));
    }
    const dl = el("dl", null, "kv");
    const sync = status.sync || {};
    kv(dl, "Peers compared", isNum(sync.period_seconds) && sync.period_seconds > 0
      ? "on connect and every " + duration(sync.period_seconds) : "on connect");
    kv(dl, "Relay for other orgs", sync.relay ? "on" : "off");
    const scrub = status.scrub || {};
    const last = scrub.last;
    kv(dl, "Last scrub", scrub.running ? "running now"
      : last && isNum(last.finished)
        ? when(last.finished) + ": " + last.checked + " checked, " + last.damaged +
          " damaged, " + last.repaired + " repaired"
        : (scrub.period_seconds === 0 ? "off" : "not run yet"));
    h.appendChild(dl);

    $("dash").hidden = false;
    $("live").hidden = false;
    $("live").classList.remove("stale");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("token");
    const value = input.value.trim();
    input.value = "";
    if (!value) { showLogin("Enter the node's API token."); return; }
    sessionStorage.setItem(KEY, value);
    start();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });

  $("refresh").hidden = false;
  if (sessionStorage.getItem(KEY)) start(); else showLogin("");
})();
"""
_JS = _JS.replace("__KEY__", json.dumps(TOKEN_KEY))
_JS = _JS.replace("__POLL_MS__", str(POLL_SECONDS * 1000))


def _sha256(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


CSP = "; ".join(
    [
        "default-src 'none'",
        f"script-src '{_sha256(_JS)}'",
        f"style-src '{_sha256(_CSS)}'",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="referrer" content="no-referrer">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<link rel="icon" href="data:,">
<title>{org} \u00b7 dfs node</title>
<style>{css}</style>
</head>
<body>
<div class="wrap">
<header class="top">
  <div class="title">
    <p class="eyebrow">dfs node status</p>
    <h1 id="org">{org}</h1>
  </div>
  <div class="actions">
    <div id="live" class="live" hidden><span class="dot"></span><span id="updated"></span></div>
    <button id="forget" type="button" hidden>Forget token</button>
  </div>
</header>
<p class="intro">The live state of this organization's node in the dfs-twisted encrypted
file store: its peers, the storage it uses and holds for other organizations, and this
organization's files. Reading it needs the node's API token (the file
<code>private/api_token</code> in the node's directory); this page keeps it in this
browser tab only.</p>
<noscript><p class="note">JavaScript is off, so this page cannot show live data. On the
node's machine, <code>dfs status</code> and <code>dfs ls</code> show the same.</p></noscript>
<section id="login" class="card login" hidden>
  <form id="login-form" method="post" action="#" autocomplete="off">
    <label for="token">API token</label>
    <div class="row">
      <input id="token" type="password" required spellcheck="false" autocomplete="off"
        autocapitalize="off" placeholder="contents of private/api_token">
      <button class="primary" type="submit">Show status</button>
    </div>
    <p id="login-error" class="error" role="alert" hidden></p>
    <p class="hint">Kept in this tab's session storage until the tab closes or you press
    "Forget token"; never in the address, a cookie or permanent storage.</p>
  </form>
</section>
<div id="banner" class="banner bad" role="status" hidden></div>
<main id="dash" hidden>
  <div class="grid">
    <section class="card"><h2>This node</h2><dl id="node" class="kv"></dl></section>
    <section class="card"><h2>Replication health</h2><div id="health"></div></section>
    <section class="card"><h2>Storage</h2><dl id="storage" class="kv"></dl>
      <h3>Held for other orgs</h3>
      <table class="held"><tbody id="held"></tbody></table>
    </section>
  </div>
  <div class="stack">
    <section class="card"><h2>Peers<span id="peer-count" class="count"></span></h2>
      <div class="scroll"><table>
        <thead><tr><th>Org</th><th>Node id</th><th>Address</th><th>State</th>
          <th>Direction</th><th class="num">RTT</th><th class="num">In</th>
          <th class="num">Out</th><th>Last error</th></tr></thead>
        <tbody id="peers-body"></tbody>
      </table></div>
    </section>
    <section class="card"><h2>Files<span id="files-count" class="count"></span></h2>
      <div class="scroll"><table>
        <thead><tr><th>Name</th><th class="num">Size</th><th class="num">Replicas</th>
          <th>Modified</th><th>Health</th></tr></thead>
        <tbody id="files-body"></tbody>
      </table></div>
    </section>
  </div>
</main>
<footer>dfs-twisted<span id="refresh" hidden> \u00b7 refreshes every {poll} s while this tab
is visible</span></footer>
</div>
<script>{js}</script>
</body>
</html>
"""


def status_page(org: str) -> str:
    """The whole status page for the node of ``org``; safe to serve without a token."""
    return _TEMPLATE.format(
        org=html.escape(org),
        csp=html.escape(CSP),
        css=_CSS,
        js=_JS,
        poll=POLL_SECONDS,
    )
