"""Tests for dfs_twisted.wire: framing, message validation, and fuzzing of both."""

# trial's assert* methods are unannotated, which strict mypy reports at every call.

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.crypto import is_hex_id
from dfs_twisted.wire import (
    FLAG_END,
    FLAG_REPLY,
    HEADER,
    MAX_CONTROL_BODY,
    MAX_DATA_BODY,
    MAX_LIST_PAGE,
    Abort,
    Ack,
    Audit,
    AuditReply,
    Data,
    Delete,
    Digest,
    DigestReply,
    Error,
    Fetch,
    FetchReply,
    Frame,
    FrameDecoder,
    Head,
    HeadReply,
    Hello,
    Horizon,
    HorizonReply,
    List,
    ListEntry,
    ListReply,
    Message,
    MessageType,
    Ping,
    ProtocolError,
    Release,
    Store,
    data_header,
    decode,
    encode,
)

from .strategies import encode_all, framed

pytestmark = pytest.mark.unit

# No example database: the tests must not write files into the checkout.
FAST = settings(database=None, deadline=None, max_examples=150)

A = "a" * 64
B = "0123456789abcdef" * 4
C = "f" * 64


def control(mtype: MessageType, obj: object, *, flags: int = 0, request_id: int = 1) -> Frame:
    return Frame(mtype, flags, request_id, json.dumps(obj).encode())


def merged(frames: list[Frame]) -> list[Frame]:
    """Join DATA pieces of one stream that follow each other, up to an END.

    The decoder hands DATA bodies on in pieces as they arrive; two frame lists
    mean the same stream exactly when their merged forms are equal.
    """
    out: list[Frame] = []
    for f in frames:
        prev = out[-1] if out else None
        if (
            prev is not None
            and f.type == prev.type == MessageType.DATA
            and f.request_id == prev.request_id
            and (f.flags & FLAG_REPLY) == (prev.flags & FLAG_REPLY)
            and not prev.flags & FLAG_END
        ):
            out[-1] = Frame(f.type, f.flags, f.request_id, bytes(prev.body) + bytes(f.body))
        else:
            out.append(f)
    return out


