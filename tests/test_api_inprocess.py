"""The HTTP API of one real node, called over loopback with twisted.web's Agent."""

from __future__ import annotations

import json
import os
from io import BytesIO
from typing import Any, cast
from urllib.parse import quote

import pytest
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from dfs_twisted.node import NodeService

from .inprocess import NodeTestCase, RawHttp, connect_raw

reactor = cast(PosixReactorBase, _reactor)  # the module is the running reactor

# Over one encryption chunk, so the body streams through the upload in many pieces.
DATA = os.urandom(2 * 1024 * 1024 + 7)


class _Body(Protocol):
    """Collects a response body (readBody warns about this transport on every call)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason is not None and reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def read_body(response: Any) -> Deferred[bytes]:
    body = _Body()
    response.deliverBody(body)
    return body.done


class ApiTestCase(NodeTestCase):
    """One real node in this process, called over loopback."""

    async def node(self) -> NodeService:
        node = self.make_node(org="alpha")
        self.url = (await node.ready).rstrip("/")
        self.token = node.token
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)
        return node

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        token: str | None = "",
    ) -> tuple[Any, bytes]:
        """One request; ``token`` "" means the node's own, None means none at all."""
        headers = Headers()
        if token is not None:
            headers.addRawHeader(b"authorization", f"Bearer {token or self.token}".encode())
        producer: Any = None if body is None else FileBodyProducer(BytesIO(body))
        response = await self.agent.request(
            method.encode(), (self.url + path).encode(), headers, producer
        )
        return response, await read_body(response)

    def json(self, response: Any, body: bytes) -> Any:
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(content_type, b"application/json")
        return json.loads(body)


