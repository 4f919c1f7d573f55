"""The HTTP API (what `dfs` uses), on twisted.web: a route table and one error map.

Each route names its method, path, handler and whether it needs the token; each
handler returns an answer (or a download to stream) and raises on failure. What a
failure means to the client (status and one line of text) is decided in one place,
`http_error`, never in a handler.

Uploads stream (`apiserver.ApiRequest` hands the body to the put as it arrives);
downloads stream through a producer. Everything under /v1/ needs the bearer token,
and so does ``GET /metrics`` (peers' ids, orgs and addresses are not for anyone who
can reach the port); ``GET /`` (the status page) and ``GET /health`` do not.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import __version__
from .apiserver import (
    FILES,
    ApiError,
    ApiRequest,
    ApiSite,
    DownloadConsumer,
    file_name,
)
from .attached import AttachedFileError, DownloadInto, OutputFile
from .files import (
    DamagedBlob,
    Download,
    FileNotFound,
    Files,
    NewestUnavailable,
    PutInProgress,
    UnknownPeer,
)
from .grants import Grant, GrantError
from .keys import Keyring, ReadKey, ReadKeyError
from .metrics import CONTENT_TYPE, NodeMetrics, outcome_of
from .page import status_page
from .schema import (
    DeleteAnswer,
    FileRow,
    PeerOutcomeJson,
    PeerRow,
    PutAnswer,
    RecoverAnswer,
    ScrubAnswer,
    ScrubStatus,
    Status,
)
from .scrub import Scrubber

log = Logger()


class _Interrupted(Exception):
    """A download cut short after its headers were sent (the connection is aborted)."""


# -------------------------------------------------------------------- the routes


@dataclass(frozen=True)
class Reply:
    """A whole response body."""

    status: int
    body: bytes
    content_type: bytes

    @classmethod
    def json(cls, status: int, value: object) -> Reply:
        return cls(status, json.dumps(value).encode() + b"\n", b"application/json")


Answer = Reply | Download


@dataclass
class Call:
    """One request as its handler sees it."""

    request: ApiRequest
    route: Route
    name: str = ""  # the file name, for the /v1/files/{name} routes
    reader: ReadKey | None = None  # the imported key ``?org=`` chose, once looked up

    def reader_for(self, api: Api) -> ReadKey | None:
        """The imported read key that ``?org=ORG`` names (None: this org)."""
        args = self.request.args or {}
        if set(args) - {b"org", b"copies"} or any(len(v) > 1 for v in args.values()):
            raise ApiError(400, "unsupported query parameter")
        if b"org" not in args:
            return None
        spec = args[b"org"][0].decode("utf-8", "replace")
        if spec in (api.org, api.files.node_id, "id:" + api.files.node_id):
            return None
        self.reader = api.keyring.find(spec)
        # Whatever ORG was given, the client can say which org it reads.
        self.request.setHeader(b"x-dfs-org", self.reader.org_id.encode())
        return self.reader


Handler = Callable[["Api", Call], Awaitable[Answer]]


@dataclass(frozen=True)
class Route:
    method: bytes
    paths: tuple[bytes, ...]  # exact paths, or with `named` the prefix before a file name
    handler: Handler
    named: bool = False
    public: bool = False  # no token needed
    operation: str | None = None  # counted in dfs_operations_total under this name
    missing: str | None = None  # what FileNotFound means here (None: the exception's text)
    # Another method on this path: 405, or 404 where the path says nothing by itself.
    other_methods: int = 404

    def matches(self, path: bytes) -> bool:
        if self.named:
            return any(path.startswith(p) and len(path) > len(p) for p in self.paths)
        return path in self.paths


NO_SUCH_FILE = "no such file on this node or any connected peer"


# ------------------------------------------------------------- the one error map


# Exception type -> status; the text is the exception's own (each is one line).
# ValueError is what `files` raises for a name it cannot store.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ValueError, 400),
    (GrantError, 400),
    (UnknownPeer, 404),
    (ReadKeyError, 404),
    (PutInProgress, 409),
    (NewestUnavailable, 503),
)


def http_error(error: BaseException, call: Call | None) -> ApiError | None:
    """What ``error`` means to the client; None for a failure of the node itself."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, FileNotFound):
        missing = call.route.missing if call is not None else None
        return ApiError(404, missing or str(error))
    if isinstance(error, DamagedBlob):
        if call is not None and call.reader is not None:
            return ApiError(
                502, f"cannot read {call.reader.org}'s file: wrong key or damaged data ({error})"
            )
        return ApiError(502, f"damaged data: {error}")
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return ApiError(status, str(error))
    return None


