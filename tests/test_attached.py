"""An upload's body attached as a file descriptor (dfs_twisted.attached): the reader
on real files, the client's side, and a real node's Unix socket given good and bad
descriptors."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.attached import AttachedFile, AttachedFileError, OutputFile
from dfs_twisted.client import FileBody, NodeClient, decode

from .inprocess import NodeTestCase, eventually, get, put

BLOCK = 1 << 16


def at_once(f: Callable[..., bytes], *args: Any) -> Deferred[bytes]:
    """A read run right here (the node runs it on a read thread)."""
    return maybeDeferred(f, *args)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.unit
class AttachedFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.data = os.urandom(3 * BLOCK + 123)
        self.path.write_bytes(self.data)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.addCleanup(self.close)

    def close(self) -> None:
        if is_open(self.fd):
            os.close(self.fd)

    def pour(self, body: AttachedFile) -> tuple[list[bytes], Deferred[None]]:
        written: list[bytes] = []
        return written, Deferred.fromCoroutine(body.pour(written.append))

    def test_every_byte_is_written_in_blocks_then_the_file_is_closed(self) -> None:
        body = AttachedFile(self.fd, at_once, BLOCK)
        self.assertEqual(body.size, len(self.data))
        written, done = self.pour(body)
        self.successResultOf(done)
        self.assertEqual([len(w) for w in written], [BLOCK, BLOCK, BLOCK, 123])
        self.assertEqual(b"".join(written), self.data)
        self.assertFalse(is_open(self.fd))

    def test_the_body_is_what_follows_the_descriptors_offset(self) -> None:
        os.lseek(self.fd, 1000, os.SEEK_SET)
        body = AttachedFile(self.fd, at_once, BLOCK)
        self.assertEqual(body.size, len(self.data) - 1000)
        written, done = self.pour(body)
        self.successResultOf(done)
        self.assertEqual(b"".join(written), self.data[1000:])

    def test_an_empty_file_is_an_empty_body(self) -> None:
        os.truncate(self.path, 0)
        written, done = self.pour(AttachedFile(self.fd, at_once, BLOCK))
        self.successResultOf(done)
        self.assertEqual(written, [])
        self.assertFalse(is_open(self.fd))

    def test_a_file_that_shrinks_while_it_is_read_fails_the_body(self) -> None:
        def shrinking(f: Callable[..., bytes], *args: Any) -> Deferred[bytes]:
            os.truncate(self.path, BLOCK + 10)
            return at_once(f, *args)

        _, done = self.pour(AttachedFile(self.fd, shrinking, BLOCK))
        failure = self.failureResultOf(done, AttachedFileError)
        self.assertEqual(
            str(failure.value),
            f"the file shrank while it was read ({BLOCK + 10} of {len(self.data)} bytes)",
        )
        self.assertFalse(is_open(self.fd))

    def test_paused_it_reads_on_only_once_resumed(self) -> None:
        body = AttachedFile(self.fd, at_once, BLOCK)
        written: list[bytes] = []

        def write(data: bytes) -> None:
            written.append(data)
            if len(written) == 1:
                body.pauseProducing()

        done = Deferred.fromCoroutine(body.pour(write))
        self.assertNoResult(done)
        self.assertEqual(len(written), 1)
        body.resumeProducing()
        self.successResultOf(done)
        self.assertEqual(b"".join(written), self.data)

    def test_stopped_it_ends_once_the_read_under_way_is_over_then_closes(self) -> None:
        reads: list[Deferred[Any]] = []

        def later(f: Callable[..., bytes], *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.addCallback(lambda _: f(*args))
            reads.append(d)
            return d

        body = AttachedFile(self.fd, later, BLOCK)
        written: list[bytes] = []

        def write(data: bytes) -> None:
            written.append(data)
            body.pauseProducing()

        done = Deferred.fromCoroutine(body.pour(write))
        reads[0].callback(None)  # the first block; the second one's read starts
        self.assertEqual((len(written), len(reads)), (1, 2))
        body.stopProducing()
        self.assertNoResult(done)
        self.assertTrue(is_open(self.fd), "closed while a thread may read it")
        reads[1].callback(None)
        failure = self.failureResultOf(done, AttachedFileError)
        self.assertEqual(str(failure.value), "the put was stopped")
        self.assertEqual(len(written), 1)
        self.assertFalse(is_open(self.fd))

    def test_a_read_error_fails_the_body_in_one_line(self) -> None:
        def failing(f: Callable[..., bytes], *args: Any) -> Deferred[bytes]:
            return at_once(os.read, -1, 1)

        body = AttachedFile(self.fd, failing, BLOCK)
        _, done = self.pour(body)
        failure = self.failureResultOf(done, AttachedFileError)
        self.assertEqual(str(failure.value), "cannot read the attached file: Bad file descriptor")
        self.assertFalse(is_open(self.fd))

    def test_only_a_regular_file_open_for_reading_is_taken(self) -> None:
        d = self.mktemp()
        os.mkdir(d)
        directory = os.open(d, os.O_RDONLY)
        reader, writer = os.pipe()
        write_only = os.open(self.path, os.O_WRONLY)
        cases = {
            directory: "the attached descriptor is not a regular file",
            reader: "the attached descriptor is not a regular file",
            write_only: "the attached file is not open for reading",
        }
        for fd, message in cases.items():
            with self.assertRaises(AttachedFileError) as caught:
                AttachedFile(fd, at_once, BLOCK)
            self.assertEqual(str(caught.exception), message)
            self.assertTrue(is_open(fd), "the caller closes what was not taken")
        for fd in (directory, reader, writer, write_only):
            os.close(fd)


@pytest.mark.unit
class OutputFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.touch()
        self.fd = os.open(self.path, os.O_WRONLY)
        self.addCleanup(self.close)

    def close(self) -> None:
        if is_open(self.fd):
            os.close(self.fd)

    def test_pieces_of_any_size_make_the_file_then_commit_closes_it(self) -> None:
        data = os.urandom(3 * (1 << 20) + 5000)  # direct writes, then a partial block
        output = OutputFile(self.fd)
        for at in range(0, len(data), 1 << 20):
            piece = data[at : at + (1 << 20)]
            self.assertEqual(output.write_pieces([piece[:100], piece[100:]]), len(piece))
        output.commit()
        self.assertFalse(is_open(self.fd))
        self.assertEqual(self.path.read_bytes(), data)
        output.abort()  # after commit: nothing left to do

    def test_abort_closes_it_and_no_write_follows(self) -> None:
        output = OutputFile(self.fd)
        output.write_pieces([b"abc"])
        output.abort()
        self.assertFalse(is_open(self.fd))
        with self.assertRaises(ValueError):
            output.write_pieces([b"more"])
        with self.assertRaises(ValueError):
            output.commit()

    def test_only_an_empty_regular_file_open_for_writing_is_taken(self) -> None:
        full = Path(self.mktemp())
        full.write_bytes(b"x")
        d = self.mktemp()
        os.mkdir(d)
        cases = {
            os.open(d, os.O_RDONLY): "the attached output is not a regular file",
            os.open(self.path, os.O_RDONLY): "the attached output is not open for writing",
            os.open(full, os.O_WRONLY): "the attached output is not an empty file",
        }
        for fd, message in cases.items():
            with self.assertRaises(AttachedFileError) as caught:
                OutputFile(fd)
            self.assertEqual(str(caught.exception), message)
            self.assertTrue(is_open(fd), "the caller closes what was not taken")
            os.close(fd)


@pytest.mark.unit
class FollowTests(SynchronousTestCase):
    """The client's bar follows the node's reads through the shared file offset."""

    def setUp(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(os.urandom(4 * BLOCK))
        self.file = path.open("rb")
        self.addCleanup(self.file.close)
        self.ours, self.node = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.node.close)
        # What the node holds: the same open file, as SCM_RIGHTS hands it over.
        self.shared = os.dup(self.file.fileno())
        self.addCleanup(os.close, self.shared)

    def test_progress_is_how_far_the_other_holder_read(self) -> None:
        seen: list[int] = []
        shown = threading.Event()

        def progress(n: int) -> None:
            seen.append(n)
            shown.set()

        def node_reads() -> None:
            # A block at a time, the next once the last was shown.
            while os.read(self.shared, BLOCK):
                shown.wait(30)
                shown.clear()

        reading = threading.Thread(target=node_reads)
        reading.start()
        FileBody(self.file, 4 * BLOCK, progress).follow(self.ours)
        reading.join()
        self.assertEqual(seen, [BLOCK] * 4)

    def test_an_answer_before_the_end_stops_following(self) -> None:
        seen: list[int] = []
        os.read(self.shared, BLOCK)
        self.node.sendall(b"HTTP/1.1 400 Bad Request\r\n")
        FileBody(self.file, 4 * BLOCK, seen.append).follow(self.ours)
        self.assertLessEqual(sum(seen), BLOCK)


def raw_put(
    socket_path: Path, token: str, headers: bytes, fds: list[int], body: bytes = b""
) -> tuple[int, bytes]:
    """A PUT of /v1/files/raw with ``fds`` attached to its head; the status and body
    (status 0: the node hung up without an answer)."""
    return raw_request(socket_path, token, b"PUT /v1/files/raw", headers, fds, body)


def raw_request(
    socket_path: Path, token: str, line: bytes, headers: bytes, fds: list[int], body: bytes = b""
) -> tuple[int, bytes]:
    """A request (``line``: method and path) with ``fds`` attached to its head."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        head = (
            line + b" HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n" + headers + b"\r\n"
        )
        if fds:
            socket.send_fds(sock, [head], fds)
        else:
            sock.sendall(head)
        sock.sendall(body)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return 0, b""
        return response.status, response.read()


