"""Reaching a node's API from elsewhere, without handing the token to an impostor.

On the node's machine the `dfs` command talks to the node over a Unix socket
inside ``private/`` (mode 0700): only the node's user can be listening there.
From another machine or user it needs the API over TLS (``--api-tls``), served
with the node's own certificate, and an *access file* holding the token and
the node id: `dfs` checks that the server's key hashes to that id before it
sends anything, so a stale address, a hijacked port or a man in the middle
never receives the token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from .crypto import is_hex_id
from .identity import NodeIdentity

_MAGIC = "dfs-api-access"
FORMAT_VERSION = 1


class AccessError(ValueError):
    """An access file that cannot be used (one-line reason)."""


@dataclass(frozen=True)
class AccessFile:
    """What a remote `dfs` needs: the node's id (to check the server) and its token."""

    node_id: str
    org: str
    token: str = field(repr=False)

    def to_bytes(self) -> bytes:
        body = {
            "format": _MAGIC,
            "version": FORMAT_VERSION,
            "node_id": self.node_id,
            "org": self.org,
            "token": self.token,
        }
        return (json.dumps(body, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AccessFile:
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("format") != _MAGIC:
            raise AccessError(
                "not a dfs access file (make one on the node's machine with "
                "`dfs --node DIR access -o FILE`)"
            )
        if body.get("version") != FORMAT_VERSION:
            raise AccessError(f"access file version {body.get('version')!r} not supported")
        node_id, org, token = body.get("node_id"), body.get("org"), body.get("token")
        if not is_hex_id(node_id):
            raise AccessError("the access file's node_id is not a node id")
        if not isinstance(token, str) or not token or not token.isprintable():
            raise AccessError("the access file holds no usable token")
        return cls(node_id, org if isinstance(org, str) else "?", token)


@implementer(IOpenSSLServerConnectionCreator)
class ApiTLS:
    """TLS 1.3 for the API, with the node's certificate (its id is the key's hash)."""

    def __init__(self, identity: NodeIdentity) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(identity.certificate)
        ctx.use_privatekey(identity.key)
        ctx.check_privatekey()
        self._context = ctx

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_accept_state()
        return conn
