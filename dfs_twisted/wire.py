"""Peer protocol wire format: frame layout and message types.

Every frame is a 10-byte header followed by a body::

    type u8 | flags u8 | request id u32 | body length u32 | body

DATA bodies are raw ciphertext; every other body is a compact UTF-8 JSON object
whose keys are the fields of one message class below. Each message is declared
once, as a frozen dataclass whose field types carry their bounds
(``Annotated[int, Int(0, MAX_VERSION)]``); one decoder and one encoder walk the
fields, so the parsing of untrusted input is the same code for every message.
This module is pure (no Twisted, no I/O) so it can be tested exhaustively on
its own; the protocol layer owns state and transport.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
import struct
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, NoReturn, TypeAlias

PROTOCOL_VERSION = 3
HEADER = struct.Struct("!BBII")
MAX_CONTROL_BODY = 64 * 1024
MAX_DATA_BODY = 1024 * 1024
# A listing entry carries its proof (a 140-byte record, as hex): 128 fit a body well.
MAX_LIST_PAGE = 128

FLAG_END = 0x01
FLAG_REPLY = 0x02
KNOWN_FLAGS = FLAG_END | FLAG_REPLY

MAX_REQUEST_ID = 2**32 - 1
SIZE_LIMIT = 2**62  # exclusive; far beyond any real blob, and safe in any peer's int64
MAX_VERSION = 2**64 - 1
MAX_CHUNK_INDEX = 2**32 - 1
MAX_TEXT = 512
MAX_ORG = 128
MAX_LISTEN = 255
MAX_FEATURES = 32
MAX_FEATURE_LEN = 32
MAX_HEAD = 16 * 1024  # bytes of a blob header: fixed part and sealed metadata fit well
MAX_PROOF = 140  # bytes: a blob record (crypto.RECORD_SIZE), or a tombstone's signature

_HEX_ID = re.compile(r"[0-9a-f]{64}")
_ERROR_CODE = re.compile(r"[a-z_]{1,32}")
# Hostname, IPv4 or (bracketed / zone-qualified) IPv6; the protocol layer resolves it.
_LISTEN = re.compile(r"(?P<host>[A-Za-z0-9._:%\[\]-]+):(?P<port>[0-9]{1,5})")
# C0/C1 controls, line/paragraph separators and bidi overrides: anything that could
# forge a log line or disguise an org name shown to an operator.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class MessageType(enum.IntEnum):
    HELLO = 1
    STORE = 2
    FETCH = 3
    DELETE = 4
    LIST = 5
    DATA = 6
    ACK = 7
    FETCH_REPLY = 8
    LIST_REPLY = 9
    ERROR = 10
    ABORT = 11
    PING = 12
    DIGEST = 13
    DIGEST_REPLY = 14
    HEAD = 15
    HEAD_REPLY = 16
    AUDIT = 17
    AUDIT_REPLY = 18


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


class Code(enum.StrEnum):
    """Why a request was refused (ERROR.code). A peer may send others: codes are text."""

    HAVE = "have"  # holds this version or a newer one already
    BUSY = "busy"  # too many transfers, or this blob is arriving already
    NOT_FOUND = "not_found"
    QUOTA = "quota"
    DISK_FULL = "disk_full"
    FORBIDDEN = "forbidden"  # not the sender's namespace
    BAD_BLOB = "bad_blob"  # fails the owner's signature
    BAD_REQUEST = "bad_request"
    BAD_SIGNATURE = "bad_signature"
    BAD_REPLY = "bad_reply"
    SLOW_DOWN = "slow_down"  # over the sender's rate of deletions
    ABORTED = "aborted"
    REFUSED = "refused"  # the connection itself (admission, pinning)
    IO = "io"


class ProtocolError(Exception):
    """The peer broke the wire format; the message is one line for the log.

    The connection must be closed: after a framing error the byte stream can no
    longer be trusted to be aligned on frame boundaries.
    """


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    request_id: int
    body: bytes


def _short(value: object) -> str:
    """repr() keeps an attacker-chosen value on one line; truncation keeps it short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(what: str, problem: str) -> NoReturn:
    raise ProtocolError(f"{what}: {problem}")


