"""GET /metrics: per-node Prometheus metrics, behind the API token, with no secrets."""

from __future__ import annotations

import json
import os
import platform
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import __version__
from dfs_twisted.launcher import NodeProcess
from dfs_twisted.metrics import NodeCollector, NodeMetrics
from dfs_twisted.space import SpaceLimits
from twisted import __version__ as twisted_version

from .shared import seed_network, wait_until

NAME = "reports/metrics-canary-7f3a9c.bin"

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Samples:
    """Sample name -> {sorted label pairs: value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def token_of(node: NodeProcess) -> str:
    return (node.data_dir / "private" / "api_token").read_text().strip()


def call(node: NodeProcess, path: str, token: str | None) -> tuple[str, bytes]:
    """GET ``path`` on the node's API: (content type, body)."""
    url = (node.data_dir / "api.url").read_text().strip() + path
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.headers.get("content-type", ""), r.read()


def scrape(node: NodeProcess) -> str:
    content_type, body = call(node, "metrics", token_of(node))
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return body.decode("utf-8")


@pytest.mark.processes
class MetricsNetworkTests(SynchronousTestCase):
    """Three real node processes; C does a put, gets and a delete, then everyone is scraped."""

    def setUp(self) -> None:
        self.root, self.a, self.b, self.c = seed_network(self, "dfs-metrics-")

    def assert_no_secrets(self, text: str, blob: str) -> None:
        self.assertNotIn(NAME, text)
        self.assertNotIn("metrics-canary", text)
        self.assertNotIn(blob, text)
        for node in (self.a, self.b, self.c):
            self.assertNotIn(token_of(node), text)
            org_key = (node.data_dir / "private" / "org.key").read_bytes()
            key_hex = org_key.strip().splitlines()[-1].decode("ascii")
            self.assertGreaterEqual(len(key_hex), 32)
            self.assertNotIn(key_hex, text)
            self.assertNotIn(key_hex[:32], text)

    def assert_one_label_for_node_ids(self, samples: Samples) -> None:
        """Whatever the metric, a node id is always the value of a `peer_id` label."""
        seen = set()
        for name, series in samples.items():
            for labels in series:
                for label, text in labels:
                    if re.fullmatch(r"[0-9a-f]{64}", text):
                        self.assertEqual(label, "peer_id", f"{name}{{{label}=...}}")
                        seen.add(name)
        self.assertIn("dfs_peer_up", seen)
        self.assertIn("dfs_peer_sent_bytes_total", seen)

    def test_operations_storage_and_peers(self) -> None:
        ids = {n: n.status()["node_id"] for n in (self.a, self.b, self.c)}
        data = os.urandom(200_000)
        source = self.root / "canary.bin"
        source.write_bytes(data)
        self.c.dfs("put", str(source), "--name", NAME)
        self.assertEqual(self.c.dfs("get", NAME).stdout, data)
        self.assertNotEqual(self.c.dfs("get", "no-such-file", check=False).returncode, 0)
        _, listing = call(self.c, "v1/files", token_of(self.c))
        blob = json.loads(listing)[0]["blob"]

        # Without the token: refused, like every /v1/ call.
        with self.assertRaises(urllib.error.HTTPError) as caught:
            call(self.c, "metrics", None)
        self.assertEqual(caught.exception.code, 401)
        with self.assertRaises(urllib.error.HTTPError) as caught:
            call(self.c, "metrics", "wrong-token")
        self.assertEqual(caught.exception.code, 401)

        text = scrape(self.c)
        self.assert_no_secrets(text, blob)
        m = parse(text)
        ops = "dfs_operations_total"
        self.assertEqual(value(m, ops, operation="put", outcome="ok"), 1)
        self.assertEqual(value(m, ops, operation="get", outcome="ok"), 1)
        self.assertEqual(value(m, ops, operation="get", outcome="not_found"), 1)
        self.assertEqual(value(m, "dfs_put_duration_seconds_count"), 1)
        self.assertGreater(value(m, "dfs_put_duration_seconds_sum"), 0)
        self.assertEqual(value(m, "dfs_put_bytes_total"), len(data))
        self.assertEqual(value(m, "dfs_get_bytes_total"), len(data))
        self.assertEqual(value(m, "dfs_get_duration_seconds_count"), 1)
        self.assertGreater(value(m, "dfs_get_duration_seconds_sum"), 0)
        self.assertGreater(value(m, "dfs_own_stored_bytes"), len(data))
        self.assertEqual(value(m, "dfs_peers_connected"), 2)
        up = {dict(labels)["peer_id"]: v for labels, v in m["dfs_peer_up"].items()}
        self.assertEqual(up, {ids[self.a]: 1, ids[self.b]: 1})
        for peer in (self.a, self.b):
            self.assertGreater(value(m, "dfs_peer_sent_bytes_total", peer_id=ids[peer]), len(data))
            self.assertGreater(value(m, "dfs_peer_received_bytes_total", peer_id=ids[peer]), 0)
        self.assertEqual(value(m, "dfs_quota_bytes"), SpaceLimits().quota)
        self.assertGreater(value(m, "dfs_free_disk_bytes"), 0)
        self.assertEqual(
            value(
                m,
                "dfs_build_info",
                version=__version__,
                python=platform.python_version(),
                twisted=twisted_version,
            ),
            1,
        )
        # The process, as prometheus_client reads it from /proc.
        self.assertGreater(value(m, "process_resident_memory_bytes"), 0)
        self.assertGreater(value(m, "process_open_fds"), 0)
        self.assertGreater(value(m, "process_max_fds"), value(m, "process_open_fds"))
        self.assertGreater(value(m, "process_start_time_seconds"), 0)
        self.assert_one_label_for_node_ids(m)

        # Round-trip times, once a ping was answered (the status shows it first).
        wait_until(
            lambda: all(p["rtt_ms"] is not None for p in self.c.status()["peers"]),
            "a ping answered by each peer",
        )
        m = parse(scrape(self.c))
        rtt = {dict(labels)["peer_id"]: v for labels, v in m["dfs_peer_rtt_seconds"].items()}
        self.assertEqual(set(rtt), {ids[self.a], ids[self.b]})
        self.assertTrue(all(0 < v < 30 for v in rtt.values()), rtt)

        # The peers hold C's replica and count it under C's id; their own share is empty.
        for peer in (self.a, self.b):
            held = parse(scrape(peer))
            self.assertGreater(value(held, "dfs_held_bytes", peer_id=ids[self.c]), len(data))
            self.assert_one_label_for_node_ids(held)
            self.assertEqual(value(held, "dfs_own_stored_bytes"), 0)
            self.assertEqual(value(held, "dfs_operations_total", operation="put", outcome="ok"), 0)
            self.assertGreater(
                value(held, "dfs_peer_received_bytes_total", peer_id=ids[self.c]), len(data)
            )

        self.c.dfs("rm", NAME)
        self.assertNotEqual(self.c.dfs("rm", NAME, check=False).returncode, 0)
        text = scrape(self.c)
        self.assert_no_secrets(text, blob)
        m = parse(text)
        self.assertEqual(value(m, ops, operation="delete", outcome="ok"), 1)
        self.assertEqual(value(m, ops, operation="delete", outcome="not_found"), 1)
        self.assertEqual(value(m, ops, operation="put", outcome="ok"), 1)
        self.assertEqual(value(m, "dfs_own_stored_bytes"), 0)


