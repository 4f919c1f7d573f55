"""Benchmark: one node holding 1,000,000 blobs.

    make bench-scale                          # 1,000,000 blobs
    .venv/bin/python bench/scale.py --blobs 100000

Prints the start-up time and peak RSS of a real `twistd -n dfs` node holding the
blobs, the time of `dfs ls` against it, and the time and bytes on the wire of a
sync with a peer that differs from it by one blob. Then the put throughput of a
file to three peers, with full replication (three copies) against
``--erasure 2-of-3`` (three shares of half its size), and the bytes they hold.

The blobs are tiny real blobs (encrypted and signed) of another org, "P", held
here as replicas, made with the crypto, store and index modules' own API (not the
CLI; writes not fsynced, which only the fixture skips). They are made once under
``bench-run/scale-N/`` and reused. The peer of the sync, B, holds the same blobs
(hard links to A's files, a copy of A's index); each run gives A one new blob of P
and times A's catch-up of B, in this process, through the real multiplexer, wire
codec, `files.Sync` and `files.Server` (as tests/loopback.py links nodes), counting
the bytes of every frame both ways.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred

from dfs_twisted.catalog import Entry
from dfs_twisted.crypto import Encryptor, OrgKey, owner_id
from dfs_twisted.crypto.orgkey import raw_public_key
from dfs_twisted.index import Row, StoreIndex
from dfs_twisted.launcher import BIN, NodeProcess, free_port, start_network
from dfs_twisted.store import BlobKey, BlobStore

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def _no_fsync(fd: int) -> None:
    """The fixture's writes need not survive a crash: it is made again if damaged."""


