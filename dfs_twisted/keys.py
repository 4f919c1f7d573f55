"""Read keys: an org's key handed to another org, and the keyring that holds them.

A read key file names the org (id and human name) and carries its org key. It
lets the holder find and decrypt that org's files; it gives no right to write or
delete them (writes are authorized by the TLS identity of the owner's node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .crypto import FormatError, OrgKey
from .identity import OrgSpecError, SecretFileError, create_secret, id_hint, match_org
from .store import InvalidId, parse_id

_MAGIC = "dfs-read-key"
FORMAT_VERSION = 1


class ReadKeyError(Exception):
    """A read key that cannot be used (one-line reason)."""


@dataclass(frozen=True)
class ReadKey:
    org_id: str
    org: str
    key: OrgKey

    def to_bytes(self) -> bytes:
        body = {
            "format": _MAGIC,
            "version": FORMAT_VERSION,
            "org_id": self.org_id,
            "org": self.org,
            "key": self.key.root.hex(),
        }
        return (json.dumps(body, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReadKey:
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.get("format") != _MAGIC:
                raise ValueError("not a dfs read key")
            if body.get("version") != FORMAT_VERSION:
                raise ValueError(f"read key format version {body.get('version')!r} not supported")
            org = body["org"]
            if not isinstance(org, str) or not 1 <= len(org) <= 128:
                raise ValueError("bad org name")
            root = bytes.fromhex(body["key"])
            return cls(parse_id(body["org_id"]), org, OrgKey(root))
        except (ValueError, KeyError, TypeError, InvalidId, FormatError) as e:
            raise ReadKeyError(f"not a usable read key: {e}") from None

    def write_new(self, path: Path) -> None:
        """Write to a new file, mode 0600; never overwrite one."""
        try:
            create_secret(path, self.to_bytes())
        except SecretFileError as e:
            raise ReadKeyError(str(e)) from None


class Keyring:
    """Read keys of other orgs imported into ``private/keys/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def all(self) -> list[ReadKey]:
        keys = []
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.key")):
                try:
                    keys.append(ReadKey.from_bytes(path.read_bytes()))
                except (OSError, ReadKeyError):
                    continue
        return keys

    def add(self, key: ReadKey) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{key.org_id}.key"
        path.unlink(missing_ok=True)  # a newer key for the same org replaces the old one
        key.write_new(path)
        return path

    def find(self, spec: str) -> ReadKey:
        """The key for ORG: its name, or id: and its id or an unambiguous 8+ hex prefix."""
        try:
            matches = match_org(spec, self.all())
        except OrgSpecError as e:
            raise ReadKeyError(str(e)) from None
        if not matches:
            raise ReadKeyError(
                f"no read key for org {spec!r}{id_hint(spec)}: import one with `dfs key import`"
            )
        if len(matches) > 1:
            ids = ", ".join(f"id:{k.org_id}" for k in matches)
            raise ReadKeyError(f"{spec!r} matches {len(matches)} orgs: {ids}; give more of the id")
        return matches[0]
