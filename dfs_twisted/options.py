"""Command-line options of a node, shared by the twistd plugin and the .tac files.

A flag given on the command line wins over the same setting in the data dir's
dfs.toml (config.py), which wins over the built-in default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.python import usage

from . import logs
from .admission import Admission, AdmissionError, NetworkKey, load_allow_list
from .config import CONFIG_FILE, ConfigError, Setting, parse_config, resolve_paths
from .erasure import parse_erasure
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


def endpoint_interface(description: str) -> tuple[str, str | None]:
    """The type of a Twisted server endpoint string and, for tcp/tcp6, its interface.

    ``tcp:0:interface=127.0.0.1`` -> ("tcp", "127.0.0.1"); ``tcp:9300`` -> ("tcp", "")
    (every interface). A backslash escapes a colon, as in ``interface=\\:\\:1``.
    """
    parts: list[str] = [""]
    escaped = False
    for char in description:
        if escaped:
            parts[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("")
        else:
            parts[-1] += char
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6"):
        return kind, None
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    # Twisted's tcp server endpoint: tcp:PORT[:INTERFACE][:BACKLOG], or keywords.
    interface = keywords.get("interface", positional[1] if len(positional) > 1 else "")
    return kind, interface


def parse_replicas(text: str) -> int | None:
    """``all`` (None: every peer) or a number of copies, this node's included, as
    given to ``--replicas``."""
    if text == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"takes 'all' or a number of copies, not {text!r}") from None
    if count < 1:
        raise ValueError("must be at least 1 (or 'all')")
    return count


DEFAULTS: dict[str, Setting] = {
    "listen": "127.0.0.1",
    "api": "tcp:0:interface=127.0.0.1",
    "quota": "10G",
    "reserve": "1G",
    "scrub-period": "1d",
    "scrub-rate": "50M",
    "sync-period": "1m",
    "handshake-timeout": "30",
    "stall-timeout": "120",
    "max-peers": "128",
    "audit-period": "10m",
    "audit-sample": "8",
    "replicas": "all",
    "repair-after": "1h",
    "collect-after": "1h",
    "log-format": "text",
    "log-level": "info",
    "no-relay": False,
}


class NodeOptions(usage.Options):
    """twistd -n dfs --port 3000 --peers 4000,5000 --data-dir ./nodes/3000"""

    optFlags = [  # noqa: RUF012
        ["no-relay", None, "neither pass other orgs' replicas on nor take them from a third node"],
        ["no-create", None, "refuse a data dir that holds no node identity (see dfs init)"],
    ]
    # Defaults are applied after dfs.toml is read (see DEFAULTS): None here means
    # "not given on the command line".
    optParameters = [  # noqa: RUF012
        ["port", None, None, "TCP port of the peer protocol (TLS). Required, or in dfs.toml."],
        ["data-dir", None, None, "the node's directory (default ./dfs-<port>)"],
        ["listen", None, None, "interface for the peer port (default 127.0.0.1)"],
        [
            "api",
            None,
            None,
            "Twisted endpoint for the HTTP API, on loopback (default tcp:0:interface=127.0.0.1)",
        ],
        [
            "api-tls",
            None,
            None,
            "also serve the API over TLS with the node's certificate here, for remote "
            "clients (dfs --api https://HOST:PORT/), e.g. tcp:7443",
        ],
        ["org", None, None, "a human name for this organization (default node-<port>)"],
        [
            "network-key",
            None,
            None,
            "admit only nodes proving this network key (dfs network-key create)",
        ],
        ["allow", None, None, "admit only these node ids (a file: one id per line, # comments)"],
        ["quota", None, None, "most bytes held for any one other org (default 10G; 500M, 20G)"],
        ["reserve", None, None, "free disk never given to other orgs' replicas (default 1G)"],
        ["scrub-period", None, None, "how often to re-check every blob held (default 1d; 0 never)"],
        ["scrub-rate", None, None, "most bytes per second the scrub reads (default 50M)"],
        [
            "sync-period",
            None,
            None,
            "how often to compare with connected peers (default 1m; 0: on connect only)",
        ],
        ["handshake-timeout", None, None, "seconds a peer has for TLS and HELLO (default 30)"],
        ["stall-timeout", None, None, "seconds a transfer may receive nothing (default 120)"],
        ["max-peers", None, None, "most peer sessions at once (default 128)"],
        [
            "audit-period",
            None,
            None,
            "how often to ask holders to prove they hold this org's blobs (default 10m; 0 never)",
        ],
        ["audit-sample", None, None, "blobs audited per peer each time (default 8)"],
        [
            "replicas",
            None,
            None,
            "copies of each of this org's files, this node's included: a number, or all "
            "(default: every peer)",
        ],
        [
            "erasure",
            None,
            None,
            "instead of replicas: K-of-N, N shares of each file on N peers, any K rebuild it",
        ],
        [
            "repair-after",
            None,
            None,
            "how long a holder may be away before its copies go elsewhere (default 1h)",
        ],
        [
            "collect-after",
            None,
            None,
            "how long a deletion's tombstone is kept at least, once every node has it (default 1h)",
        ],
        ["log-format", None, None, "text (default) or json (one JSON object per line)"],
        [
            "log-level",
            None,
            None,
            "the least level logged: debug, info (default), warn, error or critical",
        ],
    ]

    def __init__(self, check_admission: bool = True) -> None:
        super().__init__()
        self["peers"] = []
        self._peers_given = False
        # `dfs init` checks the settings but not the admission files: the node
        # may be given its network key only when it starts (a service credential).
        self._check_admission = check_admission

    def opt_peers(self, value: str) -> None:
        """peers to dial: comma-separated PORT or HOST:PORT; may repeat"""
        self["peers"].extend(parse_peers(value))
        self._peers_given = True

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd: one line on stderr and a non-zero exit, instead of
            # twistd's whole usage text on stdout.
            raise SystemExit(f"dfs: {e} (see: twistd dfs --help)") from None

    def _given(self) -> dict[str, Setting]:
        """What the command line set, in dfs.toml's terms."""
        names: list[str] = [str(row[0]) for row in self.optParameters]
        given: dict[str, Setting] = {
            name: self[name] for name in names if name != "data-dir" and self[name] is not None
        }
        if self["no-relay"]:
            given["no-relay"] = True
        if self._peers_given:
            given["peers"] = [str(p) for p in self["peers"]]
        return given

    def postOptions(self) -> None:
        given = self._given()
        if self["data-dir"] is not None:
            data_dir = Path(self["data-dir"]).absolute()
        elif "port" in given:
            data_dir = Path(f"dfs-{parse_port(str(given['port']))}").absolute()
        else:
            raise usage.UsageError(
                "--port is required (or --data-dir DIR of a node made by dfs init)"
            )
        self["data-dir"] = data_dir
        stored = self._read_config(data_dir / CONFIG_FILE)
        settings = {**DEFAULTS, **resolve_paths(stored, data_dir), **given}
        self["config"] = stored
        self._apply(settings)

    @staticmethod
    def _read_config(path: Path) -> dict[str, Setting]:
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise usage.UsageError(f"cannot read {path}: {e}") from None
        try:
            return parse_config(text, str(path))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _apply(self, settings: dict[str, Setting]) -> None:
        """Check every setting and store it parsed, as the node takes it."""
        text: dict[str, str] = {k: v for k, v in settings.items() if isinstance(v, str)}
        if "port" not in text:
            config = self["data-dir"] / CONFIG_FILE
            where = f"{config} gives none" if self["config"] else f"there is no {config}"
            raise usage.UsageError(f"--port is required: {where} (see dfs init)")
        self["port"] = parse_port(text["port"])
        peers = settings.get("peers", [])
        assert isinstance(peers, list)
        self["peers"] = [parse_peer(p) for p in peers]
        self["no-relay"] = bool(settings["no-relay"])
        for name in ("listen", "api", "api-tls", "network-key", "allow"):
            self[name] = text.get(name)
        for name, parse in (
            ("quota", parse_size),
            ("reserve", parse_size),
            ("scrub-rate", parse_size),
            ("scrub-period", parse_duration),
            ("sync-period", parse_duration),
            ("audit-period", parse_duration),
            ("repair-after", parse_duration),
            ("collect-after", parse_duration),
            ("replicas", parse_replicas),
        ):
            try:
                self[name] = parse(text[name])
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
        try:
            self["erasure"] = None if "erasure" not in text else parse_erasure(text["erasure"])
        except ValueError as e:
            raise usage.UsageError(f"--erasure: {e}") from None
        if self["erasure"] is not None and self["replicas"] is not None:
            raise usage.UsageError("--erasure and --replicas N exclude each other: give one")
        if self["scrub-rate"] <= 0:
            raise usage.UsageError("--scrub-rate must be more than 0")
        for name in ("handshake-timeout", "stall-timeout"):
            try:
                self[name] = float(text[name])
            except ValueError:
                self[name] = 0.0
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        for name in ("max-peers", "audit-sample"):
            try:
                self[name] = int(text[name])
            except ValueError:
                self[name] = 0
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be a whole number, 1 or more")
        self._apply_logging(text["log-format"], text["log-level"])
        self._apply_api()
        self["org"] = text.get("org") or f"node-{self['port']}"
        org = self["org"]
        if not 1 <= len(org) <= 128 or any(ord(c) < 32 or ord(c) == 127 for c in org):
            raise usage.UsageError("--org must be 1-128 printable characters")
        self._apply_admission()

    def _apply_logging(self, log_format: str, log_level: str) -> None:
        if log_format not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        try:
            level = logs.parse_level(log_level)
        except ValueError as e:
            raise usage.UsageError(f"--log-level: {e}") from None
        self["log-format"], self["log-level"] = log_format, level
        parent: Any = getattr(self, "parent", None)
        if parent is not None:
            if parent.get("pidfile") == "twistd.pid":
                # One pidfile per node, in its own directory: several nodes can start
                # from one working directory, and two never share one data dir.
                parent["pidfile"] = str(self["data-dir"] / "twistd.pid")
            logs.configure(
                log_format,
                level,
                parent.get("logfile") or ("-" if parent.get("nodaemon") else "twistd.log"),
            )
            parent["logger"] = logs.OBSERVER

    def _apply_api(self) -> None:
        _, interface = endpoint_interface(self["api"])
        if interface is not None and not is_loopback(interface):
            # The token would cross the network in the clear, to anyone who asks.
            where = f"on {interface}" if interface else "on every interface"
            raise usage.UsageError(
                f"--api {self['api']} would serve the API {where} over plain HTTP: "
                "keep it on loopback (add :interface=127.0.0.1) and use --api-tls "
                "for remote clients"
            )

    def _apply_admission(self) -> None:
        if not self._check_admission:
            self["admission"] = None
            return
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