def split_decode(stream: bytes, cuts: list[int]) -> list[Frame]:
    """Feed stream cut at the given offsets; return every frame produced."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        frames.extend(decoder.feed(stream[start:cut]))
        start = cut
    if decoder.buffered != 0:
        raise AssertionError(f"{decoder.buffered} bytes left over")
    return frames


# ------------------------------------------------------------------- round trip


class RoundTripTests(SynchronousTestCase):
    EXAMPLES: tuple[Message, ...] = (
        Hello(1, A, "Acme Corp", "10.0.0.1:7000", ("list-v1", "store-size")),
        Hello(1, A, "Ünïcødé 组织", "[fe80::1%eth0]:7000"),
        Hello(2, A, "boxed", "h:1", proof=B, box_key=C),
        Store(A, B, 1234, 1),
        Store(A, B, None, 2**64 - 1),
        Store(A, B, 0, 0),
        Fetch(A, B),
        Fetch(A, B, version=2**64 - 1, offset=2**62 - 1),
        Audit(A, B, 3, 2**32 - 1, C),
        AuditReply(B),
        Delete(A, B, 7, C, "ab" * 64),
        Release(A, B, 7, C, A, "ab" * 64),
        Horizon(A),
        Horizon(A, 2**64 - 1, C, "ab" * 64),
        HorizonReply(),
        HorizonReply(7, C, "ab" * 64, (A, B), complete=True),
        Digest(A),
        DigestReply(B, 0),
        Head(A, B),
        HeadReply(1234, "44465342"),
        HeadReply(1234, "44465342", "00" * 140),
        List(A),
        List(A, after=B, limit=1),
        Ack(),
        Ping(),
        FetchReply(2**62 - 1),
        ListReply((ListEntry(B, 1, False, "ab" * 140), ListEntry(A, 2, True, "cd" * 64)), True),
        ListReply((ListEntry(B, 1, False),), more=False),
        ListReply((), more=False),
        Error("not_found", "no such blob\nsecond line"),
        Abort("disk full"),
        Abort(""),
        Data(b"\x00" * 100, end=False),
        Data(b"", end=True),
    )

    def test_every_type_round_trips(self) -> None:
        seen: set[type] = set()
        for message in self.EXAMPLES:
            for reply in (False, True):
                raw = encode(message, 77, reply=reply)
                frames = FrameDecoder().feed(raw)
                self.assertEqual(len(frames), 1)
                self.assertEqual(frames[0].request_id, 77)
                self.assertEqual(bool(frames[0].flags & FLAG_REPLY), reply)
                self.assertEqual(decode(frames[0]), message)
            seen.add(type(message))
        self.assertEqual(len(seen), len(MessageType))

    def test_control_bodies_are_compact_json(self) -> None:
        raw = encode(Fetch(A, B), 5)
        self.assertEqual(
            raw[HEADER.size :],
            f'{{"owner":"{A}","blob":"{B}","version":null,"offset":0}}'.encode(),
        )
        self.assertEqual(
            HEADER.unpack(raw[: HEADER.size]), (MessageType.FETCH, 0, 5, len(raw) - 10)
        )
        self.assertEqual(encode(Ack(), 0)[HEADER.size :], b"{}")

    def test_data_flags_and_header(self) -> None:
        raw = encode(Data(b"xyz", end=True), 9, reply=True)
        self.assertEqual(
            raw[: HEADER.size], data_header(9, 3, end=True, reply=True)
        )  # same header either way
        self.assertEqual(HEADER.unpack(raw[: HEADER.size]), (6, FLAG_END | FLAG_REPLY, 9, 3))
        self.assertEqual(
            HEADER.unpack(data_header(2**32 - 1, 0, end=False, reply=False)), (6, 0, 2**32 - 1, 0)
        )

    @FAST
    @given(framed)
    def test_hypothesis_round_trip(self, item: tuple[Message, int, bool]) -> None:
        message, rid, reply = item
        (frame,) = FrameDecoder().feed(encode(message, rid, reply=reply))
        self.assertEqual((decode(frame), frame.request_id), (message, rid))


class EncodeRefusesTests(SynchronousTestCase):
    def test_request_id_range(self) -> None:
        for rid in (-1, 2**32):
            self.assertRaises(ValueError, encode, Ack(), rid)
            self.assertRaises(ValueError, data_header, rid, 1, end=False, reply=False)
        self.assertRaises(ValueError, encode, Ack(), True)

    def test_data_too_large(self) -> None:
        self.assertRaises(ValueError, encode, Data(b"x" * (MAX_DATA_BODY + 1), end=True), 1)
        self.assertRaises(ValueError, data_header, 1, MAX_DATA_BODY + 1, end=True, reply=False)
        self.assertEqual(len(encode(Data(b"x" * MAX_DATA_BODY, end=True), 1)), MAX_DATA_BODY + 10)

    def test_invalid_fields(self) -> None:
        # Each refused for the field and the problem named, not for any other reason.
        bad: list[tuple[object, str]] = [
            (Fetch("../../etc", B), "FETCH.owner: not a 64-char lowercase hex id"),
            (Store(A, B, -1, 1), "STORE.size: -1 not in 0.."),
            (Store(A, B, 2**62, 1), f"STORE.size: {2**62} not in 0.."),
            (Store(A, B, 1, -1), "STORE.version: -1 not in 0.."),
            (Store(A, B, 1, 2**64), f"STORE.version: {2**64} not in 0.."),
            (Delete(A, B, 1, C, "AB" * 64), "DELETE.signature: not 128 lowercase hex"),
            (Delete(A, B, 1, C, "ab" * 63), "DELETE.signature: not 128 lowercase hex"),
            (Delete(A, B, 1, "c", "ab" * 64), "DELETE.key: not a 64-char lowercase hex id"),
            (HeadReply(1, "abc"), "HEAD_REPLY.header: not lowercase hex bytes"),  # half a byte
            (HeadReply(1, "AB"), "HEAD_REPLY.header: not lowercase hex bytes"),
            (HeadReply(1, "00" * (16 * 1024 + 1)), "HEAD_REPLY.header: length 32770 not in"),
            (List(A, limit=0), "LIST.limit: 0 not in 1.."),
            (List(A, limit=MAX_LIST_PAGE + 1), f"LIST.limit: {MAX_LIST_PAGE + 1} not in 1.."),
            (
                ListReply((ListEntry(A, 1, False), ListEntry(B, 1, False)), more=False),
                "LIST_REPLY.entries: not strictly ascending",  # descending
            ),
            (
                ListReply((ListEntry(A, 1, False),) * 2, more=False),
                "LIST_REPLY.entries: not strictly ascending",  # a duplicate
            ),
            (ListReply((ListEntry(A, -1, False),), more=False), "LIST_REPLY.entries[]: -1 not in"),
            (
                ListReply((ListEntry(A, 1, False, "abc"),), more=False),
                "LIST_REPLY.entries[]: not lowercase hex bytes",  # half a byte of proof
            ),
            (
                ListReply((ListEntry(A, 1, False, "00" * 141),), more=False),
                "LIST_REPLY.entries[]: length 282 not in",
            ),
            (Fetch(A, B, offset=-1), "FETCH.offset: -1 not in 0.."),
            (Audit(A, B, 1, 2**32, C), f"AUDIT.index: {2**32} not in 0.."),
            (Audit(A, B, 1, 0, "short"), "AUDIT.nonce: not a 64-char lowercase hex id"),
            (
                ListReply(
                    tuple(ListEntry(f"{i:064x}", 1, False) for i in range(MAX_LIST_PAGE + 1)),
                    more=True,
                ),
                f"LIST_REPLY.entries: {MAX_LIST_PAGE + 1} items, at most {MAX_LIST_PAGE}",
            ),
            (Error("Not-Found", "x"), "ERROR.code: not a [a-z_] token"),
            (Error("x", "m" * 513), "ERROR.message: length 513 not in"),
            (Abort("\ud800"), "ABORT.reason: contains a lone surrogate"),
            (Hello(1, A, "", "h:1"), "HELLO.org: length 0 not in"),
            (Hello(1, A, "o\nrg", "h:1"), "HELLO.org: contains a control character"),
            (Hello(1, A, "org", "no-port"), "HELLO.listen: not host:port"),
            (Hello(1, A, "org", "h:65536"), "HELLO.listen: not host:port"),
            (Hello(1, A, "org", "h:1", ("f",) * 33), "HELLO.features: 33 items, at most 32"),
            (Hello(1, A, "org", "h:1", ("f" * 33,)), "HELLO.features[]: length 33 not in"),
            # A bool is an int to Python, never to the wire.
            (FetchReply(True), "FETCH_REPLY.size: expected an integer, got bool"),
            (ListReply((ListEntry(A, 1, 0),), more=False), "expected a boolean"),  # type: ignore[arg-type]
            (ListReply((), more=1), "LIST_REPLY.more: expected a boolean"),  # type: ignore[arg-type]
        ]
        for message, reason in bad:
            with self.assertRaises(ValueError, msg=repr(message)[:200]) as caught:
                encode(message, 1)  # type: ignore[arg-type]
            self.assertIn(reason, str(caught.exception), repr(message)[:200])

    def test_not_a_message(self) -> None:
        self.assertRaises(TypeError, encode, object(), 1)


# ----------------------------------------------------------------------- framing


class FramingTests(SynchronousTestCase):
    def stream(self) -> tuple[list[Frame], bytes]:
        items: list[tuple[Message, int, bool]] = [
            (message, i, i % 2 == 0) for i, message in enumerate(RoundTripTests.EXAMPLES)
        ]
        raw = encode_all(items)
        return FrameDecoder().feed(raw), raw

    def test_byte_by_byte(self) -> None:
        expected, raw = self.stream()
        self.assertEqual(len(expected), len(RoundTripTests.EXAMPLES))
        decoder = FrameDecoder()
        frames: list[Frame] = []
        fed = 0
        for i in range(len(raw)):
            frames.extend(decoder.feed(raw[i : i + 1]))
            fed += 1
            # Bulk data is never held: only headers and control bodies are.
            self.assertLessEqual(decoder.buffered, HEADER.size + wire.MAX_CONTROL_BODY)
        self.assertEqual(merged(frames), merged(expected))
        self.assertEqual(decoder.buffered, 0)

    def test_empty_feed(self) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.feed(encode(Ack(), 1)[:3]), [])
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.buffered, 3)

    def test_accepts_bytearray_and_memoryview(self) -> None:
        raw = encode(Fetch(A, B), 3)
        # Typed as bytes, but Twisted may hand over other buffers; they must work too.
        for buffer in (bytearray(raw), memoryview(raw)):
            self.assertEqual(FrameDecoder().feed(buffer), FrameDecoder().feed(raw))  # type: ignore[arg-type]

    @FAST
    @given(st.lists(framed, max_size=8), st.data())
    def test_random_split_points(
        self, items: list[tuple[Message, int, bool]], data: st.DataObject
    ) -> None:
        raw = encode_all(items)
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
        frames = split_decode(raw, cuts)
        self.assertEqual(merged(frames), merged(FrameDecoder().feed(raw)))
        for f in frames:
            decode(f)

    def test_megabyte_in_tls_sized_pieces(self) -> None:
        # Linearity by construction rather than by timing: each 16 KiB piece only
        # grows the held count by its own size, and the payload comes back intact.
        payload = random.Random(7).randbytes(MAX_DATA_BODY)
        raw = encode(Data(payload, end=True), 42, reply=True)
        decoder = FrameDecoder()
        piece = 16 * 1024
        out: list[Frame] = []
        for start in range(0, len(raw), piece):
            out.extend(decoder.feed(raw[start : start + piece]))
            # Each piece of the body is handed on at once, never held.
            self.assertLessEqual(decoder.buffered, HEADER.size)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(len(out), len(raw) // piece + 1)
        self.assertTrue(all(f.flags == FLAG_REPLY for f in out[:-1]))
        self.assertEqual(out[-1].flags, FLAG_END | FLAG_REPLY)
        self.assertEqual(merged(out), [Frame(MessageType.DATA, FLAG_END | FLAG_REPLY, 42, payload)])


class FramingRejectsTests(SynchronousTestCase):
    def assertRejectedAtHeader(self, header: bytes) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(header[:9]), [])
        with self.assertRaises(ProtocolError):
            decoder.feed(header[9:10])
        # Sticky: the stream is no longer aligned, nothing more is accepted.
        self.assertRaises(ProtocolError, decoder.feed, encode(Ack(), 1))
        self.assertEqual(decoder.buffered, 0)

    def test_huge_declared_length_fails_on_header(self) -> None:
        self.assertRejectedAtHeader(HEADER.pack(MessageType.DATA, 0, 1, 2**32 - 1))
        self.assertRejectedAtHeader(HEADER.pack(MessageType.STORE, 0, 1, 2**32 - 1))

    def test_bounds_per_type(self) -> None:
        self.assertRejectedAtHeader(HEADER.pack(MessageType.DATA, 0, 1, MAX_DATA_BODY + 1))
        self.assertRejectedAtHeader(HEADER.pack(MessageType.LIST, 0, 1, MAX_CONTROL_BODY + 1))
        # A DATA-sized control body is too big even though DATA would allow it.
        self.assertRejectedAtHeader(HEADER.pack(MessageType.HELLO, 0, 1, MAX_DATA_BODY))
        # Exactly at the bound is fine.
        for mtype, n in ((MessageType.DATA, MAX_DATA_BODY), (MessageType.ABORT, MAX_CONTROL_BODY)):
            self.assertEqual(FrameDecoder().feed(HEADER.pack(mtype, 0, 1, n)), [])

    def test_configurable_bounds(self) -> None:
        decoder = FrameDecoder(max_control=16, max_data=32)
        self.assertEqual(len(decoder.feed(HEADER.pack(MessageType.DATA, 0, 1, 32) + b"x" * 32)), 1)
        self.assertRaises(ProtocolError, decoder.feed, HEADER.pack(MessageType.ACK, 0, 1, 17))

    def test_control_body_over_64k_rejected_by_decode(self) -> None:
        frame = Frame(MessageType.ABORT, 0, 1, b" " * (MAX_CONTROL_BODY + 1))
        self.assertRaises(ProtocolError, decode, frame)

    def test_unknown_type(self) -> None:
        for mtype in (0, max(MessageType) + 1, 255):
            self.assertRejectedAtHeader(HEADER.pack(mtype, 0, 1, 0))
            self.assertRaises(ProtocolError, decode, Frame(mtype, 0, 1, b"{}"))

    def test_unknown_flags(self) -> None:
        for flags in (0x04, 0x80, 0xFF):
            self.assertRejectedAtHeader(HEADER.pack(MessageType.DATA, flags, 1, 0))
            self.assertRaises(ProtocolError, decode, Frame(MessageType.ACK, flags, 1, b"{}"))

    def test_end_flag_on_control(self) -> None:
        self.assertRejectedAtHeader(HEADER.pack(MessageType.ACK, FLAG_END, 1, 2))
        self.assertRaises(ProtocolError, decode, Frame(MessageType.ACK, FLAG_END, 1, b"{}"))

    def test_frames_before_error_in_same_feed(self) -> None:
        decoder = FrameDecoder()
        self.assertRaises(ProtocolError, decoder.feed, encode(Ack(), 1) + HEADER.pack(99, 0, 1, 0))
        self.assertRaises(ProtocolError, decoder.feed, b"")


# ------------------------------------------------------------ message validation


class DecodeRejectsTests(SynchronousTestCase):
    def assertRejected(self, mtype: MessageType, body: bytes | object, reason: str = "") -> None:
        """Refused, on one line, and (when given) for ``reason``: the field and problem."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.assertRaises(ProtocolError) as caught:
            decode(Frame(mtype, 0, 1, raw))
        self.assertNotIn("\n", str(caught.exception))
        self.assertIn(reason, str(caught.exception))

    def test_malformed_json(self) -> None:
        for raw in (
            b"",
            b"{",
            b"not json",
            b'{"owner": "x",}',
            b"\xff\xfe{}",
            '{"size": 1}'.encode("utf-16"),
            b"[" * 30000 + b"]" * 30000,
            b'{"size": ' + b"9" * 5000 + b"}",
            b"\xef\xbb\xbf{}",  # BOM
        ):
            self.assertRejected(MessageType.FETCH_REPLY, raw, "not valid UTF-8 JSON")
        for constant in (b'{"size": NaN}', b'{"size": Infinity}'):
            self.assertRejected(MessageType.FETCH_REPLY, constant, "non-standard JSON constant")

    def test_not_an_object(self) -> None:
        objs: tuple[object, ...] = ([], "x", 1, None, True)
        for obj in objs:
            self.assertRejected(MessageType.ACK, obj, "not a JSON object")

    def test_keys(self) -> None:
        self.assertRejected(MessageType.ACK, {"x": 1}, "ACK: unexpected key 'x'")
        without_blob = {k: v for k, v in self.fetch().items() if k != "blob"}
        self.assertRejected(MessageType.FETCH, without_blob, "FETCH: missing key 'blob'")
        self.assertRejected(MessageType.FETCH, self.fetch(extra=1), "unexpected key 'extra'")
        # after must be present, even when null
        self.assertRejected(MessageType.LIST, {"owner": A, "limit": 5}, "missing key 'after'")
        self.assertRejected(
            MessageType.DIGEST,
            b'{"owner":"%s","owner":"%s"}' % (A.encode(), C.encode()),
            "duplicate key",
        )

    def test_wrong_types(self) -> None:
        store = {"owner": A, "blob": B, "version": 1}
        for size in ("10", 1.0, True):
            self.assertRejected(
                MessageType.STORE, {**store, "size": size}, "STORE.size: expected an integer"
            )
        self.assertRejected(MessageType.FETCH_REPLY, {"size": False}, "FETCH_REPLY.size")
        self.assertRejected(
            MessageType.LIST, {"owner": A, "after": None, "limit": True}, "LIST.limit"
        )
        entry = [A, 1, False, ""]
        self.assertRejected(
            MessageType.LIST_REPLY,
            {"entries": [entry], "more": 1},
            "LIST_REPLY.more: expected a boolean",
        )
        self.assertRejected(
            MessageType.LIST_REPLY,
            {"entries": [[A, 1, 0, ""]], "more": False},
            "LIST_REPLY.entries[]: expected a boolean",
        )
        self.assertRejected(
            MessageType.LIST_REPLY,
            {"entries": A, "more": False},
            "LIST_REPLY.entries: expected an array",
        )
        self.assertRejected(
            MessageType.LIST_REPLY,
            {"entries": [[A, 1, False]], "more": False},
            "expected [blob, version, deleted, proof]",
        )
        self.assertRejected(MessageType.HELLO, self.hello(version=True), "HELLO.version")
        self.assertRejected(MessageType.HELLO, self.hello(features="abc"), "HELLO.features")
        self.assertRejected(MessageType.HELLO, self.hello(features=[1]), "HELLO.features[]")
        self.assertRejected(
            MessageType.ERROR, {"code": "io", "message": None}, "ERROR.message: expected a string"
        )
        self.assertRejected(MessageType.ABORT, {"reason": ["x"]}, "ABORT.reason")

    def test_bad_ids(self) -> None:
        for bad in ("../../etc", A.upper(), A[:63], A + "0", A[:63] + "g", A + "\n", "", None, 7):
            self.assertFalse(is_hex_id(bad), bad)
            self.assertRejected(MessageType.FETCH, self.fetch(blob=bad), "FETCH.blob")
            self.assertRejected(
                MessageType.DELETE,
                {"owner": bad, "blob": A, "version": 1, "key": A, "signature": "ab" * 64},
                "DELETE.owner",
            )
            self.assertRejected(
                MessageType.STORE,
                {"owner": bad, "blob": A, "size": None, "version": 1},
                "STORE.owner",
            )
            if bad is not None:  # after=None means "from the start"
                self.assertRejected(
                    MessageType.LIST, {"owner": A, "after": bad, "limit": 1}, "LIST.after"
                )
            self.assertRejected(
                MessageType.LIST_REPLY,
                {"entries": [[bad, 1, False, ""]], "more": False},
                "LIST_REPLY.entries[]: not a 64-char",
            )
            self.assertRejected(MessageType.HELLO, self.hello(node_id=bad), "HELLO.node_id")
        self.assertTrue(is_hex_id(B))

    def test_bounds(self) -> None:
        store = {"owner": A, "blob": B, "version": 1}
        self.assertRejected(MessageType.STORE, {**store, "size": -1}, "STORE.size: -1 not in")
        self.assertRejected(MessageType.STORE, {**store, "size": 2**62}, "STORE.size")
        self.assertRejected(MessageType.FETCH, self.fetch(offset=-1), "FETCH.offset")
        self.assertRejected(MessageType.LIST, {"owner": A, "after": None, "limit": 0}, "LIST.limit")
        self.assertRejected(
            MessageType.LIST,
            {"owner": A, "after": None, "limit": MAX_LIST_PAGE + 1},
            "LIST.limit",
        )
        page = [[f"{i:064x}", 1, False, ""] for i in range(MAX_LIST_PAGE + 1)]
        self.assertRejected(
            MessageType.LIST_REPLY, {"entries": page, "more": True}, "items, at most"
        )
        self.assertRejected(
            MessageType.LIST_REPLY,
            {"entries": [[A, 1, False, ""], [B, 1, False, ""]], "more": True},
            "not strictly ascending",
        )
        self.assertRejected(
            MessageType.LIST_REPLY,
            {"entries": [[A, 1, False, "00" * 141]], "more": True},
            "LIST_REPLY.entries[]: length",
        )
        self.assertRejected(MessageType.ERROR, {"code": "", "message": ""}, "ERROR.code")
        self.assertRejected(MessageType.ERROR, {"code": "a" * 33, "message": ""}, "ERROR.code")
        self.assertRejected(MessageType.ERROR, {"code": "NotFound", "message": ""}, "ERROR.code")
        self.assertRejected(
            MessageType.ERROR, {"code": "io", "message": "x" * 513}, "ERROR.message"
        )
        self.assertRejected(MessageType.ABORT, {"reason": "x" * 513}, "ABORT.reason")
        self.assertRejected(MessageType.ABORT, b'{"reason": "\\ud800"}', "lone surrogate")
        self.assertRejected(MessageType.HELLO, self.hello(version=-1), "HELLO.version")
        for org in ("", "x" * 129, "a\x00b", "a\x1bb", "a\u2028b", "evil\u202egnp"):
            self.assertRejected(MessageType.HELLO, self.hello(org=org), "HELLO.org")
        for listen in ("", "host", ":80", "host:", "host:99999", "h:1 ", "h :1", "h:1" + "1" * 5):
            self.assertRejected(MessageType.HELLO, self.hello(listen=listen), "HELLO.listen")
        self.assertRejected(MessageType.HELLO, self.hello(listen="h" * 251 + ":1000"))
        self.assertRejected(MessageType.HELLO, self.hello(features=["f"] * 33), "at most 32")
        self.assertRejected(MessageType.HELLO, self.hello(features=["f" * 33]), "features[]")
        self.assertRejected(MessageType.HELLO, self.hello(features=[""]), "features[]")

    def test_accepts_limits(self) -> None:
        ok = decode(control(MessageType.HELLO, self.hello(org="x" * 128, features=["f" * 32] * 32)))
        self.assertIsInstance(ok, Hello)
        page = [ListEntry(f"{i:064x}", 2**64 - 1, False, "ff" * 140) for i in range(MAX_LIST_PAGE)]
        entries = [[e.blob, e.version, e.deleted, e.proof] for e in page]
        reply = decode(control(MessageType.LIST_REPLY, {"entries": entries, "more": True}))
        self.assertEqual(reply, ListReply(tuple(page), more=True))
        self.assertEqual(len(encode(reply, 1)) < MAX_CONTROL_BODY, True)
        self.assertEqual(decode(Frame(MessageType.ACK, 0, 1, b" { } ")), Ack())

    @staticmethod
    def fetch(**overrides: object) -> dict[str, object]:
        base: dict[str, object] = {"owner": A, "blob": B, "version": None, "offset": 0}
        base.update(overrides)
        return base

    @staticmethod
    def hello(**overrides: object) -> dict[str, object]:
        base: dict[str, object] = {
            "version": 1,
            "node_id": A,
            "org": "Acme",
            "listen": "127.0.0.1:7000",
            "features": [],
            "proof": None,
            "box_key": None,
        }
        base.update(overrides)
        return base


