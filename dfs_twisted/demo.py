"""`make demo`: the seed's story with three real node processes, step by step.

Three organizations run nodes: 3000; 4000 dials 3000; 5000 dials 3000 and 4000.
A file stored on 5000 is encrypted there and its ciphertext lands on the other
two, which cannot read it. 5000 loses its disk, gets the ciphertext back from
its peers and decrypts it with its own key.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import textwrap
from pathlib import Path

from .launcher import NodeProcess, free_port, start_network

STORY = (
    textwrap.dedent(
        """\
    Quarterly report of the third organization.
    Revenue: up. Costs: down. Secrets: many.
    """
    ).encode()
    * 2000
)


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(result: bytes) -> None:
    for line in result.decode(errors="replace").strip().splitlines():
        print(f"   {line}")


def run(root: Path) -> None:
    ports = [free_port() for _ in range(3)]
    a, b, c = ports
    step(f"starting three nodes: {a}; {b} -> {a}; {c} -> {a},{b}  (twistd -n dfs ...)")
    nodes = start_network(root, [(a, []), (b, [a]), (c, [a, b])])
    node_a, node_c = nodes[0], nodes[2]
    try:
        for node in nodes:
            status = node.status()
            print(f"   node {node.port}: org {status['org']}, id {status['node_id'][:16]}...")
        show(node_c.dfs("status").stdout)

        source = root / "q1-report.txt"
        source.write_bytes(STORY)
        name = "reports/2026/q1.txt"
        step(f"node {c} stores {name!r} ({len(STORY)} bytes)")
        show(node_c.dfs("put", str(source), "--name", name).stdout)

        owner = node_c.status()["node_id"]
        step("its ciphertext is now on every node, under a keyed hash of the name")
        for node in nodes:
            for blob in sorted((node.data_dir / "store" / owner).rglob("*")):
                if blob.is_file():
                    data = blob.read_bytes()
                    readable = b"Revenue" in data or name.encode() in data
                    print(
                        f"   node {node.port}: store/{blob.relative_to(node.data_dir / 'store')}"
                        f"  ({len(data)} bytes, plaintext visible: {readable})"
                    )

        step(f"node {c} reads it back")
        got = node_c.dfs("get", name).stdout
        print(f"   {len(got)} bytes, identical: {got == STORY}")
        print(f"   first line: {got.splitlines()[0].decode()}")

        step(f"node {c} loses its disk: stop it, delete store/, start it again")
        node_c.stop()
        shutil.rmtree(node_c.data_dir / "store")
        node_c = NodeProcess(c, node_c.data_dir, [a, b]).start()
        nodes[2] = node_c
        node_c.wait_ready()
        node_c.wait_peers(2)
        show(node_c.dfs("ls").stdout)

        step(f"node {c} asks its peers for everything of its org and decrypts it")
        show(node_c.dfs("recover").stdout)
        show(node_c.dfs("ls", "-l").stdout)
        got = node_c.dfs("get", name).stdout
        print(f"   recovered {len(got)} bytes, identical: {got == STORY}")
        print(f"   sha256 {hashlib.sha256(got).hexdigest()}")

        step(f"the peers hold only ciphertext: without {c}'s key, node {a} finds nothing")
        show(node_a.dfs("ls").stdout)
        failed = node_a.dfs("get", name, check=False)
        print(f"   dfs get on node {a}: {failed.stderr.decode().strip()}")
        step("done: every node stopped")
    finally:
        for node in nodes:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the nodes' directories here")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dfs-demo-"))
    try:
        run(root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
