"""Tests for dfs_twisted.crypto."""

# twisted.trial's assertion methods carry no type annotations.

from __future__ import annotations

import itertools
import random
import struct

import pytest
from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.crypto import (
    FIXED_HEADER_SIZE,
    MAX_NAME_BYTES,
    SIGNATURE_SIZE,
    TAG,
    BlobRecord,
    CryptoError,
    Decryptor,
    Encryptor,
    FormatError,
    IntegrityError,
    Metadata,
    OrgKey,
    SealCheck,
    Tombstone,
    ciphertext_size,
    file_key,
    header_length,
    open_metadata,
    parse_header,
    plaintext_size,
    validate_name,
)

pytestmark = pytest.mark.unit

CS = 64 * 1024  # smallest allowed chunk size keeps the tests fast
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OWNER = Encryptor(OrgKey(bytes(32)), SIGNER, "x", 0).owner
OTHER_OWNER = Encryptor(OrgKey(bytes(32)), OTHER_SIGNER, "x", 0).owner
KEY = OrgKey(bytes(range(32)))
OTHER_KEY = OrgKey(bytes(range(1, 33)))

# No example database: keeps the tree clean and runs reproducible.
FAST = settings(
    deadline=None,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (much faster than hypothesis binary())."""
    return random.Random(seed).randbytes(size)


def encrypt(
    data: bytes,
    *,
    key: OrgKey = KEY,
    name: str = "reports/2026/q1.pdf",
    signer: Ed25519PrivateKey = SIGNER,
    version: int = 1,
    mtime: int = 1_700_000_000,
    pieces: int = 1,
) -> tuple[bytes, Encryptor]:
    """Encrypt ``data`` in ``pieces`` roughly equal updates; return (blob, encryptor)."""
    enc = Encryptor(key, signer, name, version, mtime=mtime, chunk_size=CS)
    out = [enc.header]
    step = max(1, len(data) // pieces)
    view = memoryview(data)
    for start in range(0, len(data), step):
        out.extend(enc.update(view[start : start + step]))
    out.append(enc.finalize())
    return b"".join(out), enc


def decrypt(
    blob: bytes,
    *,
    key: OrgKey = KEY,
    cuts: list[int] | None = None,
    owner: str | None = None,
    blob_id: str | None = None,
    released: list[bytes] | None = None,
) -> tuple[bytes, BlobRecord | None, Decryptor]:
    """Feed ``blob`` split at ``cuts``; appends each released piece to ``released``."""
    dec = Decryptor(key, owner=owner, blob=blob_id)
    got = released if released is not None else []
    bounds = [0, *sorted(c for c in (cuts or []) if 0 < c < len(blob)), len(blob)]
    for a, b in itertools.pairwise(bounds):
        got.append(dec.feed(blob[a:b]))
    last, record = dec.finish()
    got.append(last)
    return b"".join(got), record, dec


def assert_rejected(testcase: SynchronousTestCase, blob: bytes, original: bytes) -> None:
    """Decrypting ``blob`` must fail and must only ever release a prefix of ``original``."""
    released: list[bytes] = []
    with testcase.assertRaises((FormatError, IntegrityError)):
        decrypt(blob, cuts=[7, 150, 3000, CS, 2 * CS + 5], released=released)
    testcase.assertTrue(original.startswith(b"".join(released)))


class ValidateNameTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for name in ["reports/2026/q1.pdf", "..", "/", "a", "é" * 512, "x" * MAX_NAME_BYTES]:
            validate_name(name)

    def test_multibyte_limit(self) -> None:
        validate_name("€" * 341 + "a")  # 3 * 341 + 1 == 1024 bytes
        self.assertRaises(ValueError, validate_name, "€" * 341 + "ab")

    def test_invalid(self) -> None:
        for name in ["", "a\x00b", "x" * (MAX_NAME_BYTES + 1), "\ud800"]:
            with self.assertRaises(ValueError) as cm:
                validate_name(name)
            self.assertNotIn("\n", str(cm.exception))


class OrgKeyTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        key = OrgKey.generate()
        data = key.to_bytes()
        self.assertTrue(data.startswith(b"dfs-org-key-v1\n"))
        self.assertEqual(OrgKey.from_bytes(data), key)
        self.assertEqual(OrgKey.from_bytes(data.rstrip(b"\n")), key)

    def test_generate_random(self) -> None:
        self.assertNotEqual(OrgKey.generate().root, OrgKey.generate().root)

    def test_malformed(self) -> None:
        good = KEY.to_bytes()
        bad = [
            b"",
            b"dfs-org-key-v1\n",
            b"dfs-org-key-v2\n" + good[15:],
            good[:-3] + b"\n",
            good[:-1] + b"00\n",
            good.upper(),
            good[:15] + good[15:].upper(),
            good[:20] + b"g" + good[21:],
            good[:20] + b"\xff" + good[21:],
            good + b"extra",
            b" " + good,
        ]
        for data in bad:
            self.assertRaises(FormatError, OrgKey.from_bytes, data)

    def test_bad_root_length(self) -> None:
        self.assertRaises(ValueError, OrgKey, b"short")

    def test_repr_hides_key(self) -> None:
        key = OrgKey.generate()
        text = repr(key) + str(key)
        self.assertNotIn(key.root.hex(), text)
        self.assertNotIn(repr(key.root), text)
        self.assertNotIn(key._name_key.hex(), text)

    def test_blob_id(self) -> None:
        a = KEY.blob_id("reports/2026/q1.pdf")
        self.assertEqual(a, KEY.blob_id("reports/2026/q1.pdf"))
        self.assertEqual(a, OrgKey.from_bytes(KEY.to_bytes()).blob_id("reports/2026/q1.pdf"))
        self.assertRegex(a, r"^[0-9a-f]{64}$")
        self.assertNotEqual(a, KEY.blob_id("reports/2026/q2.pdf"))
        self.assertNotEqual(a, OTHER_KEY.blob_id("reports/2026/q1.pdf"))
        self.assertRaises(ValueError, KEY.blob_id, "")
        self.assertRaises(ValueError, KEY.blob_id, "a\x00")


class RoundTripTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        for size in [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 17]:
            data = payload(size, size)
            for pieces in (1, 3):
                blob, enc = encrypt(data, pieces=pieces)
                self.assertEqual(len(blob), ciphertext_size(len(enc.header), CS, size))
                self.assertEqual(enc.size, size)
                plain, record, dec = decrypt(blob)
                self.assertEqual(plain, data)
                self.assertEqual(record, enc.record)
                assert record is not None
                self.assertEqual((record.size, record.version), (size, 1))
                self.assertEqual(dec.metadata, Metadata("reports/2026/q1.pdf", 1_700_000_000))

    def test_update_returns_full_chunks(self) -> None:
        enc = Encryptor(KEY, SIGNER, "f", 1, chunk_size=CS)
        self.assertEqual(enc.update(b"a" * (CS - 1)), [])
        # Each chunk comes as two pieces: its ciphertext, then the owner's signature.
        self.assertEqual([len(c) for c in enc.update(b"a")], [CS + TAG, SIGNATURE_SIZE])
        chunks = enc.update(b"a" * (2 * CS + 1))
        self.assertEqual([len(c) for c in chunks], [CS + TAG, SIGNATURE_SIZE] * 2)
        self.assertEqual(len(enc.finalize()), 1 + TAG + SIGNATURE_SIZE)
        self.assertRaises(RuntimeError, enc.update, b"x")
        self.assertRaises(RuntimeError, enc.finalize)

    def test_many_small_updates(self) -> None:
        data = payload(3 * CS + 5, 1)
        enc = Encryptor(KEY, SIGNER, "f", 1, chunk_size=CS)
        out = [enc.header]
        for i in range(0, len(data), 1000):
            out.extend(enc.update(data[i : i + 1000]))
        out.append(enc.finalize())
        dec = Decryptor(KEY)
        got = [dec.feed(piece) for piece in out]
        last, _record = dec.finish()
        self.assertEqual(b"".join(got) + last, data)

    def test_byte_by_byte_header(self) -> None:
        data = payload(100, 2)
        blob, _ = encrypt(data)
        dec = Decryptor(KEY)
        got = []
        for i in range(len(blob)):
            got.append(dec.feed(blob[i : i + 1]))
            if i < FIXED_HEADER_SIZE:
                self.assertIsNone(dec.header)
        last, _ = dec.finish()
        self.assertEqual(b"".join(got) + last, data)

    def test_default_mtime_and_memoryview(self) -> None:
        enc = Encryptor(KEY, SIGNER, "f", 1, chunk_size=CS)
        body = enc.update(memoryview(bytearray(b"hello")))
        blob = enc.header + b"".join(body) + enc.finalize()
        plain, _, dec = decrypt(blob)
        self.assertEqual(plain, b"hello")
        assert dec.metadata is not None
        self.assertGreater(dec.metadata.mtime, 1_600_000_000)

    def test_default_chunk_size(self) -> None:
        enc = Encryptor(KEY, SIGNER, "f", 1)
        blob = enc.header + b"".join(enc.update(b"x" * 10)) + enc.finalize()
        self.assertEqual(parse_header(blob).chunk_size, 1 << 20)
        self.assertEqual(decrypt(blob)[0], b"x" * 10)

    def test_encryptor_rejects_bad_arguments(self) -> None:
        self.assertRaises(ValueError, Encryptor, KEY, SIGNER, "", 1)
        self.assertRaises(ValueError, Encryptor, KEY, SIGNER, "f", -1)
        self.assertRaises(ValueError, Encryptor, KEY, SIGNER, "f", 1 << 64)
        self.assertRaises(ValueError, Encryptor, KEY, SIGNER, "f", 1, chunk_size=CS - 1)
        self.assertRaises(ValueError, Encryptor, KEY, SIGNER, "f", 1, chunk_size=(4 << 20) + 1)

    def test_decryptor_after_finish(self) -> None:
        blob, _ = encrypt(b"abc")
        _, _, dec = decrypt(blob)
        self.assertRaises(RuntimeError, dec.feed, b"")
        self.assertRaises(RuntimeError, dec.finish)

    @FAST
    @given(
        size=st.integers(0, 3 * CS + 100),
        seed=st.integers(0, 2**32),
        cuts=st.lists(st.integers(0, 4 * CS), max_size=8),
        pieces=st.integers(1, 5),
    )
    def test_round_trip_property(self, size: int, seed: int, cuts: list[int], pieces: int) -> None:
        data = payload(size, seed)
        blob, _ = encrypt(data, pieces=pieces)
        plain, record, _ = decrypt(blob, cuts=cuts)
        self.assertEqual(plain, data)
        assert record is not None
        self.assertEqual(record.size, size)

    @FAST
    @given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 3000), max_size=5))
    def test_round_trip_small_binary(self, data: bytes, cuts: list[int]) -> None:
        blob, _ = encrypt(data)
        self.assertEqual(decrypt(blob, cuts=cuts)[0], data)


class HeaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = payload(2 * CS + 10, 3)
        self.blob, self.enc = encrypt(self.data, name="dir/ü.txt", version=7, mtime=42)

    def test_parse(self) -> None:
        header = parse_header(self.blob)
        self.assertEqual(header.raw, self.enc.header)
        self.assertEqual(header_length(self.blob[:FIXED_HEADER_SIZE]), len(self.enc.header))
        self.assertEqual(header.owner, OWNER)
        self.assertEqual(header.blob, KEY.blob_id("dir/ü.txt"))
        self.assertEqual(header.blob, self.enc.blob)
        self.assertEqual(header.version, 7)
        self.assertEqual(header.chunk_size, CS)
        self.assertEqual(len(header.nonce_prefix), 7)
        self.assertEqual(len(header.wrapped_key), 60)
        self.assertEqual(header.digest, blake3(self.enc.header).digest())
        self.assertEqual(parse_header(self.enc.header), header)

    def test_metadata(self) -> None:
        header = parse_header(self.blob)
        self.assertEqual(open_metadata(KEY, header), Metadata("dir/ü.txt", 42))
        self.assertRaises(IntegrityError, open_metadata, OTHER_KEY, header)
        self.assertRaises(IntegrityError, decrypt, self.blob, key=OTHER_KEY)

    def test_max_name_metadata_fits(self) -> None:
        for name in ["\x01" * MAX_NAME_BYTES, "\U0001f600" * (MAX_NAME_BYTES // 4)]:
            blob, _ = encrypt(b"", name=name)
            self.assertEqual(open_metadata(KEY, parse_header(blob)).name, name)

    def test_record(self) -> None:
        # The last chunk's signature proves version, size and content to anyone with
        # the owner's public key, without the blob.
        record = self.enc.record
        assert record is not None
        self.assertEqual((record.version, record.size), (7, len(self.data)))
        self.assertEqual(record.header_digest, parse_header(self.blob).digest)
        public = SIGNER.public_key().public_bytes_raw()
        travelled = BlobRecord.from_bytes(OWNER, record.blob, 7, record.to_bytes())
        self.assertEqual(travelled.verify(public), record)
        # Any other version, size, or another owner's key: refused.
        for claim in (
            BlobRecord.from_bytes(OWNER, record.blob, 8, record.to_bytes()),
            BlobRecord.from_bytes(OWNER, record.blob, 2**64 - 1, record.to_bytes()),
            BlobRecord(**{**record.__dict__, "size": record.size + 1}),
        ):
            self.assertRaises(IntegrityError, claim.verify, public)
        other = OTHER_SIGNER.public_key().public_bytes_raw()
        self.assertRaises(IntegrityError, record.verify, other)
        self.assertRaises(FormatError, BlobRecord.from_bytes, OWNER, record.blob, 7, b"x")

    def test_malformed_headers(self) -> None:
        raw = self.enc.header
        self.assertRaises(FormatError, header_length, raw[: FIXED_HEADER_SIZE - 1])
        self.assertRaises(FormatError, parse_header, raw[:-1])
        self.assertRaises(FormatError, parse_header, b"XXXX" + raw[4:])
        self.assertRaises(FormatError, parse_header, raw[:4] + b"\x01" + raw[5:])
        for chunk_size in (0, CS - 1, (4 << 20) + 1):
            bad = raw[:5] + chunk_size.to_bytes(4, "big") + raw[9:]
            self.assertRaises(FormatError, parse_header, bad)
        for meta_len in (0, TAG - 1, 65535):
            bad = (
                raw[: FIXED_HEADER_SIZE - 2] + meta_len.to_bytes(2, "big") + raw[FIXED_HEADER_SIZE:]
            )
            self.assertRaises(FormatError, parse_header, bad + bytes(70000))

    def test_sizes_inverse(self) -> None:
        header = parse_header(self.blob)
        hl = len(header.raw)
        self.assertEqual(plaintext_size(header, len(self.blob)), len(self.data))
        for size in [0, 1, CS - 1, CS, CS + 1, 5 * CS, 5 * CS + 3, 10**9]:
            self.assertEqual(plaintext_size(header, ciphertext_size(hl, CS, size)), size)
        sig = SIGNATURE_SIZE
        self.assertEqual(ciphertext_size(hl, CS, 0), hl + TAG + sig)
        self.assertEqual(ciphertext_size(hl, CS, CS), hl + CS + 2 * (TAG + sig))
        # Lengths no plaintext maps to.
        for length in [0, hl + TAG + sig - 1, hl + CS + TAG + sig + TAG + sig - 1]:
            self.assertRaises(FormatError, plaintext_size, header, length)

    @FAST
    @given(size=st.integers(0, 10**12), chunk_size=st.sampled_from([CS, 1 << 20, 4 << 20]))
    def test_sizes_inverse_property(self, size: int, chunk_size: int) -> None:
        enc = Encryptor(KEY, SIGNER, "f", 1, chunk_size=chunk_size)
        header = parse_header(enc.header)
        total = ciphertext_size(len(enc.header), chunk_size, size)
        self.assertEqual(plaintext_size(header, total), size)


class TamperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = payload(2 * CS + 1000, 4)
        self.blob, _ = encrypt(self.data)

    @settings(deadline=None, database=None, max_examples=150)
    @given(st.data())
    def test_any_bit_flip_detected(self, data: st.DataObject) -> None:
        pos = data.draw(st.integers(0, len(self.blob) - 1), label="pos")
        bit = data.draw(st.integers(0, 7), label="bit")
        tampered = bytearray(self.blob)
        tampered[pos] ^= 1 << bit
        assert_rejected(self, bytes(tampered), self.data)

    def test_bit_flip_each_region(self) -> None:
        # Deterministic coverage of every header byte and chunk/trailer boundaries.
        hl = len(parse_header(self.blob).raw)
        positions = [
            *range(hl),
            hl,
            hl + CS + TAG - 1,
            hl + CS + TAG,
            hl + CS + TAG + SIGNATURE_SIZE - 1,
            hl + CS + TAG + SIGNATURE_SIZE,
            len(self.blob) - SIGNATURE_SIZE - 1,
            len(self.blob) - SIGNATURE_SIZE,
            len(self.blob) - 1,
        ]
        for pos in positions:
            tampered = bytearray(self.blob)
            tampered[pos] ^= 0x80
            assert_rejected(self, bytes(tampered), self.data)

    @FAST
    @given(cut=st.integers(0, 2 * CS + 2000))
    def test_truncation_detected(self, cut: int) -> None:
        cut = min(cut, len(self.blob) - 1)
        assert_rejected(self, self.blob[:cut], self.data)

    def test_truncation_at_boundaries(self) -> None:
        hl = len(parse_header(self.blob).raw)
        span = CS + TAG + SIGNATURE_SIZE
        for cut in [0, hl - 1, hl, hl + CS + TAG, hl + span, hl + 2 * span, len(self.blob) - 1]:
            assert_rejected(self, self.blob[:cut], self.data)

    def test_extra_bytes_detected(self) -> None:
        for extra in [b"\x00", bytes(SIGNATURE_SIZE), bytes(CS + TAG), self.blob[-200:]]:
            assert_rejected(self, self.blob + extra, self.data)

    def test_drop_and_reorder_chunks(self) -> None:
        hl = len(parse_header(self.blob).raw)
        ct = CS + TAG + SIGNATURE_SIZE
        c0, c1 = self.blob[hl : hl + ct], self.blob[hl + ct : hl + 2 * ct]
        rest = self.blob[hl + 2 * ct :]
        head = self.blob[:hl]
        assert_rejected(self, head + c1 + c0 + rest, self.data)
        assert_rejected(self, head + c0 + rest, self.data)
        assert_rejected(self, head + c0 + c1 + c1 + rest, self.data)
        # Drop the final chunk (a full chunk becomes the apparent last one).
        assert_rejected(self, head + c0 + c1, self.data)
        assert_rejected(self, head + c0 + c1[:-SIGNATURE_SIZE] + rest[-SIGNATURE_SIZE:], self.data)

    def test_swap_chunks_between_files(self) -> None:
        other_data = payload(len(self.data), 5)
        other, _ = encrypt(other_data)
        hl = len(parse_header(self.blob).raw)
        ct = CS + TAG + SIGNATURE_SIZE
        self.assertEqual(hl, len(parse_header(other).raw))
        for start, end in [(hl, hl + ct), (hl + ct, hl + 2 * ct), (len(self.blob) - 64, None)]:
            mixed = self.blob[:start] + other[start:end] + (self.blob[end:] if end else b"")
            assert_rejected(self, mixed, self.data)
        # Header of one file with the body of another.
        assert_rejected(self, self.blob[:hl] + other[hl:], self.data)

    def test_blob_filed_under_another_name_is_refused(self) -> None:
        # An insider (the owner's own node, buggy or subverted) files a blob under the
        # id of one name while its sealed metadata names another: reading it fails.
        class Insider(OrgKey):
            def blob_id(self, name: str) -> str:
                return super().blob_id("somewhere else.txt")

        blob, _ = encrypt(b"misfiled", key=Insider(KEY.root))
        self.assertRaises(IntegrityError, decrypt, blob)

    def test_owner_blob_mismatch(self) -> None:
        blob_id = KEY.blob_id("reports/2026/q1.pdf")
        plain, _, _ = decrypt(self.blob, owner=OWNER, blob_id=blob_id)
        self.assertEqual(plain, self.data)
        self.assertRaises(IntegrityError, decrypt, self.blob, owner=OTHER_OWNER)
        self.assertRaises(IntegrityError, decrypt, self.blob, blob_id=KEY.blob_id("other"))

    def test_rewritten_owner_or_blob_field(self) -> None:
        # Relabelling the header (owner at 9, owner key at 41, blob at 73) breaks it.
        for offset in (9, 41, 73):
            forged = self.blob[:offset] + bytes.fromhex(OTHER_OWNER) + self.blob[offset + 32 :]
            assert_rejected(self, forged, self.data)

    def test_failed_stream_stays_failed(self) -> None:
        tampered = bytearray(self.blob)
        tampered[-1] ^= 1
        dec = Decryptor(KEY)
        dec.feed(bytes(tampered))
        self.assertRaises(IntegrityError, dec.finish)
        self.assertRaises(IntegrityError, dec.finish)
        self.assertRaises(IntegrityError, dec.feed, b"")

    def test_errors_share_base(self) -> None:
        self.assertTrue(issubclass(FormatError, CryptoError))
        self.assertTrue(issubclass(IntegrityError, CryptoError))


class ChunkSignatureTests(SynchronousTestCase):
    """Each chunk carries the owner's signature: checked before its plaintext leaves."""

    def setUp(self) -> None:
        self.data = payload(3 * CS + 500, 11)
        self.blob, self.enc = encrypt(self.data)
        self.header = parse_header(self.blob)

    def forged(self) -> bytes:
        """What a holder of the org key (a read key or a grant) can make of this file:
        chunks that the data key authenticates, but signed by someone else."""
        data_key = file_key(KEY, self.header).data_key
        aead = AESGCM(data_key)
        pieces = []
        evil = payload(len(self.data), 12)
        chunks = [evil[i : i + CS] for i in range(0, len(evil), CS)]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            nonce = struct.pack(">7sIB", self.header.nonce_prefix, index, int(last))
            pieces += [aead.encrypt(nonce, chunk, self.header.digest), bytes(SIGNATURE_SIZE)]
        return self.header.raw + b"".join(pieces)

    def test_forged_chunks_release_no_plaintext(self) -> None:
        released: list[bytes] = []
        with self.assertRaises(IntegrityError):
            decrypt(self.forged(), cuts=[CS // 2, 2 * CS], released=released)
        self.assertEqual(b"".join(released), b"")

    def test_a_holder_refuses_a_forged_chunk_at_once(self) -> None:
        seal = SealCheck()
        forged = self.forged()
        first = len(self.header.raw) + self.header.span
        self.assertRaises(IntegrityError, seal.feed, forged[:first])

    def test_a_read_resumes_at_the_damaged_chunk_from_another_copy(self) -> None:
        damaged = bytearray(self.blob)
        second = self.header.chunk_offset(1)
        damaged[second + 10] ^= 1
        dec = Decryptor(KEY)
        got = [dec.feed(bytes(damaged[: second + 100]))]
        self.assertRaises(IntegrityError, dec.feed, bytes(damaged[second + 100 :]))
        self.assertRaises(IntegrityError, dec.feed, b"")  # failed until told to resume
        self.assertEqual(dec.resume(), second)
        got.append(dec.feed(self.blob[second:]))
        last, record = dec.finish()
        self.assertEqual(b"".join(got) + last, self.data)
        self.assertEqual(record, self.enc.record)


class SealTests(SynchronousTestCase):
    """What a holder without the org key can check: complete, and the owner's own."""

    def setUp(self) -> None:
        self.data = payload(2 * CS + 77, 9)
        self.blob, _ = encrypt(self.data)

    def check(self, data: bytes, cuts: list[int] = [], **want: str) -> None:  # noqa: B006
        seal = SealCheck(**want)
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
        for a, b in itertools.pairwise(bounds):
            seal.feed(data[a:b])
        seal.finish()

    @FAST
    @given(cuts=st.lists(st.integers(0, 3 * CS), max_size=8))
    def test_accepts_the_owners_blob_however_split(self, cuts: list[int]) -> None:
        self.check(self.blob, cuts, owner=OWNER, blob=KEY.blob_id("reports/2026/q1.pdf"))

    @FAST
    @given(position=st.integers(0, 2 * CS + 2000), bit=st.integers(0, 7))
    def test_any_flipped_bit_is_caught(self, position: int, bit: int) -> None:
        tampered = bytearray(self.blob)
        tampered[position % len(tampered)] ^= 1 << bit
        self.assertRaises(CryptoError, self.check, bytes(tampered))

    def test_truncated_or_extended(self) -> None:
        for blob in (self.blob[:-1], self.blob[:-64], self.blob + b"\0", self.blob[:100]):
            self.assertRaises(CryptoError, self.check, blob)

    def test_another_owner_cannot_pass_its_blob_off(self) -> None:
        forged, _ = encrypt(self.data, signer=OTHER_SIGNER)
        self.check(forged, owner=OTHER_OWNER)
        self.assertRaises(IntegrityError, self.check, forged, owner=OWNER)

    def test_swapped_owner_key_is_refused(self) -> None:
        # The owner id is the hash of the key in the header: swapping either breaks it.
        other_key = parse_header(encrypt(b"", signer=OTHER_SIGNER)[0]).owner_key
        forged = self.blob[:41] + other_key + self.blob[73:]
        self.assertRaises(FormatError, self.check, forged)

    def test_decryptor_checks_the_signature_too(self) -> None:
        tampered = bytearray(self.blob)
        tampered[-1] ^= 1
        released: list[bytes] = []
        self.assertRaises(IntegrityError, decrypt, bytes(tampered), released=released)


class TombstoneTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        tomb = Tombstone.sign(SIGNER, "ee" * 32, 42)
        self.assertEqual(tomb.owner, OWNER)
        self.assertEqual(Tombstone.from_bytes(tomb.to_bytes()), tomb)
        self.assertEqual(len(tomb.to_bytes()), Tombstone.SIZE)

    def test_changed_field_fails(self) -> None:
        raw = Tombstone.sign(SIGNER, "ee" * 32, 42).to_bytes()
        for position in range(len(raw)):
            bad = bytearray(raw)
            bad[position] ^= 1
            self.assertRaises(CryptoError, Tombstone.from_bytes, bytes(bad))
        self.assertRaises(CryptoError, Tombstone.from_bytes, raw[:-1])

    def test_signed_by_another_owner_is_refused(self) -> None:
        mine = Tombstone.sign(SIGNER, "ee" * 32, 42)
        theirs = Tombstone.sign(OTHER_SIGNER, "ee" * 32, 42)
        relabelled = Tombstone(mine.owner, mine.owner_key, mine.blob, 42, theirs.signature)
        self.assertRaises(IntegrityError, relabelled.verify)
        self.assertRaises(
            IntegrityError,
            Tombstone(mine.owner, theirs.owner_key, mine.blob, 42, theirs.signature).verify,
        )

    def test_a_key_signing_for_another_owner_is_refused(self) -> None:
        # Another org signs a deletion of our blob with its own key, naming us as the
        # owner: the signature is good, but the key is not the owner's.
        mine = Tombstone.sign(SIGNER, "ee" * 32, 42)
        theirs_key = OTHER_SIGNER.public_key().public_bytes_raw()
        unsigned = Tombstone(mine.owner, theirs_key, mine.blob, 42, bytes(64))
        forged = Tombstone(
            mine.owner, theirs_key, mine.blob, 42, OTHER_SIGNER.sign(unsigned._message())
        )
        self.assertRaises(IntegrityError, forged.verify)

    def test_deterministic(self) -> None:
        # The owner can sign a lost tombstone again and get the same record.
        self.assertEqual(
            Tombstone.sign(SIGNER, "ee" * 32, 7).to_bytes(),
            Tombstone.sign(SIGNER, "ee" * 32, 7).to_bytes(),
        )
