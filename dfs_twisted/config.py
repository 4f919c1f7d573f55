"""dfs.toml: a node's settings, kept in its data dir (written by `dfs init`).

Its keys are the long names of the node's flags (``port``, ``peers``, ``org``,
``quota``, ...); a flag given on the command line overrides the file. Parsing
and rendering are pure: text in, settings out, and back.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import PurePath

CONFIG_FILE = "dfs.toml"

# What each key may hold: "text" (a string, or a number where the flag takes one),
# "list" (peers: a list of strings, or one comma-separated string), "flag" (a boolean).
_TEXT, _LIST, _FLAG = "text", "list", "flag"
SETTINGS: dict[str, str] = {
    "port": _TEXT,
    "peers": _LIST,
    "listen": _TEXT,
    "api": _TEXT,
    "api-tls": _TEXT,
    "org": _TEXT,
    "network-key": _TEXT,
    "allow": _TEXT,
    "quota": _TEXT,
    "reserve": _TEXT,
    "scrub-period": _TEXT,
    "scrub-rate": _TEXT,
    "sync-period": _TEXT,
    "handshake-timeout": _TEXT,
    "stall-timeout": _TEXT,
    "max-peers": _TEXT,
    "audit-period": _TEXT,
    "audit-sample": _TEXT,
    "replicas": _TEXT,
    "erasure": _TEXT,
    "repair-after": _TEXT,
    "collect-after": _TEXT,
    "log-format": _TEXT,
    "log-level": _TEXT,
    "no-relay": _FLAG,
}
# Settings naming files: a relative path in dfs.toml is relative to the data dir.
PATH_SETTINGS = ("network-key", "allow")

Setting = str | bool | list[str]


class ConfigError(ValueError):
    """A dfs.toml that cannot be used (one-line reason)."""


def parse_config(text: str, source: str) -> dict[str, Setting]:
    """The settings in a dfs.toml, as the flags' own text (``port = 3000`` -> "3000")."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    settings: dict[str, Setting] = {}
    for key, value in raw.items():
        kind = SETTINGS.get(key)
        if kind is None:
            known = ", ".join(sorted(SETTINGS))
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {known})")
        settings[key] = _setting(key, kind, value, source)
    return settings


def _setting(key: str, kind: str, value: object, source: str) -> Setting:
    if kind == _FLAG:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false")
        return value
    if kind == _LIST:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
            return [str(v) for v in value]
        raise ConfigError(f'{source}: {key} must be a list like ["4000", "host:5000"]')
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{source}: {key} must be a string or a number")
    return str(value)


def resolve_paths(settings: Mapping[str, Setting], base: PurePath) -> dict[str, Setting]:
    """The settings with relative file paths made relative to ``base`` (the data dir)."""
    resolved = dict(settings)
    for key in PATH_SETTINGS:
        value = resolved.get(key)
        if isinstance(value, str) and value and not PurePath(value).is_absolute():
            resolved[key] = str(base / value)
    return resolved


def render_config(settings: Mapping[str, Setting], comment: str) -> str:
    """A dfs.toml holding ``settings`` (keys in SETTINGS), headed by ``comment``."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting {key!r}")
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, list):
            rendered = "[" + ", ".join(toml_string(v) for v in value) + "]"
        elif key == "port" and value.isdigit():
            rendered = value
        else:
            rendered = toml_string(value)
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