@dataclass
class _Info:
    node_id: str
    org: str


@dataclass
class _Session:
    info: _Info
    bytes_in: int
    bytes_out: int
    rtt: float | None = None


@dataclass
class _Peers:
    rows: list[dict[str, Any]] = field(default_factory=list)
    live_sessions: list[_Session] = field(default_factory=list)

    def status(self) -> list[dict[str, Any]]:
        return self.rows

    def live(self) -> list[_Session]:
        return self.live_sessions

    def sessions(self) -> list[_Session]:
        return self.live_sessions


@dataclass
class _Space:
    limits: SpaceLimits = field(default_factory=SpaceLimits)

    def free(self) -> int:
        return 123


@dataclass
class _Auditor:
    passed: int = 0
    failed: int = 0


@dataclass
class _Files:
    node_id: str
    peers: _Peers
    space: _Space = field(default_factory=_Space)
    auditor: _Auditor = field(default_factory=_Auditor)
    stored: dict[str, int] = field(default_factory=dict)
    ours: dict[str, int] = field(default_factory=dict)  # peer -> bytes of ours it holds
    short: int = 0

    def usage(self) -> dict[str, int]:
        return self.stored

    def held_for_us(self) -> dict[str, int]:
        return self.ours

    def under_replicated(self) -> int:
        return self.short


