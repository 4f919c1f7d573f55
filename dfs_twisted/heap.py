"""The process's C heap (glibc; elsewhere these do nothing).

Transfers allocate and free buffers of about a megabyte many times a second. By
default glibc serves each one with its own mmap and gives the heap back to the
kernel as soon as one is freed: measured here, that page-fault churn cost more
kernel time than the transfers themselves. `tune` keeps such buffers in the heap
instead; then the heap keeps its high-water mark after a burst of transfers (a
node's grew from 12 to 40 MiB over a big put and a get after loss, half of it free
at rest). `trim`, every `TRIM_PERIOD` seconds, hands the free pages back (about 2 ms
when tens of MiB are free, 20 us when none are), so only transfers under way keep
theirs. The disk threads allocate buffers too (a local get's reads): with a heap of
their own each (glibc's default), what they freed stayed scattered over eight of
them, 20 MiB more after a get; they share the one heap instead.
"""

from __future__ import annotations

import ctypes
import functools

TRIM_PERIOD = 5.0  # seconds

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc's own: missing elsewhere)
    except (OSError, AttributeError):
        return None
    return libc


def tune() -> None:
    """Serve buffers of up to 32 MiB from the heap; never shrink it on a free; one
    heap for all threads (before any starts)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
        libc.mallopt(_M_ARENA_MAX, 1)


def trim() -> None:
    """Give the heap's free pages back to the kernel."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
