"""The field types of messages: each carries its bounds and checks a decoded value."""

from __future__ import annotations

import re
import typing
from typing import Any

from .frames import MAX_LISTEN, MAX_VERSION, SIZE_LIMIT, brief, fail

_HEX_ID = re.compile(r"[0-9a-f]{64}")
_ERROR_CODE = re.compile(r"[a-z_]{1,32}")
# Hostname, IPv4 or (bracketed / zone-qualified) IPv6; the protocol layer resolves it.
_LISTEN = re.compile(r"(?P<host>[A-Za-z0-9._:%\[\]-]+):(?P<port>[0-9]{1,5})")
# C0/C1 controls, line/paragraph separators and bidi overrides: anything that could
# forge a log line or disguise an org name shown to an operator.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


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
            fail(what, f"expected an integer, got {type(value).__name__}")
        if not self.low <= value <= self.high:
            fail(what, f"{brief(value)} not in {self.low}..{self.high}")
        return value


class Bool:
    def parse(self, value: object, what: str) -> bool:
        if not isinstance(value, bool):
            fail(what, f"expected a boolean, got {type(value).__name__}")
        return value


class Text:
    """A string of bounded length; ``plain``: no control characters either."""

    def __init__(self, max_len: int, min_len: int = 0, *, plain: bool = False) -> None:
        self.max_len, self.min_len, self.plain = max_len, min_len, plain

    def parse(self, value: object, what: str) -> str:
        if not isinstance(value, str):
            fail(what, f"expected a string, got {type(value).__name__}")
        if not self.min_len <= len(value) <= self.max_len:
            fail(what, f"length {len(value)} not in {self.min_len}..{self.max_len}")
        try:
            # JSON "\ud800" escapes decode to lone surrogates, which later blow up
            # whoever encodes the string (logs, re-sent messages).
            value.encode("utf-8")
        except UnicodeEncodeError:
            fail(what, "contains a lone surrogate")
        if self.plain and _CONTROL.search(value):
            fail(what, "contains a control character")
        return value


class Matching:
    """A string that matches a pattern (``describe`` says what it should be)."""

    def __init__(self, pattern: re.Pattern[str], describe: str, max_len: int = 0) -> None:
        self.pattern, self.describe, self.max_len = pattern, describe, max_len

    def parse(self, value: object, what: str) -> str:
        if self.max_len:
            value = Text(self.max_len).parse(value, what)
        if not isinstance(value, str) or self.pattern.fullmatch(value) is None:
            fail(what, f"not {self.describe}: {brief(value)}")
        return value


class Listen:
    def parse(self, value: object, what: str) -> str:
        text = Text(MAX_LISTEN, 1).parse(value, what)
        match = _LISTEN.fullmatch(text)
        if match is None or int(match["port"]) > 65535:
            fail(what, f"not host:port: {brief(text)}")
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
            fail(what, f"expected an array, got {type(value).__name__}")
        if len(value) > self.max_items:
            fail(what, f"{len(value)} items, at most {self.max_items} allowed")
        return tuple(self.item.parse(item, f"{what}[]") for item in value)


HEX_ID = Matching(_HEX_ID, "a 64-char lowercase hex id")
SIGNATURE = Matching(re.compile(r"[0-9a-f]{128}"), "128 lowercase hex")
SIZE = Int(0, SIZE_LIMIT - 1)
VERSION = Int(0, MAX_VERSION)


def hex_bytes(max_bytes: int) -> Matching:
    """Whole bytes as lowercase hex, at most ``max_bytes`` of them."""
    return Matching(re.compile(r"(?:[0-9a-f]{2})*"), "lowercase hex bytes", 2 * max_bytes)
