"""Peer protocol wire format: frame layout and message types.

Every frame is a 10-byte header followed by a body::

    type u8 | flags u8 | request id u32 | body length u32 | body

DATA bodies are raw ciphertext; every other body is a compact UTF-8 JSON object.
This module is pure (no Twisted, no I/O) so the parsing of untrusted input can be
tested exhaustively on its own; the protocol layer owns state and transport.
"""

import enum
import itertools
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

PROTOCOL_VERSION = 2
HEADER = struct.Struct("!BBII")
MAX_CONTROL_BODY = 64 * 1024
MAX_DATA_BODY = 1024 * 1024
MAX_LIST_PAGE = 512

FLAG_END = 0x01
FLAG_REPLY = 0x02
KNOWN_FLAGS = FLAG_END | FLAG_REPLY

MAX_REQUEST_ID = 2**32 - 1
SIZE_LIMIT = 2**62  # exclusive; far beyond any real blob, and safe in any peer's int64
MAX_TEXT = 512
MAX_ORG = 128
MAX_LISTEN = 255
MAX_FEATURES = 32
MAX_FEATURE_LEN = 32

_HEX_ID = re.compile(r"[0-9a-f]{64}")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")
MAX_VERSION = 2**64 - 1
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


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


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


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    node_id: str
    org: str
    listen: str
    features: tuple[str, ...] = ()
    # Proof of the federation's network key, bound to this TLS session (64 hex), if any.
    proof: str | None = None
    # X25519 public key (64 hex) that per-file grants to this node are encrypted to.
    box_key: str | None = None


@dataclass(frozen=True, slots=True)
class Store:
    owner: str
    blob: str
    size: int | None  # ciphertext bytes that follow as DATA frames; None = unknown
    version: int  # the blob header's version: a holder with this one or newer says "have"


@dataclass(frozen=True, slots=True)
class Fetch:
    owner: str
    blob: str


@dataclass(frozen=True, slots=True)
class Delete:
    """The owner's signed tombstone (crypto.Tombstone) for one blob."""

    owner: str
    blob: str
    version: int
    key: str  # the owner's Ed25519 public key, 64 hex
    signature: str  # 128 hex


@dataclass(frozen=True, slots=True)
class List:
    owner: str
    after: str | None = None  # page starts at the first blob id > after
    limit: int = MAX_LIST_PAGE


@dataclass(frozen=True, slots=True)
class Digest:
    """What do you hold of ``owner``'s namespace, in one hash?"""

    owner: str


@dataclass(frozen=True, slots=True)
class Head:
    """A stored blob's header and size: enough for its owner to read the file's name."""

    owner: str
    blob: str


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    """Answered with an Ack at once: measures round-trip time, keeps links alive."""


@dataclass(frozen=True, slots=True)
class FetchReply:
    size: int  # ciphertext bytes that follow as DATA frames


@dataclass(frozen=True, slots=True)
class ListEntry:
    blob: str
    version: int
    deleted: bool  # a tombstone


@dataclass(frozen=True, slots=True)
class ListReply:
    # Strictly ascending by blob, so the client can page with after=entries[-1].blob.
    entries: tuple[ListEntry, ...]
    more: bool


@dataclass(frozen=True, slots=True)
class HeadReply:
    size: int  # the whole blob's length
    header: str  # hex of the blob's header bytes


@dataclass(frozen=True, slots=True)
class DigestReply:
    digest: str  # 64 hex: SHA-256 over the sorted (blob, version, deleted) entries
    count: int


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str


@dataclass(frozen=True, slots=True)
class Data:
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
    | Ack
    | Ping
    | FetchReply
    | ListReply
    | DigestReply
    | HeadReply
    | Error
    | Abort
    | Data
)


# Requests answered by one control message (no DATA either way).
ControlRequest: TypeAlias = Delete | List | Digest | Head


def is_hex_id(value: object) -> bool:
    """True for exactly 64 lowercase hex characters (ids end up in file paths)."""
    # fullmatch, not match + "$": "$" would also accept a trailing newline.
    return isinstance(value, str) and _HEX_ID.fullmatch(value) is not None


# --------------------------------------------------------------------------- framing


