"""What the user sees besides results: reports, --json, warnings, progress bars.

Everything printed that came from a node or a peer goes through display.shown first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Protocol

from ..client import BLOCK

PROGRESS_FROM = 4 << 20  # smaller transfers finish before a bar would help
WATCH_SECONDS = 2.0


class OutputClosed(Exception):
    """Whoever read our output went away (``dfs get x | head``)."""


def say(args: argparse.Namespace, text: str) -> None:
    """A report of what was done, on stdout: silenced by -q, replaced by --json."""
    if not args.quiet and not args.json:
        print(text)


def result(args: argparse.Namespace, value: object) -> None:
    """The --json form of a command's result."""
    if args.json:
        print(json.dumps(value, indent=1))


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


class Progress(Protocol):
    """What the commands use of a progress bar (tqdm's, or `_Hidden`)."""

    disable: bool | None  # True once closed, or when never shown

    def update(self, n: float | None = 1) -> bool | None: ...

    def __enter__(self) -> Progress: ...

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class _Hidden:
    """A bar not shown: most commands never load tqdm (about 25 ms of each one's CPU)."""

    disable: bool | None = True

    def update(self, n: float | None = 1) -> None:
        pass

    def __enter__(self) -> _Hidden:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


def read_blocks(stream: IO[bytes], bar: Progress) -> Iterator[memoryview]:
    # One buffer, refilled: a fresh 1 MiB object per block costs a page fault per
    # 4 KiB (seconds of kernel time per GiB). http.client sends each block before
    # it asks for the next.
    buffer = memoryview(bytearray(BLOCK))
    while n := stream.readinto(buffer):  # type: ignore[attr-defined]
        bar.update(n)
        yield buffer[:n]


def progress_bar(args: argparse.Namespace, total: int | None, verb: str) -> Progress:
    """A progress bar on stderr: only on a terminal, for more than a few MB, not --quiet."""
    if args.quiet or not sys.stderr.isatty() or (total is not None and total < PROGRESS_FROM):
        return _Hidden()
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=verb,
        unit="iB",  # with the 1024 divisor: KiB, MiB, MiB/s, as everywhere else
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