def leave_after_the_head(socket_path: Path, token: str, fd: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        head = (
            "PUT /v1/files/gone HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Dfs-Body: file-descriptor\r\nContent-Length: 0\r\n\r\n"
        )
        socket.send_fds(sock, [head.encode()], [fd])


def half_a_head(socket_path: Path, fd: int) -> None:
    send_and_hang_up(socket_path, b"PUT /v1/files/raw HTTP/1.1\r\n", fd)


def send_and_hang_up(socket_path: Path, data: bytes, fd: int) -> None:
    """``data`` with ``fd`` attached, then the end; back once the node hung up too."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        socket.send_fds(sock, [data], [fd])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(1 << 16):  # until the node saw the end, and closed the connection
            pass


def held(*paths: Path | str) -> list[str]:
    """The descriptors of this process open on any of ``paths``."""
    wanted = {str(Path(p).resolve()) for p in paths}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in wanted:
                found.append(fd)
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found


@pytest.mark.inprocess
class AttachedPutTests(NodeTestCase):
    """A node in this process (so its descriptors are this process's), called on its
    Unix socket from threads, as `dfs` would."""

    async def started(self) -> None:
        self.node = self.make_node(org="alpha")
        await self.node.ready
        self.socket = self.node.api_socket
        self.client = NodeClient.local(self.node.data_dir)

    async def test_the_client_attaches_a_file_and_the_node_stores_it(self) -> None:
        await self.started()
        data = os.urandom(2 * (1 << 20) + 99)
        path = Path(self.mktemp())
        path.write_bytes(data)

        def store() -> Any:
            with path.open("rb") as f:
                body = FileBody(f, len(data), lambda n: None)
                response = self.client.request("PUT", "/v1/files/big", body)
                # The node read the file itself: nothing was sent after the head.
                self.assertEqual(os.lseek(f.fileno(), 0, os.SEEK_CUR), len(data))
                return decode(response)

        answer = await deferToThread(store)
        self.assertEqual(answer["size"], len(data))
        self.assertEqual((await get(self.node, "big"))[0], data)
        await eventually(lambda: not held(path), "the attached file to be closed")

    async def test_a_client_that_leaves_mid_read_stores_nothing(self) -> None:
        await self.started()
        path = Path(self.mktemp())
        with path.open("wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 20))
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        # The head and the file, then gone before any answer.
        await deferToThread(leave_after_the_head, self.socket, self.node.token, fd)
        await eventually(lambda: os.lseek(fd, 0, os.SEEK_CUR) > 0, "the node to read")
        await eventually(lambda: held(path) == [str(fd)], "the node to close the file")
        # It stopped reading (the offset is shared with it), and kept nothing.
        self.assertLess(os.lseek(fd, 0, os.SEEK_CUR), 32 << 20)
        self.assertFalse(self.node.files._uploads)
        self.assertEqual(self.node.store.blobs(self.node.node_id), [])

    async def test_a_download_is_written_into_the_attached_file(self) -> None:
        await self.started()
        data = os.urandom(2 * (1 << 20) + 99)
        await put(self.node, "big", data)
        out = Path(self.mktemp())
        out.touch()
        fd = os.open(out, os.O_WRONLY)
        self.addCleanup(os.close, fd)
        into = b"Dfs-Into: file-descriptor\r\n"
        status, body = await deferToThread(
            raw_request, self.socket, self.node.token, b"GET /v1/files/big", into, [fd]
        )
        self.assertEqual((status, json.loads(body)), (200, {"size": len(data)}))
        self.assertEqual(out.read_bytes(), data)
        self.assertEqual(os.lseek(fd, 0, os.SEEK_CUR), len(data))  # written through it
        await eventually(lambda: held(out) == [str(fd)], "the node to close the file")

    async def test_a_client_that_leaves_mid_download_gets_no_more_written(self) -> None:
        await self.started()
        size = 64 << 20
        await put(self.node, "big", os.urandom(size))
        out = Path(self.mktemp())
        out.touch()
        fd = os.open(out, os.O_WRONLY)
        self.addCleanup(os.close, fd)
        head = (
            b"GET /v1/files/big HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            + self.node.token.encode()
            + b"\r\nDfs-Into: file-descriptor\r\n\r\n"
        )
        await deferToThread(send_and_hang_up, self.socket, head, fd)
        await eventually(lambda: held(out) == [str(fd)], "the node to close the file")
        self.assertLess(os.lseek(fd, 0, os.SEEK_CUR), size // 2)

    async def test_bad_outputs_are_refused_and_every_descriptor_closed(self) -> None:
        await self.started()
        await put(self.node, "small", b"hello")
        token = self.node.token
        out = Path(self.mktemp())
        out.write_bytes(b"not empty")
        empty = Path(self.mktemp())
        empty.touch()
        into = b"Dfs-Into: file-descriptor\r\n"
        get = b"GET /v1/files/small"
        full = os.open(out, os.O_WRONLY)
        read_only = os.open(empty, os.O_RDONLY)
        writable = os.open(empty, os.O_WRONLY)
        cases: list[tuple[bytes, bytes, list[int], int, str]] = [
            (get, into, [], 400, "no file descriptor came with the request"),
            (get, into, [full], 400, "the attached output is not an empty file"),
            (get, into, [read_only], 400, "the attached output is not open for writing"),
            (get, b"Dfs-Into: elsewhere\r\n", [writable], 400, "only 'file-descriptor'"),
            (b"GET /v1/files/nothing", into, [writable], 404, "no such file"),
            (b"GET /v1/status", into, [writable], 200, '"node_id"'),
        ]
        for line, headers, fds, status, message in cases:
            got = await deferToThread(raw_request, self.socket, token, line, headers, fds)
            self.assertEqual(got[0], status, message)
            self.assertIn(message.encode(), got[1])
        self.assertEqual(empty.read_bytes(), b"")  # nothing written where nothing was asked
        # A head with its output, then the connection ends before the body it announced.
        head = (
            b"POST /v1/grants/read HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nDfs-Into: file-descriptor\r\nContent-Length: 100\r\n\r\n"
        )
        await deferToThread(send_and_hang_up, self.socket, head, writable)
        for fd in (full, read_only, writable):
            os.close(fd)
        await eventually(lambda: not held(out, empty), "the node to close what it was sent")

    async def test_bad_attachments_are_refused_in_one_line_and_nothing_is_kept(self) -> None:
        await self.started()
        token = self.node.token
        path = Path(self.mktemp())
        path.write_bytes(b"x" * 1000)
        d = self.mktemp()
        os.mkdir(d)
        readable = os.open(path, os.O_RDONLY)
        write_only = os.open(path, os.O_WRONLY)
        directory = os.open(d, os.O_RDONLY)
        attached = b"Dfs-Body: file-descriptor\r\nContent-Length: 0\r\n"
        cases: list[tuple[bytes, list[int], bytes, int, str]] = [
            (attached, [], b"", 400, "no file descriptor came with the request"),
            (attached, [directory], b"", 400, "the attached descriptor is not a regular file"),
            (attached, [write_only], b"", 400, "the attached file is not open for reading"),
            (
                b"Dfs-Body: elsewhere\r\nContent-Length: 0\r\n",
                [readable],
                b"",
                400,
                "Dfs-Body: only 'file-descriptor' is known",
            ),
            (
                b"Dfs-Body: file-descriptor\r\nContent-Length: 3\r\n",
                [readable],
                b"abc",
                400,
                "a request with an attached file has no body",
            ),
        ]
        for headers, fds, body, status, message in cases:
            got = await deferToThread(raw_put, self.socket, token, headers, fds, body)
            self.assertEqual(got[0], status, message)
            self.assertIn(message.encode(), got[1])
        # Two descriptors before any request took one: the connection is dropped.
        got = await deferToThread(raw_put, self.socket, token, attached, [readable, readable])
        self.assertEqual(got, (0, b""))
        # A descriptor with a plain upload (no Dfs-Body) is closed, the body stored.
        got = await deferToThread(
            raw_put, self.socket, token, b"Content-Length: 2\r\n", [readable], b"ok"
        )
        self.assertEqual(got[0], 201)
        self.assertEqual((await get(self.node, "raw"))[0], b"ok")
        # A descriptor, then the connection ends before a request head is complete.
        await deferToThread(half_a_head, self.socket, readable)
        for fd in (readable, write_only, directory):
            os.close(fd)
        # Every descriptor the node was handed is closed again.
        await eventually(lambda: not held(path, d), "the node to close what it was sent")
