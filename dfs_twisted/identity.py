"""A node's identity: its TLS key and self-signed certificate, its id, and peer pinning.

A node id is the SHA-256 of the certificate's SubjectPublicKeyInfo, as 64 lowercase hex.
Certificates are self-signed: trust comes from pinning ids, not from any authority.
The key is Ed25519: the same key signs this org's blobs and deletions, so anyone
can check a blob's owner from the blob alone (crypto.SealCheck).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from .nodedir import BOX_FILE, CERT_FILE, KEY_FILE

log = Logger()


class PrivateDirError(Exception):
    """The private directory cannot be used safely."""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or refuse one that others can read."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PrivateDirError(
            f"{path} is accessible by other users (mode {mode:03o}); run: chmod 700 {path}"
        )


def write_secret(path: Path, data: bytes, fsync: Callable[[int], None] = os.fsync) -> None:
    """Write a 0600 file atomically (temp, fsync, rename, fsync dir).

    ``fsync``: how the file and its directory are made durable (tests record it).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SecretFileError(Exception):
    """A secret file that cannot be created (one-line reason)."""


def create_secret(path: Path, data: bytes) -> None:
    """Write a new file, mode 0600, for the user to hand on; never overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretFileError(f"{path} exists; not overwriting it") from None
    except OSError as e:
        raise SecretFileError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_or_create_secret(path: Path, make: bytes) -> bytes:
    """Read a secret file, creating it with ``make`` the first time."""
    if not path.exists():
        write_secret(path, make)
    return path.read_bytes()


def node_id_of(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo, hex."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True)
class NodeIdentity:
    """This node's TLS key and self-signed certificate."""

    key: Ed25519PrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)
    node_id: str
    box: X25519PrivateKey = field(repr=False)

    @property
    def box_public(self) -> str:
        """The X25519 public key this node publishes in its HELLO, hex."""
        return (
            self.box.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )

    @classmethod
    def load_or_create(cls, private_dir: Path) -> NodeIdentity:
        key_path, cert_path = private_dir / KEY_FILE, private_dir / CERT_FILE
        if not key_path.exists() or not cert_path.exists():
            key = Ed25519PrivateKey.generate()
            cert = _self_signed(key)
            write_secret(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            write_secret(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            log.info("created node identity {node_id}", node_id=node_id_of(cert))
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise PrivateDirError(
                f"{key_path} is not an Ed25519 key (made by an older version?); "
                "move the node directory aside and start afresh"
            )
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        box_raw = load_or_create_secret(
            private_dir / BOX_FILE,
            X25519PrivateKey.generate()
            .private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            .hex()
            .encode(),
        )
        try:
            box = X25519PrivateKey.from_private_bytes(bytes.fromhex(box_raw.decode().strip()))
        except ValueError:
            raise PrivateDirError(f"{private_dir / BOX_FILE} is not an X25519 key") from None
        return cls(loaded, cert, node_id_of(cert), box)


def _self_signed(key: Ed25519PrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hashlib.sha256(spki).hexdigest())])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        # Validity is not what we trust (the pinned id is), so make it long-lived.
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .sign(key, None)  # Ed25519 signs without a separate digest
    )


def _accept_any_certificate(
    connection: SSL.Connection, cert: object, errno: int, depth: int, ok: int
) -> bool:
    # Self-signed certificates fail chain validation by design; the peer's id is
    # checked against pins after the handshake (PeerProtocol.handshakeCompleted).
    return True


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class MutualTLS:
    """TLS 1.3 with a client certificate required on both sides."""

    def __init__(self, identity: NodeIdentity) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(identity.certificate)
        ctx.use_privatekey(identity.key)
        ctx.check_privatekey()
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
        # No session resumption: every connection proves its certificate afresh.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_options(SSL.OP_NO_TICKET)
        self._context = ctx

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_connect_state()
        return conn

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_accept_state()
        return conn


class PinMismatch(Exception):
    """A known address presented a different node id."""


