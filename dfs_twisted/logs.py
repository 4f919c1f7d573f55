"""How a node writes its log: text lines or plain JSON objects, from a least level on.

JSON lines are plain objects: ``time``, ``level``, ``logger``, ``msg``, then the
event's own fields (peer, org, blob id, sizes, reasons), for log shippers. Like
the text log, they never hold a file name or a key: events name blobs by id.

Two things apply to every line, whatever the format:

- A warning repeated with the same fields within ``REPEAT_WINDOW`` is held back
  and counted; the next one after the window says how many were held back.
- Each line a node writes says which node (``node:PORT``), so the lines of the
  nodes of one process (``tac/three_nodes.tac``) can be told apart. The events
  come from module-level loggers shared by all nodes, so the node is found from
  the objects on the emitting call stack (every callback of a node runs a method
  of one of its objects); see `NodeTags`.

twistd takes a log observer factory by dotted name (``--logger``) and calls it
without arguments, so what it should build is kept here, set once from the
command line by `configure`.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

OBSERVER = "dfs_twisted.logs.observer"
REPEAT_WINDOW = 600.0  # seconds a repeated warning stays quiet

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn}
_LEVELS.update(warning=LogLevel.warn, error=LogLevel.error, critical=LogLevel.critical)
# Keys of legacy (twisted.python.log) events that are not fields of the event.
_LEGACY_KEYS = frozenset(
    {"message", "isError", "system", "time", "format", "why", "failure", "printed"}
)


def parse_level(text: str) -> LogLevel:
    try:
        level: LogLevel = _LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(
            f"not a log level: {text!r} (debug, info, warn, error, critical)"
        ) from None
    return level


class _Settings:
    log_format = "text"
    level = LogLevel.info
    logfile = "-"


def configure(log_format: str, level: LogLevel, logfile: str) -> None:
    """What `observer` builds (twistd calls it without arguments)."""
    _Settings.log_format, _Settings.level, _Settings.logfile = log_format, level, logfile


def observer() -> ILogObserver:
    """The configured observer, writing to twistd's --logfile or stdout."""
    if _Settings.logfile == "-":
        out: IO[str] | LogFile = sys.stdout
    else:
        out = LogFile.fromFullPath(_Settings.logfile)
    return observer_for(_Settings.log_format, _Settings.level, out)


def observer_for(log_format: str, level: LogLevel, out: IO[str] | LogFile) -> ILogObserver:
    line = json_line if log_format == "json" else text_line
    writer = LineWriter(out, line)
    return FilteringLogObserver(
        RepeatFilter(writer), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )


@implementer(ILogObserver)
class LineWriter:
    """Writes each event as one line (formatted by ``line``) and flushes."""

    def __init__(self, out: IO[str] | LogFile, line: Any) -> None:
        self._out = out
        self._line = line

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._line(event)
        if text:
            self._out.write(text)
            self._out.flush()


def text_line(event: dict[str, Any]) -> str | None:
    """twistd's classic text line, the node's tag (if any) before the namespace."""
    node = event.get("log_node")
    if node is not None and "log_system" not in event:
        level = event.get("log_level", LogLevel.info)
        event = {**event, "log_system": f"{node} {event.get('log_namespace')}#{level.name}"}
    return formatEventAsClassicLogText(event, formatTime=_line_time)


def _line_time(when: float | None) -> str:
    """twistd's time stamp (to the second), worked out once a second: a busy node
    writes hundreds of lines in one, and the time zone lookup cost more than the rest."""
    return _second(None if when is None else int(when))


@functools.lru_cache(maxsize=4)
def _second(second: int | None) -> str:
    return formatTime(second)


