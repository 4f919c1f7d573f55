"""Frames: a 10-byte header and a bounded body, and the decoder that cuts a byte stream into them.

Every frame is ``type u8 | flags u8 | request id u32 | body length u32 | body``.
The decoder is the model for the rest: pure, bounded, and it closes nothing itself.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NoReturn

PROTOCOL_VERSION = 5  # 4: DIGEST of a prefix, and its children; 5: HORIZON
# HELLO features: this org places its files on chosen peers (do not relay them).
PLACED = "placed"
HEADER = struct.Struct("!BBII")
MAX_CONTROL_BODY = 64 * 1024
MAX_DATA_BODY = 1024 * 1024
# A listing entry carries its proof (a 140-byte record, as hex): 128 fit a body well.
MAX_LIST_PAGE = 128
MAX_DIGEST_CHILDREN = 256  # a node of the digest tree has one child per byte value
# Node ids a HORIZON_REPLY names (67 bytes each as JSON): a node that met more says so.
MAX_MET = 512

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
    RELEASE = 19
    HORIZON = 20
    HORIZON_REPLY = 21


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


class ProtocolError(Exception):
    """The peer broke the wire format; the message is one line for the log.

    The connection must be closed: after a framing error the byte stream can no
    longer be trusted to be aligned on frame boundaries.
    """


def brief(value: object) -> str:
    """repr() keeps an attacker-chosen value on one line; truncation keeps it short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def fail(what: str, problem: str) -> NoReturn:
    raise ProtocolError(f"{what}: {problem}")


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    request_id: int
    body: bytes | memoryview  # a DATA piece is a view of the bytes received


# --------------------------------------------------------------------------- framing


def check_header(mtype: int, flags: int, length: int, max_control: int, max_data: int) -> None:
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
                check_header(mtype, flags, length, self._max_control, self._max_data)
                if length == 0:
                    frames.append(Frame(mtype, flags, request_id, b""))
                else:
                    self._pending = (mtype, flags, request_id, length)
            elif self._pending[0] == MessageType.DATA:
                # Bulk data is passed on as it arrives, each piece a DATA frame of
                # its own (FLAG_END only on the last): never buffered, never copied
                # (a view of the immutable bytes received).
                mtype, flags, request_id, length = self._pending
                chunk = view[pos : pos + length]
                pos += len(chunk)
                remaining = length - len(chunk)
                piece_flags = flags if remaining == 0 else flags & ~FLAG_END
                frames.append(Frame(mtype, piece_flags, request_id, chunk))
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


def check_request_id(request_id: int) -> None:
    if (
        isinstance(request_id, bool)
        or not isinstance(request_id, int)
        or not 0 <= request_id <= MAX_REQUEST_ID
    ):
        raise ValueError(f"request id {brief(request_id)} is not a u32")


def data_header(request_id: int, length: int, *, end: bool, reply: bool) -> bytes:
    """The header of a DATA frame, so a payload can be written without concatenating it."""
    check_request_id(request_id)
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_DATA_BODY:
        raise ValueError(f"DATA length {brief(length)} not in 0..{MAX_DATA_BODY}")
    flags = (FLAG_END if end else 0) | (FLAG_REPLY if reply else 0)
    return HEADER.pack(MessageType.DATA, flags, request_id, length)
