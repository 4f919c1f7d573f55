"""Every message, declared once as a frozen dataclass whose field types carry their bounds."""

from __future__ import annotations

import enum
import itertools
import re
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, TypeAlias

from .fields import (
    _ERROR_CODE,
    HEX_ID,
    SIGNATURE,
    SIZE,
    VERSION,
    Array,
    Bool,
    FieldType,
    Int,
    Listen,
    Matching,
    Nullable,
    Text,
    hex_bytes,
)
from .frames import (
    MAX_CHUNK_INDEX,
    MAX_DIGEST_CHILDREN,
    MAX_FEATURE_LEN,
    MAX_FEATURES,
    MAX_HEAD,
    MAX_LIST_PAGE,
    MAX_MET,
    MAX_ORG,
    MAX_PROOF,
    MAX_REQUEST_ID,
    MAX_TEXT,
    MessageType,
    fail,
)

_PREFIX = re.compile(r"(?:[0-9a-f]{2}){0,2}")


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
    SLOW_DOWN = "slow_down"  # over the sender's rate of deletions (older nodes send it)
    ABORTED = "aborted"
    REFUSED = "refused"  # the connection itself (admission, pinning)
    IO = "io"


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
class Release:
    """The owner's signed release (crypto.Release): this holder may drop its replica."""

    TYPE: ClassVar[MessageType] = MessageType.RELEASE

    owner: Annotated[str, HEX_ID]
    blob: Annotated[str, HEX_ID]
    version: Annotated[int, VERSION]
    holder: Annotated[str, HEX_ID]
    key: Annotated[str, HEX_ID]  # the owner's Ed25519 public key, 64 hex
    signature: Annotated[str, SIGNATURE]


@dataclass(frozen=True, slots=True)
class Horizon:
    """The owner's signed horizon of its namespace (crypto.Horizon), as the sender
    holds it (all None: it holds none): every tombstone at or below it is collected.
    Answered with the receiver's own, after it took this one if newer."""

    TYPE: ClassVar[MessageType] = MessageType.HORIZON

    owner: Annotated[str, HEX_ID]
    version: Annotated[int | None, Nullable(VERSION)] = None
    key: Annotated[str | None, Nullable(HEX_ID)] = None  # the owner's Ed25519 public key
    signature: Annotated[str | None, Nullable(SIGNATURE)] = None


@dataclass(frozen=True, slots=True)
class List:
    TYPE: ClassVar[MessageType] = MessageType.LIST

    owner: Annotated[str, HEX_ID]
    # The page starts at the first blob id > after.
    after: Annotated[str | None, Nullable(HEX_ID)] = None
    limit: Annotated[int, Int(1, MAX_LIST_PAGE)] = MAX_LIST_PAGE


@dataclass(frozen=True, slots=True)
class Digest:
    """What do you hold of ``owner``'s namespace (or of the blob ids that start with
    ``prefix``), in one hash; with ``children``, also each child's (merkle.py)?"""

    TYPE: ClassVar[MessageType] = MessageType.DIGEST

    owner: Annotated[str, HEX_ID]
    # "" the whole namespace; 2 hex: a first-level node of its tree; 4 hex: a leaf.
    prefix: Annotated[str, Matching(_PREFIX, "0, 2 or 4 lowercase hex", 4)] = ""
    children: Annotated[bool, Bool()] = False


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
            fail(what, "not strictly ascending")
        return entries

    def _entry(self, item: object, what: str) -> ListEntry:
        if not isinstance(item, list) or len(item) != 4:
            fail(what, "expected [blob, version, deleted, proof]")
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
class DigestChild:
    """One child of a node of the digest tree: the next byte of its prefix, its
    digest and how many entries it covers."""

    byte: int
    digest: str
    count: int


class Children:
    """DIGEST_REPLY's children: ``[byte, digest, count]`` arrays, ascending by byte."""

    _BYTE = Int(0, 255)

    def parse(self, value: object, what: str) -> tuple[DigestChild, ...]:
        items = Array(_Passthrough(), MAX_DIGEST_CHILDREN).parse(value, what)
        children = tuple(self._child(item, f"{what}[]") for item in items)
        if any(a.byte >= b.byte for a, b in itertools.pairwise(children)):
            fail(what, "not strictly ascending")
        return children

    def _child(self, item: object, what: str) -> DigestChild:
        if not isinstance(item, list) or len(item) != 3:
            fail(what, "expected [byte, digest, count]")
        return DigestChild(
            byte=self._BYTE.parse(item[0], what),
            digest=HEX_ID.parse(item[1], what),
            count=SIZE.parse(item[2], what),
        )

    @staticmethod
    def dump(children: tuple[DigestChild, ...]) -> list[list[object]]:
        return [[c.byte, c.digest, c.count] for c in children]


@dataclass(frozen=True, slots=True)
class DigestReply:
    TYPE: ClassVar[MessageType] = MessageType.DIGEST_REPLY

    digest: Annotated[str, HEX_ID]  # a hash over the (blob, version, deleted) entries
    count: Annotated[int, SIZE]
    # The non-empty children of the prefix asked, if asked (256 fit a body: about 20 KiB).
    children: Annotated[tuple[DigestChild, ...], Children()] = ()


@dataclass(frozen=True, slots=True)
class HorizonReply:
    """The receiver's horizon of the namespace asked (all None: none); to the owner of
    that namespace only, also every node the receiver has met (``complete``: all of
    them are named), which the owner waits for before it collects anything."""

    TYPE: ClassVar[MessageType] = MessageType.HORIZON_REPLY

    version: Annotated[int | None, Nullable(VERSION)] = None
    key: Annotated[str | None, Nullable(HEX_ID)] = None
    signature: Annotated[str | None, Nullable(SIGNATURE)] = None
    met: Annotated[tuple[str, ...], Array(HEX_ID, MAX_MET)] = ()
    complete: Annotated[bool, Bool()] = False


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

    payload: bytes | memoryview
    end: bool


Message: TypeAlias = (
    Hello
    | Store
    | Fetch
    | Delete
    | Release
    | Horizon
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
    | HorizonReply
    | AuditReply
    | Error
    | Abort
    | Data
)

# Requests answered by one control message (no DATA either way).
ControlRequest: TypeAlias = Delete | Release | Horizon | List | Digest | Head | Audit

_CONTROL_MESSAGES: tuple[type[Any], ...] = (
    Hello,
    Store,
    Fetch,
    Delete,
    Release,
    Horizon,
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
    HorizonReply,
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
