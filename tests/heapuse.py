"""Heap use of this process: what the heap tests measure, also in a fresh process."""

from __future__ import annotations

import os

MIB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def burst() -> int:
    """Allocate 64 buffers of 1 MiB, every byte written, free all but every eighth
    (freed pages inside the heap, not at its end); return the RSS right after."""
    buffers = [bytearray(b"\x01") * MIB for _ in range(64)]
    kept = buffers[7::8]
    del buffers
    after = rss()
    del kept
    return after
