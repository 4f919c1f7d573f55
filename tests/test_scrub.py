"""Scrub against real nodes: a holder finds a damaged replica and fetches a good copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dfs_twisted.launcher import NodeProcess, free_port

from .shared import ConvergenceTestCase, held, wait_until

pytestmark = pytest.mark.processes


def flip_a_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def last_scrub(node: NodeProcess) -> dict[str, Any]:
    last: dict[str, Any] | None = node.status()["scrub"]["last"]
    return last or {}


class ScrubTests(ConvergenceTestCase):
    def test_damaged_replicas_are_found_and_replaced(self) -> None:
        a_port = free_port()
        a = self.node("a", a_port, [], "--scrub-period", "1s")
        b = self.node("b", free_port(), [a_port], "--scrub-period", "1s")
        b.wait_peers(1)
        a_id = a.status()["node_id"]
        self.put(a, "precious.bin", bytes(range(256)) * 8000)
        self.put(a, "other.bin", b"x" * 5000)
        good = held(a, a_id)
        self.assertEqual(held(b, a_id), good)

        # b cannot read a's file, but finds its replica damaged and fetches it again.
        [replica] = [
            p for p in (b.data_dir / "store" / a_id).glob("??/??/*") if p.stat().st_size > 10_000
        ]
        flip_a_byte(replica, 1_000_000)
        wait_until(lambda: last_scrub(b).get("repaired", 0) >= 1, "b's scrub to repair")
        self.assertEqual(held(b, a_id), good)
        report = last_scrub(b)
        self.assertEqual(report["damaged"], 1)
        [problem] = report["problems"]  # blob ids only, never names
        self.assertIn(f"{replica.name}: ", problem)
        self.assertIn("replaced from a", problem)
        status = b.dfs("status").stdout.decode()
        self.assertIn("1 damaged, 1 repaired", status)

        # The owner's own copy, damaged, comes back from the holder.
        original = a.data_dir / replica.relative_to(b.data_dir)
        flip_a_byte(original, 500)
        wait_until(lambda: last_scrub(a).get("repaired", 0) >= 1, "a's scrub to repair")
        self.assertEqual(held(a, a_id), good)
        self.assertNotIn("precious.bin", a.dfs("status", "--json").stdout.decode())

    def test_scrub_off_and_rate_are_options(self) -> None:
        node = self.node("quiet", free_port(), [], "--scrub-period", "0", "--scrub-rate", "1M")
        scrub = node.status()["scrub"]
        self.assertEqual(scrub["period_seconds"], 0)
        self.assertEqual(scrub["rate_bytes"], 1 << 20)
        self.assertIsNone(scrub["last"])
        self.assertIn("scrub   not run yet", node.dfs("status").stdout.decode())
