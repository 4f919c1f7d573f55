"""`NodeService`: builds a node (store, keys, peers, files, API) from options."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure

from . import heap, readiness
from .access import ApiTLS
from .admission import Admission
from .api import Api, ApiSite
from .config import CONFIG_FILE, render_config
from .crypto import OrgKey
from .diskqueue import DiskQueue
from .fdlimit import raise_fd_limit
from .files import Files, Owner, Redundancy
from .files.holdings import Holdings, load_catalog
from .files.migrate import rewrite_legacy, unrecorded
from .identity import (
    KnownOrgs,
    MutualTLS,
    NodeIdentity,
    PeerPins,
    PrivateDirError,
    ensure_private_dir,
    load_or_create_secret,
    write_secret,
)
from .index import INDEX_FILE, StoreIndex
from .keys import Keyring
from .ledger import LEDGER_FILE, Ledger
from .logs import node_tags
from .metrics import NodeMetrics
from .nodedir import API_SOCKET, KEY_FILE, TOKEN_FILE
from .options import PeerAddress
from .peers import PeerRegistry
from .protocol import Limits, PeerFactory
from .scrub import Scrubber
from .space import SpaceAccount, SpaceLimits
from .store import BlobStore
from .transport import BulkTLSFactory

log = Logger()

ORG_KEY_FILE = "org.key"
PEERS_SEEN_FILE = "peers_seen.json"
# sun_path is 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107


class StartupError(Exception):
    """Why a node cannot start, in one line."""


def has_identity(data_dir: Path) -> bool:
    return (data_dir / "private" / KEY_FILE).exists()


def create_keys(private: Path) -> tuple[NodeIdentity, OrgKey, str]:
    """Load the node's identity, org key and API token, creating what is missing."""
    ensure_private_dir(private)
    identity = NodeIdentity.load_or_create(private)
    org_key = OrgKey.from_bytes(
        load_or_create_secret(private / ORG_KEY_FILE, OrgKey.generate().to_bytes())
    )
    token = (
        load_or_create_secret(private / TOKEN_FILE, secrets.token_urlsafe(32).encode())
        .decode()
        .strip()
    )
    return identity, org_key, token


def write_config(data_dir: Path, settings: dict[str, Any], comment: str) -> None:
    """Write DIR/dfs.toml (not a secret: mode 0644)."""
    path = data_dir / CONFIG_FILE
    write_secret(path, render_config(settings, comment).encode())
    path.chmod(0o644)


