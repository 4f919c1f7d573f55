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
  let polls = 0;
  // Byte counters of the previous poll, per peer session, for the transfer rates.
  let previous = new Map();

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
    return (i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }
  const rate = (n) => isNum(n) ? size(n) + "/s" : DASH;
  // "1 min", "1 min 30 s", "2 h", "2 h 5 min", "3 d 4 h": the two largest units, no zeros.
  function duration(s) {
    if (!isNum(s)) return DASH;
    s = Math.max(0, Math.floor(s));
    const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"],
                   [Math.floor(s / 60) % 60, "min"], [s % 60, "s"]];
    const first = parts.findIndex(([n]) => n > 0);
    if (first < 0) return "0 s";
    return parts.slice(first, first + 2).filter(([n]) => n > 0)
      .map(([n, unit]) => n + " " + unit).join(" ");
  }
  function ago(t) {
    if (!isNum(t)) return DASH;
    const s = Date.now() / 1000 - t;
    return s < 5 ? "just now" : duration(s) + " ago";
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
    return dd;
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
  function quotaBar(bytes, quota) {
    const pct = Math.min(100, 100 * bytes / quota);
    const bar = el("div", null, pct >= 100 ? "bar full" : "bar");
    const fill = el("span", null, bytes > 0 ? "" : "none");
    fill.style.width = pct.toFixed(1) + "%";
    bar.appendChild(fill);
    bar.title = size(bytes) + " of the " + size(quota) + " quota (" + pct.toFixed(1) + "%)";
    return bar;
  }

  class Unauthorized extends Error {}
  // The token goes in the Authorization header of every call, never in a cookie.
  // That is what makes the POSTs below CSRF-proof: another site can make this
  // browser send a form or a plain fetch to the node, but cannot put the token in
  // that header (it cannot read this origin's sessionStorage, and a cross-origin
  // request with an Authorization header needs a CORS preflight the node never
  // grants), and no cookie or other ambient credential speaks for it instead.
  async function call(path, token, method) {
    const r = await fetch(path, {
      method: method || "GET",
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
    previous = new Map();
    $("dash").hidden = true;
    $("banner").hidden = true;
    $("live").hidden = true;
    $("forget").hidden = true;
    for (const id of ["node", "storage", "held", "health", "peers-body", "files-body",
                      "peer-count", "files-count", "scrub-line", "action-result"]) {
      $(id).replaceChildren();
    }
    $("action-result").hidden = true;
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
      const status = await call("v1/status", token);
      let files = null, filesError = "";
      try { files = await call("v1/files?copies=known", token); }
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

  // Bytes per second since the previous poll, per peer session (null until two polls,
  // and when the counters went back: the peer reconnected).
  function rates(peers) {
    const now = Date.now(), next = new Map(), out = new Map();
    for (const p of peers) {
      if (p.state !== "connected" || !isNum(p.bytes_in) || !isNum(p.bytes_out)) continue;
      const key = p.node_id + " " + p.address + " " + p.direction;
      const before = previous.get(key);
      next.set(key, { t: now, bytesIn: p.bytes_in, bytesOut: p.bytes_out });
      if (before && now > before.t && p.bytes_in >= before.bytesIn &&
          p.bytes_out >= before.bytesOut) {
        const s = (now - before.t) / 1000;
        out.set(p, { in: (p.bytes_in - before.bytesIn) / s,
                     out: (p.bytes_out - before.bytesOut) / s });
      }
    }
    previous = next;
    return out;
  }

  async function copyText(text) {
    // http://127.0.0.1 is a secure context, so the clipboard API is there; a page
    // reached by another name over plain HTTP (an SSH tunnel) may not have it.
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = el("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) throw new Error("the browser refused to copy");
  }

  function render(status, files, filesError) {
    const peers = Array.isArray(status.peers) ? status.peers : [];
    const storage = status.storage || {};
    const held = storage.held_for_others || {};
    const heldForUs = storage.held_for_us || {};
    const quota = isNum(storage.quota_bytes) && storage.quota_bytes > 0
      ? storage.quota_bytes : null;
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
    const idCell = kv(node, "Node id", "");
    idCell.appendChild(el("span", short(status.node_id), "mono"));
    idCell.title = status.node_id || "";
    if (typeof status.node_id === "string" && status.node_id) {
      const copy = el("button", "Copy", "small");
      copy.type = "button";
      copy.id = "copy-id";
      copy.title = "Copy the full node id";
      copy.addEventListener("click", async () => {
        try { await copyText(status.node_id); copy.textContent = "Copied"; }
        catch (e) { copy.textContent = "Copy failed"; }
        setTimeout(() => { copy.textContent = "Copy"; }, 2000);
      });
      idCell.appendChild(copy);
    }
    kv(node, "Version", status.version ?? DASH);
    kv(node, "Uptime", duration(status.uptime));
    kv(node, "Peers connected", connected + " of " + peers.length);

    const st = $("storage");
    st.replaceChildren();
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
      const tr = el("tr", null, "held-row");
      cell(tr, orgOf.get(owner) || short(owner), "", owner);
      const td = cell(tr, size(held[owner]), "num", held[owner] + " bytes");
      if (quota) td.appendChild(quotaBar(held[owner], quota));
      hb.appendChild(tr);
    }

    const speed = rates(peers);
    const pb = $("peers-body");
    pb.replaceChildren();
    if (!peers.length) emptyRow(pb, 11, "No peers configured or connected.");
    for (const p of peers) {
      const tr = el("tr", null, "peer");
      cell(tr, p.org ?? DASH);
      cell(tr, short(p.node_id), "mono", p.node_id || "");
      cell(tr, p.address ?? DASH, "mono");
      const state = cell(tr, "");
      state.appendChild(el("span", p.state ?? "unknown", "badge " + stateClass(p.state)));
      if (p.state !== "connected" && isNum(p.last_seen)) {
        state.appendChild(el("div", "last seen " + ago(p.last_seen), "seen"));
        state.title = "last connected " + when(p.last_seen);
      }
      cell(tr, p.direction ?? DASH);
      cell(tr, rtt(p.rtt_ms), "num");
      const r = speed.get(p);
      for (const [bytes, perSecond, cls] of [[p.bytes_in, r && r.in, "rate-in"],
                                             [p.bytes_out, r && r.out, "rate-out"]]) {
        const td = cell(tr, size(bytes), "num", isNum(bytes) ? bytes + " bytes" : "");
        if (isNum(perSecond)) td.appendChild(el("div", rate(perSecond), "rate " + cls));
      }
      const ours = p.node_id ? (isNum(held[p.node_id]) ? held[p.node_id] : 0) : null;
      const hold = cell(tr, ours === null ? DASH : size(ours), "num hold",
                        ours === null ? "" : ours + " bytes held here for this org");
      if (ours !== null && quota) hold.appendChild(quotaBar(ours, quota));
      const theirs = p.node_id ? (isNum(heldForUs[p.node_id]) ? heldForUs[p.node_id] : 0) : null;
      cell(tr, theirs === null ? DASH : size(theirs), "num holds-ours",
           theirs === null ? "" : theirs + " bytes of this org's files held there");
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
      const wanted = isNum(f.wanted) ? f.wanted : want;
      // Erasure coded: the shares held against those wanted; else the copies.
      const held = isNum(f.shares) ? f.shares : f.replicas;
      const low = isNum(held) && held < wanted;
      if (low) under++;
      const tr = el("tr", null, low ? "file under" : "file");
      cell(tr, f.name ?? "", "name");
      cell(tr, size(f.size), "num", isNum(f.size) ? f.size + " bytes" : "");
      cell(tr, isNum(held) ? held + " / " + wanted + (isNum(f.shares) ? " shares" : "") : DASH,
        "num");
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
    h.appendChild(dl);
    scrubLine(status.scrub || {});

    polls++;
    document.body.dataset.polls = String(polls);
    $("dash").hidden = false;
    $("live").hidden = false;
    $("live").classList.remove("stale");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  function scrubLine(scrub) {
    const last = scrub.last;
    let text;
    if (scrub.running) text = "running now";
    else if (last && isNum(last.finished)) {
      text = when(last.finished) + " \u00b7 " + last.checked + " checked \u00b7 " +
        last.damaged + " damaged \u00b7 " + last.repaired + " repaired";
    } else text = scrub.period_seconds === 0 ? "off" : "not run yet";
    const line = $("scrub-line");
    line.replaceChildren(el("span", "Last scrub: ", "label"), el("span", text));
    line.title = "Last scrub: " + text;
    $("scrub-now").disabled = !!scrub.running;
  }

  // "Scrub now" and "Recover": POSTs with the token (see `call` for why that is CSRF-proof).
  function action(button, path, describe) {
    button.addEventListener("click", async () => {
      const token = sessionStorage.getItem(KEY);
      if (!token) { showLogin(""); return; }
      const out = $("action-result");
      button.disabled = true;
      out.classList.remove("bad");
      out.textContent = button.textContent + ": working\u2026";
      out.hidden = false;
      try {
        out.textContent = describe(await call(path, token, "POST"));
      } catch (e) {
        if (e instanceof Unauthorized) {
          sessionStorage.removeItem(KEY);
          showLogin("The node rejected this token.");
          return;
        }
        out.textContent = button.textContent + " failed: " + String(e.message || e);
        out.classList.add("bad");
      } finally {
        button.disabled = false;
      }
      start();  // show what changed without waiting for the next poll
    });
  }
  action($("scrub-now"), "v1/scrub", (r) =>
    r.started ? "Scrub started." : "A scrub is running already.");
  action($("recover"), "v1/recover", (r) => {
    const n = Array.isArray(r.recovered) ? r.recovered.length : 0;
    const errors = Array.isArray(r.errors) ? r.errors : [];
    return "Recovered " + n + (n === 1 ? " file" : " files") + " from peers" +
      (errors.length ? "; " + errors.length + " could not be: " + errors.join("; ") : ".");
  });

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
