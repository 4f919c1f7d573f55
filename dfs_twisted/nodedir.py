"""The names of the files in a node directory's ``private/``.

A module of their own, with no imports: the `dfs` command finds a node's socket
and token through them without loading the TLS and certificate code that makes
those files (every command's start-up time).
"""

from __future__ import annotations

KEY_FILE = "node.key"
BOX_FILE = "box.key"  # X25519: what per-file grants to this node are encrypted to
CERT_FILE = "node.crt"
PINS_FILE = "known_peers.json"
TOKEN_FILE = "api_token"
API_SOCKET = "api.sock"
