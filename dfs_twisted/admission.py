"""Who may connect: a federation's network key and/or an allow-list of node ids.

A node proves it holds the network key with an HMAC over keying material
exported from the TLS session (RFC 5705/8446 exporters) and its own node id. The
exporter value is the same on both ends of one TLS session and differs for every
other, so a proof cannot be replayed on another connection or relayed by a man
in the middle, and the key itself never crosses the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .identity import SecretFileError, create_secret
from .store import InvalidId, parse_id

EXPORTER_LABEL = b"EXPORTER-dfs-admission-v1"
EXPORTER_LENGTH = 32
_KEY_MAGIC = "dfs-network-key-v1"


class AdmissionError(Exception):
    """A network key or allow file that cannot be used (one-line reason)."""


@dataclass(frozen=True)
class NetworkKey:
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> NetworkKey:
        return cls(secrets.token_bytes(32))

    def to_bytes(self) -> bytes:
        return f"{_KEY_MAGIC}\n{self.secret.hex()}\n".encode()

    @classmethod
    def load(cls, path: Path) -> NetworkKey:
        try:
            text = path.read_text("ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise AdmissionError(f"cannot read network key {path}: {e}") from None
        lines = text.split()
        if len(lines) != 2 or lines[0] != _KEY_MAGIC or len(lines[1]) != 64:
            raise AdmissionError(f"{path} is not a dfs network key")
        try:
            return cls(bytes.fromhex(lines[1]))
        except ValueError:
            raise AdmissionError(f"{path} is not a dfs network key") from None

    def create(self, path: Path) -> None:
        """Write to a new file, mode 0600; never overwrite one."""
        try:
            create_secret(path, self.to_bytes())
        except SecretFileError as e:
            raise AdmissionError(str(e)) from None

    def proof(self, binding: bytes, node_id: str) -> str:
        """What node ``node_id`` sends on the TLS session with exporter value ``binding``."""
        message = b"dfs admission v1\x00" + binding + node_id.encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


def load_allow_list(path: Path) -> frozenset[str]:
    """Node ids, one per line; ``#`` starts a comment."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AdmissionError(f"cannot read allow list {path}: {e}") from None
    allowed = set()
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            allowed.add(parse_id(entry.lower()))
        except InvalidId:
            raise AdmissionError(f"{path}:{number}: not a node id: {entry[:80]!r}") from None
    return frozenset(allowed)


@dataclass(frozen=True)
class Admission:
    """The rules a peer must pass; with neither set, anyone with a certificate may connect."""

    network_key: NetworkKey | None = None
    allowed: frozenset[str] | None = None

    @property
    def is_open(self) -> bool:
        return self.network_key is None and self.allowed is None

    def refuse_certificate(self, node_id: str) -> str | None:
        """Why a peer with this id may not connect (checked right after TLS), or None."""
        if self.allowed is not None and node_id not in self.allowed:
            return "node id not in the allow list"
        return None

    def proof(self, binding: bytes | None, node_id: str) -> str | None:
        if self.network_key is None or binding is None:
            return None
        return self.network_key.proof(binding, node_id)

    def refuse_proof(self, binding: bytes | None, node_id: str, proof: str | None) -> str | None:
        """Why a peer's HELLO fails the network key check, or None."""
        if self.network_key is None:
            return None
        if binding is None:
            return "network key required but this connection cannot bind a proof"
        if proof is None:
            return "no network key proof"
        if not hmac.compare_digest(proof, self.network_key.proof(binding, node_id)):
            return "wrong network key"
        return None
