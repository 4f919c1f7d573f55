"""Anti-entropy by digest tree between nodes linked in memory (tests/loopback.py):
a one-blob difference costs a few digests and one leaf's listing, and a peer that
lies about its digests or its listing can only make this node list more or send
it less, never delete anything or loop for ever."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import merkle, wire
from dfs_twisted.session import PeerSession, RemoteError
from dfs_twisted.store import BlobKey
from tests.loopback import MemoryNode, link, outcome, settled

pytestmark = pytest.mark.unit

FILES = 40


class Recorder:
    """Wraps a node's answers to control requests: records them, forges some."""

    def __init__(self, node: MemoryNode) -> None:
        self.asked: list[wire.ControlRequest] = []
        self.forge: Any = None  # (request, real reply) -> the reply sent instead
        self._real = node.server.answer
        node.server.answer = self.answer  # type: ignore[method-assign]

    def answer(self, session: PeerSession, request: wire.ControlRequest) -> Deferred[wire.Message]:
        self.asked.append(request)
        d = self._real(session, request)
        forge = self.forge
        if forge is not None:
            d.addCallback(lambda reply: forge(request, reply))
        return d

    def lists(self) -> list[wire.List]:
        return [r for r in self.asked if isinstance(r, wire.List)]


class TreeSyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a = MemoryNode(Path(self.mktemp()), "a")
        self.b = MemoryNode(Path(self.mktemp()), "b")
        for node in (self.a, self.b):
            self.addCleanup(node.close)
        # The tree even for this small namespace (it lists a small one whole).
        self.a.sync.list_all_below = 0
        at_a, _ = link(self.a, self.b)
        for i in range(FILES):
            settled(self.a.put(f"file-{i}", os.urandom(100)))
        at_a.close()
        # One file b missed while away, in a leaf b holds others of (so that the
        # comparison goes down to the leaf).
        leaves = {b[: merkle.LEAF_HEX] for b in self.a.holdings.catalog.live(self.a.node_id)}
        name = next(
            f"away-{i}"
            for i in range(10**7)
            if self.a.owner.key_for(f"away-{i}").blob[: merkle.LEAF_HEX] in leaves
        )
        self.new = settled(self.a.put(name, b"new")).blob
        self.before = self.a.holdings.catalog.entries(self.a.node_id)
        self.at_a, _ = link(self.a, self.b)
        self.recorder = Recorder(self.b)

    def held_by_b(self) -> int:
        return self.b.holdings.catalog.count(self.a.node_id)

    def check_nothing_lost(self) -> None:
        self.assertEqual(self.a.holdings.catalog.entries(self.a.node_id), self.before)
        self.assertEqual(self.held_by_b(), FILES + 1)
        self.assertIsNotNone(self.b.holdings.held(BlobKey(self.a.node_id, self.new)))

    def test_one_blob_costs_three_digests_and_one_leaf(self) -> None:
        leaf = self.new[: merkle.LEAF_HEX]
        _, held_there = self.b.holdings.catalog.digest(self.a.node_id, leaf)
        self.assertEqual(settled(self.a.sync.catch_up(self.at_a)), 1)
        self.check_nothing_lost()
        self.assertEqual(
            self.recorder.asked,
            [
                wire.Digest(self.a.node_id),
                wire.Digest(self.a.node_id, "", children=True),
                wire.Digest(self.a.node_id, leaf[:2], children=True),
                # One page, one entry longer than what b holds there: it ends the leaf.
                wire.List(self.a.node_id, merkle.list_after(leaf), held_there + 1),
            ],
        )
        # Then the roots agree: one digest, nothing listed.
        self.recorder.asked.clear()
        self.assertEqual(settled(self.a.sync.catch_up(self.at_a)), 0)
        self.assertEqual(self.recorder.asked, [wire.Digest(self.a.node_id)])

    def test_forged_child_digests_cost_only_more_listing(self) -> None:
        def forge(request: wire.ControlRequest, reply: wire.Message) -> wire.Message:
            if isinstance(reply, wire.DigestReply) and reply.children:
                lies = tuple(
                    wire.DigestChild(c.byte, os.urandom(32).hex(), c.count) for c in reply.children
                )
                return wire.DigestReply(reply.digest, reply.count, lies)
            return reply

        self.recorder.forge = forge
        self.assertEqual(settled(self.a.sync.catch_up(self.at_a)), 1)
        self.check_nothing_lost()
        # Every leaf a holds was listed, instead of one.
        self.assertEqual(len(self.recorder.lists()), len({b[:4] for b, _ in self.before}))

    def test_children_said_missing_cost_only_offers_refused(self) -> None:
        def forge(request: wire.ControlRequest, reply: wire.Message) -> wire.Message:
            if isinstance(reply, wire.DigestReply) and reply.children:
                return wire.DigestReply(reply.digest, reply.count, ())
            return reply

        self.recorder.forge = forge
        # Everything is offered again; b takes only what it lacked.
        self.assertEqual(settled(self.a.sync.catch_up(self.at_a)), 1)
        self.check_nothing_lost()
        self.assertEqual(self.recorder.lists(), [])

    def test_a_listing_that_does_not_move_on_ends_the_catch_up(self) -> None:
        below = wire.ListEntry("0" * 64, 1, False)

        def forge(request: wire.ControlRequest, reply: wire.Message) -> wire.Message:
            # The same page again and again, "more" to come; given up after 20 (so
            # that without the safeguard the test ends, and fails).
            if isinstance(request, wire.List) and len(self.recorder.lists()) < 20:
                return wire.ListReply((below,), more=True)
            return reply

        self.recorder.forge = forge
        result = outcome(self.a.sync.catch_up(self.at_a))
        self.assertIsInstance(result, Failure)
        assert isinstance(result, Failure)
        self.assertIsInstance(result.value, RemoteError)
        self.assertEqual(len(self.recorder.lists()), 1)
        self.assertEqual(self.a.holdings.catalog.entries(self.a.node_id), self.before)

    def test_a_listing_beyond_the_leaf_is_not_taken_for_it(self) -> None:
        # b answers the leaf's listing with a claim to a newer version of every one of
        # a's blobs, the new one included, outside the leaf and in it: only the
        # claims within the leaf count, and b lacking the new one is b's own doing.
        def forge(request: wire.ControlRequest, reply: wire.Message) -> wire.Message:
            if isinstance(request, wire.List):
                claims = tuple(
                    wire.ListEntry(b, e.version + 1, False)
                    for b, e in self.before
                    if b > (request.after or "")
                )[: wire.MAX_LIST_PAGE]
                return wire.ListReply(claims, more=False)
            return reply

        self.recorder.forge = forge
        self.assertEqual(settled(self.a.sync.catch_up(self.at_a)), 0)
        self.assertEqual(self.a.holdings.catalog.entries(self.a.node_id), self.before)
        self.assertEqual(self.held_by_b(), FILES)


class KnownCopiesTests(SynchronousTestCase):
    """What the status page polls every 2 s: this org's files with the copies known,
    asked of no peer."""

    def test_files_with_known_copies_ask_no_peer(self) -> None:
        a = MemoryNode(Path(self.mktemp()), "a")
        b = MemoryNode(Path(self.mktemp()), "b")
        for node in (a, b):
            self.addCleanup(node.close)
        link(a, b)
        settled(a.put("kept", b"here and on b"))
        recorder = Recorder(b)
        [known] = settled(a.recovery.list_files(ask=False))
        self.assertEqual((known.name, known.replicas), ("kept", 2))
        self.assertEqual(recorder.asked, [])
        # Asking the peers (dfs ls) finds the same.
        [asked] = settled(a.recovery.list_files())
        self.assertEqual(asked.replicas, 2)
        self.assertEqual(len(recorder.lists()), 1)
