"""The dfs command's own parts: its parser, what it prints, progress only on a terminal."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.cli import parser
from dfs_twisted.cli.output import PROGRESS_FROM, progress_bar
from dfs_twisted.display import ago, files_table, human_size, rate, shown, status_table
from dfs_twisted.names import check_new_name

pytestmark = pytest.mark.unit

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
            "last_seen": 1_000_000.0,
        },
        {
            "address": "127.0.0.9:5000",
            "node_id": None,
            "org": None,
            "state": "refused",
            "last_error": "admission refused: wrong network key",
        },
        {
            "address": "127.0.0.1:6000",
            "node_id": "c" * 64,
            "org": "gamma",
            "state": "connecting",
            "last_error": "Connection refused",
            "last_seen": 1_000_000.0 - 7200,
        },
    ],
    "storage": {"own_bytes": 3 << 20, "held_for_others": {"b" * 64: 1024}, "free_bytes": 5 << 30},
}
ESCAPE = "\x1b[31mRED\x1b[0m"


class FormattingTests(SynchronousTestCase):
    def test_sizes_and_rates_use_one_unit_system(self) -> None:
        self.assertEqual(human_size(0), "0 B")
        self.assertEqual(human_size(1536), "1.5 KiB")
        self.assertEqual(human_size(3 << 30), "3.0 GiB")
        self.assertEqual(rate(100 << 20, 2.0), "100.0 MiB in 2.0 s (50.0 MiB/s)")
        self.assertNotIn("MB", rate(100_000_000, 2.0))

    def test_status_table(self) -> None:
        table = status_table(STATUS, now=1_000_000.0)
        self.assertIn("acme", table)
        self.assertIn("3.0 MiB of this org's files", table)
        self.assertIn("5.0 GiB free", table)
        self.assertIn("0.8 ms", table)
        self.assertIn("refused", table)
        self.assertIn("(admission refused: wrong network key)", table)
        # A peer that is away says since when; a connected one does not.
        [gamma] = [line for line in table.splitlines() if "gamma" in line]
        self.assertIn("last seen", gamma)
        self.assertIn("2 h ago", gamma)
        [beta] = [line for line in table.splitlines() if "beta" in line]
        self.assertNotIn("last seen", beta)

    def test_ago(self) -> None:
        self.assertEqual(ago(100.0, now=130.0), "30 s ago")
        self.assertEqual(ago(0.0, now=600.0), "10 min ago")
        self.assertEqual(ago(0.0, now=3 * 86400.0), "3 d ago")

    def test_long_listing(self) -> None:
        entries = [
            {"name": "q1.pdf", "size": 3 << 20, "replicas": 3, "mtime": 0.0, "here": True},
            {"name": "old.txt", "size": 10, "replicas": 2, "here": False},
        ]
        lines = files_table(entries, long=True)
        self.assertIn("MODIFIED", lines[0])
        self.assertIn("3.0 MiB", lines[1])
        self.assertRegex(lines[1], r"19(69-12-31|70-01-01) \d\d:\d\d")
        self.assertIn("(on peers only)", lines[2])
        short = files_table(entries, long=False)
        self.assertIn(str(3 << 20), short[1])


class EscapingTests(SynchronousTestCase):
    def test_control_and_bidi_characters_are_escaped(self) -> None:
        self.assertEqual(shown("evil\nname" + ESCAPE), "evil\\x0aname\\x1b[31mRED\\x1b[0m")
        self.assertEqual(shown("a\u202eb\x85c\u2028"), "a\\u202eb\\x85c\\u2028")
        # Printable text, accents and emoji (with their joiners) stay as they are.
        for fine in ("Änderungen — 報告 🚀.txt", "👨\u200d👩\u200d👧", "back\\slash"):
            self.assertEqual(shown(fine), fine)

    def test_everything_a_node_sends_is_escaped_in_tables(self) -> None:
        hostile: dict[str, Any] = dict(STATUS)
        peers: list[dict[str, Any]] = STATUS["peers"]  # type: ignore[assignment]
        hostile["org"] = "acme" + ESCAPE
        hostile["peers"] = [
            {**peers[0], "org": "b\nforged line", "address": ESCAPE},
            {**peers[1], "last_error": "no\x1b]0;title\x07"},
        ]
        table = status_table(hostile)
        self.assertNotIn("\x1b", table)
        self.assertNotIn("\x07", table)
        self.assertNotIn("forged line\n", table)
        self.assertEqual(len(table.splitlines()), len(status_table(STATUS).splitlines()) - 1)
        entry = {"name": "x\ny" + ESCAPE, "size": 1, "replicas": 1}
        listing = "\n".join(files_table([entry], True))
        self.assertNotIn("\x1b", listing)
        self.assertEqual(len(listing.splitlines()), 2)

    def test_new_names_refuse_control_characters_and_other_encodings(self) -> None:
        latin1 = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it
        for bad in ("a\nb", "x\x1b[31m", "tab\there", "del\x7f", "c1\x85", "ls\u2028", latin1):
            self.assertRaises(ValueError, check_new_name, bad)
        for good in ("reports/2026/q1.pdf", "../../etc/passwd", "Änderungen 🚀", "a\u202eb"):
            check_new_name(good)


class ParserTests(SynchronousTestCase):
    def test_global_flags_before_or_after_the_command(self) -> None:
        for argv in (
            ["--node", "x", "-q", "--json", "status"],
            ["status", "--node", "x", "-q", "--json"],
            ["-q", "status", "--json", "--node", "x"],
        ):
            args = parser().parse_args(argv)
            self.assertEqual((args.node, args.quiet, args.json), ("x", True, True), argv)
        # After the command wins; not given there, the global value stays.
        args = parser().parse_args(["--node", "a", "ls", "--node", "b"])
        self.assertEqual(args.node, "b")
        self.assertEqual(parser().parse_args(["--node", "a", "ls", "-l"]).node, "a")
        nested = parser().parse_args(["key", "export", "-o", "f", "--node", "n", "--json"])
        self.assertEqual((nested.node, nested.json), ("n", True))

    def test_version(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as exited:
            parser().parse_args(["--version"])
        self.assertEqual(exited.exception.code, 0)
        self.assertRegex(out.getvalue(), r"^dfs \d+\.\d+\.\d+\n$")

    def test_every_command_and_argument_has_help_and_an_example(self) -> None:
        seen = []

        def walk(p: argparse.ArgumentParser, path: str) -> None:
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        walk(sub, f"{path} {name}")
                    self.assertTrue(all(c.help for c in action._choices_actions), path)
                    continue
                self.assertTrue(action.help, f"{path}: {action.option_strings or action.dest}")
            if path != "dfs":
                seen.append(path)
                self.assertIn("examples:", p.epilog or "", path)
                self.assertIn("dfs ", p.epilog or "", path)

        walk(parser(), "dfs")
        for command in ("put", "get", "rm", "ls", "status", "recover", "share", "key export"):
            self.assertIn(f"dfs {command}", seen)
        for command in ("key import", "access", "backup", "restore", "init"):
            self.assertIn(f"dfs {command}", seen)
        self.assertIn("dfs network-key create", seen)


class ProgressTests(SynchronousTestCase):
    def test_no_bar_off_a_terminal_when_quiet_or_small(self) -> None:
        self.patch(sys, "stderr", io.StringIO())  # not a terminal
        self.assertTrue(progress_bar(argparse.Namespace(quiet=False), 1 << 30, "put").disable)

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        self.patch(sys, "stderr", Terminal())
        self.assertFalse(progress_bar(argparse.Namespace(quiet=False), 1 << 30, "put").disable)
        self.assertTrue(progress_bar(argparse.Namespace(quiet=True), 1 << 30, "put").disable)
        self.assertTrue(
            progress_bar(argparse.Namespace(quiet=False), PROGRESS_FROM - 1, "get").disable
        )
        self.assertFalse(progress_bar(argparse.Namespace(quiet=False), None, "put").disable)

    def test_a_command_off_a_terminal_never_loads_tqdm(self) -> None:
        # Loading it (and what it loads) cost each command about 25 ms of CPU.
        code = (
            "import argparse, sys\n"
            "from dfs_twisted.cli import output, run\n"
            "output.progress_bar(argparse.Namespace(quiet=False), 1 << 30, 'get')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tqdm', 'inspect')))"
        )
        found = subprocess.run(  # stderr a pipe: not a terminal
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        self.assertEqual(found.stdout.strip(), "[]")