# ---------------------------------------------------------------------- the API


class Api(Resource):
    isLeaf = True

    def __init__(
        self,
        server: Files,
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
        self.org = org
        # True while the API port listens (set by ApiSite): the node is up and not stopping.
        self.listening = False
        self._token = token.encode()
        self._started = time.time()

    def authorized(self, headers: Sequence[bytes]) -> bool:
        given = headers[0] if headers else b""
        return hmac.compare_digest(given, b"Bearer " + self._token)

    def authorize(self, headers: Sequence[bytes]) -> None:
        if not self.authorized(headers):
            raise ApiError(401, "missing or wrong API token")

    def render(self, request: Request) -> bytes | int:
        assert isinstance(request, ApiRequest)
        d = Deferred.fromCoroutine(self._serve(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _serve(self, request: ApiRequest) -> None:
        """Route, run the handler, send its answer; count file operations by outcome."""
        started = time.monotonic()
        method, path = request.method, request.path
        candidates = [r for r in ROUTES if r.matches(path)]
        route = next((r for r in candidates if r.method == method), None)
        call = None if route is None else Call(request, route)
        try:
            # Refusals found when the headers came in go first, as they did then.
            if request.head_error is not None:
                raise request.head_error
            headers = request.requestHeaders.getRawHeaders(b"authorization", [])
            if path.startswith(b"/v1/") or (route is not None and not route.public):
                # Nothing under /v1/, not even which paths exist, without the token.
                self.authorize(headers)
            if call is None:
                if any(r.other_methods == 405 for r in candidates):
                    raise ApiError(405, "method not allowed")
                raise ApiError(404, "not found")
            if call.route.named:
                call.name = file_name(path)
            answer = await call.route.handler(self, call)
            if isinstance(answer, Reply):
                _send(request, answer)
            elif request.output is not None:
                output, request.output = request.output, None
                await self._download_into(call, answer, output, started)
            else:
                await self._stream_download(call, answer, started)
        except Exception as e:
            self._count(call, e)
            self._answer_error(request, call, Failure())
            return
        finally:
            request.close_output()  # not given to a download: this request's to close
        self._count(call, None)

    def _count(self, call: Call | None, error: Exception | None) -> None:
        if call is None or call.route.operation is None:
            return
        if error is None:
            outcome = "ok"
        elif isinstance(error, _Interrupted):
            outcome = "interrupted"
        else:
            known = http_error(error, call)
            outcome = outcome_of(known.status if known is not None else None)
        self.metrics.operation(call.route.operation, outcome)

    def _answer_error(self, request: Request, call: Call | None, failure: Failure) -> None:
        if request.finished or request.channel is None or failure.check(_Interrupted):
            return
        known = None if failure.value is None else http_error(failure.value, call)
        if known is not None:
            _send(request, Reply.json(known.status, {"error": known.message}))
        else:
            log.failure("API request failed", failure)
            _send(request, Reply.json(500, {"error": "internal error (see the node's log)"}))

    def _failed(self, failure: Failure, request: Request) -> None:
        """Whatever escaped _serve (a bug in it): logged, answered 500 if still possible."""
        self._answer_error(request, None, failure)

    # ---------------------------------------------------------------- handlers

    async def page(self, call: Call) -> Answer:
        return Reply(200, status_page(self.org).encode(), b"text/html; charset=utf-8")

    async def health(self, call: Call) -> Answer:
        # Nothing but up or down: no version, id or count for whoever can reach the port.
        if self.listening:
            return Reply(200, b"ok\n", b"text/plain; charset=utf-8")
        return Reply(503, b"unavailable\n", b"text/plain; charset=utf-8")

    async def metrics_text(self, call: Call) -> Answer:
        return Reply(200, self.metrics.exposition(), CONTENT_TYPE.encode())

    async def put(self, call: Call) -> Answer:
        request = call.request
        upload = request.upload
        if upload is None:
            raise ApiError(400, "upload did not start")
        if request.poured is not None:
            try:
                await request.poured  # the attached file, read into the upload
            except Exception as e:
                if request.upload is not None:  # not aborted already by a lost connection
                    upload.abort(str(e))
                    request.upload = None
                if isinstance(e, AttachedFileError):
                    raise ApiError(400, str(e)) from None
                raise
        request.upload = None
        result = await upload.finish()
        self.metrics.put_done(result.seconds, result.size)
        answer: PutAnswer = {
            "blob": result.blob,
            "size": result.size,
            "replicas": result.replicas,
            "peers": [cast(PeerOutcomeJson, p.as_json()) for p in result.peers],
        }
        if result.shares is not None:
            answer["shares"] = result.shares
        return Reply.json(201, answer)

    async def get(self, call: Call) -> Answer:
        return await self.files.open_download(call.name, call.reader_for(self))

    async def delete(self, call: Call) -> Answer:
        if call.request.args:
            raise ApiError(400, "DELETE takes no query parameters")
        here, peers = await self.files.delete(call.name)
        answer: DeleteAnswer = {
            "deleted_here": here,
            "peers": [cast(PeerOutcomeJson, p.as_json()) for p in peers],
        }
        return Reply.json(200, answer)

    async def list_files(self, call: Call) -> Answer:
        # ?copies=known: count the copies this node knows of (what peers acknowledged,
        # listed or proved in audits) instead of asking every peer for its listing:
        # what the status page polls every 2 s.
        copies = (call.request.args or {}).get(b"copies", [b"ask"])[0]
        if copies not in (b"ask", b"known"):
            raise ApiError(400, "copies is 'ask' or 'known'")
        entries = await self.files.list_files(call.reader_for(self), ask=copies == b"ask")
        rows: list[FileRow] = [
            {
                "name": e.name,
                "size": e.size,
                "replicas": e.replicas,
                "shares": e.shares,
                "wanted": e.wanted,
                "here": e.here,
                "blob": e.blob,
                "mtime": e.mtime,
            }
            for e in entries
        ]
        return Reply.json(200, rows)

    async def status_answer(self, call: Call) -> Answer:
        return Reply.json(200, self.status())

    async def share(self, call: Call) -> Answer:
        body = _json_body(call.request)
        name, to = body.get("name"), body.get("to")
        if not isinstance(name, str) or not isinstance(to, str):
            raise ApiError(400, 'body must be {"name": NAME, "to": ORG}')
        grant = await self.files.share(name, to, self.org)
        log.info("shared {blob} with {org}", blob=grant.blob, org=grant.recipient)
        return Reply.json(201, grant.as_json())

    async def read_granted(self, call: Call) -> Answer:
        assert call.request.content is not None
        grant = Grant.from_bytes(call.request.content.getvalue())
        return await self.files.open_granted(grant)

    async def recover(self, call: Call) -> Answer:
        recovered, errors = await self.files.recover()
        answer: RecoverAnswer = {"recovered": recovered, "errors": errors}
        return Reply.json(200, answer)

    async def scrub(self, call: Call) -> Answer:
        if self.scrubber is None:
            raise ApiError(404, "this node does not scrub")
        started = self.scrubber.start_now()
        answer: ScrubAnswer = {
            "started": started,
            "scrub": cast(ScrubStatus, self.scrubber.status()),
        }
        return Reply.json(202, answer)

    # ----------------------------------------------------- streaming and status

    async def _stream_download(self, call: Call, download: Download, started: float) -> None:
        """Stream a download as the response body."""
        request = call.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(download.size).encode())
        request.setHeader(b"x-dfs-source", download.source.encode("utf-8", "replace"))
        try:
            await download.stream_to(DownloadConsumer(request))
        except Exception as e:
            # Headers are gone: all we can do is cut the body short so the
            # client sees an incomplete transfer, never wrong bytes.
            log.warn("download of a file stopped: {error}", error=str(e))
            channel: Any = request.channel
            if channel is not None:
                channel.transport.abortConnection()
            raise _Interrupted(str(e)) from e
        self._got(call, download, started)
        if not request.finished and request.channel is not None:
            request.finish()

    async def _download_into(
        self, call: Call, download: Download, output: OutputFile, started: float
    ) -> None:
        """Write a download into the file the client attached (attached.py).

        The headers go at once, with the size and the source (the client's bar has its
        total); the body, once every byte is written or the download stopped, is one
        JSON line: the size, or the error."""
        request = call.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-dfs-size", str(download.size).encode())
        request.setHeader(b"x-dfs-source", download.source.encode("utf-8", "replace"))
        request.write(b"")
        consumer = DownloadInto(self.files.holdings.disk, output)
        # A client that leaves will not read the file: stop writing it.
        request.notifyFinish().addErrback(lambda _: consumer.stop())
        try:
            await download.stream_to(consumer)
            await consumer.finish()
        except Exception as e:
            consumer.abort()
            log.warn("download of a file stopped: {error}", error=str(e))
            cut = f"cut after {consumer.written} of {download.size} bytes: {e}"
            _end(request, {"error": cut})
            raise _Interrupted(str(e)) from e
        self._got(call, download, started)
        _end(request, {"size": download.size})

    def _got(self, call: Call, download: Download, started: float) -> None:
        """A download is complete: count and log it."""
        seconds = time.monotonic() - started
        if call.route.operation == "get":
            self.metrics.get_done(seconds, download.size)
        log.info(
            "get {blob}: {size} bytes in {seconds:.2f}s from {source}",
            blob=download.blob,
            size=download.size,
            seconds=seconds,
            source=download.source,
        )

    def status(self) -> Status:
        server = self.files
        usage = server.usage()
        return {
            "node_id": server.node_id,
            "org": self.org,
            "version": __version__,
            "uptime": round(time.time() - self._started, 1),
            "peers": cast(list[PeerRow], server.peers.status()),
            "storage": {
                "own_bytes": usage.get(server.node_id, 0),
                "held_for_others": {o: b for o, b in usage.items() if o != server.node_id},
                "held_for_us": server.held_for_us(),
                "under_replicated": server.under_replicated(),
                "replicas": str(server.placement.redundancy),
                "free_bytes": server.space.free(),
                "quota_bytes": server.space.limits.quota,
                "reserve_bytes": server.space.limits.reserve,
            },
            "scrub": None if self.scrubber is None else cast(ScrubStatus, self.scrubber.status()),
            "sync": {"period_seconds": self.sync_period, "relay": server.relay},
            "audits": {"passed": server.auditor.passed, "failed": server.auditor.failed},
        }


UPLOAD = Route(
    b"PUT", (FILES,), Api.put, named=True, operation="put", missing=NO_SUCH_FILE, other_methods=405
)

ROUTES: tuple[Route, ...] = (
    Route(b"GET", (b"/",), Api.page, public=True),
    Route(b"GET", (b"/health",), Api.health, public=True, other_methods=405),
    Route(b"GET", (b"/metrics",), Api.metrics_text, other_methods=405),
    UPLOAD,
    Route(b"GET", (FILES,), Api.get, named=True, operation="get", missing=NO_SUCH_FILE),
    Route(b"DELETE", (FILES,), Api.delete, named=True, operation="delete", missing=NO_SUCH_FILE),
    Route(b"GET", (b"/v1/files", FILES), Api.list_files),
    Route(b"GET", (b"/v1/status",), Api.status_answer),
    Route(
        b"POST",
        (b"/v1/shares",),
        Api.share,
        missing="no such file on this node: share it from a node holding it",
    ),
    Route(b"POST", (b"/v1/grants/read",), Api.read_granted),
    Route(b"POST", (b"/v1/recover",), Api.recover, operation="recover"),
    Route(b"POST", (b"/v1/scrub",), Api.scrub),
)


def _json_body(request: Request) -> dict[str, Any]:
    assert request.content is not None
    try:
        body = json.loads(request.content.getvalue() or b"{}")
    except ValueError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def _send(request: Request, reply: Reply) -> None:
    request.setResponseCode(reply.status)
    request.setHeader(b"content-type", reply.content_type)
    request.setHeader(b"content-length", str(len(reply.body)).encode())
    request.write(reply.body)
    request.finish()


def _end(request: Request, value: object) -> None:
    """The last of a response whose headers went already: a JSON line, if the client
    is still there to read it."""
    if not request.finished and request.channel is not None:
        request.write(json.dumps(value).encode() + b"\n")
        request.finish()


__all__ = ["Api", "ApiError", "ApiSite", "http_error"]
