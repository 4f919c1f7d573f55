"""Prometheus metrics of one node, served by the HTTP API at ``GET /metrics``.

Each node owns its own `CollectorRegistry` (never prometheus_client's global one):
several nodes may run in one process (``tac/three_nodes.tac``, in-process tests).

Three kinds of metrics:

- counters and histograms the API updates as operations finish
  (``dfs_operations_total``, ``dfs_put_duration_seconds``, ``dfs_get_duration_seconds``,
  ``dfs_put_bytes_total``, ``dfs_get_bytes_total``);
- gauges and counters read from the node's live state at scrape time by
  `NodeCollector` (stored bytes, bytes held per org, peers, their round-trip times
  and byte counters, quota, free disk): nothing on the hot path;
- ``dfs_build_info`` and prometheus_client's ``process_*`` metrics of the process.

No label or value ever holds a file name, a blob id or key material. The labels
are node ids (public: the SHA-256 of a certificate's public key), org names and
peer addresses, which every peer already sees. A node id is always labelled
``peer_id``, so that any two series about one org join on it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .files import Files
from .schema import PeerRow
from .scrub import Scrubber

# generate_latest writes the classic text format (all our names are plain ASCII);
# newer prometheus_client releases announce it as version=1.0.0, which Prometheus
# servers before 3.0 do not know, so the long-standing type is announced instead.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OPERATIONS = ("put", "get", "delete", "recover")

# HTTP status of a failed operation -> its outcome label (anything else: "error").
OUTCOMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    409: "busy",
    413: "too_large",
    502: "damaged",
}

# 1 ms .. 10 min: a small file on loopback to a large one on a slow link.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

# Disconnected peers remembered (to report them as down) at most.
MAX_REMEMBERED_PEERS = 256


class NodeMetrics:
    """One node's metrics and the registry they are exposed from."""

    def __init__(
        self,
        files: Files | None = None,
        pinned: Callable[[str], str | None] | None = None,
        scrubber: Scrubber | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.operations = Counter(
            "dfs_operations",
            "File operations through the API, by operation and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        for operation in OPERATIONS:
            self.operations.labels(operation, "ok")
        self.put_duration = Histogram(
            "dfs_put_duration_seconds",
            "Successful puts: seconds from the request until durable here and on every "
            "connected peer.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.get_duration = Histogram(
            "dfs_get_duration_seconds",
            "Completed gets: seconds from the request until the last byte was handed to "
            "the connection.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.put_bytes = Counter(
            "dfs_put_bytes", "Plaintext bytes of successful puts.", registry=self.registry
        )
        self.get_bytes = Counter(
            "dfs_get_bytes", "Plaintext bytes of completed gets.", registry=self.registry
        )
        build = Gauge(
            "dfs_build_info",
            "Always 1: the versions this node runs, as labels.",
            ["version", "python", "twisted"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version(), _twisted_version()).set(1)
        ProcessCollector(registry=self.registry)
        if files is not None:
            self.registry.register(NodeCollector(files, pinned))
        if scrubber is not None:
            self.registry.register(ScrubCollector(scrubber))

    def operation(self, operation: str, outcome: str) -> None:
        self.operations.labels(operation, outcome).inc()

    def put_done(self, seconds: float, size: int) -> None:
        self.put_duration.observe(seconds)
        self.put_bytes.inc(size)

    def get_done(self, seconds: float, size: int) -> None:
        self.get_duration.observe(seconds)
        self.get_bytes.inc(size)

    def exposition(self) -> bytes:
        """The scrape: every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def _twisted_version() -> str:
    from twisted import __version__ as twisted_version

    return twisted_version


def outcome_of(status: int | None) -> str:
    """The outcome label of a failed operation (``status``: its HTTP status, if any)."""
    return OUTCOMES.get(status or 0, "error")


class ScrubCollector(Collector):
    """The last finished scrub pass."""

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber

    def collect(self) -> Iterable[Metric]:
        last = self._scrubber.last
        finished = GaugeMetricFamily(
            "dfs_scrub_last_finished_timestamp_seconds",
            "When the last scrub pass ended (0: never).",
        )
        finished.add_metric([], (last.finished or 0) if last else 0)
        yield finished
        for name, text in (
            ("checked", "Blobs the last scrub pass checked."),
            ("damaged", "Blobs the last scrub pass found damaged or missing."),
            ("repaired", "Damaged blobs the last scrub pass replaced from a peer."),
        ):
            gauge = GaugeMetricFamily(f"dfs_scrub_last_{name}_blobs", text)
            gauge.add_metric([], getattr(last, name) if last else 0)
            yield gauge


class NodeCollector(Collector):
    """Reads the node's state when scraped."""

    def __init__(self, files: Files, pinned: Callable[[str], str | None] | None) -> None:
        self._files = files
        self._pinned = pinned or (lambda _address: None)
        # Peers seen connected since start: node id -> (org, address).
        self._seen: dict[str, tuple[str, str]] = {}

    def collect(self) -> Iterable[Metric]:
        files = self._files
        audits = CounterMetricFamily(
            "dfs_audits",
            "Storage audits of this org's blobs on peers since start, by outcome.",
            labels=["outcome"],
        )
        audits.add_metric(["passed"], files.auditor.passed)
        audits.add_metric(["failed"], files.auditor.failed)
        yield audits
        usage = files.usage()
        own = GaugeMetricFamily(
            "dfs_own_stored_bytes", "Bytes of this org's own blobs in the store."
        )
        own.add_metric([], usage.get(files.node_id, 0))
        yield own
        held = GaugeMetricFamily(
            "dfs_held_bytes",
            "Bytes of blobs held here for another org, by that org's node id.",
            labels=["peer_id"],
        )
        for owner, size in sorted(usage.items()):
            if owner != files.node_id:
                held.add_metric([owner], size)
        yield held
        held_for_us = GaugeMetricFamily(
            "dfs_held_for_us_bytes",
            "Bytes of this org's files a peer is known to hold, by its node id.",
            labels=["peer_id"],
        )
        for peer, size in sorted(files.held_for_us().items()):
            held_for_us.add_metric([peer], size)
        yield held_for_us
        under = GaugeMetricFamily(
            "dfs_under_replicated_files",
            "This org's files with fewer peer copies (or shares) known than wanted.",
        )
        under.add_metric([], files.under_replicated())
        yield under

        yield self._peer_up()

        live = files.peers.live()
        connected = GaugeMetricFamily("dfs_peers_connected", "Peers connected now.")
        connected.add_metric([], len(live))
        yield connected

        received = CounterMetricFamily(
            "dfs_peer_received_bytes",
            "Bytes received from a peer over its current sessions (resets on reconnect).",
            labels=["peer_id"],
        )
        sent = CounterMetricFamily(
            "dfs_peer_sent_bytes",
            "Bytes sent to a peer over its current sessions (resets on reconnect).",
            labels=["peer_id"],
        )
        rtt = GaugeMetricFamily(
            "dfs_peer_rtt_seconds",
            "Round-trip time of the last answered ping to a connected peer.",
            labels=["peer_id"],
        )
        for session in live:
            if session.info is not None and session.rtt is not None:
                rtt.add_metric([session.info.node_id], session.rtt)
        yield rtt

        totals: dict[str, tuple[int, int]] = {}
        for session in files.peers.sessions():
            if session.info is not None:
                bytes_in, bytes_out = totals.get(session.info.node_id, (0, 0))
                totals[session.info.node_id] = (
                    bytes_in + session.bytes_in,
                    bytes_out + session.bytes_out,
                )
        for peer_id, (bytes_in, bytes_out) in sorted(totals.items()):
            received.add_metric([peer_id], bytes_in)
            sent.add_metric([peer_id], bytes_out)
        yield received
        yield sent

        limits = files.space.limits
        quota = GaugeMetricFamily("dfs_quota_bytes", "Most bytes held for any one other org.")
        quota.add_metric([], limits.quota)
        yield quota
        reserve = GaugeMetricFamily(
            "dfs_reserve_bytes", "Free disk never given to other orgs' replicas."
        )
        reserve.add_metric([], limits.reserve)
        yield reserve
        free = GaugeMetricFamily("dfs_free_disk_bytes", "Free bytes on the store's disk.")
        free.add_metric([], files.space.free())
        yield free

    def _peer_up(self) -> Metric:
        """1 per connected peer, 0 per configured or once-seen peer that is not."""
        up = GaugeMetricFamily(
            "dfs_peer_up",
            "1 if the peer is connected, else 0 (configured addresses, and peers seen "
            "since the node started).",
            labels=["peer_id", "org", "address"],
        )
        reported: set[str] = set()
        emitted: set[tuple[str, str, str]] = set()
        for row in cast(list[PeerRow], self._files.peers.status()):
            address = row["address"]
            peer_id = row["node_id"] or self._pinned(address) or ""
            connected = row["state"] == "connected"
            org = row["org"] or self._seen.get(peer_id, ("", ""))[0]
            if connected and peer_id:
                self._remember(peer_id, org, address)
            labels = (peer_id, org, address)
            if labels not in emitted:
                emitted.add(labels)
                reported.add(peer_id)
                up.add_metric(list(labels), 1 if connected else 0)
        for peer_id, (org, address) in self._seen.items():
            if peer_id not in reported:
                up.add_metric([peer_id, org, address], 0)
        return up

    def _remember(self, peer_id: str, org: str, address: str) -> None:
        self._seen.pop(peer_id, None)
        self._seen[peer_id] = (org, address)
        while len(self._seen) > MAX_REMEMBERED_PEERS:
            del self._seen[next(iter(self._seen))]


__all__ = ["CONTENT_TYPE", "NodeCollector", "NodeMetrics", "outcome_of"]