# ------------------------------------------------------------------ field types


class FieldType(typing.Protocol):
    """How one field of a message is checked: its bounds, as it arrives in JSON."""

    def parse(self, value: object, what: str) -> Any: ...


class Int:
    """An integer in [low, high]; JSON booleans are not integers here."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def parse(self, value: object, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(what, f"expected an integer, got {type(value).__name__}")
        if not self.low <= value <= self.high:
            _fail(what, f"{_short(value)} not in {self.low}..{self.high}")
        return value


class Bool:
    def parse(self, value: object, what: str) -> bool:
        if not isinstance(value, bool):
            _fail(what, f"expected a boolean, got {type(value).__name__}")
        return value


class Text:
    """A string of bounded length; ``plain``: no control characters either."""

    def __init__(self, max_len: int, min_len: int = 0, *, plain: bool = False) -> None:
        self.max_len, self.min_len, self.plain = max_len, min_len, plain

    def parse(self, value: object, what: str) -> str:
        if not isinstance(value, str):
            _fail(what, f"expected a string, got {type(value).__name__}")
        if not self.min_len <= len(value) <= self.max_len:
            _fail(what, f"length {len(value)} not in {self.min_len}..{self.max_len}")
        try:
            # JSON "\ud800" escapes decode to lone surrogates, which later blow up
            # whoever encodes the string (logs, re-sent messages).
            value.encode("utf-8")
        except UnicodeEncodeError:
            _fail(what, "contains a lone surrogate")
        if self.plain and _CONTROL.search(value):
            _fail(what, "contains a control character")
        return value


class Matching:
    """A string that matches a pattern (``describe`` says what it should be)."""

    def __init__(self, pattern: re.Pattern[str], describe: str, max_len: int = 0) -> None:
        self.pattern, self.describe, self.max_len = pattern, describe, max_len

    def parse(self, value: object, what: str) -> str:
        if self.max_len:
            value = Text(self.max_len).parse(value, what)
        if not isinstance(value, str) or self.pattern.fullmatch(value) is None:
            _fail(what, f"not {self.describe}: {_short(value)}")
        return value


class Listen:
    def parse(self, value: object, what: str) -> str:
        text = Text(MAX_LISTEN, 1).parse(value, what)
        match = _LISTEN.fullmatch(text)
        if match is None or int(match["port"]) > 65535:
            _fail(what, f"not host:port: {_short(text)}")
        return text


class Nullable:
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner

    def parse(self, value: object, what: str) -> object:
        return None if value is None else self.inner.parse(value, what)


class Array:
    """A JSON array of at most ``max_items``, each of ``item``; a tuple in Python."""

    def __init__(self, item: FieldType, max_items: int) -> None:
        self.item, self.max_items = item, max_items

    def parse(self, value: object, what: str) -> tuple[object, ...]:
        if not isinstance(value, list):
            _fail(what, f"expected an array, got {type(value).__name__}")
        if len(value) > self.max_items:
            _fail(what, f"{len(value)} items, at most {self.max_items} allowed")
        return tuple(self.item.parse(item, f"{what}[]") for item in value)


HEX_ID = Matching(_HEX_ID, "a 64-char lowercase hex id")
SIGNATURE = Matching(re.compile(r"[0-9a-f]{128}"), "128 lowercase hex")
SIZE = Int(0, SIZE_LIMIT - 1)
VERSION = Int(0, MAX_VERSION)


def hex_bytes(max_bytes: int) -> Matching:
    """Whole bytes as lowercase hex, at most ``max_bytes`` of them."""
    return Matching(re.compile(r"(?:[0-9a-f]{2})*"), "lowercase hex bytes", 2 * max_bytes)


# ------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[MessageType] = MessageType.HELLO

    version: Annotated[int, Int(0, MAX_REQUEST_ID)]
    node_id: Annotated[str, HEX_ID]
    org: Annotated[str, Text(MAX_ORG, 1, plain=True)]
    listen: Annotated[str, Listen()]
    features: Annotated[
        tuple[str, ...], Array(Text(MAX_FEATURE_LEN, 1, plain=True), MAX_FEATURES)
    ] = ()
    # Proof of the federation's network key, bound to this TLS session (64 hex), if any.
    proof: Annotated[str | None, Nullable(HEX_ID)] = None
    # X25519 public key (64 hex) that per-file grants to this node are encrypted to.
    box_key: Annotated[str | None, Nullable(HEX_ID)] = None


@dataclass(frozen=True, slots=True)
class Store:
    TYPE: ClassVar[MessageType] = MessageType.STORE

    owner: Annotated[str, HEX_ID]
    blob: Annotated[str, HEX_ID]
    # Ciphertext bytes that follow as DATA frames; None = unknown.
    size: Annotated[int | None, Nullable(SIZE)]
    # The blob header's version: a holder with this one or newer says "have".
    version: Annotated[int, VERSION]


@dataclass(frozen=True, slots=True)
class Fetch:
    """A stored blob, from byte ``offset`` on; ``version``: only that version."""

    TYPE: ClassVar[MessageType] = MessageType.FETCH

    owner: Annotated[str, HEX_ID]
    blob: Annotated[str, HEX_ID]
    version: Annotated[int | None, Nullable(VERSION)] = None
    offset: Annotated[int, SIZE] = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """The owner's signed tombstone (crypto.Tombstone) for one blob."""

    TYPE: ClassVar[MessageType] = MessageType.DELETE

    owner: Annotated[str, HEX_ID]
    blob: Annotated[str, HEX_ID]
    version: Annotated[int, VERSION]
    key: Annotated[str, HEX_ID]  # the owner's Ed25519 public key, 64 hex
    signature: Annotated[str, SIGNATURE]


