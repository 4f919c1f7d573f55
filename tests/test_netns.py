"""Three nodes on three "hosts": Linux network namespaces joined by veth links.

Each node runs in its own namespace and reaches its peers over real links, with the
federation's network key, as on three machines. Cutting links makes a real
partition (nodes still run and accept writes on both sides); healing them lets the
nodes find each other again and converge.

A cut link sends nothing at all (no FIN, no RST): the nodes notice it by
themselves, when a PING goes unanswered for 30 s, as they would between real hosts.

Needs root and iproute2 (without them: skipped with the reason, a failure in CI).
PlacedNetnsTests runs the same stories with --replicas 2 on every host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import BIN, NodeProcess

from .environment import cannot_run
from .netns import HOSTS, NetnsLab

pytestmark = pytest.mark.netns

PORTS = {"a": 3000, "b": 4000, "c": 5000}  # each namespace has its own ports
DIALS = {"a": (), "b": ("a",), "c": ("a", "b")}  # the seed: B dials A, C dials A and B
HEX64 = re.compile(r"[0-9a-f]{64}")
POLL = 0.2  # seconds between looks at a condition
CONNECT_TIMEOUT = 60.0
PARTITION_TIMEOUT = 90.0  # a cut link shows once a ping goes unanswered
HEAL_TIMEOUT = 90.0  # redialling backs off up to 30 s
CONVERGE_TIMEOUT = 90.0


def payload(size: int, marker: bytes) -> bytes:
    """Recognisable, incompressible plaintext of ``size`` bytes."""
    block = marker + os.urandom(4096)
    return (block * (size // len(block) + 1))[:size]


def blobs(node: NodeProcess, owner: str) -> dict[str, Path]:
    """The blobs ``node`` holds for ``owner``: ``store/<owner>/??/??/<blob id>``."""
    return {
        p.name: p
        for p in (node.data_dir / "store" / owner).glob("??/??/*")
        if p.is_file() and HEX64.fullmatch(p.name)
    }


def wait_until(check: Callable[[], list[str]], what: str, timeout: float) -> list[str]:
    """Poll ``check`` (the problems left) until it returns none; the last problems if not."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems or time.monotonic() > deadline:
            return [f"after {timeout:.0f} s waiting for {what}: {p}" for p in problems]
        time.sleep(POLL)


@dataclass
class Ledger:
    """What was acknowledged: the newest content of every live file, and what was deleted."""

    content: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (owner, name)
    blob: dict[tuple[str, str], str] = field(default_factory=dict)
    deleted: dict[tuple[str, str], str] = field(default_factory=dict)  # -> its blob id
    superseded: set[str] = field(default_factory=set)  # blob ids of replaced versions


