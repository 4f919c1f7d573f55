"""What `dfs` prints: text from a node made safe for a terminal, sizes, times, tables.

Anything that came from a node or a peer (file names, org names, addresses,
error texts) may hold control characters: printed raw, a newline forges a line
and an escape sequence repaints the terminal. `shown` escapes them. Sizes and
rates use binary units throughout (KiB, MiB, MiB/s).
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterable
from typing import Any

# Invisible characters that reorder the text around them (Trojan Source).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown(text: object) -> str:
    """``text`` with control and bidi characters escaped (``\\x1b``, ``\\u202e``)."""
    out = []
    for char in str(text):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def human_size(size: int) -> str:
    """Binary units: ``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def rate(size: int, seconds: float) -> str:
    """``95.4 MiB in 2.0 s (47.7 MiB/s)``: one unit system for size and speed."""
    per_second = size / max(seconds, 1e-6)
    return f"{human_size(size)} in {seconds:.1f} s ({human_size(int(per_second))}/s)"


def local_time(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def ago(stamp: float, now: float | None = None) -> str:
    """``3 min ago``, ``2 h ago``, ``5 d ago``."""
    seconds = max(0.0, (now if now is not None else time.time()) - stamp)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def files_table(entries: Iterable[dict[str, Any]], long: bool) -> list[str]:
    """`dfs ls`: name, size, replicas; with ``long``, human sizes and modification times."""
    rows = list(entries)
    names = [shown(e["name"]) for e in rows]
    width = max(len(n) for n in names)
    if long:
        lines = [f"{'NAME':<{width}}  {'SIZE':>10}  {'MODIFIED':<16}  REPLICAS"]
    else:
        lines = [f"{'NAME':<{width}}  {'SIZE':>12}  REPLICAS"]
    for name, e in zip(names, rows, strict=True):
        where = "" if e.get("here", True) else "  (on peers only)"
        copies = str(e["replicas"])
        wanted, shares = e.get("wanted"), e.get("shares")
        held = shares if isinstance(shares, int) else e["replicas"]
        if isinstance(shares, int):
            copies += f" + {shares} shares"  # erasure coded: the full copies, then shares
        if isinstance(wanted, int) and held < wanted:
            copies += f" of {wanted}"  # degraded: fewer copies than this org wants
        if long:
            mtime = e.get("mtime")
            when = local_time(mtime) if isinstance(mtime, int | float) else "-"
            lines.append(
                f"{name:<{width}}  {human_size(e['size']):>10}  {when:<16}  {copies}{where}"
            )
        else:
            lines.append(f"{name:<{width}}  {e['size']:>12}  {copies}{where}")
    return lines


def status_table(status: dict[str, Any], now: float | None = None) -> str:
    storage = status["storage"]
    lines = [
        f"node    {shown(status['node_id'])}",
        f"org     {shown(status['org'])}  (version {shown(status['version'])}, "
        f"up {status['uptime']:.0f} s)",
        f"stored  {human_size(storage['own_bytes'])} of this org's files",
    ]
    for owner, size in storage["held_for_others"].items():
        lines.append(f"        {human_size(size)} held for {shown(owner)[:16]}")
    for peer, size in storage.get("held_for_us", {}).items():
        lines.append(f"        {human_size(size)} of ours held by {shown(peer)[:16]}")
    if "replicas" in storage:
        under = storage.get("under_replicated", 0)
        redundancy = shown(storage["replicas"])
        if "-of-" in redundancy:
            wanted = f"shares  {redundancy} per file (erasure coded)"
        elif redundancy == "all":
            wanted = "copies  one on every peer"
        else:
            wanted = f"copies  {redundancy} per file, this node's included"
        short = f", {count(under, 'file', 'files')} short of that" if under else ""
        lines.append(wanted + short)
    if "free_bytes" in storage:
        lines.append(f"disk    {human_size(storage['free_bytes'])} free")
    scrub = status.get("scrub")
    if scrub:
        last = scrub["last"]
        if scrub["running"]:
            lines.append("scrub   running now")
        elif last and last["finished"]:
            lines.append(
                f"scrub   last {local_time(last['finished'])}: checked {last['checked']} blobs "
                f"({human_size(last['bytes'])}), {last['damaged']} damaged, "
                f"{last['repaired']} repaired"
            )
        else:
            lines.append("scrub   not run yet")
    audits = status.get("audits")
    if audits:
        lines.append(
            f"audits  {audits['passed']} passed, {audits['failed']} failed since start "
            "(holders proving they hold this org's files)"
        )
    lines.append("peers:" if status["peers"] else "peers:  none")
    lines.append(f"  {'ADDRESS':<22} {'STATE':<11} {'ORG':<16} {'NODE':<16} {'RTT':>8}")
    for p in status["peers"]:
        rtt = "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.1f} ms"
        notes = []
        if p.get("last_error"):
            notes.append(shown(p["last_error"]))
        if p["state"] != "connected" and isinstance(p.get("last_seen"), int | float):
            notes.append(f"last seen {local_time(p['last_seen'])}, {ago(p['last_seen'], now)}")
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(
            f"  {shown(p['address']):<22} {shown(p['state']):<11} {shown(p['org'] or '?'):<16} "
            f"{shown(p['node_id'] or '?')[:16]:<16} {rtt:>8}{note}"
        )
    return "\n".join(lines)
