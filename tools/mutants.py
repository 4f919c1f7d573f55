"""Named mutations: remove each safeguard of docs/security.md and see its tests fail.

Each mutation is one exact textual edit of one source file (``old`` -> ``new``)
and the tests that must catch it. The edit must find ``old`` exactly once, or the
run stops: a mutation never rots silently when the code it aims at moves.

The source tree is copied once to a temporary directory; each mutation is applied
there, its tests are run there (``PYTHONPATH`` points at the copy, so the node
processes the tests start run the mutated code too), and the file is put back.
The working tree is never touched.

    .venv/bin/python tools/mutants.py              # all of them (about 5 minutes)
    .venv/bin/python tools/mutants.py --list       # names and tests, nothing run
    .venv/bin/python tools/mutants.py quota-per-sender allow-list

Caught: the named tests fail with the mutation (and pass without it, which the
baseline run checks first). Survived: they still pass; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the tests read: the package, the tests, and the files they check.
COPIED = [
    "dfs_twisted",
    "tests",
    "twisted",
    "tac",
    "contrib",
    "docs",
    "README.md",
    "pyproject.toml",
]
TIMEOUT = 300  # seconds for the tests of one mutation (a hang counts as not caught)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


PATHS = "tests/test_error_paths.py"
ERASURE = "tests/test_erasure.py"
CHUNK = "tests/test_crypto.py::ChunkSignatureTests"
SEAL = "tests/test_crypto.py::SealTests"
TOMB = "tests/test_crypto.py::TombstoneTests"
AUTH = "tests/test_node_inprocess.py::AuthorizationTests"
LYING = "tests/test_lying_peers.py"
LIMITS = "tests/test_limits.py::ConnectionLimitTests"
HOSTILE_INPUT = "tests/test_protocol.py::HostileInputTests"
HANDSHAKE = "tests/test_handshake.py::HandshakeTests"
ADMISSION = "tests/test_admission.py"
COLLECT = "tests/test_collect.py"
COLLECTING = f"{COLLECT}::CollectionTests"
LYING_COLLECT = "tests/test_lying_peers.py::CollectionTests"

MUTANTS = [
    # ------------------------------------------------------------ signatures
    Mutant(
        "holder-checks-chunk-signatures",
        "dfs_twisted/crypto/seal.py",
        '        verify_signature(header.owner_key, signature, message, f"chunk {self._index}")\n',
        "        pass\n",
        (f"{CHUNK}::test_a_holder_refuses_a_forged_chunk_at_once", f"{SEAL}"),
    ),
    Mutant(
        "reader-checks-chunk-signatures",
        "dfs_twisted/crypto/stream.py",
        "        verify_signature(header.owner_key, chunk[-SIGNATURE_SIZE:], message, "
        'f"chunk {self._index}")\n',
        "        pass\n",
        (
            f"{CHUNK}::test_forged_chunks_release_no_plaintext",
            f"{SEAL}::test_decryptor_checks_the_signature_too",
            "tests/test_healing.py::HealingTests::test_forged_plaintext_never_leaves_the_node",
        ),
    ),
    Mutant(
        "incoming-replica-is-sealed",
        "dfs_twisted/files/serve.py",
        "        try:\n            self._seal.finish()\n        except CryptoError as e:\n",
        "        try:\n            pass\n        except CryptoError as e:\n",
        (AUTH, "tests/test_hostile.py::StoreAttackTests", f"{LYING}::ForgedReplicaTests"),
    ),
    Mutant(
        "incoming-replica-chunks-checked-as-they-arrive",
        "dfs_twisted/files/serve.py",
        "            self._seal.feed(data)\n",
        "            pass\n",
        (AUTH, "tests/test_hostile.py::StoreAttackTests"),
    ),
    Mutant(
        "announced-version-is-the-headers",
        "dfs_twisted/files/serve.py",
        "if not had_header and header is not None and header.version != self.version:",
        "if False:",
        (AUTH, "tests/test_hostile.py::StoreAttackTests", f"{LYING}::RollbackTests"),
    ),
    Mutant(
        "blob-record-signature",
        "dfs_twisted/crypto/blob.py",
        "        verify_signature(owner_key, self.signature, self._message(), "
        'f"record of {self.blob[:16]}")\n',
        "        pass\n",
        (
            "tests/test_crypto.py::HeaderTests::test_record",
            f"{LYING}::LyingListingTests::test_a_replayed_proof_does_not_prove_a_newer_version",
        ),
    ),
    Mutant(
        "blob-id-matches-the-name",
        "dfs_twisted/crypto/blob.py",
        "if isinstance(key, OrgKey) and not "
        "_stdlib_hmac.compare_digest(meta.blob_id(key), header.blob):",
        "if False:",
        (
            "tests/test_crypto.py::TamperTests::test_blob_filed_under_another_name_is_refused",
            f"{ERASURE}::ShareBlobTests::test_a_share_filed_under_another_index_does_not_open",
        ),
    ),
    # ------------------------------------------------------------ erasure coding
    Mutant(
        "a-delete-buries-every-share",
        "dfs_twisted/files/delete.py",
        "        tombs = [tomb, *(Tombstone.sign(self._owner.signer, s, version) for s in shares)]",
        "        tombs = [tomb]",
        (f"{ERASURE}::ErasureNetworkTests::test_a_delete_buries_every_share",),
    ),
    Mutant(
        "share-surplus-only-once-its-slot-holds-it",
        "dfs_twisted/files/placement.py",
        "        return slot if slot in self.holders(share_id(blob, index), version) else None",
        "        return slot",
        (
            f"{ERASURE}::SlotTests",
            f"{ERASURE}::ErasureNetworkTests::test_a_spare_keeps_its_share_until_the_slot_peer_holds_it",
        ),
    ),
    Mutant(
        "a-peer-back-counts-once-it-lists",
        "dfs_twisted/files/sync.py",
        "        self.placement.forget_peer(session.info.node_id)\n",
        "",
        (f"{ERASURE}::ErasureNetworkTests::test_a_peer_back_counts_once_it_has_listed_again",),
    ),
    Mutant(
        "share-audit-checks-the-signed-chunk",
        "dfs_twisted/files/audit.py",
        "            check_chunk(header, reply.size, chunk_index, chunk)\n",
        "",
        (
            f"{ERASURE}::ErasureNetworkTests::test_share_holders_are_audited_and_one_that_fails_is_replaced",
        ),
    ),
    Mutant(
        "a-failed-audit-is-not-undone-by-a-listing",
        "dfs_twisted/files/placement.py",
        "            if self._failed.get((peer, blob)) != version:",
        "            if True:",
        (
            f"{ERASURE}::ErasureNetworkTests::test_share_holders_are_audited_and_one_that_fails_is_replaced",
        ),
    ),
    Mutant(
        "placed-orgs-not-relayed",
        "dfs_twisted/files/sync.py",
        "            skip = {self._node_id, peer, *self.placed_owners}",
        "            skip = {self._node_id, peer}",
        ("tests/test_placement.py::NotRelayedTests",),
    ),
    Mutant(
        "placed-orgs-changes-not-passed-on",
        "dfs_twisted/files/sync.py",
        "        if not self.relay or key.owner in self.placed_owners:",
        "        if not self.relay:",
        ("tests/test_placement.py::NotRelayedTests",),
    ),
    Mutant(
        "placed-orgs-not-taken-from-a-third-node",
        "dfs_twisted/files/serve.py",
        "owner not in (self._node_id, *self._sync.placed_owners)",
        "owner != self._node_id",
        ("tests/test_placement.py::NotRelayedTests",),
    ),
    # ------------------------------------------------------------ tombstones
    Mutant(
        "tombstone-signature",
        "dfs_twisted/crypto/orgkey.py",
        "    verify_signature(owner_key, signature, message(), what)\n",
        "        pass\n",
        (TOMB, AUTH, f"{LYING}::LyingListingTests"),
    ),
    Mutant(
        "tombstone-owner-is-its-key",
        "dfs_twisted/crypto/orgkey.py",
        "    if owner_id(owner_key) != owner:\n"
        "        raise IntegrityError(f\"{what}'s owner id is not its owner key's\")\n",
        "",
        (TOMB, AUTH),
    ),
    Mutant(
        "deletion-from-a-peer-is-verified",
        "dfs_twisted/files/serve.py",
        "                bytes.fromhex(request.signature),\n            ).verify()\n"
        "        except CryptoError as e:\n"
        '            raise RequestRefused("bad_signature", f"tombstone does not verify',
        "                bytes.fromhex(request.signature),\n            )\n"
        "        except CryptoError as e:\n"
        '            raise RequestRefused("bad_signature", f"tombstone does not verify',
        (AUTH, f"{LYING}::LyingListingTests"),
    ),
    # ------------------------------------------------------------ tombstone collection
    Mutant(
        "horizon-signature-checked",
        "dfs_twisted/files/collect.py",
        "                        bytes.fromhex(request.signature),\n"
        "                    ).verify()\n",
        "                        bytes.fromhex(request.signature),\n                    )\n",
        (f"{COLLECT}::ForgedHorizonTests", LYING_COLLECT),
    ),
    Mutant(
        "collect-only-what-every-node-confirmed",
        "dfs_twisted/files/collect.py",
        "            if not required <= p.vouched:\n",
        "            if False:\n",
        (COLLECTING, LYING_COLLECT),
    ),
    Mutant(
        "collect-waits-for-every-node-met",
        "dfs_twisted/files/collect.py",
        "        nodes = set(self._known())\n",
        "        nodes: set[str] = set()\n",
        (
            f"{COLLECTING}::test_a_node_away_holds_collection_back_until_it_is_back_and_confirmed",
            f"{COLLECTING}::test_a_peer_naming_no_one_does_not_drop_a_node_the_owner_met",
            LYING_COLLECT,
        ),
    ),
    Mutant(
        "collect-no-further-than-the-deletions-read",
        "dfs_twisted/files/collect.py",
        "            if p.tomb.version > ripe or p.tomb.version > self._complete_to:\n",
        "            if p.tomb.version > ripe:\n",
        (f"{COLLECT}::WindowTests",),
    ),
    Mutant(
        "collect-waits-for-the-nodes-peers-met",
        "dfs_twisted/files/collect.py",
        "            nodes |= named\n",
        "            pass\n",
        (f"{COLLECTING}::test_a_node_only_a_peer_has_met_holds_collection_back",),
    ),
    Mutant(
        "a-refused-deletion-is-not-confirmed",
        "dfs_twisted/files/collect.py",
        "                continue  # refused (quota, ...): not confirmed\n",
        "                pass\n",
        (f"{COLLECTING}::test_a_peer_that_refuses_the_deletion_has_not_confirmed",),
    ),
    Mutant(
        "collected-tombstones-refused",
        "dfs_twisted/files/serve.py",
        "        if self._horizons.collected(tomb.owner, tomb.version):\n",
        "        if False:\n",
        (
            f"{COLLECTING}::test_a_node_that_missed_the_horizon_does_not_hand_tombstones_back",
            f"{COLLECT}::ForgedHorizonTests",
            LYING_COLLECT,
        ),
    ),
    Mutant(
        "horizons-exchanged-before-comparing",
        "dfs_twisted/files/sync.py",
        "            await self.before_namespace(session, owner)\n",
        "            pass\n",
        (
            f"{COLLECTING}::test_a_node_that_missed_the_horizon_does_not_hand_tombstones_back",
            f"{COLLECTING}::test_a_node_holding_the_namespace_passes_the_horizon_on",
        ),
    ),
    Mutant(
        "collected-deletion-seen-again-is-deleted-again",
        "dfs_twisted/files/sync.py",
        "        self.listed(peer, theirs)\n",
        "        pass\n",
        (f"{COLLECT}::ResurrectionTests", LYING_COLLECT),
    ),
    Mutant(
        "deleted-again-only-on-a-proven-claim",
        "dfs_twisted/files/collect.py",
        "            if not self._owner.proves(blob, claim, self._ledger.newest):\n",
        "            if False:\n",
        (f"{COLLECT}::ResurrectionTests",),
    ),
    Mutant(
        "tombstones-under-the-horizon-not-read-back",
        "dfs_twisted/index.py",
        '"WHERE NOT (deleted AND h.version IS NOT NULL AND e.version <= h.version)"',
        '"WHERE 1"',
        (f"{COLLECT}::RestartTests",),
    ),
    # ------------------------------------------------------------ namespaces
    Mutant(
        "namespace-write-check",
        "dfs_twisted/files/serve.py",
        "        if owner == session.info.node_id:\n            return\n",
        "        return\n",
        (
            AUTH,
            "tests/test_hostile.py::StoreAttackTests::"
            "test_writes_into_another_orgs_namespace_are_forbidden",
        ),
    ),
    Mutant(
        "own-namespace-written-by-nobody-else",
        "dfs_twisted/files/serve.py",
        "owner not in (self._node_id, *self._sync.placed_owners)",
        "owner not in self._sync.placed_owners",
        (AUTH, "tests/test_hostile.py::StoreAttackTests"),
    ),
    # ------------------------------------------------------------ version order
    Mutant(
        "newer-version-only",
        "dfs_twisted/catalog.py",
        "return record is None or version > _version(record[1])",
        "return True",
        (AUTH, "tests/test_node_inprocess.py::PublishOrderTests"),
    ),
    Mutant(
        "same-version-is-not-newer",
        "dfs_twisted/catalog.py",
        "return record is None or version > _version(record[1])",
        "return record is None or version >= _version(record[1])",
        (AUTH, "tests/test_node_inprocess.py::PublishOrderTests"),
    ),
    Mutant(
        "ledger-never-below-newest",
        "dfs_twisted/files/get.py",
        "for e in (self._ledger.get(key.blob), self._holdings.catalog.get(key))",
        "for e in (self._holdings.catalog.get(key),)",
        (f"{LYING}::RollbackTests",),
    ),
    Mutant(
        "claims-far-ahead-of-the-clock-ignored",
        "dfs_twisted/files/owner.py",
        "if claim.version > max(time.time_ns(), newest) + MAX_SKEW_NS:",
        "if False:",
        ("tests/test_owner.py", f"{LYING}::LyingListingTests"),
    ),
    # ------------------------------------------------------------ quota
    Mutant(
        "quota",
        "dfs_twisted/space.py",
        "if total > self.limits.quota:",
        "if False:",
        ("tests/test_limits.py::SpaceTests", f"{LYING}::QuotaTests"),
    ),
    Mutant(
        "quota-per-sender",
        "dfs_twisted/files/serve.py",
        "reservation = self._space.reserve(sender, max(announced, BLOCK) - credit, announced)",
        "reservation = self._space.reserve(key.owner, max(announced, BLOCK) - credit, announced)",
        (f"{LYING}::QuotaTests",),
    ),
    Mutant(
        "quota-reservation",
        "dfs_twisted/space.py",
        "        self.amount = amount\n        account._adjust(sender, amount)\n",
        "        self.amount = amount\n",
        (f"{LYING}::QuotaTests",),
    ),
    Mutant(
        "quota-at-least-a-block",
        "dfs_twisted/catalog.py",
        "return 0 if entry is None else max(entry.size, BLOCK)",
        "return 0 if entry is None else entry.size",
        ("tests/test_node_inprocess.py::TombstoneQuotaTests",),
    ),
    Mutant(
        "tombstones-charged",
        "dfs_twisted/files/serve.py",
        "                self._space.check(sender, BLOCK - self._credit(key, sender), None)\n",
        "                pass\n",
        ("tests/test_node_inprocess.py::TombstoneQuotaTests", f"{LYING}::DeletionFloodTests"),
    ),
    Mutant(
        "free-disk-reserve",
        "dfs_twisted/space.py",
        "if disk_needed is not None and self._free() - disk_needed < self.limits.reserve:",
        "if False:",
        ("tests/test_limits.py::SpaceTests",),
    ),
    # ------------------------------------------------------------ deletions
    Mutant(
        "deletion-rate-limit",
        "dfs_twisted/files/serve.py",
        "if not self._deletions.take(session.info.node_id):",
        "if False:",
        (f"{LYING}::DeletionFloodTests",),
    ),
    Mutant(
        "deletions-passed-on-only-when-they-deleted-something",
        "dfs_twisted/files/serve.py",
        "if held is not None and not held.deleted:",
        "if True:",
        (f"{LYING}::DeletionFloodTests",),
    ),
    # ------------------------------------------------------------ sessions
    Mutant(
        "session-cap",
        "dfs_twisted/protocol.py",
        "if len(sessions) - len(replaced) >= limit:",
        "if False:",
        ("tests/test_hostile.py::SessionFloodTests",),
    ),
    Mutant(
        "one-session-per-node",
        "dfs_twisted/protocol.py",
        '            older.close("replaced by a newer connection from the same node")\n',
        "            pass\n",
        ("tests/test_hostile.py::SessionFloodTests",),
    ),
    Mutant(
        "transfers-per-connection",
        "dfs_twisted/mux.py",
        "                if active >= limit:\n",
        "                if False:\n",
        (f"{LIMITS}::test_concurrent_transfers_bounded",),
    ),
    # ------------------------------------------------------------ timeouts
    Mutant(
        "handshake-timeout",
        "dfs_twisted/protocol.py",
        "        self._timeout = factory.clock.callLater(\n"
        '            factory.limits.handshake_timeout, self.close, "handshake timed out"\n'
        "        )\n",
        "",
        (
            f"{HOSTILE_INPUT}::test_handshake_timeout_closes",
            f"{LIMITS}::test_silent_connection_closed_at_handshake_timeout",
        ),
    ),
    Mutant(
        "handshake-waiting-per-address",
        "dfs_twisted/protocol.py",
        "if len(self._waiting[host]) > self.limits.max_unauthenticated_per_host:",
        "if False:",
        (f"{LIMITS}::test_one_address_cannot_fill_the_table",),
    ),
    Mutant(
        "handshake-waiting-in-all",
        "dfs_twisted/protocol.py",
        "elif sum(map(len, self._waiting.values())) > self.limits.max_unauthenticated:",
        "elif False:",
        (f"{LIMITS}::test_too_many_connections_awaiting_handshake_drop_the_oldest",),
    ),
    Mutant(
        "stall-timeout",
        "dfs_twisted/liveness.py",
        "            self._stall = self._clock.callLater(self._stall_timeout, self._check_stall)\n",
        "            pass\n",
        (
            f"{LIMITS}::test_slow_frame_is_a_stall",
            f"{LIMITS}::test_transfer_that_stops_is_closed_and_dropped",
            "tests/test_limits.py::StallTimeoutTests",
        ),
    ),
    Mutant(
        "silent-peer-dropped",
        "dfs_twisted/liveness.py",
        "if silent >= self._ping_timeout and not self._holding():",
        "if False:",
        (f"{LIMITS}::test_peer_that_stops_answering_is_dropped",),
    ),
    # ------------------------------------------------------------ admission
    Mutant(
        "admission-proof-bound-to-the-tls-session",
        "dfs_twisted/protocol.py",
        "return None if export is None else bytes(export(EXPORTER_LABEL, EXPORTER_LENGTH))",
        'return None if export is None else b"\\0" * EXPORTER_LENGTH',
        (
            f"{ADMISSION}::SessionBindingTests",
            f"{ADMISSION}::NodeAdmissionTests::test_network_key_admits_members_only",
        ),
    ),
    Mutant(
        "admission-proof-covers-the-binding",
        "dfs_twisted/admission.py",
        'message = b"dfs admission v1\\x00" + binding + node_id.encode()',
        'message = b"dfs admission v1\\x00" + node_id.encode()',
        (f"{ADMISSION}::NetworkKeyTests",),
    ),
    Mutant(
        "admission-proof-checked",
        "dfs_twisted/admission.py",
        "if not hmac.compare_digest(proof, self.network_key.proof(binding, node_id)):",
        "if False:",
        (f"{ADMISSION}::NetworkKeyTests", HANDSHAKE),
    ),
    Mutant(
        "allow-list",
        "dfs_twisted/admission.py",
        "if self.allowed is not None and node_id not in self.allowed:",
        "if False:",
        (HANDSHAKE, f"{ADMISSION}::NodeAdmissionTests::test_allow_list_refuses_others"),
    ),
    Mutant(
        "beyond-loopback-needs-a-rule",
        "dfs_twisted/options.py",
        'if not is_loopback(self["listen"]) and self["admission"].is_open:',
        "if False:",
        ("tests/test_options.py::NodeOptionsTests",),
    ),
    Mutant(
        "hello-names-the-certificates-node",
        "dfs_twisted/handshake.py",
        "if message.node_id != self.peer_id:",
        "if False:",
        (f"{HOSTILE_INPUT}::test_hello_with_another_node_id_closes", HANDSHAKE),
    ),
    Mutant(
        "peer-pinned-per-address",
        "dfs_twisted/handshake.py",
        "            self._pins.check(self._dialled, peer_id)\n",
        "            pass\n",
        (
            f"{HOSTILE_INPUT}::test_dialled_address_pinned_to_another_id_refused",
            "tests/test_node_inprocess.py::PinningTests",
        ),
    ),
    # ------------------------------------------------------------ API and local files
    Mutant(
        "api-token-checked",
        "dfs_twisted/api.py",
        'return hmac.compare_digest(given, b"Bearer " + self._token)',
        "return True",
        ("tests/test_api_inprocess.py::ApiTests::test_status_needs_the_token",),
    ),
    Mutant(
        "api-token-compared-in-constant-time",
        "dfs_twisted/api.py",
        'return hmac.compare_digest(given, b"Bearer " + self._token)',
        'return given == b"Bearer " + self._token',
        ("tests/test_api_inprocess.py::TokenCheckTests",),
    ),
    Mutant(
        "api-waiting-connections-per-address",
        "dfs_twisted/apigate.py",
        "        if self._per_address[address] > self.per_address:\n",
        "        if False:\n",
        ("tests/test_apigate.py",),
    ),
    Mutant(
        "api-request-head-deadline",
        "dfs_twisted/apigate.py",
        "            self._head_deadline = self.site.reactor.callLater(\n"
        '                self.site.head_timeout, self.drop, "request head not complete in time"\n'
        "            )\n",
        "            pass\n",
        ("tests/test_apigate.py",),
    ),
    Mutant(
        "api-absurd-content-length",
        "dfs_twisted/apiserver.py",
        "            if length is not None and length > MAX_FILE_SIZE:\n",
        "            if False:\n",
        ("tests/test_api_inprocess.py::LimitTests",),
    ),
    Mutant(
        "private-dir-permissions",
        "dfs_twisted/identity.py",
        "    if mode & 0o077:\n",
        "    if False:\n",
        ("tests/test_identity.py::PrivateDirTests",),
    ),
    Mutant(
        "ids-validated-before-paths",
        "dfs_twisted/store.py",
        "    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:\n",
        "    if not isinstance(value, str):\n",
        ("tests/test_store.py::ParseIdTests",),
    ),
    Mutant(
        "grant-signature",
        "dfs_twisted/grants.py",
        "            Ed25519PublicKey.from_public_bytes(grant.owner_key).verify(\n"
        "                grant.signature, grant._signed()\n"
        "            )\n",
        "            pass\n",
        ("tests/test_grants.py::GrantTests::test_altered_or_forged_grants_are_refused",),
    ),
    # ------------------------------------------------------------ wire
    Mutant(
        "frame-size-limit",
        "dfs_twisted/wire/frames.py",
        "    if length > bound:\n",
        "    if False:\n",
        (
            f"{HOSTILE_INPUT}::test_huge_length_closes_without_waiting_for_body",
            "tests/test_wire.py::FramingRejectsTests",
        ),
    ),
    # Not a mutant: the check of a whole control body against MAX_CONTROL_BODY in
    # wire.encode cannot fire (the field bounds keep the largest message, a full
    # LIST_REPLY, near 49 KiB): removing it changes nothing a test could see.
    # ------------------------------------------------------------ what the terminal shows
    Mutant(
        "control-characters-escaped",
        "dfs_twisted/display.py",
        'if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI:',
        "if char in _BIDI:",
        ("tests/test_cli.py::EscapingTests",),
    ),
    Mutant(
        "bidi-characters-escaped",
        "dfs_twisted/display.py",
        'if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI:',
        'if unicodedata.category(char) in ("Cc", "Zl", "Zp"):',
        ("tests/test_cli.py::EscapingTests",),
    ),
    Mutant(
        "new-names-without-control-characters",
        "dfs_twisted/names.py",
        "        if is_control(char):\n",
        "        if False:\n",
        ("tests/test_cli.py::EscapingTests::test_new_names_refuse_control_characters",),
    ),
    # ------------------------------------------------------------ placement, recovery
    Mutant(
        "release-needs-the-owners-signature",
        "dfs_twisted/files/serve.py",
        "            ).verify()\n"
        "        except CryptoError as e:\n"
        '            raise RequestRefused(Code.BAD_SIGNATURE, f"release does not verify',
        "            )\n"
        "        except CryptoError as e:\n"
        '            raise RequestRefused(Code.BAD_SIGNATURE, f"release does not verify',
        ("tests/test_placement.py::PlacedNetworkTests",),
    ),
    Mutant(
        "release-only-for-its-holder",
        "dfs_twisted/files/serve.py",
        "        if release.holder != self._node_id:\n",
        "        if False:\n",
        ("tests/test_placement.py::PlacedNetworkTests",),
    ),
    Mutant(
        "put-commits-here-before-peers",
        "dfs_twisted/files/put.py",
        "        try:\n            record = self._encryptor.record\n",
        "        replies = [stream.finish() for _, stream in self._peers]\n"
        "        try:\n            record = self._encryptor.record\n",
        (f"{PATHS}::LocalWriteFailureTests",),
    ),
    Mutant(
        "put-dropped-when-the-client-leaves",
        "dfs_twisted/apiserver.py",
        '            self.upload.abort("client went away")\n',
        "            pass\n",
        (f"{PATHS}::ClientLeavesTests",),
    ),
    Mutant(
        "ls-lists-a-file-whose-blob-went-missing",
        "dfs_twisted/files/recover.py",
        "                if self._holdings.held(key) is None:\n",
        "                if False:\n",
        (f"{PATHS}::MissingBlobListingTests",),
    ),
    Mutant(
        "replica-shorter-than-announced",
        "dfs_twisted/files/serve.py",
        "        if self._size is not None and self._writer.written != self._size:\n",
        "        if False:\n",
        (f"{PATHS}::ReplicaTests",),
    ),
    Mutant(
        "no-relay-refuses-relayed-replicas",
        "dfs_twisted/files/serve.py",
        "        if self._sync.relay and owner not in",
        "        if owner not in",
        (f"{PATHS}::ReplicaTests",),
    ),
    Mutant(
        "fetch-arriving-short",
        "dfs_twisted/files/fetch.py",
        "            if self.size is not None and self.received != self.size:\n",
        "            if False:\n",
        (f"{PATHS}::FetchFailureTests",),
    ),
    Mutant(
        "scrub-replaces-missing-blobs",
        "dfs_twisted/scrub.py",
        "                if catalog.get(key) == entry:\n"
        '                    await self._damaged(report, key, entry.version, "missing")\n',
        "                pass\n",
        ("tests/test_scrub_paths.py::ScrubRepairTests",),
    ),
    Mutant(
        "damaged-source-asked-last",
        "dfs_twisted/files/fetch.py",
        "        return sorted(self._peers(), key=lambda s: (s.info.node_id, key) in "
        "self._suspects)\n",
        "        return list(self._peers())\n",
        ("tests/test_scrub_paths.py::AskedLastTests",),
    ),
    Mutant(
        "concurrent-fetches-bounded",
        "dfs_twisted/mux.py",
        "                if len(self._serving) >= limit:\n",
        "                if False:\n",
        ("tests/test_mux_limits.py",),
    ),
    Mutant(
        "recover-counts-only-proven-claims",
        "dfs_twisted/files/recover.py",
        "                if self._owner.proves(blob, claim, newest):\n",
        "                if True:\n",
        ("tests/test_files_unit.py::RecoverTests", f"{LYING}::LyingListingTests"),
    ),
    # ------------------------------------------------------------ anti-entropy
    Mutant(
        "prefix-listing-moves-on",
        "dfs_twisted/session.py",
        "            if reply.entries and after is not None and reply.entries[0].blob <= after:\n",
        "            if False:\n",
        (
            "tests/test_antientropy.py::TreeSyncTests::"
            "test_a_listing_that_does_not_move_on_ends_the_catch_up",
        ),
    ),
    Mutant(
        "tree-digest-covers-versions",
        "dfs_twisted/merkle.py",
        "        h.update(_ENTRY.pack(*entry))\n",
        "        h.update(entry[0])\n",
        ("tests/test_merkle.py::TreeTests", "tests/test_antientropy.py::TreeSyncTests"),
    ),
]


def copy_tree(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_trial_temp", "dropin.cache")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=ignore)
        else:
            shutil.copy2(source, into / name)


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DFS_NODE")}
    env["PYTHONPATH"] = str(tree)  # before the editable install: the copy is imported
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale bytecode between mutations
    return env


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(
            argv,
            cwd=tree,
            env=environment(tree),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT}s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def apply(tree: Path, mutant: Mutant) -> str:
    """Mutate the copy; return the file's original text (to put it back)."""
    path = tree / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != 1:
        raise SystemExit(
            f"mutant {mutant.name}: the text to change occurs {found} times in {mutant.path} "
            "(it must occur once): update the mutation to the code as it is now"
        )
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip checking that the tests pass unmutated"
    )
    args = parser.parse_args()
    names = {m.name for m in MUTANTS}
    if len(names) != len(MUTANTS):
        raise SystemExit("two mutants share a name")
    unknown = set(args.names) - names
    if unknown:
        raise SystemExit(f"no such mutant: {', '.join(sorted(unknown))}")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.path})\n    " + "\n    ".join(m.tests))
        return 0

    tree = Path(tempfile.mkdtemp(prefix="dfs-mutants-"))
    try:
        copy_tree(tree)
        for m in chosen:  # every edit applies, before anything slow runs
            (tree / m.path).write_text(apply(tree, m))
        probe = subprocess.run(
            [sys.executable, "-c", "import dfs_twisted; print(dfs_twisted.__file__)"],
            cwd="/",
            env=environment(tree),
            capture_output=True,
            text=True,
            check=True,
        )
        if not probe.stdout.strip().startswith(str(tree)):
            raise SystemExit(f"the copy is not what gets imported: {probe.stdout.strip()}")
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            print(f"baseline: {len(tests)} test selections, unmutated ...", flush=True)
            code, last = run_tests(tree, tests)
            if code != 0:
                raise SystemExit(f"the named tests fail without any mutation: {last}")
        results: list[tuple[Mutant, str]] = []
        for m in chosen:
            started = time.monotonic()
            original = apply(tree, m)
            try:
                code, last = run_tests(tree, m.tests)
            finally:
                (tree / m.path).write_text(original)
            verdict = {0: "SURVIVED", 1: "caught", -1: "timeout"}.get(code, f"error {code}")
            results.append((m, verdict))
            took = time.monotonic() - started
            print(f"{verdict:9} {m.name}  ({took:.0f}s; {last})", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)

    caught = [m for m, v in results if v == "caught"]
    print(f"\n{len(caught)} of {len(results)} mutants caught")
    for m, verdict in results:
        if verdict != "caught":
            print(f"  {verdict}: {m.name} ({m.path}); tests: {' '.join(m.tests)}")
    return 0 if len(caught) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
