"""One decoder and one encoder for every control message: JSON bodies checked field by field."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from .frames import (
    FLAG_END,
    FLAG_REPLY,
    HEADER,
    MAX_CONTROL_BODY,
    MAX_DATA_BODY,
    Frame,
    MessageType,
    ProtocolError,
    brief,
    check_header,
    check_request_id,
    data_header,
    fail,
)
from .messages import _SCHEMAS, Children, Data, Entries, Message

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


def _load_body(body: bytes | memoryview, what: str) -> dict[str, Any]:
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
        fail(mtype.name, f"unexpected key {brief(extra[0])}")
    values = {}
    for name, spec in schema:
        if name not in obj:
            fail(mtype.name, f"missing key {name!r}")
        values[name] = spec.parse(obj[name], f"{mtype.name}.{name}")
    message: Message = cls(**values)
    return message


def decode(frame: Frame) -> Message:
    """Turn a frame into a message; ProtocolError on anything malformed."""
    check_header(frame.type, frame.flags, len(frame.body), MAX_CONTROL_BODY, MAX_DATA_BODY)
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
        elif isinstance(spec, Children):
            value = Children.dump(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return mtype, out


def encode(message: Message, request_id: int, *, reply: bool = False) -> bytes:
    """One complete frame. ValueError if the decoder on the other side would refuse it."""
    check_request_id(request_id)
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
