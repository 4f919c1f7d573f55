"""The API's HTTP plumbing on twisted.web: requests that stream uploads, and the site.

twisted.web reads a request's whole body before it hands the request to a resource.
An upload must not wait for that: `ApiRequest` routes the body of
``PUT /v1/files/{name}`` into the put pipeline as it arrives, and bounds every other
body. `ApiSite` serves `api.Api` over `apigate.ApiChannel` connections, which hold
back the ones that have not shown the token.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Request, Site
from zope.interface import implementer

from .apigate import HEAD_TIMEOUT, WAITING_LIFETIME, ApiChannel, DropLog, WaitingConnections
from .attached import ATTACHED, AttachedFile, AttachedFileError, OutputFile
from .crypto import CHUNK_SIZE, MAX_CHUNK_INDEX
from .files import Upload
from .names import check_new_name

if TYPE_CHECKING:
    from .api import Api

FILES = b"/v1/files/"
MAX_CONTROL_BODY = 64 * 1024
# The most plaintext one blob can hold (its chunk index is a u32, the last one
# reserved). A Content-Length beyond it is refused before anything is opened.
MAX_FILE_SIZE = MAX_CHUNK_INDEX * CHUNK_SIZE


class ApiError(Exception):
    """A failure that already knows its HTTP status and its one line of text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def request_head(request: http.Request) -> tuple[bytes, bytes]:
    """The method and raw path (query included) of a request whose body has not arrived.

    twisted.web sets ``request.method`` and ``request.uri`` only once the whole body
    is in, but an upload must be routed as soon as the headers are: the channel
    holds the request line meanwhile, in attributes Twisted keeps private. This is
    the one place that reads them (`tests/test_api_inprocess.py` pins it).
    """
    channel: Any = request.channel
    return channel._command, channel._path


def file_name(path: bytes) -> str:
    """The file name in /v1/files/{name} (percent-encoded UTF-8)."""
    try:
        return unquote_to_bytes(path[len(FILES) :]).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "file name is not valid UTF-8") from None


def is_upload(method: bytes, path: bytes) -> bool:
    """``PUT /v1/files/{name}``: the one request whose body is not read here."""
    return method == b"PUT" and path.startswith(FILES) and len(path) > len(FILES)


