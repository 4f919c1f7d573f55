"""The C heap: transfer buffers stay in it while in use, and free pages go back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import SkipTest

import pytest
from twisted.trial.unittest import TestCase

from dfs_twisted import heap

from .heapuse import MIB, burst, rss
from .inprocess import NodeTestCase, eventually


def glibc_only() -> None:
    if heap._glibc() is None:
        raise SkipTest("glibc's heap only")


@pytest.mark.unit
class HeapTests(TestCase):
    def test_freed_buffers_stay_in_the_heap_until_trimmed(self) -> None:
        glibc_only()
        heap.tune()
        heap.trim()
        before = rss()
        after_free = burst()
        # Kept (tune): 56 of the 64 MiB are free, yet still resident.
        self.assertGreater(after_free - before, 48 * MIB)
        heap.trim()
        self.assertLess(rss() - before, 16 * MIB)

    def test_what_a_thread_freed_goes_back_too(self) -> None:
        # In a fresh process: which heap a thread gets is settled when it first
        # allocates, and this test process has run threads before.
        glibc_only()
        script = textwrap.dedent(
            """
            import threading
            from dfs_twisted import heap
            from tests.heapuse import MIB, burst, rss
            heap.tune()
            before = rss()
            grown = []
            thread = threading.Thread(target=lambda: grown.append(burst() - before))
            thread.start()
            thread.join()
            heap.trim()
            print(grown[0] // MIB, (rss() - before) // MIB)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent.parent,  # where `tests` imports from
        ).stdout
        grown, left = (int(n) for n in out.split())
        self.assertGreater(grown, 48)
        self.assertLess(left, 16)


@pytest.mark.inprocess
class NodeTrimsTests(NodeTestCase):
    async def test_a_running_node_gives_free_heap_pages_back(self) -> None:
        glibc_only()
        self.make_node()
        heap.trim()  # what earlier tests left free is not counted
        before = rss()
        after_free = burst()
        self.assertGreater(after_free - before, 48 * MIB)
        await eventually(
            lambda: rss() - before < 16 * MIB,
            "the node to trim the heap",
            patience=heap.TRIM_PERIOD * 3,
        )
