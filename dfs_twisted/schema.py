"""The JSON shapes of the HTTP API: what each request sends and each response holds.

One definition per shape, shared by the API (which builds them), the metrics (which
read the peer rows of the status) and any client. Plain `TypedDict`s: they cost
nothing at run time and let mypy check both ends.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

PeerState = Literal["connected", "connecting", "refused"]


class PeerRow(TypedDict):
    """One peer in ``GET /v1/status``: a configured address or a peer that dialled in."""

    address: str
    node_id: str | None
    org: str | None
    state: PeerState
    direction: Literal["outgoing", "incoming"]
    last_error: str | None
    rtt_ms: NotRequired[float | None]
    bytes_in: NotRequired[int]
    bytes_out: NotRequired[int]
    # When the peer was last connected (seconds since the epoch), None if never.
    last_seen: NotRequired[float | None]


class Storage(TypedDict):
    own_bytes: int
    held_for_others: dict[str, int]  # owner node id -> bytes held here for that org
    held_for_us: dict[str, int]  # peer node id -> bytes of this org's files it holds
    under_replicated: int  # this org's files with fewer peer copies known than wanted
    replicas: str  # "all", or how many peers hold a copy of each file
    free_bytes: int
    quota_bytes: int
    reserve_bytes: int


class ScrubReportJson(TypedDict):
    started: float | None
    finished: float | None
    checked: int
    bytes: int
    damaged: int
    repaired: int
    problems: list[str]  # blob ids with what became of them, never file names


class ScrubStatus(TypedDict):
    period_seconds: float
    rate_bytes: int
    running: bool
    last: ScrubReportJson | None


class SyncStatus(TypedDict):
    period_seconds: float
    relay: bool


class AuditStatus(TypedDict):
    """Storage audits since the node started: holders asked to prove they hold."""

    passed: int
    failed: int


class Status(TypedDict):
    """``GET /v1/status``."""

    node_id: str
    org: str
    version: str
    uptime: float
    peers: list[PeerRow]
    storage: Storage
    scrub: ScrubStatus | None
    sync: SyncStatus
    audits: AuditStatus


class FileRow(TypedDict):
    """One file in ``GET /v1/files``."""

    name: str
    size: int
    replicas: int
    shares: int | None  # with erasure coding: distinct shares peers hold
    wanted: int | None  # copies (or shares) wanted of this org's files (None: another org's)
    here: bool
    blob: str
    mtime: int


class PeerOutcomeJson(TypedDict):
    org: str
    node_id: str
    ok: bool
    error: str | None


class PutAnswer(TypedDict):
    """``PUT /v1/files/{name}``."""

    blob: str
    size: int
    replicas: int
    peers: list[PeerOutcomeJson]
    shares: NotRequired[int]  # with erasure coding: the peers that took a share


class DeleteAnswer(TypedDict):
    """``DELETE /v1/files/{name}``."""

    deleted_here: bool
    peers: list[PeerOutcomeJson]


class RecoverAnswer(TypedDict):
    """``POST /v1/recover``."""

    recovered: list[str]
    errors: list[str]


class ScrubAnswer(TypedDict):
    """``POST /v1/scrub``: whether this call started a pass, and the scrub's status."""

    started: bool
    scrub: ScrubStatus


class ShareRequest(TypedDict):
    """``POST /v1/shares`` body (its answer is the grant itself)."""

    name: str
    to: str


class ErrorAnswer(TypedDict):
    """Every error: one line for a person."""

    error: str


__all__ = [
    "DeleteAnswer",
    "ErrorAnswer",
    "FileRow",
    "PeerOutcomeJson",
    "PeerRow",
    "PutAnswer",
    "RecoverAnswer",
    "ScrubAnswer",
    "ScrubReportJson",
    "ScrubStatus",
    "ShareRequest",
    "Status",
    "Storage",
    "SyncStatus",
]