# ------------------------------------------------------------------------ fuzzing


def check_decoder(test: SynchronousTestCase, stream: bytes, cuts: list[int]) -> None:
    """Feed stream in pieces; only ProtocolError may escape, and buffering stays bounded."""
    decoder = FrameDecoder()
    bound = HEADER.size + max(MAX_CONTROL_BODY, MAX_DATA_BODY)
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        try:
            frames = decoder.feed(stream[start:cut])
        except ProtocolError as exc:
            test.assertNotIn("\n", str(exc))
            return
        finally:
            test.assertLessEqual(decoder.buffered, bound)
        start = cut
        for frame in frames:
            try:
                decode(frame)
            except ProtocolError as exc:
                test.assertNotIn("\n", str(exc))


class FuzzTests(SynchronousTestCase):
    @FAST
    @given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
    def test_random_bytes(self, stream: bytes, cuts: list[int]) -> None:
        check_decoder(self, stream, [c for c in cuts if c <= len(stream)])

    @FAST
    @given(st.lists(framed, min_size=1, max_size=6), st.data())
    def test_mutated_streams(
        self, items: list[tuple[Message, int, bool]], data: st.DataObject
    ) -> None:
        raw = bytearray(encode_all(items))
        for _ in range(data.draw(st.integers(1, 6))):
            kind = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]))
            at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
            if kind == "flip" and raw:
                raw[at] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "set" and raw:
                raw[at] = data.draw(st.integers(0, 255))
            elif kind == "delete":
                del raw[at : at + data.draw(st.integers(1, 8))]
            else:
                raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
        check_decoder(self, bytes(raw), cuts)

    @FAST
    @given(
        st.sampled_from(list(MessageType)),
        st.dictionaries(
            st.sampled_from(
                [
                    "owner",
                    "blob",
                    "size",
                    "after",
                    "limit",
                    "entries",
                    "more",
                    "offset",
                    "index",
                    "nonce",
                    "code",
                    "message",
                    "reason",
                    "version",
                    "node_id",
                    "org",
                    "listen",
                    "features",
                    "proof",
                    "x",
                ]
            ),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers()
                | st.floats()
                | st.text(max_size=70)
                | st.sampled_from([A, B, "../../etc", "h:1"]),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=10,
            ),
            max_size=6,
        ),
    )
    def test_random_json_bodies(self, mtype: MessageType, obj: dict[str, object]) -> None:
        body = json.dumps(obj).encode()
        try:
            message = decode(Frame(mtype, 0, 1, body))
        except ProtocolError:
            return
        # Whatever decode accepts, encode reproduces and decode accepts again.
        (frame,) = FrameDecoder().feed(encode(message, 1))
        self.assertEqual(decode(frame), message)