ME, P1, P2 = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.unit
class NodeMetricsUnitTests(SynchronousTestCase):
    def test_instances_share_nothing(self) -> None:
        one, two = NodeMetrics(), NodeMetrics()
        self.assertIsNot(one.registry, two.registry)
        one.operation("put", "ok")
        one.operation("get", "not_found")
        one.put_done(0.5, 1000)
        one.get_done(0.25, 7)
        first, second = parse(one.exposition().decode()), parse(two.exposition().decode())
        self.assertEqual(value(first, "dfs_operations_total", operation="put", outcome="ok"), 1)
        self.assertEqual(value(second, "dfs_operations_total", operation="put", outcome="ok"), 0)
        self.assertEqual(value(second, "dfs_operations_total", operation="get", outcome="ok"), 0)
        self.assertNotIn(
            (("operation", "get"), ("outcome", "not_found")), second["dfs_operations_total"]
        )
        self.assertEqual(value(first, "dfs_put_duration_seconds_count"), 1)
        self.assertEqual(value(second, "dfs_put_duration_seconds_count"), 0)
        self.assertEqual(value(first, "dfs_put_bytes_total"), 1000)
        self.assertEqual(value(second, "dfs_put_bytes_total"), 0)
        self.assertEqual(value(first, "dfs_get_bytes_total"), 7)
        self.assertEqual(value(first, "dfs_get_duration_seconds_count"), 1)
        self.assertEqual(value(second, "dfs_get_duration_seconds_count"), 0)
        # A third node in the same process registers the same names without a clash.
        NodeMetrics()

    def test_collector_reads_live_state(self) -> None:
        peers = _Peers()
        files = _Files(ME, peers, stored={ME: 10, P1: 20})
        pins = {"127.0.0.1:4000": P1}
        metrics = NodeMetrics(cast(Any, files), pinned=pins.get)
        peers.rows = [
            {"address": "127.0.0.1:4000", "node_id": P1, "org": "one", "state": "connected"},
            {"address": "127.0.0.1:5000", "node_id": None, "org": None, "state": "connecting"},
            {"address": "127.0.0.1:6000", "node_id": P2, "org": "two", "state": "connected"},
        ]
        peers.live_sessions = [
            _Session(_Info(P1, "one"), 5, 6, rtt=0.002),
            _Session(_Info(P2, "two"), 7, 8),
        ]
        m = parse(metrics.exposition().decode())
        self.assertEqual(value(m, "dfs_own_stored_bytes"), 10)
        self.assertEqual(m["dfs_held_bytes"], {(("peer_id", P1),): 20})
        # Measured once a ping was answered; a session without one has no sample yet.
        self.assertEqual(m["dfs_peer_rtt_seconds"], {(("peer_id", P1),): 0.002})
        self.assertEqual(value(m, "dfs_peers_connected"), 2)
        self.assertEqual(
            value(m, "dfs_peer_up", peer_id=P1, org="one", address="127.0.0.1:4000"), 1
        )
        self.assertIn(
            (("address", "127.0.0.1:5000"), ("org", ""), ("peer_id", "")), m["dfs_peer_up"]
        )
        self.assertEqual(value(m, "dfs_peer_received_bytes_total", peer_id=P2), 7)
        self.assertEqual(value(m, "dfs_peer_sent_bytes_total", peer_id=P2), 8)
        self.assertEqual(value(m, "dfs_free_disk_bytes"), 123)
        self.assertNotIn("dfs_held_for_us_bytes", m)
        self.assertEqual(value(m, "dfs_under_replicated_files"), 0)
        files.ours, files.short = {P1: 4096}, 3
        m = parse(metrics.exposition().decode())
        self.assertEqual(m["dfs_held_for_us_bytes"], {(("peer_id", P1),): 4096})
        self.assertEqual(value(m, "dfs_under_replicated_files"), 3)

        # Both go down: the pinned address keeps its id, the accepted peer is remembered.
        peers.rows = [
            {"address": "127.0.0.1:4000", "node_id": None, "org": None, "state": "connecting"}
        ]
        peers.live_sessions = []
        m = parse(metrics.exposition().decode())
        self.assertEqual(
            m["dfs_peer_up"],
            {
                (("address", "127.0.0.1:4000"), ("org", "one"), ("peer_id", P1)): 0,
                (("address", "127.0.0.1:6000"), ("org", "two"), ("peer_id", P2)): 0,
            },
        )
        self.assertEqual(value(m, "dfs_peers_connected"), 0)
        self.assertNotIn("dfs_peer_sent_bytes_total", m)

    def test_collector_is_a_collector(self) -> None:
        collector = NodeCollector(cast(Any, _Files(ME, _Peers(), auditor=_Auditor(5, 2))), None)
        families = {family.name: family for family in collector.collect()}
        names = set(families)
        audits = {s.labels["outcome"]: s.value for s in families["dfs_audits"].samples}
        self.assertEqual(audits, {"passed": 5, "failed": 2})
        self.assertIn("dfs_own_stored_bytes", names)
        self.assertIn("dfs_held_bytes", names)
        self.assertIn("dfs_peer_rtt_seconds", names)
        self.assertIn("dfs_peer_up", names)
