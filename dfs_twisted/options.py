"""Command-line options of a node, shared by the twistd plugin and the .tac files."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from twisted.python import usage

from . import logs
from .admission import Admission, AdmissionError, NetworkKey, load_allow_list
from .space import parse_size


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise usage.UsageError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise usage.UsageError(f"port out of range 1-65535: {port}")
    return port


def parse_peer(text: str) -> PeerAddress:
    """``PORT`` (127.0.0.1:PORT), ``HOST:PORT`` or ``[IPv6]:PORT``."""
    text = text.strip()
    if text.isdigit():
        return PeerAddress("127.0.0.1", parse_port(text))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise usage.UsageError(f"peer must be PORT or HOST:PORT, got {text!r}")
    return PeerAddress(host, parse_port(port))


_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``6h`` or ``1d``, as seconds."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:].isalpha() else ""
    try:
        amount = float(value[: len(value) - len(unit)])
        factor = _SECONDS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 10m, 6h, 1d)") from None
    if not amount >= 0:
        raise ValueError(f"not a duration: {text!r}")
    return amount * factor


def parse_peers(text: str) -> list[PeerAddress]:
    return [parse_peer(part) for part in text.split(",") if part.strip()]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NodeOptions(usage.Options):
    """twistd -n dfs --port 3000 --peers 4000,5000 --data-dir ./nodes/3000"""

    optFlags = [  # noqa: RUF012
        ["no-relay", None, "neither pass other orgs' replicas on nor take them from a third node"],
    ]
    optParameters = [  # noqa: RUF012
        ["port", None, None, "TCP port of the peer protocol (TLS). Required."],
        ["data-dir", None, None, "the node's directory (default ./dfs-<port>)"],
        ["listen", None, "127.0.0.1", "interface for the peer port"],
        ["api", None, "tcp:0:interface=127.0.0.1", "Twisted endpoint for the HTTP API"],
        ["org", None, None, "a human name for this organization (default node-<port>)"],
        [
            "network-key",
            None,
            None,
            "admit only nodes proving this network key (dfs network-key create)",
        ],
        ["allow", None, None, "admit only these node ids (a file: one id per line, # comments)"],
        ["quota", None, "10G", "most bytes held for any one other org (500M, 20G)"],
        ["reserve", None, "1G", "free disk never given to other orgs' replicas"],
        ["scrub-period", None, "1d", "how often to re-check every blob held (0: never)"],
        ["scrub-rate", None, "50M", "most bytes per second the scrub reads"],
        [
            "sync-period",
            None,
            "1m",
            "how often to compare with connected peers (0: on connect only)",
        ],
        ["handshake-timeout", None, 30.0, "seconds a peer has for TLS and HELLO", float],
        ["stall-timeout", None, 120.0, "seconds a transfer may receive nothing", float],
        ["log-format", None, "text", "text (twistd's) or json (one JSON object per line)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["peers"] = []

    def opt_peers(self, value: str) -> None:
        """peers to dial: comma-separated PORT or HOST:PORT; may repeat"""
        self["peers"].extend(parse_peers(value))

    def postOptions(self) -> None:
        if self["port"] is None:
            raise usage.UsageError("--port is required")
        self["port"] = parse_port(self["port"])
        for name, parse in (
            ("quota", parse_size),
            ("reserve", parse_size),
            ("scrub-rate", parse_size),
            ("scrub-period", parse_duration),
            ("sync-period", parse_duration),
        ):
            try:
                self[name] = parse(self[name])
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
        if self["scrub-rate"] <= 0:
            raise usage.UsageError("--scrub-rate must be more than 0")
        for name in ("handshake-timeout", "stall-timeout"):
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        if self["data-dir"] is None:
            self["data-dir"] = f"dfs-{self['port']}"
        self["data-dir"] = Path(self["data-dir"]).absolute()
        parent = getattr(self, "parent", None)
        if parent is not None and parent.get("pidfile") == "twistd.pid":
            # One pidfile per node, in its own directory: several nodes can start
            # from one working directory, and two never share one data dir.
            parent["pidfile"] = str(self["data-dir"] / "twistd.pid")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["log-format"] == "json" and parent is not None:
            logs.logfile = parent.get("logfile")
            parent["logger"] = logs.JSON_OBSERVER
        if self["org"] is None:
            self["org"] = f"node-{self['port']}"
        org = self["org"]
        if not 1 <= len(org) <= 128 or any(ord(c) < 32 or ord(c) == 127 for c in org):
            raise usage.UsageError("--org must be 1-128 printable characters")
        try:
            self["admission"] = Admission(
                network_key=None
                if self["network-key"] is None
                else NetworkKey.load(Path(self["network-key"])),
                allowed=None if self["allow"] is None else load_allow_list(Path(self["allow"])),
            )
        except AdmissionError as e:
            raise usage.UsageError(str(e)) from None
        if not is_loopback(self["listen"]) and self["admission"].is_open:
            # Without an admission rule any stranger could connect and store data.
            raise usage.UsageError(
                f"refusing to listen on {self['listen']}: listening beyond loopback needs "
                "--network-key FILE or --allow FILE"
            )