class Org:
    """The org whose blobs the nodes hold: its keys, kept beside the fixture."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.key = OrgKey(secret[:32])
        self.signer = Ed25519PrivateKey.from_private_bytes(secret[32:])
        self.id = owner_id(raw_public_key(self.signer))

    @classmethod
    def load(cls, path: Path) -> Org:
        if not path.exists():
            path.write_bytes(os.urandom(64))
        return cls(path.read_bytes())

    def blob(self, name: str, version: int) -> tuple[str, bytes, bytes, int]:
        """(blob id, the blob's bytes, its record, its version) of a tiny file."""
        enc = Encryptor(self.key, self.signer, name, version, mtime=1_700_000_000)
        pieces = [enc.header, *enc.update(name.encode()), enc.finalize()]
        assert enc.record is not None
        return enc.blob, b"".join(pieces), enc.record.to_bytes(), version


_worker_org: Org | None = None


def _init_worker(secret: bytes) -> None:
    global _worker_org
    _worker_org = Org(secret)


def _make_batch(span: tuple[int, int]) -> list[tuple[str, bytes, bytes, int]]:
    assert _worker_org is not None
    return [_worker_org.blob(f"file-{i}", i + 1) for i in range(*span)]


def _init_node(directory: Path) -> None:
    subprocess.run(
        [str(BIN / "dfs"), "init", str(directory), "--port", str(free_port()), "-q"],
        check=True,
        capture_output=True,
    )


def make_fixture(root: Path, count: int, org: Org) -> None:
    """Node A holding ``count`` blobs of ``org``; node B, the same (hard links)."""
    a, b = root / "a", root / "b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
        _init_node(d)
    store = BlobStore(a / "store", fsync=_no_fsync)
    rows: list[Row] = []
    start = time.perf_counter()
    step = 2000
    spans = [(i, min(i + step, count)) for i in range(0, count, step)]
    with multiprocessing.Pool(os.cpu_count(), _init_worker, (org.secret,)) as pool:
        for batch in pool.imap(_make_batch, spans):
            for blob, data, record, version in batch:
                key = BlobKey(org.id, blob)
                writer = store.begin(key)
                writer.write(data)
                writer.commit()
                rows.append(Row(key, Entry(version, len(data), proof=record, sender=org.id)))
            print(f"\r  made {len(rows):,} blobs", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)
    index = StoreIndex(a / "store" / "index.sqlite", _unused_run)
    index.replace_all(rows)
    index.closed()
    # B: the same blobs, as hard links (no data copied), and the same index.
    (b / "store").mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["cp", "-al", str(a / "store" / org.id), str(b / "store" / org.id)], check=True)
    shutil.copy(a / "store" / "index.sqlite", b / "store" / "index.sqlite")
    (root / "count").write_text(str(count))
    print(f"  fixture made in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def _unused_run(*args: object) -> Deferred[None]:
    raise AssertionError("the fixture writes no group commits")


def node_figures(root: Path) -> dict[str, float]:
    """Start A as a real node: its start-up time, peak RSS and the time of `dfs ls`."""
    a = root / "a"
    # A port free now (the one dfs init chose may be taken since; the flag wins).
    node = NodeProcess(free_port(), a)
    figures = {}
    # Twice: the first start may find no snapshot of the catalog (a new or upgraded
    # index: it is read from its rows); the second follows a clean stop.
    for start_up in ("first_startup_s", "startup_s"):
        start = time.perf_counter()
        node.start()
        try:
            node.wait_ready(timeout=600)
            figures[start_up] = time.perf_counter() - start
        finally:
            if start_up == "first_startup_s":
                node.stop()
    try:
        rss_started = node.peak_rss()
        start = time.perf_counter()
        listed = node.dfs("ls", "--json").stdout
        ls = time.perf_counter() - start
        return {
            **figures,
            "rss_mib": rss_started / MIB,
            "ls_s": ls,
            "ls_bytes": len(listed),
            "rss_after_ls_mib": node.peak_rss() / MIB,
        }
    finally:
        node.stop()


def sync_figures(root: Path, org: Org) -> dict[str, float]:
    """A gets one new blob of the org; A's catch-up of B, timed, its frames counted."""
    sys.path.insert(0, str(ROOT))
    from tests import loopback

    counted = [0]
    frame = loopback._Pipe.frame

    def counting(pipe: loopback._Pipe, data: bytes) -> None:
        counted[0] += len(data)
        frame(pipe, data)

    loopback._Pipe.frame = counting  # type: ignore[method-assign,assignment]
    start = time.perf_counter()
    a = loopback.MemoryNode(root / "a", "a")
    b = loopback.MemoryNode(root / "b", "b")
    loaded = time.perf_counter() - start
    try:
        name = f"new-{time.time_ns()}"
        blob, data, record, version = org.blob(name, time.time_ns())
        key = BlobKey(org.id, blob)
        writer = a.holdings.writer(key)
        writer.write(data)
        assert loopback.settled(a.holdings.publish(key, version, writer, record, org.id))
        at_a, _ = loopback.link(a, b)
        counted[0] = 0
        start = time.perf_counter()
        sent = loopback.settled(a.sync.catch_up(at_a))
        took = time.perf_counter() - start
        assert sent == 1 and b.holdings.catalog.get(key) is not None, sent
        # And once more, now that nothing differs.
        wire_one = counted[0]
        counted[0] = 0
        start = time.perf_counter()
        loopback.settled(a.sync.catch_up(at_a))
        same = time.perf_counter() - start
        return {
            "load_two_catalogs_s": loaded,
            "sync_s": took,
            "sync_bytes": wire_one,
            "same_s": same,
            "same_bytes": counted[0],
        }
    finally:
        a.close()
        b.close()


def put_figures(root: Path, size_mib: int, redundancy: list[str]) -> tuple[float, int]:
    """An owner and three peers (four twistd nodes) with ``redundancy``: the MB/s of
    one put of an incompressible file of ``size_mib`` MiB (the real `dfs put`,
    durable everywhere it goes), and the bytes the peers hold of it."""
    ports = [free_port() for _ in range(4)]
    nodes = start_network(
        root / "nodes", [(p, ports[:i]) for i, p in enumerate(ports)], extra=redundancy
    )
    try:
        source = root / "put.bin"
        with source.open("wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MIB))
        start = time.perf_counter()
        subprocess.run(
            [str(BIN / "dfs"), "--node", str(nodes[0].data_dir), "-q", "put", str(source)],
            check=True,
        )
        seconds = time.perf_counter() - start
        owner = nodes[0].status()["node_id"]
        held = sum(
            p.stat().st_size
            for node in nodes[1:]
            for p in (node.data_dir / "store" / owner).rglob("*")
            if p.is_file()
        )
        return size_mib * MIB / seconds / 1e6, held
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root / "nodes", ignore_errors=True)
        (root / "put.bin").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench-run")
    parser.add_argument("--put-mib", type=int, default=256, help="0: skip the put figures")
    args = parser.parse_args()
    root = args.dir / f"scale-{args.blobs}"
    root.mkdir(parents=True, exist_ok=True)
    org = Org.load(root / "org.secret")
    count_file = root / "count"
    if not count_file.exists() or int(count_file.read_text()) != args.blobs:
        print(f"making the fixture: {args.blobs:,} blobs under {root}", file=sys.stderr)
        make_fixture(root, args.blobs, org)
    print(f"{args.blobs:,} blobs; load average {os.getloadavg()[0]:.1f} at start")
    figures = node_figures(root)
    print(f"first start-up (no snapshot):    {figures['first_startup_s']:.2f} s")
    print(f"start-up (twistd until api.url): {figures['startup_s']:.2f} s")
    print(f"peak RSS after start-up:         {figures['rss_mib']:.0f} MiB")
    print(f"dfs ls --json:                   {figures['ls_s']:.2f} s ({figures['ls_bytes']} bytes)")
    print(f"peak RSS after dfs ls:           {figures['rss_after_ls_mib']:.0f} MiB")
    sync = sync_figures(root, org)
    print(
        f"sync, one blob differs:          {sync['sync_s'] * 1000:.0f} ms, "
        f"{sync['sync_bytes']:,} bytes on the wire (both ways, the blob included)"
    )
    print(
        f"sync, nothing differs:           {sync['same_s'] * 1000:.0f} ms, "
        f"{sync['same_bytes']:,} bytes"
    )
    print(f"(two catalogs loaded in-process in {sync['load_two_catalogs_s']:.2f} s)")
    if args.put_mib:
        print(f"put of {args.put_mib} MiB from an owner to three peers:")
        for what, flags in (
            ("full replication", []),
            ("--erasure 2-of-3", ["--erasure", "2-of-3"]),
        ):
            rate, held = put_figures(args.dir, args.put_mib, flags)
            print(f"  {what:<17} {rate:6.0f} MB/s, the peers hold {held / MIB:,.0f} MiB")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