class Network:
    """Nodes A, B and C in namespaces a, b and c, started as an operator would."""

    def __init__(self, test: SynchronousTestCase, extra: tuple[str, ...] = ()) -> None:
        reason = NetnsLab.unavailable()
        if reason is not None:
            cannot_run(reason)
        self.root = Path(tempfile.mkdtemp(prefix="dfs-netns-"))
        test.addCleanup(shutil.rmtree, self.root, True)
        self.lab = NetnsLab()
        test.addCleanup(self.lab.close)  # runs after the nodes are stopped (LIFO)
        self.key = self.root / "federation.key"
        created = subprocess.run(
            [str(BIN / "dfs"), "network-key", "create", str(self.key)],
            capture_output=True,
            timeout=60,
        )
        test.assertEqual(created.returncode, 0, created.stderr.decode(errors="replace"))
        self.test = test
        self.extra = extra
        self.nodes = {host: self.node(host) for host in HOSTS}
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_ready()
        self.ids = {host: node.status()["node_id"] for host, node in self.nodes.items()}
        self.host_of = {node_id: host for host, node_id in self.ids.items()}
        self.ledger = Ledger()
        self.sources = self.root / "sources"
        self.sources.mkdir()
        self.wait_links(self.full_mesh(), "every node connected to both others", CONNECT_TIMEOUT)

    def node(self, host: str) -> NodeProcess:
        """A node process for ``host``, dialling its peers' addresses on the links to them."""
        node = NodeProcess(
            PORTS[host],
            self.root / host,
            peers=[f"{self.lab.address(peer, host)}:{PORTS[peer]}" for peer in DIALS[host]],
            org=f"org-{host}",
            # --listen takes one address and A is dialled on two links (B and C
            # each use the link between them): listen on every address of the
            # namespace, which are only the ends of its own links.
            extra=["--listen", "0.0.0.0", "--network-key", str(self.key), *self.extra],
            prefix=self.lab.exec_prefix(host),
        )
        self.test.addCleanup(node.stop)
        return node

    def restart(self, host: str) -> NodeProcess:
        self.nodes[host].stop()
        node = self.nodes[host] = self.node(host)
        node.start()
        node.wait_ready()
        return node

    # -- links

    @staticmethod
    def full_mesh() -> dict[str, set[str]]:
        return {host: set(HOSTS) - {host} for host in HOSTS}

    def connected(self, host: str) -> set[str]:
        """The hosts ``host``'s node shows as connected peers."""
        peers = self.nodes[host].status()["peers"]
        return {
            self.host_of.get(p["node_id"], p["node_id"]) for p in peers if p["state"] == "connected"
        }

    def link_problems(self, expected: dict[str, set[str]]) -> list[str]:
        problems = []
        for host, want in expected.items():
            got = self.connected(host)
            if got != want:
                problems.append(
                    f"{host.upper()} is connected to {sorted(got) or 'nobody'}, "
                    f"expected {sorted(want) or 'nobody'}"
                )
        return problems

    def wait_links(self, expected: dict[str, set[str]], what: str, timeout: float) -> None:
        problems = wait_until(lambda: self.link_problems(expected), what, timeout)
        if problems:
            raise AssertionError("\n".join(problems))

    # -- files

    def put(self, host: str, name: str, data: bytes) -> str:
        """`dfs put` on ``host``; record the acknowledged content and its blob id."""
        node, owner = self.nodes[host], self.ids[host]
        source = self.sources / f"{len(list(self.sources.iterdir()))}.bin"
        source.write_bytes(data)
        before = set(blobs(node, owner))
        out = node.dfs("put", str(source), "--name", name).stdout.decode()
        after = set(blobs(node, owner))
        key = (host, name)
        new = after - before
        if len(new) == 1:
            [blob] = new
            if key in self.ledger.blob and self.ledger.blob[key] != blob:
                self.ledger.superseded.add(self.ledger.blob[key])
        else:
            self.test.assertEqual(new, set(), f"put of {name} made several blobs")
            self.test.assertIn(key, self.ledger.blob, f"put of new {name} made no blob")
            blob = self.ledger.blob[key]
        self.ledger.content[key] = data
        self.ledger.blob[key] = blob
        return out

    def rm(self, host: str, name: str) -> str:
        out = self.nodes[host].dfs("rm", name).stdout.decode()
        key = (host, name)
        self.ledger.deleted[key] = self.ledger.blob.pop(key)
        del self.ledger.content[key]
        return out

    def name_of(self, blob: str) -> str:
        for (host, name), known in [*self.ledger.blob.items(), *self.ledger.deleted.items()]:
            if known == blob:
                return f"{host.upper()}'s {name!r}"
        return f"blob {blob[:12]}..."

    def store_problems(self) -> list[str]:
        """How the stores differ from every acknowledged put and rm, on every node."""
        problems = []
        for owner_host in HOSTS:
            owner = self.ids[owner_host]
            own = blobs(self.nodes[owner_host], owner)
            live = {
                self.ledger.blob[key]: key[1] for key in self.ledger.blob if key[0] == owner_host
            }
            gone = {
                self.ledger.deleted[key]: key[1]
                for key in self.ledger.deleted
                if key[0] == owner_host
            }
            for holder_host in HOSTS:
                held = blobs(self.nodes[holder_host], owner)
                where = f"{holder_host.upper()}'s store/<{owner_host.upper()}'s id>"
                for blob, name in live.items():
                    if blob not in held:
                        problems.append(f"{where} lacks {owner_host.upper()}'s live {name!r}")
                    elif (
                        holder_host != owner_host
                        and blob in own
                        and held[blob].read_bytes() != own[blob].read_bytes()
                    ):
                        problems.append(
                            f"{where} holds a stale version of {owner_host.upper()}'s {name!r} "
                            "(not the owner's newest blob)"
                        )
                for blob, name in gone.items():
                    if blob in held:
                        problems.append(
                            f"{where} still holds {owner_host.upper()}'s deleted {name!r}"
                        )
                for blob in sorted(set(held) - set(live) - set(gone)):
                    what = "superseded version" if blob in self.ledger.superseded else "unknown"
                    problems.append(f"{where} holds a {what} blob {self.name_of(blob)}")
        return problems

    def lost(self) -> list[str]:
        """What each owner lists or serves other than its acknowledged puts and deletes."""
        problems = []
        for host in HOSTS:
            listed = json.loads(self.nodes[host].dfs("ls", "--json").stdout)
            names = {entry["name"] for entry in listed}
            want = {name for owner, name in self.ledger.content if owner == host}
            if names != want:
                problems.append(
                    f"dfs ls on {host.upper()} lists {sorted(names)}, expected {sorted(want)}"
                )
        # After the listing: a get of a deleted name that a peer still holds restores it.
        for (host, name), data in sorted(self.ledger.content.items()):
            got = self.nodes[host].dfs("get", name, check=False)
            if got.returncode != 0:
                problems.append(
                    f"dfs get {name!r} on {host.upper()} failed: "
                    f"{got.stderr.decode(errors='replace').strip()}"
                )
            elif got.stdout != data:
                problems.append(
                    f"dfs get {name!r} on {host.upper()} returned other bytes than its last put"
                )
        for host, name in sorted(self.ledger.deleted):
            got = self.nodes[host].dfs("get", name, check=False)
            if got.returncode == 0:
                problems.append(f"dfs get {name!r} on {host.upper()} still serves a deleted file")
        return problems


class NetnsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network(self)

    def test_recover_a_lost_store_from_other_hosts(self) -> None:
        """The seed's story across hosts: C stores, loses its disk, gets it all back."""
        net = self.net
        data = payload(3 * 1024 * 1024 + 12345, b"ACROSS-HOSTS ")
        out = net.put("c", "reports/q1.bin", data)
        self.assertIn("2 of 2 connected peers", out)
        c_id = net.ids["c"]
        [blob] = blobs(net.nodes["c"], c_id).values()
        for host in ("a", "b"):
            [replica] = blobs(net.nodes[host], c_id).values()
            # The same place (store/<C's id>/aa/bb/<blob id>) and the same ciphertext.
            self.assertEqual(
                replica.relative_to(net.nodes[host].data_dir),
                blob.relative_to(net.nodes["c"].data_dir),
            )
            self.assertEqual(replica.read_bytes(), blob.read_bytes())
            self.assertNotIn(b"ACROSS-HOSTS", replica.read_bytes())

        net.nodes["c"].stop()
        shutil.rmtree(net.nodes["c"].data_dir / "store")
        c = net.restart("c")
        net.wait_links(net.full_mesh(), "C back and connected to A and B", CONNECT_TIMEOUT)
        self.assertEqual(blobs(c, c_id), {})
        out = c.dfs("recover").stdout.decode()
        self.assertIn("recovered reports/q1.bin", out)
        self.assertEqual(c.dfs("get", "reports/q1.bin").stdout, data)
        [restored] = blobs(c, c_id).values()
        self.assertEqual(restored.name, blob.name)

    def test_partition_and_heal(self) -> None:
        """Both sides of a partition write and delete; after healing all nodes converge."""
        net = self.net
        for host in HOSTS:
            for name in ("delete-me", "overwrite-me", "keep-me"):
                net.put(host, f"{host}/{name}", payload(200_000, f"{host}-{name} ".encode()))
        self.assertEqual(net.store_problems(), [])

        # A on one side, B and C on the other.
        net.lab.cut("a", "b")
        net.lab.cut("a", "c")
        net.wait_links(
            {"a": set(), "b": {"c"}, "c": {"b"}},
            "A to lose B and C (B and C still linked)",
            PARTITION_TIMEOUT,
        )

        self.assertIn("0 of 0 connected peers", net.put("a", "a/new", payload(150_000, b"a-new ")))
        self.assertIn("here and on 0 peers", net.rm("a", "a/delete-me"))
        out = net.put("a", "a/overwrite-me", payload(180_000, b"a-overwritten "))
        self.assertIn("0 of 0 connected peers", out)
        self.assertIn("1 of 1 connected peers", net.put("c", "c/new", payload(150_000, b"c-new ")))
        self.assertIn("here and on 1 peers", net.rm("c", "c/delete-me"))

        net.lab.heal("a", "b")
        net.lab.heal("a", "c")
        net.wait_links(net.full_mesh(), "the nodes to reconnect after healing", HEAL_TIMEOUT)

        problems = wait_until(net.store_problems, "the stores to converge", CONVERGE_TIMEOUT)
        problems += net.lost()
        if problems:
            self.fail("after healing the partition:\n" + "\n".join(problems))


class PlacedNetnsTests(NetnsTests):
    """The same stories with copies placed by the owner (--replicas 3: each file
    here and on both other hosts, chosen by rendezvous, no relay) instead of sent
    everywhere."""

    def setUp(self) -> None:
        self.net = Network(self, ("--replicas", "3"))