class NodeService(MultiService):
    """One organization's node: peer listener, peer links, files and HTTP API."""

    def __init__(
        self,
        *,
        port: int,
        data_dir: Path,
        peers: list[PeerAddress],
        listen: str = "127.0.0.1",
        api: str = "tcp:0:interface=127.0.0.1",
        api_tls: str | None = None,
        org: str | None = None,
        admission: Admission | None = None,
        limits: Limits | None = None,
        space: SpaceLimits | None = None,
        relay: bool = True,
        scrub_period: float = 86400.0,
        scrub_rate: int = 50 << 20,
        sync_period: float = 60.0,
        audit_period: float = 600.0,
        audit_sample: int = 8,
        redundancy: Redundancy | None = None,
        repair_after: float = 3600.0,
        collect_after: float = 3600.0,
        create: bool = True,
        reactor: PosixReactorBase | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(PosixReactorBase, default_reactor)
        self.reactor = reactor
        self.port = port
        self.data_dir = Path(data_dir)
        self.peer_addresses = peers
        self.listen = listen
        self.api_endpoint = api
        self.api_tls_endpoint = api_tls
        self.org = org or f"node-{port}"
        self.admission = admission or Admission()
        self.limits = limits or Limits()
        self.space_limits = space or SpaceLimits()
        self.relay = relay
        self.scrub_period = scrub_period
        self.scrub_rate = scrub_rate
        self.sync_period = sync_period
        self.audit_period = audit_period
        self.audit_sample = audit_sample
        self.redundancy = redundancy or Redundancy()
        self.repair_after = repair_after
        self.collect_after = collect_after
        self._audits: task.LoopingCall | None = None
        self.create = create
        self.private = self.data_dir / "private"
        self.api_url_file = self.data_dir / "api.url"
        self.api_socket = self.private / API_SOCKET
        self.label = f"node:{port}"
        self.peer_port: IListeningPort | None = None
        self.api_port: IListeningPort | None = None
        self.api_tls_port: IListeningPort | None = None
        self.socket_port: IListeningPort | None = None
        # Under twistd a failure to start ends the process with status 1.
        self.exit_on_failure = False
        # Fires with the API URL once every listener is up.
        self.ready: Deferred[str] = Deferred()
        self._listening: Deferred[None] | None = None
        self._sync: task.LoopingCall | None = None
        self._trims = task.LoopingCall(heap.trim)
        node_tags.register(self.label, self)
        self._load()

    def _load(self) -> None:
        """Create or load everything on disk; fails early with a clear error."""
        if not self.create and not has_identity(self.data_dir):
            raise StartupError(
                f"{self.data_dir} holds no node (no private/{KEY_FILE}): create one with "
                f"`dfs init {self.data_dir} --port {self.port}`, or start without --no-create"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity, self.org_key, self.token = create_keys(self.private)
        if not (self.data_dir / CONFIG_FILE).exists():
            # The org name belongs to the node, not to one command line.
            write_config(
                self.data_dir,
                {"org": self.org},
                "dfs node settings: the keys are the long names of the node's flags,\n"
                "and a flag given on the command line overrides the value here.",
            )
        self.store = BlobStore(self.data_dir / "store")
        pins = PeerPins(self.private / "known_peers.json")
        self.registry = PeerRegistry(
            self.reactor, pinned=pins.get, seen_file=self.private / PEERS_SEEN_FILE
        )
        self.registry.setServiceParent(self)
        self.disk = DiskQueue(self.reactor)
        self.index = StoreIndex(
            self.store.root / INDEX_FILE, self.disk.run, lambda rows: holdings.buried(rows)
        )
        catalog = load_catalog(self.store, self.index)
        store_root = self.store.root
        owner = Owner(self.identity.node_id, self.org_key, self.identity.key, self.identity.box)
        holdings = Holdings(self.store, catalog, self.disk, self.index)
        self.ledger = Ledger(self.private / LEDGER_FILE, self.disk.run)
        rewrite_legacy(owner, holdings, self.ledger)
        self.ledger.seed(unrecorded(owner, holdings, self.ledger))
        self.files = Files(
            owner,
            holdings,
            self.ledger,
            self.registry,
            self.reactor,
            SpaceAccount(
                catalog.sent_by, self.space_limits, lambda: shutil.disk_usage(store_root).free
            ),
            KnownOrgs(self.private / "known_orgs.json"),
            relay=self.relay,
            audit_sample=self.audit_sample,
            redundancy=self.redundancy,
            repair_after=self.repair_after,
            collect_after=self.collect_after,
        )
        self.tls = MutualTLS(self.identity)
        self.factory = PeerFactory(
            self.identity,
            pins,
            self.files.server,
            self.org,
            f"{self.listen}:{self.port}",
            self.reactor,
            on_refused=self.registry.refused,
            admission=self.admission,
            limits=self.limits,
            registry=self.registry,
            placed=not self.files.placement.everywhere,
        )
        self.scrubber = Scrubber(
            self.files,
            self.data_dir / "scrub.json",
            self.scrub_period,
            self.scrub_rate,
            self.reactor,
        )
        self.scrubber.setServiceParent(self)
        self.metrics = NodeMetrics(self.files, pinned=pins.get, scrubber=self.scrubber)
        self.api = Api(
            self.files,
            self.token,
            self.org,
            Keyring(self.private / "keys"),
            metrics=self.metrics,
            scrubber=self.scrubber,
            sync_period=self.sync_period,
        )
        node_tags.register(
            self.label,
            self.files,
            self.files.server,
            self.files.sync,
            self.files.fetcher,
            self.files.holdings,
            self.files.owner,
            self.ledger,
            self.registry,
            self.factory,
            self.api,
            self.scrubber,
            self.disk,
            self.store,
        )

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def bind(self) -> None:
        """Listen now, before the reactor runs: raise StartupError if a port is taken.

        twistd calls this (through the plugin or a .tac file) before it writes its
        pidfile and starts logging, so the reason reaches the terminal and the
        process ends with status 1.
        """
        d = self._listening = Deferred.fromCoroutine(self._open_listeners())
        if d.called:
            failures: list[Failure] = []
            d.addErrback(failures.append)
            if failures:
                self._close_listeners()
                raise StartupError(_reason(failures[0])) from None

    async def _open_listeners(self) -> None:
        endpoint_type = TCP6ServerEndpoint if ":" in self.listen else TCP4ServerEndpoint
        self.peer_port = await _listen(
            endpoint_type(self.reactor, self.port, interface=self.listen),
            BulkTLSFactory(self.tls, False, self.factory),
            f"the peer port {self.listen}:{self.port}",
        )
        self.api_port = await _listen(
            _endpoint(self.reactor, self.api_endpoint, "--api"),
            self._site(),
            f"the API ({self.api_endpoint})",
        )
        if self.api_tls_endpoint is not None:
            self.api_tls_port = await _listen(
                _endpoint(self.reactor, self.api_tls_endpoint, "--api-tls"),
                TLSMemoryBIOFactory(ApiTLS(self.identity), False, self._site()),
                f"the TLS API ({self.api_tls_endpoint})",
            )
        self.socket_port = self._listen_socket()

    def _site(self) -> ApiSite:
        site = ApiSite(self.api)
        node_tags.register(self.label, site)
        return site

    def _listen_socket(self) -> IListeningPort | None:
        """The API on private/api.sock, for the dfs command on this machine."""
        path = str(self.api_socket)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            log.warn(
                "no API socket: {path} is longer than a Unix socket path may be; "
                "the dfs command cannot reach this node locally (use a shorter --data-dir)",
                path=path,
            )
            return None
        if os.path.lexists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(2)
                try:
                    probe.connect(path)
                except OSError:
                    os.unlink(path)  # left by a node that was killed
                else:
                    raise StartupError(f"another node is running on {self.data_dir}")
        try:
            port: IListeningPort = self.reactor.listenUNIX(path, self._site(), mode=0o600)
        except CannotListenError as e:
            raise StartupError(f"cannot listen on {path}: {_socket_error(e)}") from None
        return port

    def _audit_round(self) -> Deferred[tuple[int, int]]:
        return Deferred.fromCoroutine(self.files.auditor.run())

    def startService(self) -> None:
        heap.tune()
        raise_fd_limit()
        self.index.opened()
        self.disk.start()
        super().startService()
        for address in self.peer_addresses:
            self.registry.dial(address, self.factory, self.tls)
        if self.sync_period > 0:
            self._sync = task.LoopingCall(self.files.sync_all)
            self._sync.clock = self.reactor
            self._sync.start(self.sync_period, now=False)
        self._trims.clock = self.reactor
        self._trims.start(heap.TRIM_PERIOD, now=False)
        if self.audit_period > 0:
            # A round runs to its end before the next may start (LoopingCall waits).
            self._audits = task.LoopingCall(
                lambda: Deferred.fromCoroutine(self.files.auditor.run())
            )
            self._audits.clock = self.reactor
            self._audits.start(self.audit_period, now=False).addErrback(
                lambda f: log.failure("audits stopped", f)
            )
        if self._listening is None:
            self._listening = Deferred.fromCoroutine(self._open_listeners())
        self._listening.addCallback(lambda _: self._announce()).addErrback(self._failed)

    def _announce(self) -> None:
        assert self.api_port is not None
        address = self.api_port.getHost()
        url = f"http://{getattr(address, 'host', '127.0.0.1')}:{getattr(address, 'port', 0)}/"
        # Written only now, so a client that finds it can connect.
        write_secret(self.api_url_file, (url + "\n").encode())
        self.api_url_file.chmod(0o644)
        log.info(
            "node {org} ({node_id}) listening on {listen}:{port}, API at {url}",
            org=self.org,
            node_id=self.node_id,
            listen=self.listen,
            port=self.port,
            url=url,
        )
        if self.api_tls_port is not None:
            tls = self.api_tls_port.getHost()
            log.info(
                "API over TLS on {host}:{tls_port} (certificate of node {node_id})",
                host=getattr(tls, "host", "?"),
                tls_port=getattr(tls, "port", 0),
                node_id=self.node_id,
            )
        readiness.notify("READY=1")
        self.ready.callback(url)

    def _failed(self, failure: Failure) -> None:
        reason = _reason(failure)
        log.critical("node failed to start: {reason}", reason=reason)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.exit_on_failure:
            os.write(2, f"dfs: cannot start node: {reason}\n".encode())
            atexit.register(_exit_status_1)
            if self.reactor.running:
                self.reactor.stop()

    def _close_listeners(self) -> list[Deferred[Any]]:
        stopping: list[Deferred[Any]] = []
        for port in (self.socket_port, self.api_tls_port, self.api_port, self.peer_port):
            if port is not None:
                stopping.append(maybeDeferred(port.stopListening))
        self.socket_port = self.api_tls_port = self.api_port = self.peer_port = None
        return stopping

    async def _close(self) -> None:
        readiness.notify("STOPPING=1")
        for loop in (self._sync, self._audits, self._trims):
            if loop is not None and loop.running:
                loop.stop()
        self.api_url_file.unlink(missing_ok=True)
        for stopping in self._close_listeners():
            await stopping

    def stopService(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._close())
        d.addCallback(lambda _: super(NodeService, self).stopService())
        # Last: commits under way, their index rows and ledger entries, and queued
        # writes (and aborts of cut transfers) finish before the threads end.
        d.addCallback(lambda _: Deferred.fromCoroutine(self.files.holdings.settle()))
        d.addCallback(lambda _: self.ledger.written())
        d.addCallback(lambda _: self.disk.stop())
        d.addCallback(lambda _: self.ledger.close())
        d.addCallback(lambda _: self.index.closed(self.files.catalog))
        return d


def _exit_status_1() -> None:
    # twistd has no way to end with a status: this runs after its clean-up.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _endpoint(reactor: PosixReactorBase, description: str, flag: str) -> IStreamServerEndpoint:
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise StartupError(f"{flag} {description!r} is not a Twisted endpoint: {e}") from None
    return endpoint


async def _listen(endpoint: IStreamServerEndpoint, factory: Any, what: str) -> IListeningPort:
    try:
        port: IListeningPort = await endpoint.listen(factory)
    except CannotListenError as e:
        raise StartupError(f"cannot listen on {what}: {_socket_error(e)}") from None
    return port


def _socket_error(error: CannotListenError) -> str:
    cause = error.socketError
    return str(getattr(cause, "strerror", None) or cause)


def _reason(failure: Failure) -> str:
    if failure.check(StartupError):
        return str(failure.value)
    return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"


def node_from_options(options: Any) -> NodeService:
    """The service for parsed `NodeOptions`, not yet listening."""
    return NodeService(
        port=options["port"],
        data_dir=options["data-dir"],
        peers=options["peers"],
        listen=options["listen"],
        api=options["api"],
        api_tls=options["api-tls"],
        org=options["org"],
        admission=options["admission"],
        limits=Limits(
            handshake_timeout=options["handshake-timeout"],
            stall_timeout=options["stall-timeout"],
            max_sessions=options["max-peers"],
        ),
        space=SpaceLimits(quota=options["quota"], reserve=options["reserve"]),
        relay=not options["no-relay"],
        scrub_period=options["scrub-period"],
        scrub_rate=options["scrub-rate"],
        sync_period=options["sync-period"],
        audit_period=options["audit-period"],
        audit_sample=options["audit-sample"],
        redundancy=Redundancy(options["replicas"], options["erasure"]),
        repair_after=options["repair-after"],
        collect_after=options["collect-after"],
        create=not options["no-create"],
    )


def node_for_twistd(options: Any) -> NodeService:
    """A node built and listening, for twistd (the plugin, or a .tac file).

    Whatever stops it from starting ends the process here with status 1 and one
    line on stderr: twistd has not written its pidfile nor redirected output yet.
    """
    try:
        node = node_from_options(options)
        node.bind()
    except StartupError as e:
        raise SystemExit(f"dfs: cannot start node: {e}") from None
    except PrivateDirError as e:
        raise SystemExit(f"dfs: cannot start node: {e}") from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise SystemExit(f"dfs: cannot start node: {where}{e.strerror or e}") from None
    except ValueError as e:
        raise SystemExit(f"dfs: cannot start node: {e}") from None
    node.exit_on_failure = True
    return node


def node_from_args(args: list[str]) -> NodeService:
    """Parse twistd-style arguments (``--port 3000 --peers 4000``) into a listening node.

    For .tac files: a bad argument, like any start-up failure, ends the process
    with one line on stderr.
    """
    from .options import NodeOptions

    options = NodeOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        raise SystemExit(f"dfs: {e}") from None
    return node_for_twistd(options)