@pytest.mark.inprocess
class ApiTests(ApiTestCase):
    async def test_api_url_written(self) -> None:
        node = await self.node()
        self.assertEqual(node.api_url_file.read_text(), self.url + "/\n")
        self.assertTrue(self.url.startswith("http://127.0.0.1:"))

    async def test_status_needs_the_token(self) -> None:
        node = await self.node()
        for token in (None, "wrong", self.token + "x", "Bearer"):
            response, body = await self.call("GET", "/v1/status", token=token)
            self.assertEqual(response.code, 401, token)
            self.assertNotIn(node.node_id.encode(), body)
            self.assertNotIn(b"alpha", body)
            self.assertEqual(self.json(response, body), {"error": "missing or wrong API token"})

    async def test_status_with_token(self) -> None:
        node = await self.node()
        response, body = await self.call("GET", "/v1/status")
        self.assertEqual(response.code, 200)
        status = self.json(response, body)
        self.assertEqual(status["node_id"], node.node_id)
        self.assertEqual(status["org"], "alpha")
        self.assertEqual(status["peers"], [])

    async def test_status_page_without_token_shows_no_file_names(self) -> None:
        await self.node()
        response, _ = await self.call("PUT", "/v1/files/secret-plans.txt", b"x")
        self.assertEqual(response.code, 201)
        response, body = await self.call("GET", "/", token=None)
        self.assertEqual(response.code, 200)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/html"))
        # The page as served shows the org; the rest comes from /v1/status with the token.
        self.assertIn(b'<h1 id="org">alpha</h1>', body)
        self.assertNotIn(b"secret-plans", body)
        # What the page shows once loaded (its data, with the token) and the metrics
        # are live answers that could carry names: they carry none. The listing,
        # asked the same way, does: the name was there to be leaked.
        response, listing = await self.call("GET", "/v1/files")
        self.assertEqual(response.code, 200)
        self.assertIn(b"secret-plans.txt", listing)
        for path in ("/v1/status", "/metrics", "/health"):
            response, body = await self.call("GET", path)
            self.assertEqual(response.code, 200, path)
            self.assertNotIn(b"secret-plans", body, path)
        status = self.json(*await self.call("GET", "/v1/status"))
        self.assertGreater(status["storage"]["own_bytes"], 0)  # the file is counted

    async def test_put_then_get_streams_the_bytes(self) -> None:
        await self.node()
        response, body = await self.call("PUT", "/v1/files/big.bin", DATA)
        self.assertEqual(response.code, 201)
        put = self.json(response, body)
        self.assertEqual((put["size"], put["replicas"], put["peers"]), (len(DATA), 1, []))

        response, body = await self.call("GET", "/v1/files/big.bin")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, DATA)
        self.assertEqual(response.headers.getRawHeaders(b"x-dfs-source"), [b"local"])

        response, body = await self.call("GET", "/v1/files")
        listing = self.json(response, body)
        self.assertEqual(
            [(f["name"], f["size"], f["replicas"]) for f in listing], [("big.bin", len(DATA), 1)]
        )

    async def test_a_second_put_of_a_name_in_progress_is_409(self) -> None:
        node = await self.node()
        first = node.files.begin_put("busy.bin", None, None)
        response, body = await self.call("PUT", "/v1/files/busy.bin", b"second")
        self.assertEqual(response.code, 409)
        self.assertIn("in progress", self.json(response, body)["error"])
        first.write(b"first")
        await first.finish()
        response, body = await self.call("GET", "/v1/files/busy.bin")
        self.assertEqual(body, b"first")

    async def test_put_needs_the_token_and_stores_nothing_without_it(self) -> None:
        node = await self.node()
        response, _ = await self.call("PUT", "/v1/files/x", b"data", token="wrong")
        self.assertEqual(response.code, 401)
        self.assertEqual(node.store.blobs(node.node_id), [])

    async def test_unicode_name_round_trip(self) -> None:
        await self.node()
        path = "/v1/files/" + quote("résumé 2024.txt")
        response, _ = await self.call("PUT", path, b"hello")
        self.assertEqual(response.code, 201)
        response, body = await self.call("GET", path)
        self.assertEqual((response.code, body), (200, b"hello"))

    async def test_delete(self) -> None:
        node = await self.node()
        await self.call("PUT", "/v1/files/gone", b"bye")
        response, body = await self.call("DELETE", "/v1/files/gone")
        self.assertEqual(response.code, 200)
        self.assertTrue(self.json(response, body)["deleted_here"])
        self.assertEqual(node.store.blobs(node.node_id), [])
        response, _ = await self.call("GET", "/v1/files/gone")
        self.assertEqual(response.code, 404)
        response, _ = await self.call("DELETE", "/v1/files/gone")
        self.assertEqual(response.code, 404)

    async def test_unknown_name_is_404(self) -> None:
        await self.node()
        response, body = await self.call("GET", "/v1/files/nothing-here")
        self.assertEqual(response.code, 404)
        self.assertIn("error", self.json(response, body))

    async def test_bad_names_are_400_without_traceback(self) -> None:
        node = await self.node()
        for name in ("a" * 1025, "a%00b", "%ff", "a%2Fb%00"):
            for method, body in (("GET", None), ("PUT", b"data"), ("DELETE", None)):
                response, text = await self.call(method, "/v1/files/" + name, body)
                self.assertEqual(response.code, 400, (method, name))
                error = self.json(response, text)["error"]
                self.assertIsInstance(error, str)
                self.assertNotIn(b"Traceback", text)
                self.assertNotIn(b'File "', text)
        self.assertEqual(node.store.blobs(node.node_id), [])

    async def test_unknown_paths_are_404(self) -> None:
        await self.node()
        for method, path in (
            ("GET", "/nope"),
            ("GET", "/v1/nope"),
            ("GET", "/v2/status"),
            ("POST", "/v1/status"),
        ):
            response, body = await self.call(method, path)
            self.assertEqual(response.code, 404, (method, path))
            self.assertIn("error", self.json(response, body))

    async def test_unknown_path_without_token_reveals_nothing(self) -> None:
        await self.node()
        # Without the token an unknown path under /v1/ answers exactly as a known one
        # does: 401, never the 404 that would tell which paths exist.
        answers = []
        for method, path in (
            ("GET", "/v1/nope"),
            ("GET", "/v1/nope/deeper"),
            ("POST", "/v1/status"),
            ("GET", "/v1/files"),  # a known path, for comparison
        ):
            response, body = await self.call(method, path, token=None)
            answers.append((response.code, self.json(response, body)))
        self.assertEqual(answers, [(401, {"error": "missing or wrong API token"})] * 4)
        # With the token the same unknown paths are 404 (test_unknown_paths_are_404).
        response, _ = await self.call("GET", "/v1/nope")
        self.assertEqual(response.code, 404)


