"""How `dfs` reaches a node's API, and never hands the token to anything else.

- On the node's machine (``--node DIR``): through ``DIR/private/api.sock``, a Unix
  socket in a directory only the node's user can enter. ``api.url`` (plain HTTP
  on loopback, for the browser page and Prometheus) is never used for the token:
  after a crash it names a port anyone could listen on.
- From elsewhere (``--api https://HOST:PORT/ --token-file FILE``): over TLS to the
  node's ``--api-tls`` port, checking before anything is sent that the server's
  key hashes to the node id recorded in the access file with the token.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

from .display import shown
from .nodedir import API_SOCKET, TOKEN_FILE

BLOCK = 1 << 20
TIMEOUT = 300.0
FOLLOW_EVERY = 0.2  # seconds between looks at how far the node read an attached file


class FileBody(NamedTuple):
    """A regular file of ``size`` bytes, from its start. To the node's Unix socket
    it is attached to the request head (attached.py) and the node reads it itself;
    over TLS the kernel copies it to the socket (sendfile). Either way its bytes
    never pass through this process's memory. (Not a dataclass: that module loads
    `inspect`, about 10 ms of every command's start.)"""

    file: IO[bytes]
    size: int
    progress: Callable[[int], object]

    def send(self, sock: socket.socket) -> None:
        offset = 0
        while offset < self.size:
            sent = sock.sendfile(self.file, offset, min(BLOCK, self.size - offset))
            if not sent:
                raise OSError(f"the file shrank while it was sent ({offset} of {self.size} bytes)")
            offset += sent
            self.progress(sent)

    def follow(self, sock: socket.socket) -> None:
        """Until the node has read the whole attached file or answers: report how
        far it got."""
        follow(
            self.file.fileno(),
            self.size,
            self.progress,
            lambda seconds: bool(select.select([sock], [], [], seconds)[0]),
            "reading",
        )


def follow(
    fd: int,
    size: int,
    progress: Callable[[int], object],
    answered: Callable[[float], bool],
    doing: str,
) -> None:
    """Until ``size`` bytes or ``answered(seconds)`` (which waits at most that long):
    report how far the node got in an attached file, by the file offset this process
    shares with it. TimeoutError if the offset stands still for `TIMEOUT` seconds."""
    shown = 0
    moved = time.monotonic()
    while shown < size and not answered(FOLLOW_EVERY):
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        now = time.monotonic()
        if offset != shown:
            progress(offset - shown)
            shown, moved = offset, now
        elif now - moved > TIMEOUT:
            raise TimeoutError(f"the node stopped {doing} the file ({shown} of {size} bytes)")


