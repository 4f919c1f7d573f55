"""Tests for dfs_twisted.options: peer addresses and the node's command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.options import NodeOptions, PeerAddress, parse_duration, parse_peer, parse_peers

pytestmark = pytest.mark.unit


def parse(*args: str) -> NodeOptions:
    options = NodeOptions()
    options.parseOptions(list(args))
    return options


class ParsePeerTests(SynchronousTestCase):
    def test_bare_port_means_loopback(self) -> None:
        self.assertEqual(parse_peer("4000"), PeerAddress("127.0.0.1", 4000))

    def test_host_and_port(self) -> None:
        self.assertEqual(parse_peer("host:5"), PeerAddress("host", 5))

    def test_bracketed_ipv6(self) -> None:
        peer = parse_peer("[::1]:7")
        self.assertEqual(peer, PeerAddress("::1", 7))
        self.assertEqual(str(peer), "[::1]:7")

    def test_surrounding_whitespace_ignored(self) -> None:
        self.assertEqual(parse_peer(" 4000 "), PeerAddress("127.0.0.1", 4000))

    def test_bad_peers_raise_usage_error(self) -> None:
        for bad in (
            "",
            "host",
            "host:",
            ":5",
            "host:x",
            "0",
            "65536",
            "host:70000",
            "[::1]",
            "[]:5",
        ):
            self.assertRaises(usage.UsageError, parse_peer, bad)

    def test_comma_list_skips_empty_parts(self) -> None:
        self.assertEqual(
            parse_peers("4000, host:5,,"),
            [PeerAddress("127.0.0.1", 4000), PeerAddress("host", 5)],
        )


class NodeOptionsTests(SynchronousTestCase):
    def test_port_required(self) -> None:
        error = self.assertRaises(usage.UsageError, parse)
        self.assertIn("--port", str(error))

    def test_port_must_be_a_port(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--port", "x")
        self.assertRaises(usage.UsageError, parse, "--port", "0")

    def test_defaults(self) -> None:
        options = parse("--port", "3000")
        self.assertEqual(options["port"], 3000)
        self.assertEqual(options["peers"], [])
        self.assertEqual(options["data-dir"], Path("dfs-3000").absolute())
        self.assertEqual(options["org"], "node-3000")
        self.assertEqual(options["listen"], "127.0.0.1")
        self.assertEqual(options["api"], "tcp:0:interface=127.0.0.1")

    def test_peers_repeat_and_accumulate(self) -> None:
        options = parse("--port", "3000", "--peers", "4000,5000", "--peers", "example.org:6000")
        self.assertEqual(
            options["peers"],
            [
                PeerAddress("127.0.0.1", 4000),
                PeerAddress("127.0.0.1", 5000),
                PeerAddress("example.org", 6000),
            ],
        )

    def test_peers_not_shared_between_instances(self) -> None:
        parse("--port", "3000", "--peers", "4000")
        self.assertEqual(parse("--port", "3001")["peers"], [])

    def test_bad_peer_in_list_refused(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--port", "3000", "--peers", "4000,nope")

    def test_explicit_data_dir_and_org(self) -> None:
        options = parse("--port", "3000", "--data-dir", "x/y", "--org", "Acme")
        self.assertEqual(options["data-dir"], Path("x/y").absolute())
        self.assertEqual(options["org"], "Acme")

    def test_bad_org_refused(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--port", "3000", "--org", "a\nb")
        self.assertRaises(usage.UsageError, parse, "--port", "3000", "--org", "x" * 129)

    def test_loopback_listen_accepted(self) -> None:
        for address in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
            self.assertEqual(parse("--port", "3000", "--listen", address)["listen"], address)

    def test_listen_beyond_loopback_refused_with_reason(self) -> None:
        for address in ("0.0.0.0", "::", "192.0.2.1"):
            error = self.assertRaises(
                usage.UsageError, parse, "--port", "3000", "--listen", address
            )
            self.assertIn("--network-key", str(error), address)
            self.assertIn("--allow", str(error), address)


class ScrubOptionTests(SynchronousTestCase):
    def test_durations(self) -> None:
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration("30s"), 30)
        self.assertEqual(parse_duration("10m"), 600)
        self.assertEqual(parse_duration("1.5h"), 5400)
        self.assertEqual(parse_duration("1d"), 86400)
        for bad in ("", "d", "-1s", "3w", "nan"):
            self.assertRaises(ValueError, parse_duration, bad)

    def test_scrub_flags(self) -> None:
        options = parse("--port", "3000", "--scrub-period", "6h", "--scrub-rate", "10M")
        self.assertEqual((options["scrub-period"], options["scrub-rate"]), (21600, 10 << 20))
        defaults = parse("--port", "3000")
        self.assertEqual((defaults["scrub-period"], defaults["no-relay"]), (86400, 0))
        for bad in (["--scrub-period", "soon"], ["--scrub-rate", "0"]):
            self.assertRaises(usage.UsageError, parse, "--port", "3000", *bad)
