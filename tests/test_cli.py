"""The dfs command's own formatting: summaries, the status table, progress only on a terminal."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.cli import PROGRESS_FROM, _bar, _human, _rate, parser, status_table
from dfs_twisted.launcher import NodeProcess, free_port

STATUS = {
    "node_id": "a" * 64,
    "org": "acme",
    "version": "0.1.0",
    "uptime": 12.3,
    "peers": [
        {
            "address": "127.0.0.1:4000",
            "node_id": "b" * 64,
            "org": "beta",
            "state": "connected",
            "rtt_ms": 0.84,
            "last_error": None,
        },
        {
            "address": "127.0.0.9:5000",
            "node_id": None,
            "org": None,
            "state": "refused",
            "last_error": "admission refused: wrong network key",
        },
    ],
    "storage": {"own_bytes": 3 << 20, "held_for_others": {"b" * 64: 1024}, "free_bytes": 5 << 30},
}


class FormattingTests(SynchronousTestCase):
    def test_sizes_and_rates(self) -> None:
        self.assertEqual(_human(0), "0 B")
        self.assertEqual(_human(1536), "1.5 KiB")
        self.assertEqual(_human(3 << 30), "3.0 GiB")
        self.assertEqual(_rate(100_000_000, 2.0), "95.4 MiB in 2.0 s (50 MB/s)")

    def test_status_table(self) -> None:
        table = status_table(STATUS)
        self.assertIn("acme", table)
        self.assertIn("3.0 MiB of this org's files", table)
        self.assertIn("5.0 GiB free", table)
        self.assertIn("0.8 ms", table)
        self.assertIn("refused", table)
        self.assertIn("(admission refused: wrong network key)", table)

    def test_watch_and_quiet_flags(self) -> None:
        args = parser().parse_args(["-q", "--node", "x", "status", "--watch"])
        self.assertTrue(args.quiet and args.watch)


class ProgressTests(SynchronousTestCase):
    def test_no_bar_off_a_terminal_when_quiet_or_small(self) -> None:
        self.patch(sys, "stderr", io.StringIO())  # not a terminal
        self.assertTrue(_bar(argparse.Namespace(quiet=False), 1 << 30, "put").disable)

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        self.patch(sys, "stderr", Terminal())
        self.assertFalse(_bar(argparse.Namespace(quiet=False), 1 << 30, "put").disable)
        self.assertTrue(_bar(argparse.Namespace(quiet=True), 1 << 30, "put").disable)
        self.assertTrue(_bar(argparse.Namespace(quiet=False), PROGRESS_FROM - 1, "get").disable)
        self.assertFalse(_bar(argparse.Namespace(quiet=False), None, "put").disable)


class JsonLogTests(SynchronousTestCase):
    def test_node_logs_json_lines(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="dfs-jsonlog-"))
        self.addCleanup(shutil.rmtree, root, True)
        node = NodeProcess(free_port(), root / "node", extra=["--log-format", "json"])
        self.addCleanup(node.stop)
        node.start().wait_ready()
        node.stop()
        events = [json.loads(line) for line in node.log_path.read_text().splitlines() if line]
        listening = [e for e in events if e.get("log_namespace") == "dfs_twisted.node"]
        self.assertEqual(len(listening[0]["node_id"]), 64)
        self.assertEqual(listening[0]["port"], node.port)