Body = bytes | IO[bytes] | Iterator[bytes] | Iterator[memoryview] | FileBody | None


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class ApiFailure(CliError):
    """The node answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotTheNode(Exception):
    """The server is not the node the token belongs to."""


def find_node_dir(spec: str) -> Path:
    """``--node``: a node's directory, or the port N of ``./dfs-N`` (twistd's default)."""
    path = Path(spec)
    if path.is_dir():
        return path
    if spec.isdigit():
        default = Path(f"dfs-{spec}")
        if default.is_dir():
            return default
        raise CliError(
            f"no node directory {spec} or dfs-{spec} here "
            "(--node takes a node's directory, or the port of ./dfs-PORT)"
        )
    raise CliError(f"no node directory at {path}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT, blocksize=BLOCK)
        self._path = path
        self._attached: int | None = None

    def attach(self, fd: int) -> None:
        """Send ``fd`` with the next request head (SCM_RIGHTS)."""
        self._attached = fd

    def send(self, data: Any) -> None:
        fd, self._attached = self._attached, None
        if fd is None:
            super().send(data)
            return
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        sent = socket.send_fds(self.sock, [data], [fd])
        self.sock.sendall(memoryview(data)[sent:])

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to the node whose key hashes to ``node_id``; nothing is sent before the check."""

    def __init__(self, host: str, port: int, node_id: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # The certificate is self-signed: trust comes from the pinned id, checked below.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        super().__init__(host, port, timeout=TIMEOUT, context=context, blocksize=BLOCK)
        self._node_id = node_id

    def connect(self) -> None:
        super().connect()  # TCP and the TLS handshake
        from cryptography import x509  # here: a local command need not load it

        from .identity import node_id_of

        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        found = node_id_of(x509.load_der_x509_certificate(der)) if der else "no certificate"
        if found != self._node_id:
            self.sock.close()
            self.sock = None
            raise NotTheNode(found)


class NodeClient:
    """The API of one node, with its token."""

    def __init__(
        self,
        connection: Callable[[], http.client.HTTPConnection],
        token: str,
        where: str,
        local_dir: Path | None,
        node_id: str | None = None,
    ) -> None:
        self._connection = connection
        self._token = token
        self.where = where
        self.local_dir = local_dir  # None for a remote node
        self.node_id = node_id

    @classmethod
    def local(cls, node_dir: Path) -> NodeClient:
        private = node_dir / "private"
        socket_path = private / API_SOCKET
        try:
            mode = private.stat().st_mode & 0o777
        except FileNotFoundError:
            raise CliError(f"{node_dir} is not a node directory (no private/)") from None
        except OSError as e:
            raise CliError(f"cannot use {private}: {e.strerror}") from None
        if mode & 0o077:
            raise CliError(f"{private} is open to other users (mode {mode:03o}): not using it")
        try:
            token = (private / TOKEN_FILE).read_text().strip()
        except OSError as e:
            raise CliError(f"cannot read the API token of {node_dir}: {e.strerror}") from None
        if not socket_path.exists():
            raise CliError(
                f"node at {node_dir} is not running (no {socket_path}; if it runs, its "
                "data dir path may be too long for a Unix socket: see its log)"
            )
        return cls(lambda: _UnixConnection(str(socket_path)), token, str(node_dir), node_dir)

    @classmethod
    def remote(cls, url: str, token_file: str | None) -> NodeClient:
        from .access import AccessError, AccessFile  # here: a local command need not load it

        if token_file is None:
            raise CliError("--api needs --token-file FILE (an access file made by `dfs access`)")
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise CliError(
                f"--api {url}: only https:// (the node's --api-tls port); over plain "
                "HTTP the token would cross the network in the clear"
            )
        if parts.hostname is None:
            raise CliError(f"--api {url}: no host in the address")
        try:
            port = parts.port or 443
        except ValueError:
            raise CliError(f"--api {url}: bad port") from None
        path = Path(token_file)
        try:
            mode = path.stat().st_mode & 0o777
            data = path.read_bytes()
        except OSError as e:
            raise CliError(f"cannot read {token_file}: {e.strerror}") from None
        if mode & 0o077:
            raise CliError(f"{token_file} is readable by other users: chmod 600 {token_file}")
        try:
            access = AccessFile.from_bytes(data)
        except AccessError as e:
            raise CliError(f"{token_file}: {e}") from None
        host = parts.hostname
        return cls(
            lambda: _PinnedConnection(host, port, access.node_id),
            access.token,
            url,
            None,
            access.node_id,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Body = None,
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
        output: int | None = None,
    ) -> http.client.HTTPResponse:
        """``conn``: one from `connection`, kept for the next request once the answer
        is read (it connects again by itself if the node closed it). ``output``: an
        empty file the node writes a download into (`attaches` only)."""
        if conn is None:
            conn = self._connection()
        all_headers = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        if output is not None:
            assert isinstance(conn, _UnixConnection)
            all_headers["Dfs-Into"] = "file-descriptor"
            conn.attach(output)
        try:
            if isinstance(body, FileBody) and isinstance(conn, _UnixConnection):
                all_headers.update({"Dfs-Body": "file-descriptor", "Content-Length": "0"})
                conn.attach(body.file.fileno())
                conn.request(method, path, headers=all_headers)
                assert conn.sock is not None  # connected by request()
                body.follow(conn.sock)
            elif isinstance(body, FileBody):
                all_headers["Content-Length"] = str(body.size)
                conn.request(method, path, headers=all_headers)
                assert conn.sock is not None  # connected by request()
                body.send(conn.sock)
            else:
                conn.request(
                    method,
                    path,
                    body=body,
                    headers=all_headers,
                    encode_chunked="Content-Length" not in all_headers and body is not None,
                )
            return conn.getresponse()
        except NotTheNode as e:
            raise CliError(
                f"not sending the token: the server at {self.where} is not node "
                f"{self.node_id} (its key hashes to {e})"
            ) from None
        except (ConnectionRefusedError, FileNotFoundError):
            raise CliError(f"node at {self.where} is not running") from None
        except ssl.SSLError as e:
            raise CliError(f"TLS with {self.where} failed: {e.reason or e}") from None
        except (OSError, http.client.HTTPException) as e:
            raise CliError(f"lost the connection to the node at {self.where}: {e}") from None

    @property
    def attaches(self) -> bool:
        """Files go to the node as descriptors (on its own machine), not as bytes."""
        return self.local_dir is not None

    def connection(self) -> http.client.HTTPConnection:
        """A connection to the node, for requests one after the other."""
        return self._connection()

    def json(self, method: str, path: str, body: object = None) -> Any:
        if body is None:
            return decode(self.request(method, path))
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))}
        return decode(self.request(method, path, data, headers))


def decode(response: http.client.HTTPResponse) -> Any:
    """The JSON body of an answer; ApiFailure (with the node's message) for an error."""
    body = response.read()
    try:
        value = json.loads(body) if body else None
    except ValueError:
        value = None
    if response.status >= 400:
        message = value.get("error") if isinstance(value, dict) else None
        raise ApiFailure(response.status, shown(message or f"node answered HTTP {response.status}"))
    return value


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
