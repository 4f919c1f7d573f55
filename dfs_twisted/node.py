"""`NodeService`: builds a node (store, keys, peers, file server, API) from options."""

from __future__ import annotations

import ctypes
import secrets
import shutil
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from .admission import Admission
from .api import Api, ApiSite
from .crypto import OrgKey
from .diskqueue import DiskQueue
from .fdlimit import raise_fd_limit
from .files import Files, Owner
from .files.holdings import Holdings, index_store
from .files.migrate import unrecorded
from .identity import (
    TOKEN_FILE,
    KnownOrgs,
    MutualTLS,
    NodeIdentity,
    PeerPins,
    ensure_private_dir,
    load_or_create_secret,
    write_secret,
)
from .keys import Keyring
from .ledger import LEDGER_FILE, Ledger
from .metrics import NodeMetrics
from .options import PeerAddress
from .peers import PeerRegistry
from .protocol import Limits, PeerFactory
from .scrub import Scrubber
from .space import SpaceAccount, SpaceLimits
from .store import BlobStore
from .transport import BulkTLSFactory

log = Logger()

ORG_KEY_FILE = "org.key"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> None:
    """Keep ~1 MiB transfer buffers in the heap (glibc only).

    By default glibc serves each 1 MiB buffer with its own mmap and trims the
    heap as soon as it is freed: measured here, that page-fault churn cost more
    kernel time than the transfers themselves. 32 MiB bounds what stays cached.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    except (OSError, AttributeError):
        pass


class NodeService(MultiService):
    """One organization's node: peer listener, peer links, file server and HTTP API."""

    def __init__(
        self,
        *,
        port: int,
        data_dir: Path,
        peers: list[PeerAddress],
        listen: str = "127.0.0.1",
        api: str = "tcp:0:interface=127.0.0.1",
        org: str | None = None,
        admission: Admission | None = None,
        limits: Limits | None = None,
        space: SpaceLimits | None = None,
        relay: bool = True,
        scrub_period: float = 86400.0,
        scrub_rate: int = 50 << 20,
        sync_period: float = 60.0,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.port = port
        self.data_dir = Path(data_dir)
        self.peer_addresses = peers
        self.listen = listen
        self.api_endpoint = api
        self.org = org or f"node-{port}"
        self.admission = admission or Admission()
        self.limits = limits or Limits()
        self.space_limits = space or SpaceLimits()
        self.relay = relay
        self.scrub_period = scrub_period
        self.scrub_rate = scrub_rate
        self.sync_period = sync_period
        self.private = self.data_dir / "private"
        self.api_url_file = self.data_dir / "api.url"
        self.peer_port: IListeningPort | None = None
        self.api_port: IListeningPort | None = None
        # Fires with the API URL once both listeners are up.
        self.ready: Deferred[str] = Deferred()
        self._sync: task.LoopingCall | None = None
        self._load()

    def _load(self) -> None:
        """Create or load everything on disk; fails early with a clear error."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_private_dir(self.private)
        self.identity = NodeIdentity.load_or_create(self.private)
        self.org_key = OrgKey.from_bytes(
            load_or_create_secret(self.private / ORG_KEY_FILE, OrgKey.generate().to_bytes())
        )
        self.token = (
            load_or_create_secret(self.private / TOKEN_FILE, secrets.token_urlsafe(32).encode())
            .decode()
            .strip()
        )
        self.store = BlobStore(self.data_dir / "store")
        self.registry = PeerRegistry(self.reactor)
        self.registry.setServiceParent(self)
        self.disk = DiskQueue(self.reactor)
        catalog = index_store(self.store)
        store_root = self.store.root
        owner = Owner(self.identity.node_id, self.org_key, self.identity.key, self.identity.box)
        holdings = Holdings(self.store, catalog, self.disk)
        self.ledger = Ledger(self.private / LEDGER_FILE, self.disk.run)
        self.ledger.seed(unrecorded(owner, holdings, self.ledger))
        self.files = Files(
            owner,
            holdings,
            self.ledger,
            self.registry,
            self.reactor,
            SpaceAccount(
                catalog.held, self.space_limits, lambda: shutil.disk_usage(store_root).free
            ),
            KnownOrgs(self.private / "known_orgs.json"),
            relay=self.relay,
        )
        self.tls = MutualTLS(self.identity)
        self.factory = PeerFactory(
            self.identity,
            PeerPins(self.private / "known_peers.json"),
            self.files.server,
            self.org,
            f"{self.listen}:{self.port}",
            self.reactor,
            on_refused=self.registry.refused,
            admission=self.admission,
            limits=self.limits,
            registry=self.registry,
        )
        self.scrubber = Scrubber(
            self.files,
            self.data_dir / "scrub.json",
            self.scrub_period,
            self.scrub_rate,
            self.reactor,
        )
        self.scrubber.setServiceParent(self)
        pins = self.factory.pins
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

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def startService(self) -> None:
        tune_malloc()
        raise_fd_limit()
        self.disk.start()
        super().startService()
        for address in self.peer_addresses:
            self.registry.dial(address, self.factory, self.tls)
        if self.sync_period > 0:
            self._sync = task.LoopingCall(self.files.sync_all)
            self._sync.clock = self.reactor
            self._sync.start(self.sync_period, now=False)
        Deferred.fromCoroutine(self._listen()).addErrback(self._failed)

    async def _listen(self) -> None:
        endpoint_type = TCP6ServerEndpoint if ":" in self.listen else TCP4ServerEndpoint
        peer_endpoint = endpoint_type(self.reactor, self.port, interface=self.listen)
        self.peer_port = await peer_endpoint.listen(BulkTLSFactory(self.tls, False, self.factory))
        api_endpoint = serverFromString(self.reactor, self.api_endpoint)
        self.api_port = await api_endpoint.listen(ApiSite(self.api))
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
        self.ready.callback(url)

    def _failed(self, failure: Any) -> None:
        log.failure("node failed to start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    async def _close(self) -> None:
        if self._sync is not None and self._sync.running:
            self._sync.stop()
        self.api_url_file.unlink(missing_ok=True)
        for port in (self.api_port, self.peer_port):
            if port is not None:
                await maybeDeferred(port.stopListening)

    def stopService(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._close())
        d.addCallback(lambda _: super(NodeService, self).stopService())
        # Last: queued writes (and aborts of cut transfers) finish before the thread ends.
        d.addCallback(lambda _: self.disk.stop())
        d.addCallback(lambda _: self.ledger.close())
        return d


def node_from_options(options: Any) -> NodeService:
    """The service for parsed `NodeOptions` (used by the twistd plugin and .tac files)."""
    return NodeService(
        port=options["port"],
        data_dir=options["data-dir"],
        peers=options["peers"],
        listen=options["listen"],
        api=options["api"],
        org=options["org"],
        admission=options["admission"],
        limits=Limits(
            handshake_timeout=options["handshake-timeout"],
            stall_timeout=options["stall-timeout"],
        ),
        space=SpaceLimits(quota=options["quota"], reserve=options["reserve"]),
        relay=not options["no-relay"],
        scrub_period=options["scrub-period"],
        scrub_rate=options["scrub-rate"],
        sync_period=options["sync-period"],
    )


def node_from_args(args: list[str]) -> NodeService:
    """Parse twistd-style arguments (``--port 3000 --peers 4000``) into a node."""
    from .options import NodeOptions

    options = NodeOptions()
    options.parseOptions(args)
    return node_from_options(options)
