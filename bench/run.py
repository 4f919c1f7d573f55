"""Benchmark: a 3-node network on this machine; one big file, then many small ones.

    make bench                                  # 1 GiB, 10,000 small files, one run
    .venv/bin/python bench/run.py --runs 3      # medians of three runs
    .venv/bin/python bench/run.py --size-mib 256 --small-files 2000   # a quick run

Each run starts three fresh nodes (the owner dials both others) and times:

- put: the real `dfs put` of an incompressible file, durable here and on 2 peers;
- get (local): `dfs get -o`, the bytes compared with the file put;
- get after loss: the owner's blob file deleted, `dfs get -o` (fetched from a peer,
  checked, decrypted, restored), the bytes compared again;
- small files: N files of 1 kB PUT through the node's API (its Unix socket, with its
  token), a fixed number of requests in flight, each answered only once durable on
  all three nodes (every answer is checked to say 3 replicas).

For each operation it prints MB/s (10^6 bytes a second) or puts a second, and the CPU
seconds (user + sys) per GiB moved, or per 1,000 small puts, of every process: the
`dfs` client (from its rusage), the owner and each holder (deltas of utime + stime in
/proc/PID/stat, all threads). Then each node's peak RSS (VmHWM). With ``--runs N``
every figure is the median of the N runs.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dfs_twisted
from dfs_twisted.launcher import NodeProcess, free_port, start_network

MB = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")

# One row of results: what -> figure (MB/s, puts/s, CPU seconds, MiB).
Row = dict[str, float]


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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, all its threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Roles:
    """The client, the owner and the two holders, and the CPU each used so far."""

    def __init__(self, owner: NodeProcess, holders: list[NodeProcess]) -> None:
        self.owner = owner
        self.holders = holders

    def nodes(self) -> list[tuple[str, NodeProcess]]:
        return [("owner", self.owner)] + [
            (f"holder {i + 1}", h) for i, h in enumerate(self.holders)
        ]

    def snapshot(self) -> dict[str, float]:
        return {role: cpu_seconds(node.pid) for role, node in self.nodes()}

    def measure(self, run: Callable[[], float]) -> tuple[float, Row]:
        """Wall seconds of ``run`` (which returns the client's CPU seconds), and the
        CPU seconds of every role meanwhile."""
        before = self.snapshot()
        start = time.perf_counter()
        client = run()
        seconds = time.perf_counter() - start
        after = self.snapshot()
        cpu = {"client": client, **{role: after[role] - before[role] for role in before}}
        return seconds, cpu


def dfs(node: NodeProcess, *args: str) -> float:
    """Run the real `dfs` command; return its CPU seconds (user + sys, from wait4)."""
    argv = [str(Path(sys.executable).parent / "dfs"), "--node", str(node.data_dir), "-q", *args]
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            err.seek(0)
            raise AssertionError(f"dfs {' '.join(args)} failed: {err.read().decode()}")
    return usage.ru_utime + usage.ru_stime


def blob_path(node: NodeProcess, name_count: int = 1) -> Path:
    owner: str = node.status()["node_id"]
    blobs = [p for p in (node.data_dir / "store" / owner).rglob("*") if p.is_file()]
    assert len(blobs) == name_count, blobs
    return blobs[0]


class UnixHTTP(http.client.HTTPConnection):
    """HTTP over the node's API socket (what `dfs` uses on the node's machine)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def small_files(node: NodeProcess, count: int, size: int, in_flight: int) -> float:
    """PUT ``count`` files of ``size`` bytes, ``in_flight`` at a time, each on a kept-alive
    connection; check every answer says 3 replicas. Return this process's CPU seconds."""
    socket_path = str(node.data_dir / "private" / "api.sock")
    token = (node.data_dir / "private" / "api_token").read_text().strip()
    bodies = [os.urandom(size) for _ in range(count)]
    next_index = iter(range(count))
    lock = threading.Lock()
    failures: list[str] = []

    def worker() -> None:
        conn = UnixHTTP(socket_path)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or failures:
                break
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
            }
            conn.request("PUT", f"/v1/files/small-{i:06d}", body=bodies[i], headers=headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 201 or json.loads(answer)["replicas"] != 3:
                failures.append(f"small-{i:06d}: {response.status} {answer[-300:]!r}")
        conn.close()

    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = usage.ru_utime + usage.ru_stime
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert not failures, failures[:5]
    return usage.ru_utime + usage.ru_stime - before


def one_run(root: Path, args: argparse.Namespace, source: Path, expected: str) -> dict[str, Row]:
    """One network in ``root``, measured; its small files are left there (see main)."""
    size = args.size_mib * MIB
    a, b, c = free_port(), free_port(), free_port()
    nodes = start_network(root, [(a, []), (b, [a]), (c, [a, b])])
    roles = Roles(nodes[2], nodes[:2])
    owner = roles.owner
    out = root / "out.bin"
    rows: dict[str, Row] = {}

    def big(what: str, run: Callable[[], float]) -> None:
        seconds, cpu = roles.measure(run)
        rows[what] = {"rate": size / seconds / MB, **{k: v * GIB / size for k, v in cpu.items()}}

    try:
        big("put (here + 2 peers)", lambda: dfs(owner, "put", str(source), "--name", "big"))
        big("get (local)", lambda: dfs(owner, "get", "big", "-o", str(out)))
        assert sha256_of(out) == expected, "get returned wrong bytes"
        out.unlink()
        blob_path(owner).unlink()
        big("get after loss", lambda: dfs(owner, "get", "big", "-o", str(out)))
        assert sha256_of(out) == expected, "get after loss returned wrong bytes"
        out.unlink()
        if args.small_files:
            count = args.small_files
            seconds, cpu = roles.measure(
                lambda: small_files(owner, count, args.small_size, args.in_flight)
            )
            rows["small files"] = {
                "rate": count / seconds,
                **{k: v * 1000 / count for k, v in cpu.items()},
            }
        rows["peak RSS MiB"] = {role: node.peak_rss() / MIB for role, node in roles.nodes()}
    finally:
        for node in nodes:
            node.stop()
        for path in root.glob("*/store/**/*"):  # the big file's blobs: a GiB on each node
            if path.is_file() and path.stat().st_size >= MIB:
                path.unlink()
    return rows


def median_rows(runs: list[dict[str, Row]]) -> dict[str, Row]:
    return {
        what: {k: statistics.median(run[what][k] for run in runs) for k in runs[0][what]}
        for what in runs[0]
    }


def report(rows: dict[str, Row], args: argparse.Namespace) -> None:
    roles = ["client", "owner", "holder 1", "holder 2"]
    load = os.getloadavg()[0]
    median = f"medians of {args.runs} runs" if args.runs > 1 else "one run"
    print(
        f"\n{args.size_mib} MiB file, {args.small_files} files of {args.small_size} B "
        f"({args.in_flight} in flight); 3 nodes and the client on {os.cpu_count()} cores; "
        f"{median}; load average {load:.1f}"
    )
    print(f"{'':24} {'rate':>12}   CPU s (user+sys) per GiB, small files: per 1,000 puts")
    print(f"{'':24} {'':>12}   " + " ".join(f"{r:>8}" for r in [*roles, "total"]))
    for what, row in rows.items():
        if what == "peak RSS MiB":
            continue
        unit = "puts/s" if what == "small files" else "MB/s"
        total = sum(row[r] for r in roles)
        cells = " ".join(f"{row[r]:8.2f}" for r in roles)
        print(f"  {what:<22} {row['rate']:7.0f} {unit:<6}   {cells} {total:8.2f}")
    rss = rows["peak RSS MiB"]
    print("  peak RSS (MiB)" + " " * 26 + " ".join(f"{rss[r]:8.1f}" for r in roles[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="big file size (1024)")
    parser.add_argument("--runs", type=int, default=1, help="runs; figures are medians (1)")
    parser.add_argument("--small-files", type=int, default=10_000, help="0: skip (10000)")
    parser.add_argument("--small-size", type=int, default=1000, help="bytes each (1000)")
    parser.add_argument("--in-flight", type=int, default=8, help="small puts at once (8)")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--dir", help="work directory (default: a temp dir, removed after)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="dfs-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    # Bytecode first, as an installed package has it: where PYTHONDONTWRITEBYTECODE
    # is set, each `dfs` would compile the package anew (about 40 ms of its CPU).
    compileall.compile_dir(Path(dfs_twisted.__file__).parent, quiet=1)
    try:
        source = root / "big.bin"
        print(f"writing a {args.size_mib} MiB test file ...", flush=True)
        expected = make_file(source, args.size_mib * MIB)
        runs = []
        for i in range(args.runs):
            print(f"run {i + 1} of {args.runs} ...", flush=True)
            # Each run in a directory of its own, all removed at the end: on ext4
            # without a journal, creating files in the minutes after tens of
            # thousands were deleted costs several times the CPU (the allocator
            # skips recently freed inodes), so a run must not follow a clean-up.
            runs.append(one_run(root / f"nodes-{i + 1}", args, source, expected))
            if args.runs > 1:
                report(runs[-1], argparse.Namespace(**{**vars(args), "runs": 1}))
        report(median_rows(runs), args)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
    finally:
        if args.dir:
            for nodes in root.glob("nodes-*"):
                shutil.rmtree(nodes, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