def _short(value: object) -> str:
    """repr() keeps an attacker-chosen value on one line; truncation keeps it short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


# ---------------------------------------------------------------- field validation


def _fail(what: str, problem: str) -> NoReturn:
    raise ProtocolError(f"{what}: {problem}")


def _require_keys(obj: dict[str, Any], what: str, keys: frozenset[str]) -> None:
    if obj.keys() == keys:
        return
    extra = sorted(obj.keys() - keys)
    if extra:
        _fail(what, f"unexpected key {_short(extra[0])}")
    _fail(what, f"missing key {sorted(keys - obj.keys())[0]!r}")


def _int(value: object, what: str, low: int, high: int) -> int:
    # bool is an int subclass in Python but a different JSON type: refuse it.
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(what, f"expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        _fail(what, f"{_short(value)} not in {low}..{high}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        _fail(what, f"expected a boolean, got {type(value).__name__}")
    return value


def _text(value: object, what: str, *, max_len: int, min_len: int = 0) -> str:
    if not isinstance(value, str):
        _fail(what, f"expected a string, got {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        _fail(what, f"length {len(value)} not in {min_len}..{max_len}")
    try:
        # JSON "\ud800" escapes decode to lone surrogates, which later blow up
        # whoever encodes the string (logs, re-sent messages).
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(what, "contains a lone surrogate")
    return value


def _plain_text(value: object, what: str, *, max_len: int, min_len: int = 1) -> str:
    text = _text(value, what, max_len=max_len, min_len=min_len)
    if _CONTROL.search(text):
        _fail(what, "contains a control character")
    return text


def _hex(value: object, what: str) -> str:
    if not isinstance(value, str) or _HEX_ID.fullmatch(value) is None:
        _fail(what, f"not a 64-char lowercase hex id: {_short(value)}")
    return value


def _optional_hex(value: object, what: str) -> str | None:
    return None if value is None else _hex(value, what)


def _array(value: object, what: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        _fail(what, f"expected an array, got {type(value).__name__}")
    if len(value) > max_items:
        _fail(what, f"{len(value)} items, at most {max_items} allowed")
    return value


def _listen(value: object, what: str) -> str:
    text = _text(value, what, max_len=MAX_LISTEN, min_len=1)
    match = _LISTEN.fullmatch(text)
    if match is None or int(match["port"]) > 65535:
        _fail(what, f"not host:port: {_short(text)}")
    return text


# ------------------------------------------------------------------ message bodies


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


_HELLO_KEYS = _keys("version", "node_id", "org", "listen", "features", "proof", "box_key")
_OWNER_BLOB_KEYS = _keys("owner", "blob")
_STORE_KEYS = _keys("owner", "blob", "size", "version")
_DELETE_KEYS = _keys("owner", "blob", "version", "key", "signature")
_LIST_KEYS = _keys("owner", "after", "limit")
_OWNER_KEYS = _keys("owner")
_FETCH_REPLY_KEYS = _keys("size")
_LIST_REPLY_KEYS = _keys("entries", "more")
_DIGEST_REPLY_KEYS = _keys("digest", "count")
_HEAD_REPLY_KEYS = _keys("size", "header")
_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})*")
MAX_HEAD = 16 * 1024  # bytes of a blob header: fixed part and sealed metadata fit well
_ERROR_KEYS = _keys("code", "message")
_ABORT_KEYS = _keys("reason")


def _parse_hello(obj: dict[str, Any]) -> Hello:
    _require_keys(obj, "HELLO", _HELLO_KEYS)
    features = _array(obj["features"], "HELLO.features", MAX_FEATURES)
    return Hello(
        version=_int(obj["version"], "HELLO.version", 0, MAX_REQUEST_ID),
        node_id=_hex(obj["node_id"], "HELLO.node_id"),
        org=_plain_text(obj["org"], "HELLO.org", max_len=MAX_ORG),
        listen=_listen(obj["listen"], "HELLO.listen"),
        features=tuple(
            _plain_text(f, "HELLO.features[]", max_len=MAX_FEATURE_LEN) for f in features
        ),
        proof=_optional_hex(obj["proof"], "HELLO.proof"),
        box_key=_optional_hex(obj["box_key"], "HELLO.box_key"),
    )


def _parse_store(obj: dict[str, Any]) -> Store:
    _require_keys(obj, "STORE", _STORE_KEYS)
    size = obj["size"]
    return Store(
        owner=_hex(obj["owner"], "STORE.owner"),
        blob=_hex(obj["blob"], "STORE.blob"),
        size=None if size is None else _int(size, "STORE.size", 0, SIZE_LIMIT - 1),
        version=_int(obj["version"], "STORE.version", 0, MAX_VERSION),
    )


def _parse_fetch(obj: dict[str, Any]) -> Fetch:
    _require_keys(obj, "FETCH", _OWNER_BLOB_KEYS)
    return Fetch(owner=_hex(obj["owner"], "FETCH.owner"), blob=_hex(obj["blob"], "FETCH.blob"))


def _parse_delete(obj: dict[str, Any]) -> Delete:
    _require_keys(obj, "DELETE", _DELETE_KEYS)
    signature = obj["signature"]
    if not isinstance(signature, str) or _HEX_SIGNATURE.fullmatch(signature) is None:
        _fail("DELETE.signature", f"not 128 lowercase hex: {_short(signature)}")
    return Delete(
        owner=_hex(obj["owner"], "DELETE.owner"),
        blob=_hex(obj["blob"], "DELETE.blob"),
        version=_int(obj["version"], "DELETE.version", 0, MAX_VERSION),
        key=_hex(obj["key"], "DELETE.key"),
        signature=signature,
    )


def _parse_head(obj: dict[str, Any]) -> Head:
    _require_keys(obj, "HEAD", _OWNER_BLOB_KEYS)
    return Head(owner=_hex(obj["owner"], "HEAD.owner"), blob=_hex(obj["blob"], "HEAD.blob"))


def _parse_head_reply(obj: dict[str, Any]) -> HeadReply:
    _require_keys(obj, "HEAD_REPLY", _HEAD_REPLY_KEYS)
    header = _text(obj["header"], "HEAD_REPLY.header", max_len=2 * MAX_HEAD)
    if _HEX_BYTES.fullmatch(header) is None:
        _fail("HEAD_REPLY.header", "not lowercase hex bytes")
    return HeadReply(size=_int(obj["size"], "HEAD_REPLY.size", 0, SIZE_LIMIT - 1), header=header)


def _parse_digest(obj: dict[str, Any]) -> Digest:
    _require_keys(obj, "DIGEST", _OWNER_KEYS)
    return Digest(owner=_hex(obj["owner"], "DIGEST.owner"))


def _parse_digest_reply(obj: dict[str, Any]) -> DigestReply:
    _require_keys(obj, "DIGEST_REPLY", _DIGEST_REPLY_KEYS)
    return DigestReply(
        digest=_hex(obj["digest"], "DIGEST_REPLY.digest"),
        count=_int(obj["count"], "DIGEST_REPLY.count", 0, SIZE_LIMIT - 1),
    )


def _parse_list(obj: dict[str, Any]) -> List:
    _require_keys(obj, "LIST", _LIST_KEYS)
    return List(
        owner=_hex(obj["owner"], "LIST.owner"),
        after=_optional_hex(obj["after"], "LIST.after"),
        limit=_int(obj["limit"], "LIST.limit", 1, MAX_LIST_PAGE),
    )


def _parse_ack(obj: dict[str, Any]) -> Ack:
    _require_keys(obj, "ACK", frozenset())
    return Ack()


def _parse_ping(obj: dict[str, Any]) -> Ping:
    _require_keys(obj, "PING", frozenset())
    return Ping()


def _parse_fetch_reply(obj: dict[str, Any]) -> FetchReply:
    _require_keys(obj, "FETCH_REPLY", _FETCH_REPLY_KEYS)
    return FetchReply(size=_int(obj["size"], "FETCH_REPLY.size", 0, SIZE_LIMIT - 1))


def _parse_list_reply(obj: dict[str, Any]) -> ListReply:
    _require_keys(obj, "LIST_REPLY", _LIST_REPLY_KEYS)
    items = _array(obj["entries"], "LIST_REPLY.entries", MAX_LIST_PAGE)
    entries = tuple(_list_entry(item) for item in items)
    if any(a.blob >= b.blob for a, b in itertools.pairwise(entries)):
        _fail("LIST_REPLY.entries", "not strictly ascending")
    return ListReply(entries=entries, more=_bool(obj["more"], "LIST_REPLY.more"))


def _list_entry(item: object) -> ListEntry:
    what = "LIST_REPLY.entries[]"
    fields = _array(item, what, 3)
    if len(fields) != 3:
        _fail(what, "expected [blob, version, deleted]")
    return ListEntry(
        blob=_hex(fields[0], what),
        version=_int(fields[1], what, 0, MAX_VERSION),
        deleted=_bool(fields[2], what),
    )


def _parse_error(obj: dict[str, Any]) -> Error:
    _require_keys(obj, "ERROR", _ERROR_KEYS)
    code = _text(obj["code"], "ERROR.code", max_len=32, min_len=1)
    if _ERROR_CODE.fullmatch(code) is None:
        _fail("ERROR.code", f"not a [a-z_] token: {_short(code)}")
    return Error(code=code, message=_text(obj["message"], "ERROR.message", max_len=MAX_TEXT))


def _parse_abort(obj: dict[str, Any]) -> Abort:
    _require_keys(obj, "ABORT", _ABORT_KEYS)
    return Abort(reason=_text(obj["reason"], "ABORT.reason", max_len=MAX_TEXT))


_PARSERS: dict[MessageType, Callable[[dict[str, Any]], Message]] = {
    MessageType.HELLO: _parse_hello,
    MessageType.STORE: _parse_store,
    MessageType.FETCH: _parse_fetch,
    MessageType.DELETE: _parse_delete,
    MessageType.LIST: _parse_list,
    MessageType.DIGEST: _parse_digest,
    MessageType.DIGEST_REPLY: _parse_digest_reply,
    MessageType.HEAD: _parse_head,
    MessageType.HEAD_REPLY: _parse_head_reply,
    MessageType.ACK: _parse_ack,
    MessageType.PING: _parse_ping,
    MessageType.FETCH_REPLY: _parse_fetch_reply,
    MessageType.LIST_REPLY: _parse_list_reply,
    MessageType.ERROR: _parse_error,
    MessageType.ABORT: _parse_abort,
}


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


def decode(frame: Frame) -> Message:
    """Turn a frame into a message; ProtocolError on anything malformed."""
    _check_header(frame.type, frame.flags, len(frame.body), MAX_CONTROL_BODY, MAX_DATA_BODY)
    mtype = MessageType(frame.type)
    if mtype is MessageType.DATA:
        return Data(payload=frame.body, end=bool(frame.flags & FLAG_END))
    return _PARSERS[mtype](_load_body(frame.body, mtype.name))


# ------------------------------------------------------------------------ encoding


def _as_json(value: object) -> object:
    # Tuples become JSON arrays; anything else is left for the parser to judge.
    return list(value) if isinstance(value, tuple) else value


def _fields(message: Message) -> tuple[MessageType, dict[str, Any]]:
    if isinstance(message, Hello):
        return MessageType.HELLO, {
            "version": message.version,
            "node_id": message.node_id,
            "org": message.org,
            "listen": message.listen,
            "features": _as_json(message.features),
            "proof": message.proof,
            "box_key": message.box_key,
        }
    if isinstance(message, Store):
        return MessageType.STORE, {
            "owner": message.owner,
            "blob": message.blob,
            "size": message.size,
            "version": message.version,
        }
    if isinstance(message, Fetch):
        return MessageType.FETCH, {"owner": message.owner, "blob": message.blob}
    if isinstance(message, Delete):
        return MessageType.DELETE, {
            "owner": message.owner,
            "blob": message.blob,
            "version": message.version,
            "key": message.key,
            "signature": message.signature,
        }
    if isinstance(message, Digest):
        return MessageType.DIGEST, {"owner": message.owner}
    if isinstance(message, Head):
        return MessageType.HEAD, {"owner": message.owner, "blob": message.blob}
    if isinstance(message, List):
        return MessageType.LIST, {
            "owner": message.owner,
            "after": message.after,
            "limit": message.limit,
        }
    if isinstance(message, Ack):
        return MessageType.ACK, {}
    if isinstance(message, Ping):
        return MessageType.PING, {}
    if isinstance(message, FetchReply):
        return MessageType.FETCH_REPLY, {"size": message.size}
    if isinstance(message, ListReply):
        entries = [[e.blob, e.version, e.deleted] for e in message.entries]
        return MessageType.LIST_REPLY, {"entries": entries, "more": message.more}
    if isinstance(message, DigestReply):
        return MessageType.DIGEST_REPLY, {"digest": message.digest, "count": message.count}
    if isinstance(message, HeadReply):
        return MessageType.HEAD_REPLY, {"size": message.size, "header": message.header}
    if isinstance(message, Error):
        return MessageType.ERROR, {"code": message.code, "message": message.message}
    if isinstance(message, Abort):
        return MessageType.ABORT, {"reason": message.reason}
    raise TypeError(f"not a wire message: {type(message).__name__}")


def encode(message: Message, request_id: int, *, reply: bool = False) -> bytes:
    """One complete frame. ValueError if the decoder on the other side would refuse it."""
    _check_request_id(request_id)
    reply_flag = FLAG_REPLY if reply else 0
    if isinstance(message, Data):
        payload = bytes(message.payload)
        header = data_header(request_id, len(payload), end=message.end, reply=reply)
        return header + payload
    mtype, fields = _fields(message)
    try:
        # The very parser the receiver runs, so encode never emits what decode refuses.
        _PARSERS[mtype](fields)
    except ProtocolError as exc:
        raise ValueError(f"invalid message: {exc}") from None
    body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    raw = body.encode("utf-8")
    if len(raw) > MAX_CONTROL_BODY:
        raise ValueError(f"{mtype.name} body of {len(raw)} bytes exceeds {MAX_CONTROL_BODY}")
    return HEADER.pack(mtype, reply_flag, request_id, len(raw)) + raw
