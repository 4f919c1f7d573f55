"""Benchmark: a 3-node network on this machine, one big file through put and get.

    make bench                     # 1 GiB
    .venv/bin/python bench/run.py --size-mib 256

Prints MB/s (10^6 bytes per second) for put (replicated to 2 peers), get (local),
get after the local copy is lost (from a peer), and each node's peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from dfs_twisted.launcher import NodeProcess, free_port, start_network

MB = 1_000_000
MIB = 1 << 20


def make_file(path: Path, size: int) -> str:
    """Random-looking content (incompressible), written in 1 MiB blocks; return its sha256."""
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            # Vary each block cheaply so no two blocks are equal.
            piece = i.to_bytes(8, "big") + block[8:]
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def timed(node: NodeProcess, *args: str) -> float:
    start = time.perf_counter()
    node.dfs(*args)
    return time.perf_counter() - start


def blob_path(node: NodeProcess) -> Path:
    owner: str = node.status()["node_id"]
    blobs = [p for p in (node.data_dir / "store" / owner).rglob("*") if p.is_file()]
    assert len(blobs) == 1, blobs
    return blobs[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", help="work directory (default: a temp dir, removed after)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    root = Path(args.dir or tempfile.mkdtemp(prefix="dfs-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    a, b, c = free_port(), free_port(), free_port()
    nodes = start_network(root / "nodes", [(a, []), (b, [a]), (c, [a, b])])
    try:
        source, out = root / "big.bin", root / "out.bin"
        print(f"writing a {args.size_mib} MiB test file ...", flush=True)
        expected = make_file(source, size)
        owner = nodes[2]
        results = {}
        results["put (here + 2 peers)"] = timed(owner, "put", str(source), "--name", "big")
        results["get (local)"] = timed(owner, "get", "big", "-o", str(out))
        assert sha256_of(out) == expected, "get returned wrong bytes"
        out.unlink()
        blob_path(owner).unlink()
        results["get after loss (from a peer)"] = timed(owner, "get", "big", "-o", str(out))
        assert sha256_of(out) == expected, "get after loss returned wrong bytes"
        print(f"\n{args.size_mib} MiB file, 3 nodes on {os.cpu_count()} cores:")
        for what, seconds in results.items():
            print(f"  {what:<30} {size / seconds / MB:8.0f} MB/s  ({seconds:.2f} s)")
        print("peak RSS per node process:")
        for node in nodes:
            print(f"  node {node.port:<6} {node.peak_rss() / MIB:8.1f} MiB")
    finally:
        for node in nodes:
            node.stop()
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
