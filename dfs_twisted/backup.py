"""A node's ``private/`` (and its dfs.toml) as one archive encrypted with a passphrase.

Format: a 32-byte header (magic, scrypt cost, salt, nonce) then a tar of the files,
sealed with AES-256-GCM under a key scrypt derives from the passphrase; the header
is the associated data, so a changed byte anywhere fails the whole archive.
``private/`` is small (keys, the token, pins), so it is sealed in one piece.
Restoring checks every name in the archive: only ``dfs.toml`` and regular files
under ``private/`` come out, into a directory that did not hold a node.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"DFSBAK01"
_HEADER = struct.Struct(">8sBBB16s12s")  # magic, log2(n), r, p, salt, nonce
HEADER_SIZE = _HEADER.size
LOG2_N, R, P = 17, 8, 1  # scrypt: 128 MiB and about half a second per try
MIN_PASSPHRASE = 8
CONFIG = "dfs.toml"
PRIVATE = "private"


class BackupError(Exception):
    """An archive that cannot be made or opened (one-line reason)."""


@dataclass(frozen=True)
class Entry:
    """One file of a node directory: its path relative to the directory, and its bytes."""

    path: str
    data: bytes


def check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")


def _key(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise BackupError("not a dfs backup (unknown key derivation cost)")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(passphrase.encode())


def seal(entries: list[Entry], passphrase: str) -> bytes:
    """The archive of ``entries``, encrypted under ``passphrase``."""
    check_passphrase(passphrase)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.size = len(entry.data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(entry.data))
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = _HEADER.pack(MAGIC, LOG2_N, R, P, salt, nonce)
    key = _key(passphrase, salt, LOG2_N, R, P)
    return header + AESGCM(key).encrypt(nonce, buffer.getvalue(), header)


def unseal(archive: bytes, passphrase: str) -> list[Entry]:
    """The files in an archive, each name checked; BackupError if anything is off."""
    if len(archive) < HEADER_SIZE or not archive.startswith(MAGIC):
        raise BackupError("not a dfs backup")
    header = archive[:HEADER_SIZE]
    _, log2_n, r, p, salt, nonce = _HEADER.unpack(header)
    key = _key(passphrase, salt, log2_n, r, p)
    try:
        plain = AESGCM(key).decrypt(nonce, archive[HEADER_SIZE:], header)
    except InvalidTag:
        raise BackupError("wrong passphrase, or the archive is damaged") from None
    entries = []
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile() or not is_safe_path(member.name):
                raise BackupError(f"the archive holds an unexpected entry {member.name!r}")
            extracted = tar.extractfile(member)
            assert extracted is not None
            entries.append(Entry(member.name, extracted.read()))
    return entries


def is_safe_path(name: str) -> bool:
    """``dfs.toml`` or a plain relative path under ``private/``."""
    path = PurePosixPath(name)
    if name == CONFIG:
        return True
    return (
        not path.is_absolute()
        and len(path.parts) >= 2
        and path.parts[0] == PRIVATE
        and all(part not in ("", ".", "..") for part in path.parts)
    )


def collect(node_dir: Path) -> list[Entry]:
    """Every regular file of ``private/`` (the API socket excepted) and dfs.toml."""
    private = node_dir / PRIVATE
    if not private.is_dir():
        raise BackupError(f"{node_dir} is not a node directory (no private/)")
    entries = []
    config = node_dir / CONFIG
    try:
        if config.is_file():
            entries.append(Entry(CONFIG, config.read_bytes()))
        for path in sorted(private.rglob("*")):
            if path.is_file() and not path.is_symlink():
                entries.append(Entry(path.relative_to(node_dir).as_posix(), path.read_bytes()))
    except OSError as e:
        raise BackupError(f"cannot read {e.filename}: {e.strerror}") from None
    return entries


def restore(entries: list[Entry], node_dir: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """Write ``entries`` into ``node_dir``, which must be new or empty: nothing is overwritten.

    Durable when it returns: every file, and every directory that gained an entry,
    went through ``fsync`` (tests record it).
    """
    if node_dir.exists() and (not node_dir.is_dir() or any(node_dir.iterdir())):
        raise BackupError(f"{node_dir} exists and is not empty: restore into a new directory")
    if not any(e.path.startswith(PRIVATE + "/") for e in entries):
        raise BackupError("the archive holds no private/ files")
    try:
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / PRIVATE).mkdir(mode=0o700)
        # A file synced in a directory whose entry is not may still vanish in a crash.
        dirs = {node_dir.parent, node_dir}
        for entry in entries:
            if not is_safe_path(entry.path):
                raise BackupError(f"refusing to restore {entry.path!r}")
            target = node_dir / entry.path
            for parent in reversed(target.relative_to(node_dir).parents[:-1]):
                (node_dir / parent).mkdir(mode=0o700, exist_ok=True)
                dirs.add(node_dir / parent)
            mode = 0o644 if entry.path == CONFIG else 0o600
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(entry.data)
                f.flush()
                fsync(f.fileno())
        # Deepest first: a directory's own entry is synced in its parent after it.
        for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as e:
        raise BackupError(f"cannot write {e.filename}: {e.strerror}") from None