class _RawClient(RawHttp):
    """A bare HTTP/1.1 connection: send bytes, read back whole responses."""

    def response(self) -> tuple[int, dict[bytes, bytes], bytes] | None:
        """The first complete response received, taken off the buffer (None: not yet)."""
        head, sep, rest = self.received.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.split(b"\r\n")
        headers = dict(
            (k.strip().lower(), v.strip()) for k, v in (line.split(b":", 1) for line in lines[1:])
        )
        length = int(headers.get(b"content-length", b"0"))
        if len(rest) < length:
            return None
        self.received = rest[length:]
        return int(lines[0].split()[1]), headers, rest[:length]


class RawHttpTestCase(ApiTestCase):
    """Requests written byte by byte on a connection the test keeps."""

    async def raw(self) -> _RawClient:
        return await connect_raw(int(self.url.rsplit(":", 1)[1]), _RawClient())

    async def hang_up(self, client: _RawClient) -> None:
        if client.transport is not None and not client.closed.called:
            client.transport.loseConnection()
        await client.closed

    async def ask(
        self, client: _RawClient, request: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        from .inprocess import eventually

        assert client.transport is not None
        client.transport.write(request)
        answers: list[tuple[int, dict[bytes, bytes], bytes]] = []

        def answered() -> bool:
            got = client.response()
            if got is not None:
                answers.append(got)
            return bool(answers)

        await eventually(answered, "an HTTP response")
        return answers[0]


@pytest.mark.inprocess
class LimitTests(RawHttpTestCase):
    async def test_absurd_content_length_is_refused_before_the_upload(self) -> None:
        node = await self.node()
        client = await self.raw()
        self.addCleanup(self.hang_up, client)
        status, _, body = await self.ask(
            client,
            b"PUT /v1/files/huge HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + b"9" * 30
            + b"\r\nAuthorization: Bearer "
            + self.token.encode()
            + b"\r\n\r\n",
        )
        self.assertEqual(status, 413)
        self.assertIn(b"file too large", body)
        # Nothing was begun: no temp file, and the same name can be put at once.
        self.assertEqual(list((node.data_dir / "store" / "tmp").iterdir()), [])
        response, _ = await self.call("PUT", "/v1/files/huge", b"small")
        self.assertEqual(response.code, 201)


@pytest.mark.inprocess
class HealthTests(RawHttpTestCase):
    async def test_health_needs_no_token_and_says_nothing_else(self) -> None:
        node = await self.node()
        response, body = await self.call("GET", "/health", token=None)
        self.assertEqual((response.code, body), (200, b"ok\n"))
        self.assertFalse(response.headers.hasHeader(b"server"))
        for secret in (node.node_id.encode(), b"alpha", b"0.1"):
            self.assertNotIn(secret, body)
        response, body = await self.call("POST", "/health", token=None)
        self.assertEqual(response.code, 405)

    async def test_health_is_503_once_the_node_stops(self) -> None:
        node = await self.node()
        client = await self.raw()
        self.addCleanup(self.hang_up, client)
        ask = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        status, _, body = await self.ask(client, ask)
        self.assertEqual((status, body), (200, b"ok\n"))
        # A connection opened before the stop still reaches the API, which now says so.
        await node.stopService()
        status, _, body = await self.ask(client, ask)
        self.assertEqual((status, body), (503, b"unavailable\n"))


@pytest.mark.inprocess
class ScrubNowTests(ApiTestCase):
    async def test_scrub_now_needs_the_token_and_starts_a_pass(self) -> None:
        from .inprocess import eventually

        node = await self.node()
        await eventually(lambda: node.scrubber.last is not None, "the start-up scrub")
        assert node.scrubber.last is not None
        first = node.scrubber.last
        response, body = await self.call("POST", "/v1/scrub", token=None)
        self.assertEqual(response.code, 401)
        self.assertIs(node.scrubber.last, first)
        response, body = await self.call("POST", "/v1/scrub")
        self.assertEqual(response.code, 202)
        answer = self.json(response, body)
        self.assertTrue(answer["started"])
        self.assertIn("running", answer["scrub"])
        await eventually(lambda: node.scrubber.last is not first, "the second pass")


@pytest.mark.unit
class RequestHeadTests(SynchronousTestCase):
    """`apiserver.request_head` reads Twisted's private request line: pinned here."""

    def test_method_and_path_are_known_when_the_headers_are(self) -> None:
        from twisted.internet.testing import StringTransport
        from twisted.web.http import HTTPChannel, Request

        from dfs_twisted.apiserver import request_head

        seen: list[tuple[bytes, bytes, bytes]] = []

        class Probe(Request):
            def gotLength(self, length: int | None) -> None:
                method, path = request_head(self)
                seen.append((method, path, self.method))
                super().gotLength(length)

        channel = HTTPChannel()
        channel.requestFactory = Probe
        channel.makeConnection(StringTransport())
        channel.dataReceived(
            b"PUT /v1/files/a%20b?org=x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
        )
        # Headers in, body not: the request object itself does not know its method yet.
        self.assertEqual(seen, [(b"PUT", b"/v1/files/a%20b?org=x", b"(no method yet)")])
        channel.connectionLost(Failure(ConnectionDone()))


@pytest.mark.unit
class ErrorMapTests(SynchronousTestCase):
    """One place turns exceptions into statuses; its table, end to end."""

    def test_each_exception_type_has_its_status(self) -> None:
        from dfs_twisted.api import ApiError, http_error
        from dfs_twisted.files import DamagedBlob, FileNotFound, PutInProgress, UnknownPeer
        from dfs_twisted.grants import GrantError
        from dfs_twisted.keys import ReadKeyError

        cases: list[tuple[BaseException, int, str]] = [
            (ApiError(413, "too big"), 413, "too big"),
            (ValueError("name must not be empty"), 400, "name must not be empty"),
            (GrantError("forged"), 400, "forged"),
            (FileNotFound("x.txt"), 404, "x.txt"),
            (UnknownPeer("no org 'z'"), 404, "no org 'z'"),
            (ReadKeyError("no read key"), 404, "no read key"),
            (PutInProgress("busy"), 409, "busy"),
            (DamagedBlob("bad chunk"), 502, "damaged data: bad chunk"),
        ]
        for error, status, message in cases:
            known = http_error(error, None)
            assert known is not None, error
            self.assertEqual((known.status, known.message), (status, message))
        # Anything else is the node's own failure: a 500, logged, with no detail.
        self.assertIsNone(http_error(KeyError("x"), None))
        self.assertIsNone(http_error(RuntimeError("x"), None))


@pytest.mark.unit
class TokenCheckTests(SynchronousTestCase):
    """The token is compared with ``hmac.compare_digest``, whose time does not depend
    on where the first wrong byte is (an ``==`` would tell a timing attacker)."""

    def test_token_compared_in_constant_time(self) -> None:
        import hmac
        from pathlib import Path
        from typing import cast

        from dfs_twisted.api import Api
        from dfs_twisted.keys import Keyring

        api = Api(cast(Any, None), "the-token", "org", Keyring(Path(self.mktemp())))
        compared: list[tuple[bytes, bytes]] = []
        original = hmac.compare_digest

        def recording(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return original(a, b)

        self.patch(hmac, "compare_digest", recording)
        self.assertTrue(api.authorized([b"Bearer the-token"]))
        self.assertFalse(api.authorized([b"Bearer the-tokeN"]))
        self.assertFalse(api.authorized([]))
        self.assertEqual(
            compared,
            [
                (b"Bearer the-token", b"Bearer the-token"),
                (b"Bearer the-tokeN", b"Bearer the-token"),
                (b"", b"Bearer the-token"),
            ],
        )