@dataclass(frozen=True, slots=True)
class List:
    TYPE: ClassVar[MessageType] = MessageType.LIST

    owner: Annotated[str, HEX_ID]
    # The page starts at the first blob id > after.
    after: Annotated[str | None, Nullable(HEX_ID)] = None
    limit: Annotated[int, Int(1, MAX_LIST_PAGE)] = MAX_LIST_PAGE


@dataclass(frozen=True, slots=True)
class Digest:
    """What do you hold of ``owner``'s namespace, in one hash?"""

    TYPE: ClassVar[MessageType] = MessageType.DIGEST

    owner: Annotated[str, HEX_ID]


@dataclass(frozen=True, slots=True)
class Head:
    """A stored blob's header and size: enough for its owner to read the file's name."""

    TYPE: ClassVar[MessageType] = MessageType.HEAD

    owner: Annotated[str, HEX_ID]
    blob: Annotated[str, HEX_ID]


@dataclass(frozen=True, slots=True)
class Audit:
    """Prove you hold chunk ``index`` of this blob version: hash it keyed by ``nonce``."""

    TYPE: ClassVar[MessageType] = MessageType.AUDIT

    owner: Annotated[str, HEX_ID]
    blob: Annotated[str, HEX_ID]
    version: Annotated[int, VERSION]
    index: Annotated[int, Int(0, MAX_CHUNK_INDEX)]
    nonce: Annotated[str, HEX_ID]  # 32 random bytes, fresh for every audit


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[MessageType] = MessageType.ACK


@dataclass(frozen=True, slots=True)
class Ping:
    """Answered with an Ack at once: measures round-trip time, keeps links alive."""

    TYPE: ClassVar[MessageType] = MessageType.PING


@dataclass(frozen=True, slots=True)
class FetchReply:
    TYPE: ClassVar[MessageType] = MessageType.FETCH_REPLY

    size: Annotated[int, SIZE]  # the whole blob's length; DATA from the offset asked follows


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One blob held, and the owner's proof of that version (see `Entries`)."""

    blob: str
    version: int
    deleted: bool  # a tombstone
    # Hex of the blob's crypto.BlobRecord, or of the tombstone's signature; "" for a
    # blob of the old format, which carries none: such a claim proves nothing.
    proof: str = ""


