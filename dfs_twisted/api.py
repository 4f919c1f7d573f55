"""The HTTP API (what `dfs` uses), on twisted.web.

Uploads stream: `ApiRequest` routes the body of `PUT /v1/files/{name}` into the
put pipeline as it arrives instead of letting twisted.web spool it to a temp file.
Downloads stream through a producer. Every /v1/ call needs the bearer token, and
so does ``GET /metrics`` (Prometheus text format): peers' ids, orgs and addresses
are not for anyone who can reach the port.
"""

from __future__ import annotations

import hmac
import io
import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from . import __version__
from .fileserver import (
    DamagedBlob,
    Download,
    FileNotFound,
    FileServer,
    PutInProgress,
    UnknownPeer,
    Upload,
)
from .grants import Grant, GrantError
from .keys import Keyring, ReadKey, ReadKeyError
from .metrics import CONTENT_TYPE, NodeMetrics, outcome_of
from .names import check_new_name
from .page import status_page
from .scrub import Scrubber

log = Logger()

FILES = b"/v1/files/"
MAX_CONTROL_BODY = 64 * 1024


class _Interrupted(Exception):
    """A download cut short after its headers were sent (the connection is aborted)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_body(request: Request) -> dict[str, Any]:
    assert request.content is not None
    try:
        body = json.loads(request.content.getvalue() or b"{}")
    except ValueError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def file_name(path: bytes) -> str:
    """The file name in /v1/files/{name} (percent-encoded UTF-8)."""
    try:
        return unquote_to_bytes(path[len(FILES) :]).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "file name is not valid UTF-8") from None


class ApiRequest(Request):
    """A request that streams a PUT body into an Upload as it arrives."""

    upload: Upload | None = None
    upload_error: ApiError | None = None
    body_size = 0
    site: ApiSite

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        # twisted.web hands the method and path to the request only after the
        # body; the channel already knows them when the headers are in.
        method: bytes = channel._command
        path: bytes = channel._path.split(b"?", 1)[0]
        if method == b"PUT" and b"?" in channel._path:
            # Writes go to this org's namespace only; a read key cannot write.
            self.upload_error = ApiError(400, "PUT takes no query parameters")
            self.content = io.BytesIO()
            return
        if method != b"PUT" or not path.startswith(FILES):
            if length is not None and length > MAX_CONTROL_BODY:
                self.upload_error = ApiError(413, "request body too large")
                self.content = io.BytesIO()
                return
            super().gotLength(length)
            return
        # The body goes to the upload, never here; read it in big pieces.
        self.content = io.BytesIO()
        channel.transport.bufferSize = 1 << 20
        api: Api = channel.site.api
        try:
            api.authorize(self.requestHeaders.getRawHeaders(b"authorization", []))
            name = file_name(path)
            check_new_name(name)
            self.upload = api.files.begin_put(name, length, channel.transport)
        except ApiError as e:
            self.upload_error = e
        except ValueError as e:
            self.upload_error = ApiError(400, str(e))
        except PutInProgress as e:
            self.upload_error = ApiError(409, str(e))

    def handleContentChunk(self, data: bytes) -> None:
        if self.upload is not None:
            self.upload.write(data)
            return
        # Bounded whether or not a Content-Length announced it (chunked bodies).
        self.body_size += len(data)
        if self.body_size > MAX_CONTROL_BODY and self.upload_error is None:
            self.upload_error = ApiError(413, "request body too large")
            self.content = io.BytesIO()
        if self.upload_error is None and self.content is not None:
            self.content.write(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.upload is not None and not self.finished:
            self.upload.abort("client went away")
            self.upload = None
        super().connectionLost(reason)


@implementer(IConsumer)
class _Response:
    """A download's consumer: the request, minus the errors of a client that left."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._request.channel is not None:
            self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._request.channel is not None:
            self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._request.channel is not None:
            self._request.write(data)