class ApiRequest(Request):
    """A request that streams a PUT body into an Upload as it arrives, or reads it
    from the file attached to its head."""

    upload: Upload | None = None
    # An attached file being read into the upload, and the read's end.
    attached: AttachedFile | None = None
    poured: Deferred[None] | None = None
    # The file a download is to be written into (Dfs-Into), until a download takes it.
    output: OutputFile | None = None
    # A failure found when the headers arrived, answered once the request is routed.
    head_error: Exception | None = None
    body_size = 0
    site: ApiSite

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        # Only an upload that says so takes a descriptor; any other is closed.
        descriptor = channel.take_descriptor() if isinstance(channel, ApiChannel) else None
        try:
            self._got_length(channel, length, descriptor)
        finally:
            if descriptor is not None and self.poured is None and self.output is None:
                os.close(descriptor)  # not taken: whatever took it closes it

    def _got_length(self, channel: Any, length: int | None, descriptor: int | None) -> None:
        api: Api = channel.site.api
        into = self.requestHeaders.getRawHeaders(b"dfs-into")
        if into is not None:
            try:
                self.output = _output_file(into, descriptor)
            except ApiError as e:
                self.head_error = e
            descriptor = None  # one file is one request's output or its body, not both
        headers = self.requestHeaders.getRawHeaders(b"authorization", [])
        if api.authorized(headers) and isinstance(channel, ApiChannel):
            channel.trust()
        method, raw_path = request_head(self)
        path = raw_path.split(b"?", 1)[0]
        if method == b"PUT" and b"?" in raw_path:
            # Writes go to this org's namespace only; a read key cannot write.
            self._refuse(ApiError(400, "PUT takes no query parameters"))
            return
        if not is_upload(method, path):
            if length is not None and length > MAX_CONTROL_BODY:
                self._refuse(ApiError(413, "request body too large"))
                return
            super().gotLength(length)
            return
        # The body goes to the upload, never here; read it in big pieces.
        self.content = io.BytesIO()
        channel.transport.bufferSize = 1 << 20
        try:
            api.authorize(headers)
            if length is not None and length > MAX_FILE_SIZE:
                # No client will ever send that body: answer now, then hang up.
                api.metrics.operation("put", "too_large")
                self._answer_now(ApiError(413, f"file too large: at most {MAX_FILE_SIZE} bytes"))
                return
            name = file_name(path)
            check_new_name(name)
            if self.requestHeaders.getRawHeaders(b"dfs-body") is None:
                self.upload = api.files.begin_put(name, length, channel.transport)
                return
            body = self.attached = self._attached_body(api, length, descriptor)
            self.upload = api.files.begin_put(name, body.size, body)
            self.poured = Deferred.fromCoroutine(body.pour(self.upload.write))
        except Exception as e:
            self.head_error = e

    def _attached_body(self, api: Api, length: int | None, descriptor: int | None) -> AttachedFile:
        """The file attached to an upload's head (``Dfs-Body: file-descriptor``)."""
        if self.requestHeaders.getRawHeaders(b"dfs-body") != [ATTACHED]:
            raise ApiError(400, "Dfs-Body: only 'file-descriptor' is known")
        if length:
            raise ApiError(400, "a request with an attached file has no body")
        if descriptor is None:
            raise ApiError(400, "no file descriptor came with the request")
        try:
            body = AttachedFile(descriptor, api.files.holdings.disk.read, CHUNK_SIZE)
        except AttachedFileError as e:
            raise ApiError(400, str(e)) from None
        if body.size > MAX_FILE_SIZE:
            api.metrics.operation("put", "too_large")
            raise ApiError(413, f"file too large: at most {MAX_FILE_SIZE} bytes")
        return body

    def render(self, resrc: Any) -> None:
        # Whoever can reach the port learns nothing here, not even the server's version.
        self.responseHeaders.removeHeader(b"server")
        super().render(resrc)

    def _answer_now(self, error: ApiError) -> None:
        """Answer before the body came, and close the connection.

        twisted.web can only answer a request once its body is in, so the response
        is written as bytes here; what arrives of the body meanwhile is dropped.
        """
        self._refuse(error)
        body = json.dumps({"error": error.message}).encode() + b"\n"
        channel: Any = self.channel
        channel.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (error.status, http.RESPONSES.get(error.status, b""), len(body), body)
        )
        channel.loseConnection()

    def _refuse(self, error: ApiError) -> None:
        self.head_error = error
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.upload is not None:
            self.upload.write(data)
            return
        # Bounded whether or not a Content-Length announced it (chunked bodies).
        self.body_size += len(data)
        if self.body_size > MAX_CONTROL_BODY and self.head_error is None:
            self._refuse(ApiError(413, "request body too large"))
        if self.head_error is None and self.content is not None:
            self.content.write(data)

    def close_output(self) -> None:
        """Close the attached output file, unless a download took it."""
        output, self.output = self.output, None
        if output is not None:
            output.abort()

    def connectionLost(self, reason: Failure) -> None:
        self.close_output()
        if self.attached is not None:
            self.attached.stopProducing()
        if self.upload is not None and not self.finished:
            self.upload.abort("client went away")
            self.upload = None
        super().connectionLost(reason)


def _output_file(into: Sequence[bytes], descriptor: int | None) -> OutputFile:
    """The file attached for a download to be written into (``Dfs-Into``)."""
    if list(into) != [ATTACHED]:
        raise ApiError(400, "Dfs-Into: only 'file-descriptor' is known")
    if descriptor is None:
        raise ApiError(400, "no file descriptor came with the request")
    try:
        return OutputFile(descriptor)
    except AttachedFileError as e:
        raise ApiError(400, str(e)) from None


@implementer(IConsumer)
class DownloadConsumer:
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


class ApiSite(Site):
    """The API's HTTP server: its channels hold back connections that show no token."""

    requestFactory = ApiRequest
    protocol = ApiChannel  # type: ignore[assignment]

    def __init__(
        self,
        api: Api,
        reactor: IReactorTime | None = None,
        waiting: WaitingConnections[ApiChannel] | None = None,
        head_timeout: float = HEAD_TIMEOUT,
        waiting_lifetime: float = WAITING_LIFETIME,
    ) -> None:
        super().__init__(api, reactor=reactor)
        self.api = api
        self.waiting: WaitingConnections[ApiChannel] = (
            WaitingConnections() if waiting is None else waiting
        )
        self.drops = DropLog()
        self.head_timeout = head_timeout
        self.waiting_lifetime = waiting_lifetime
        self.displayTracebacks = False
        self.noisy = False

    def startFactory(self) -> None:
        super().startFactory()
        self.api.listening = True

    def stopFactory(self) -> None:
        self.api.listening = False
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        # The access log would record file names (URL paths); they must not leave private/.
        pass


__all__ = [
    "FILES",
    "MAX_CONTROL_BODY",
    "MAX_FILE_SIZE",
    "ApiError",
    "ApiRequest",
    "ApiSite",
    "DownloadConsumer",
    "file_name",
    "is_upload",
    "request_head",
]