class Entries:
    """LIST_REPLY's entries: ``[blob, version, deleted, proof]`` arrays, ascending by blob."""

    _PROOF = hex_bytes(MAX_PROOF)

    def parse(self, value: object, what: str) -> tuple[ListEntry, ...]:
        items = Array(_Passthrough(), MAX_LIST_PAGE).parse(value, what)
        entries = tuple(self._entry(item, f"{what}[]") for item in items)
        if any(a.blob >= b.blob for a, b in itertools.pairwise(entries)):
            _fail(what, "not strictly ascending")
        return entries

    def _entry(self, item: object, what: str) -> ListEntry:
        if not isinstance(item, list) or len(item) != 4:
            _fail(what, "expected [blob, version, deleted, proof]")
        return ListEntry(
            blob=HEX_ID.parse(item[0], what),
            version=VERSION.parse(item[1], what),
            deleted=Bool().parse(item[2], what),
            proof=self._PROOF.parse(item[3], what),
        )

    @staticmethod
    def dump(entries: tuple[ListEntry, ...]) -> list[list[object]]:
        return [[e.blob, e.version, e.deleted, e.proof] for e in entries]


class _Passthrough:
    def parse(self, value: object, what: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class ListReply:
    TYPE: ClassVar[MessageType] = MessageType.LIST_REPLY

    # Strictly ascending by blob, so the client can page with after=entries[-1].blob.
    entries: Annotated[tuple[ListEntry, ...], Entries()]
    more: Annotated[bool, Bool()]


@dataclass(frozen=True, slots=True)
class HeadReply:
    TYPE: ClassVar[MessageType] = MessageType.HEAD_REPLY

    size: Annotated[int, SIZE]  # the whole blob's length
    header: Annotated[str, hex_bytes(MAX_HEAD)]  # hex of the blob's header bytes
    proof: Annotated[str, hex_bytes(MAX_PROOF)] = ""  # the blob's record, as in a listing


@dataclass(frozen=True, slots=True)
class DigestReply:
    TYPE: ClassVar[MessageType] = MessageType.DIGEST_REPLY

    digest: Annotated[str, HEX_ID]  # a hash over the (blob, version, deleted) entries
    count: Annotated[int, SIZE]


@dataclass(frozen=True, slots=True)
class AuditReply:
    TYPE: ClassVar[MessageType] = MessageType.AUDIT_REPLY

    digest: Annotated[str, HEX_ID]  # crypto.audit_digest(nonce, the chunk's bytes)


@dataclass(frozen=True, slots=True)
class Error:
    TYPE: ClassVar[MessageType] = MessageType.ERROR

    code: Annotated[str, Matching(_ERROR_CODE, "a [a-z_] token", 32)]
    message: Annotated[str, Text(MAX_TEXT)]


@dataclass(frozen=True, slots=True)
class Abort:
    TYPE: ClassVar[MessageType] = MessageType.ABORT

    reason: Annotated[str, Text(MAX_TEXT)]


@dataclass(frozen=True, slots=True)
class Data:
    TYPE: ClassVar[MessageType] = MessageType.DATA

    payload: bytes
    end: bool


Message: TypeAlias = (
    Hello
    | Store
    | Fetch
    | Delete
    | List
    | Digest
    | Head
    | Audit
    | Ack
    | Ping
    | FetchReply
    | ListReply
    | DigestReply
    | HeadReply
    | AuditReply
    | Error
    | Abort
    | Data
)

# Requests answered by one control message (no DATA either way).
ControlRequest: TypeAlias = Delete | List | Digest | Head | Audit

_CONTROL_MESSAGES: tuple[type[Any], ...] = (
    Hello,
    Store,
    Fetch,
    Delete,
    List,
    Digest,
    Head,
    Audit,
    Ack,
    Ping,
    FetchReply,
    ListReply,
    DigestReply,
    HeadReply,
    AuditReply,
    Error,
    Abort,
)


def _schema(cls: type[Any]) -> tuple[tuple[str, FieldType], ...]:
    """Each field's name and type, from the Annotated hint. Every key is required
    in a body (defaults are for building messages in Python)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f.name, hints[f.name].__metadata__[0]) for f in fields(cls))


_SCHEMAS: dict[MessageType, tuple[type[Any], tuple[tuple[str, FieldType], ...]]] = {
    cls.TYPE: (cls, _schema(cls)) for cls in _CONTROL_MESSAGES
}


# --------------------------------------------------------------------------- framing


def _check_header(mtype: int, flags: int, length: int, max_control: int, max_data: int) -> None:
    if mtype not in _KNOWN_TYPES:
        raise ProtocolError(f"unknown frame type {mtype}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"unknown flag bits 0x{flags:02x} on {MessageType(mtype).name} frame")
    if mtype != MessageType.DATA and flags & FLAG_END:
        raise ProtocolError(f"FLAG_END on non-DATA frame {MessageType(mtype).name}")
    bound = max_data if mtype == MessageType.DATA else max_control
    if length > bound:
        raise ProtocolError(
            f"{MessageType(mtype).name} frame body of {length} bytes exceeds bound {bound}"
        )


class FrameDecoder:
    """Fed bytes, returns complete frames; DATA frames as pieces, as they arrive.

    A DATA body is returned as soon as any of it is in, cut into DATA frames of
    the same request (FLAG_END only on the last piece): a stream means the same
    however it is cut, and its bytes are never held here.

    Raises ProtocolError on a length over the bound for that type, unknown type,
    unknown flag bits or FLAG_END on a non-DATA frame. Once it raised, further
    feed() raises too. Frames completed earlier in the failing feed() call are
    dropped: the connection is being closed anyway.
    """

    def __init__(self, max_control: int = MAX_CONTROL_BODY, max_data: int = MAX_DATA_BODY) -> None:
        self._max_control = max_control
        self._max_data = max_data
        self._header = bytearray()  # partial header bytes
        self._pending: tuple[int, int, int, int] | None = None  # parsed header awaiting body
        # A bytearray grows in amortised O(1) per byte, so many small pieces cost linear
        # time, and unlike a list of pieces it has no per-piece overhead when a peer
        # dribbles a body a byte at a time.
        self._body = bytearray()
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as part of a frame (header included)."""
        held = len(self._header) + len(self._body)
        if self._pending is not None:
            held += HEADER.size
        return held

    def feed(self, data: bytes) -> list[Frame]:
        if self._failure is not None:
            raise ProtocolError(f"decoder already failed: {self._failure}")
        try:
            with memoryview(data) as view:
                return self._feed(view.cast("B"))
        except ProtocolError as exc:
            self._failure = str(exc)
            self._header = bytearray()
            self._body = bytearray()
            self._pending = None
            raise

    def _feed(self, view: memoryview) -> list[Frame]:
        frames: list[Frame] = []
        pos = 0
        end = len(view)
        while pos < end:
            if self._pending is None:
                need = HEADER.size - len(self._header)
                chunk = view[pos : pos + need]
                pos += len(chunk)
                if not self._header and len(chunk) == need:
                    fields = HEADER.unpack(chunk)
                else:
                    self._header += chunk
                    if len(self._header) < HEADER.size:
                        break
                    fields = HEADER.unpack(self._header)
                    self._header.clear()
                mtype, flags, request_id, length = fields
                # Checked before any body byte is waited for, so a huge declared
                # length is refused as soon as the header is in.
                _check_header(mtype, flags, length, self._max_control, self._max_data)
                if length == 0:
                    frames.append(Frame(mtype, flags, request_id, b""))
                else:
                    self._pending = (mtype, flags, request_id, length)
            elif self._pending[0] == MessageType.DATA:
                # Bulk data is passed on as it arrives, each piece a DATA frame of
                # its own (FLAG_END only on the last): never buffered, never re-copied.
                mtype, flags, request_id, length = self._pending
                chunk = view[pos : pos + length]
                pos += len(chunk)
                remaining = length - len(chunk)
                piece_flags = flags if remaining == 0 else flags & ~FLAG_END
                frames.append(Frame(mtype, piece_flags, request_id, chunk.tobytes()))
                self._pending = None if remaining == 0 else (mtype, flags, request_id, remaining)
            else:
                mtype, flags, request_id, length = self._pending
                need = length - len(self._body)
                chunk = view[pos : pos + need]
                pos += len(chunk)
                if not self._body and len(chunk) == need:
                    body = chunk.tobytes()  # whole body in one piece: a single copy
                else:
                    self._body += chunk
                    if len(self._body) < length:
                        break
                    body = bytes(self._body)
                    self._body = bytearray()  # a fresh one frees the old allocation
                self._pending = None
                frames.append(Frame(mtype, flags, request_id, body))
        return frames


def _check_request_id(request_id: int) -> None:
    if (
        isinstance(request_id, bool)
        or not isinstance(request_id, int)
        or not 0 <= request_id <= MAX_REQUEST_ID
    ):
        raise ValueError(f"request id {_short(request_id)} is not a u32")


def data_header(request_id: int, length: int, *, end: bool, reply: bool) -> bytes:
    """The header of a DATA frame, so a payload can be written without concatenating it."""
    _check_request_id(request_id)
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_DATA_BODY:
        raise ValueError(f"DATA length {_short(length)} not in 0..{MAX_DATA_BODY}")
    flags = (FLAG_END if end else 0) | (FLAG_REPLY if reply else 0)
    return HEADER.pack(MessageType.DATA, flags, request_id, length)


# ---------------------------------------------------------------- decoding


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys silently; two parsers could then
    # disagree on what a body means, so refuse.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ProtocolError("duplicate key in JSON object")
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ProtocolError(f"non-standard JSON constant {name}")


def _load_body(body: bytes, what: str) -> dict[str, Any]:
    try:
        # Decode explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
        text = bytes(body).decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except ProtocolError as exc:
        raise ProtocolError(f"{what} body: {exc}") from None
    # ValueError covers JSONDecodeError and int strings over the digit limit;
    # RecursionError covers deeply nested arrays.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProtocolError(f"{what} body is not valid UTF-8 JSON: {reason[:100]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} body is not a JSON object")
    return obj


def _parse(mtype: MessageType, obj: dict[str, Any]) -> Message:
    cls, schema = _SCHEMAS[mtype]
    extra = sorted(obj.keys() - {name for name, _ in schema})
    if extra:
        _fail(mtype.name, f"unexpected key {_short(extra[0])}")
    values = {}
    for name, spec in schema:
        if name not in obj:
            _fail(mtype.name, f"missing key {name!r}")
        values[name] = spec.parse(obj[name], f"{mtype.name}.{name}")
    message: Message = cls(**values)
    return message


def decode(frame: Frame) -> Message:
    """Turn a frame into a message; ProtocolError on anything malformed."""
    _check_header(frame.type, frame.flags, len(frame.body), MAX_CONTROL_BODY, MAX_DATA_BODY)
    mtype = MessageType(frame.type)
    if mtype is MessageType.DATA:
        return Data(payload=frame.body, end=bool(frame.flags & FLAG_END))
    return _parse(mtype, _load_body(frame.body, mtype.name))


# ---------------------------------------------------------------- encoding


def _fields(message: Message) -> tuple[MessageType, dict[str, Any]]:
    mtype = getattr(type(message), "TYPE", None)
    if mtype not in _SCHEMAS or mtype is MessageType.DATA:
        raise TypeError(f"not a wire message: {type(message).__name__}")
    out: dict[str, Any] = {}
    for name, spec in _SCHEMAS[mtype][1]:
        value = getattr(message, name)
        if isinstance(spec, Entries):
            value = Entries.dump(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return mtype, out


def encode(message: Message, request_id: int, *, reply: bool = False) -> bytes:
    """One complete frame. ValueError if the decoder on the other side would refuse it."""
    _check_request_id(request_id)
    reply_flag = FLAG_REPLY if reply else 0
    if isinstance(message, Data):
        payload = bytes(message.payload)
        header = data_header(request_id, len(payload), end=message.end, reply=reply)
        return header + payload
    mtype, body = _fields(message)
    try:
        # The very parser the receiver runs, so encode never emits what decode refuses.
        _parse(mtype, body)
    except ProtocolError as exc:
        raise ValueError(f"invalid message: {exc}") from None
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    raw = text.encode("utf-8")
    if len(raw) > MAX_CONTROL_BODY:
        raise ValueError(f"{mtype.name} body of {len(raw)} bytes exceeds {MAX_CONTROL_BODY}")
    return HEADER.pack(mtype, reply_flag, request_id, len(raw)) + raw