class Api(Resource):
    isLeaf = True

    def __init__(
        self,
        server: FileServer,
        token: str,
        org: str,
        keyring: Keyring,
        metrics: NodeMetrics | None = None,
        scrubber: Scrubber | None = None,
        sync_period: float = 0.0,
    ) -> None:
        super().__init__()
        self.sync_period = sync_period
        self.files = server
        self.scrubber = scrubber
        self.metrics = metrics or NodeMetrics(server)
        self.keyring = keyring
        self._token = token.encode()
        self._org = org
        self._started = time.time()

    def authorize(self, headers: Sequence[bytes]) -> None:
        given = headers[0] if headers else b""
        if not hmac.compare_digest(given, b"Bearer " + self._token):
            raise ApiError(401, "missing or wrong API token")

    def render(self, request: Request) -> bytes | int:
        d = Deferred.fromCoroutine(self._route(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _route(self, request: Request) -> None:
        """Dispatch, counting file operations by outcome."""
        operation = _operation(request.method, request.path)
        try:
            await self._dispatch(request)
        except BaseException as e:
            if operation is not None:
                status = e.status if isinstance(e, ApiError) else None
                if isinstance(e, DamagedBlob):
                    status = 502
                outcome = "interrupted" if isinstance(e, _Interrupted) else outcome_of(status)
                self.metrics.operation(operation, outcome)
            raise
        if operation is not None:
            self.metrics.operation(operation, "ok")

    async def _dispatch(self, request: Request) -> None:
        assert isinstance(request, ApiRequest)
        method = request.method
        path = request.path
        if request.upload_error is not None:
            raise request.upload_error
        if path == b"/" and method == b"GET":
            _send(request, 200, self._page().encode(), b"text/html; charset=utf-8")
            return
        if path == b"/metrics":
            if method != b"GET":
                raise ApiError(405, "method not allowed")
            self.authorize(request.requestHeaders.getRawHeaders(b"authorization", []))
            _send(request, 200, self.metrics.exposition(), CONTENT_TYPE.encode())
            return
        if not path.startswith(b"/v1/"):
            raise ApiError(404, "not found")
        self.authorize(request.requestHeaders.getRawHeaders(b"authorization", []))
        if path.startswith(FILES) and len(path) > len(FILES):
            if method == b"PUT":
                await self._put(request)
            elif method == b"GET":
                await self._get(request, file_name(path))
            elif method == b"DELETE":
                await self._delete(request, file_name(path))
            else:
                raise ApiError(405, "method not allowed")
        elif path in (b"/v1/files", b"/v1/files/") and method == b"GET":
            entries = await self.files.list_files(self._reader(request))
            _json(
                request,
                200,
                [
                    {
                        "name": e.name,
                        "size": e.size,
                        "replicas": e.replicas,
                        "here": e.here,
                        "blob": e.blob,
                        "mtime": e.mtime,
                    }
                    for e in entries
                ],
            )
        elif path == b"/v1/status" and method == b"GET":
            _json(request, 200, self.status())
        elif path == b"/v1/shares" and method == b"POST":
            await self._share(request)
        elif path == b"/v1/grants/read" and method == b"POST":
            await self._read_granted(request)
        elif path == b"/v1/recover" and method == b"POST":
            recovered, errors = await self.files.recover()
            _json(request, 200, {"recovered": recovered, "errors": errors})
        else:
            raise ApiError(404, "not found")

    async def _put(self, request: ApiRequest) -> None:
        upload = request.upload
        if upload is None:
            raise ApiError(400, "upload did not start")
        request.upload = None
        result = await upload.finish()
        self.metrics.put_done(result.seconds, result.size)
        _json(
            request,
            201,
            {
                "blob": result.blob,
                "size": result.size,
                "replicas": result.replicas,
                "peers": [p.as_json() for p in result.peers],
            },
        )

    def _reader(self, request: Request) -> ReadKey | None:
        """The imported read key that ``?org=ORG`` names (None: this org)."""
        args = request.args or {}
        if set(args) - {b"org"} or len(args.get(b"org", [])) > 1:
            raise ApiError(400, "unsupported query parameter")
        if not args:
            return None
        spec = args[b"org"][0].decode("utf-8", "replace")
        if spec in (self._org, self.files.node_id, "id:" + self.files.node_id):
            return None
        try:
            key = self.keyring.find(spec)
        except ReadKeyError as e:
            raise ApiError(404, str(e)) from None
        # Whatever ORG was given, the client can say which org it reads.
        request.setHeader(b"x-dfs-org", key.org_id.encode())
        return key

    async def _get(self, request: Request, name: str) -> None:
        reader = self._reader(request)
        try:
            download: Download = await self.files.open_download(name, reader)
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        except FileNotFound:
            raise ApiError(404, "no such file on this node or any connected peer") from None
        except DamagedBlob as e:
            if reader is None:
                raise
            raise ApiError(
                502, f"cannot read {reader.org}'s file: wrong key or damaged data ({e})"
            ) from e
        await self._stream_download(request, download)

    async def _share(self, request: Request) -> None:
        body = _json_body(request)
        name, to = body.get("name"), body.get("to")
        if not isinstance(name, str) or not isinstance(to, str):
            raise ApiError(400, 'body must be {"name": NAME, "to": ORG}')
        try:
            grant = await self.files.share(name, to, self._org)
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        except FileNotFound:
            raise ApiError(
                404, "no such file on this node: share it from a node holding it"
            ) from None
        except UnknownPeer as e:
            raise ApiError(404, str(e)) from None
        log.info("shared {blob} with {org}", blob=grant.blob, org=grant.recipient)
        _json(request, 201, grant.as_json())

    async def _read_granted(self, request: Request) -> None:
        assert request.content is not None
        try:
            grant = Grant.from_bytes(request.content.getvalue())
            download = await self.files.open_granted(grant)
        except GrantError as e:
            raise ApiError(400, str(e)) from None
        except FileNotFound as e:
            raise ApiError(404, str(e)) from None
        await self._stream_download(request, download)

    async def _stream_download(self, request: Request, download: Download) -> None:
        """Stream a download as the response body."""
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(download.size).encode())
        request.setHeader(b"x-dfs-source", download.source.encode("utf-8", "replace"))
        started = time.monotonic()
        try:
            await download.stream_to(_Response(request))
        except Exception as e:
            # Headers are gone: all we can do is cut the body short so the
            # client sees an incomplete transfer, never wrong bytes.
            log.warn("download of a file stopped: {error}", error=str(e))
            channel: Any = request.channel
            if channel is not None:
                channel.transport.abortConnection()
            raise _Interrupted(str(e)) from e
        self.metrics.get_done(download.size)
        log.info(
            "get {blob}: {size} bytes in {seconds:.2f}s from {source}",
            blob=download.blob,
            size=download.size,
            seconds=time.monotonic() - started,
            source=download.source,
        )
        if not request.finished and request.channel is not None:
            request.finish()

    async def _delete(self, request: Request, name: str) -> None:
        if request.args:
            raise ApiError(400, "DELETE takes no query parameters")
        try:
            here, peers = await self.files.delete(name)
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        except FileNotFound:
            raise ApiError(404, "no such file on this node or any connected peer") from None
        _json(
            request,
            200,
            {
                "deleted_here": here,
                "peers": [p.as_json() for p in peers],
            },
        )

    def status(self) -> dict[str, Any]:
        server = self.files
        usage = server.usage()
        return {
            "node_id": server.node_id,
            "org": self._org,
            "version": __version__,
            "uptime": round(time.time() - self._started, 1),
            "peers": server.peers.status(),
            "storage": {
                "own_bytes": usage.get(server.node_id, 0),
                "held_for_others": {o: b for o, b in usage.items() if o != server.node_id},
                "free_bytes": server.space.free(),
                "quota_bytes": server.space.limits.quota,
                "reserve_bytes": server.space.limits.reserve,
            },
            "scrub": None if self.scrubber is None else self.scrubber.status(),
            "sync": {"period_seconds": self.sync_period, "relay": server.relay},
        }

    def _page(self) -> str:
        return status_page(self._org)

    def _failed(self, failure: Failure, request: Request) -> None:
        if request.finished or request.channel is None or failure.check(_Interrupted):
            return
        if failure.check(ApiError):
            error: ApiError = failure.value  # type: ignore[assignment]
            _json(request, error.status, {"error": error.message})
        elif failure.check(DamagedBlob):
            _json(request, 502, {"error": f"damaged data: {failure.getErrorMessage()}"})
        else:
            log.failure("API request failed", failure)
            _json(request, 500, {"error": "internal error (see the node's log)"})


def _operation(method: bytes | None, path: bytes | None) -> str | None:
    """The file operation a request is, for the metrics (None: not one)."""
    if path is not None and path.startswith(FILES) and len(path) > len(FILES):
        return {b"PUT": "put", b"GET": "get", b"DELETE": "delete"}.get(method or b"")
    if path == b"/v1/recover" and method == b"POST":
        return "recover"
    return None


def _send(request: Request, status: int, body: bytes, content_type: bytes) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _json(request: Request, status: int, value: object) -> None:
    _send(request, status, json.dumps(value).encode() + b"\n", b"application/json")


class ApiSite(Site):
    requestFactory = ApiRequest

    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self.api = api
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request: http.Request) -> None:
        # The access log would record file names (URL paths); they must not leave private/.
        pass


__all__ = ["Api", "ApiSite", "http"]