class PeerPins:
    """Trust on first use: the node id seen at an address is remembered and required."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pins: dict[str, str] = {}
        if path.exists():
            raw = json.loads(path.read_text("utf-8"))
            if isinstance(raw, dict):
                self._pins = {str(k): str(v) for k, v in raw.items()}

    def get(self, address: str) -> str | None:
        return self._pins.get(address)

    def check(self, address: str, node_id: str) -> None:
        """Raise PinMismatch if ``address`` is pinned to another id; pin it if new."""
        known = self._pins.get(address)
        if known is None:
            self._pins[address] = node_id
            write_secret(self._path, json.dumps(self._pins, indent=1, sort_keys=True).encode())
            log.info("pinned {node_id} for {address}", node_id=node_id, address=address)
        elif known != node_id:
            raise PinMismatch(
                f"{address} presented node id {node_id[:16]}..., "
                f"but it is pinned to {known[:16]}... (key changed?)"
            )


class NamedOrg(Protocol):
    @property
    def org_id(self) -> str: ...
    @property
    def org(self) -> str: ...


AnOrg = TypeVar("AnOrg", bound=NamedOrg)


MIN_ID_PREFIX = 8  # hex characters of a node id, after "id:"


class OrgSpecError(ValueError):
    """ORG as given cannot name one org (malformed, ambiguous): a one-line reason."""


def match_org(spec: str, orgs: Iterable[AnOrg]) -> list[AnOrg]:
    """ORG as a user gives it: an org name, or ``id:`` and a node id or a prefix of one.

    A name is only ever compared with names and an id only with ids: names are
    not authenticated, so a peer naming itself after another org's id must not
    shadow it. A name matching several nodes, and an id prefix shorter than
    MIN_ID_PREFIX, raise OrgSpecError; an id prefix matching several nodes
    returns them all (the caller names them).
    """
    candidates = {o.org_id: o for o in orgs}
    if spec.startswith("id:"):
        prefix = spec[3:].strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise OrgSpecError(f"{spec!r}: after id: comes a node id in hex")
        if len(prefix) < MIN_ID_PREFIX:
            raise OrgSpecError(
                f"{spec!r}: an id prefix needs at least {MIN_ID_PREFIX} hex characters"
            )
        return [o for org_id, o in candidates.items() if org_id.startswith(prefix)]
    named = [o for o in candidates.values() if o.org == spec]
    if len(named) > 1:
        ids = ", ".join(f"id:{o.org_id}" for o in named)
        raise OrgSpecError(f"org name {spec!r} matches {len(named)} nodes: {ids}; give one id")
    return named


def id_hint(spec: str) -> str:
    """A hint for a name that looks like a node id given without ``id:``."""
    if (
        not spec.startswith("id:")
        and len(spec) >= MIN_ID_PREFIX
        and all(c in "0123456789abcdefABCDEF" for c in spec)
    ):
        return f" (for a node id write id:{spec})"
    return ""


@dataclass(frozen=True)
class KnownOrg:
    org_id: str  # its node id
    org: str
    box_key: str  # X25519 public key, hex: what grants to it are encrypted to


class KnownOrgs:
    """The grant keys of the peers this node has met, kept so that a file can be
    shared with an org that is not connected at the moment."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._orgs: dict[str, KnownOrg] = {}
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            raw = {}
        if isinstance(raw, dict):
            for node_id, row in raw.items():
                if isinstance(row, dict) and {"org", "box_key"} <= row.keys():
                    self._orgs[str(node_id)] = KnownOrg(
                        str(node_id), str(row["org"]), str(row["box_key"])
                    )

    def met(self, node_id: str, org: str, box_key: str) -> None:
        known = KnownOrg(node_id, org, box_key)
        if self._orgs.get(node_id) == known:
            return
        self._orgs[node_id] = known
        rows = {k: {"org": v.org, "box_key": v.box_key} for k, v in sorted(self._orgs.items())}
        write_secret(self._path, json.dumps(rows, indent=1).encode())

    def ids(self) -> set[str]:
        """The node id of every peer met (kept from its first session on: durable)."""
        return set(self._orgs)

    def find(self, spec: str) -> list[KnownOrg]:
        """The one org ``spec`` names among those met, or none.

        Raises OrgSpecError (a ValueError) for a malformed spec and for one that
        matches several orgs, naming their ids.
        """
        matches = match_org(spec, self._orgs.values())
        if len(matches) > 1:
            ids = ", ".join(f"id:{k.org_id}" for k in matches)
            raise OrgSpecError(f"{spec!r} matches {len(matches)} orgs: {ids}; give more of the id")
        return matches
