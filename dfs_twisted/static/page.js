"use strict";
// The status page's script. It runs only under the page's Content-Security-Policy,
// which admits this exact file by its hash (dfs_twisted/page.py computes it).
// Everything shown comes from the bearer-token API and goes into the page with
// textContent only: org names and errors are chosen by peers.
(() => {
  const KEY = "dfs-api-token";
  const POLL_MS = 1000 * (Number(document.body.dataset.pollSeconds) || 2);
  const DASH = "\u2013";
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
      document.title = status.org + " \u00b7 dfs node";
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
    $("files-count").textContent = files ? list.length + " \u00b7 " + size(total) : "";

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