def json_line(event: dict[str, Any]) -> str:
    """One plain JSON object: time, level, logger, msg, then the event's own fields."""
    level = event.get("log_level", LogLevel.info)
    stamp = event.get("log_time") or time.time()
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
        + f".{int(stamp % 1 * 1000):03d}Z",
        "level": level.name,
        "logger": event.get("log_namespace", "-"),
        "msg": formatEvent(event),
    }
    if event.get("log_node") is not None:
        record["node"] = event["log_node"]
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    legacy = "log_legacy" in event
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        record[f"field_{key}" if key in record else key] = _plain(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def _plain(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


@implementer(ILogObserver)
class RepeatFilter:
    """Holds back a warning identical to one written less than ``window`` seconds ago."""

    MAX_KEYS = 1000

    def __init__(self, observer: ILogObserver, window: float = REPEAT_WINDOW) -> None:
        self._observer = observer
        self._window = window
        # key -> (when last written, how many held back since)
        self._seen: OrderedDict[tuple[Any, ...], tuple[float, int]] = OrderedDict()

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < LogLevel.warn or "log_failure" in event:
            self._observer(event)
            return
        key = _repeat_key(event)
        now = event.get("log_time") or time.time()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._window:
            self._seen[key] = (last[0], last[1] + 1)
            return
        self._seen.pop(key, None)
        self._seen[key] = (now, 0)
        while len(self._seen) > self.MAX_KEYS:
            self._seen.popitem(last=False)
        if last is not None and last[1]:
            event = {
                **event,
                "log_format": f"{event.get('log_format', '')} "
                "({repeated} more like this held back)",
                "repeated": last[1],
            }
        self._observer(event)


def _repeat_key(event: dict[str, Any]) -> tuple[Any, ...]:
    fields = tuple(sorted((k, repr(v)) for k, v in event.items() if not k.startswith("log_")))
    return (
        event.get("log_level"),
        event.get("log_namespace"),
        event.get("log_format"),
        event.get("log_node"),
        fields,
    )


class NodeTags:
    """Which node of this process an event comes from, by the objects on its call stack.

    Each node registers its long-lived objects (files, peer factory, API,
    ...) under its label. An event is tagged with the label of the first
    registered object found as ``self`` on the stack, directly or through the
    attribute a connection keeps of its factory or site.
    """

    MAX_DEPTH = 80
    # How connection objects reach their node: PeerProtocol.factory.handler,
    # the TLS wrapper's factory.wrappedFactory, an HTTP channel's site, a transfer
    # its node's holdings or owner, ...
    _LINKS = (
        "factory",
        "handler",
        "wrappedFactory",
        "site",
        "channel",
        "api",
        "_holdings",
        "_owner",
    )

    def __init__(self) -> None:
        # id -> (a weak reference to the object, its node's label): the reference
        # tells a live object from a new one that took a dead one's id.
        self._labels: dict[int, tuple[weakref.ref[object], str]] = {}
        self._installed = False

    def register(self, label: str, *objects: object) -> None:
        for obj in objects:
            key = id(obj)
            self._labels[key] = (weakref.ref(obj, self._forgetter(key)), label)
        if not self._installed:
            # First in line: observers added later (twistd's) see the tag.
            observers: list[Any] = globalLogPublisher._observers
            observers.insert(0, self)
            self._installed = True

    def _forgetter(self, key: int) -> Callable[[object], None]:
        return lambda _: self._forget(key)

    def _forget(self, key: int) -> None:
        entry = self._labels.get(key)
        if entry is not None and entry[0]() is None:
            del self._labels[key]

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_node" not in event:
            label = self.find(sys._getframe(1))
            if label is not None:
                event["log_node"] = label
                level = event.get("log_level", LogLevel.info)
                if event.get("log_system", "-") == "-":
                    # twistd's text observer puts this between the brackets.
                    namespace = event.get("log_namespace", "-")
                    event["log_system"] = f"{label} {namespace}#{level.name}"

    def find(self, frame: Any) -> str | None:
        depth = 0
        while frame is not None and depth < self.MAX_DEPTH:
            obj = frame.f_locals.get("self")
            if obj is not None:
                label = self._label_of(obj, 2)
                if label is not None:
                    return label
            frame = frame.f_back
            depth += 1
        return None

    def _label_of(self, obj: object, hops: int) -> str | None:
        entry = self._labels.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        if hops == 0:
            return None
        attributes = getattr(obj, "__dict__", None)
        if not isinstance(attributes, dict):
            return None
        for name in self._LINKS:
            linked = attributes.get(name)
            if linked is not None:
                label = self._label_of(linked, hops - 1)
                if label is not None:
                    return label
        return None


node_tags = NodeTags()
