"""`dfs`: the command-line client, an HTTP client of a running node's API."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote, urlsplit

from tqdm import tqdm

from .admission import AdmissionError, NetworkKey
from .crypto import CryptoError, OrgKey
from .identity import SecretFileError, create_secret
from .keys import Keyring, ReadKey, ReadKeyError

BLOCK = 1 << 20
PROGRESS_FROM = 4 << 20  # smaller transfers finish before a bar would help
WATCH_SECONDS = 2.0


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class NodeClient:
    """Finds a node's API from its directory and talks to it."""

    def __init__(self, node_dir: str) -> None:
        self.dir = Path(node_dir)
        url_file = self.dir / "api.url"
        if not self.dir.is_dir():
            raise CliError(f"no node directory at {self.dir}")
        try:
            self.url = url_file.read_text().strip()
        except FileNotFoundError:
            raise CliError(f"node at {self.dir} is not running (no api.url)") from None
        try:
            self.token = (self.dir / "private" / "api_token").read_text().strip()
        except OSError as e:
            raise CliError(f"cannot read the API token of {self.dir}: {e.strerror}") from None
        parts = urlsplit(self.url)
        if parts.hostname is None or parts.port is None:
            raise CliError(f"bad API address in {url_file}: {self.url!r}")
        self.host, self.port = parts.hostname, parts.port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | Iterator[bytes] | Iterator[memoryview] | None = None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300, blocksize=BLOCK)
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        try:
            conn.request(
                method,
                path,
                body=body,
                headers=all_headers,
                encode_chunked="Content-Length" not in all_headers and body is not None,
            )
            return conn.getresponse()
        except ConnectionRefusedError:
            raise CliError(f"node at {self.dir} is not running (nothing at {self.url})") from None
        except (OSError, http.client.HTTPException) as e:
            raise CliError(f"lost the connection to the node at {self.url}: {e}") from None

    def json(self, method: str, path: str) -> Any:
        response = self.request(method, path)
        return _decode(response)


def _decode(response: http.client.HTTPResponse) -> Any:
    body = response.read()
    try:
        value = json.loads(body) if body else None
    except ValueError:
        value = None
    if response.status >= 400:
        message = value.get("error") if isinstance(value, dict) else None
        raise CliError(message or f"node answered HTTP {response.status}")
    return value


def file_path(name: str) -> str:
    return "/v1/files/" + quote(name, safe="")


def _read_blocks(stream: IO[bytes], bar: tqdm[Any]) -> Iterator[memoryview]:
    # One buffer, refilled: a fresh 1 MiB object per block costs a page fault per
    # 4 KiB (seconds of kernel time per GiB). http.client sends each block before
    # it asks for the next.
    buffer = memoryview(bytearray(BLOCK))
    while n := stream.readinto(buffer):  # type: ignore[attr-defined]
        bar.update(n)
        yield buffer[:n]


def _bar(args: argparse.Namespace, total: int | None, verb: str) -> tqdm[Any]:
    """A progress bar on stderr: only on a terminal, for more than a few MB, not --quiet."""
    hidden = args.quiet or not sys.stderr.isatty() or (total is not None and total < PROGRESS_FROM)
    return tqdm(
        total=total,
        desc=verb,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=hidden,
    )


def _rate(size: int, seconds: float) -> str:
    return f"{_human(size)} in {seconds:.1f} s ({size / max(seconds, 1e-6) / 1e6:.0f} MB/s)"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cmd_put(client: NodeClient, args: argparse.Namespace) -> None:
    started = time.monotonic()
    if args.path == "-":
        if not args.name:
            raise CliError("--name is required when reading stdin")
        with _bar(args, None, "put") as bar:
            body = _read_blocks(sys.stdin.buffer, bar)
            result = _decode(client.request("PUT", file_path(args.name), body))
        name = args.name
    else:
        path = Path(args.path)
        name = args.name or path.name
        try:
            f = path.open("rb")
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror}") from None
        with f:
            if not path.is_file():
                raise CliError(f"{path} is not a regular file")
            size = os.fstat(f.fileno()).st_size
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            with _bar(args, size, "put") as bar:
                body = _read_blocks(f, bar)
                result = _decode(client.request("PUT", file_path(name), body, headers))
    peers = result["peers"]
    held = [p for p in peers if p["ok"]]
    print(
        f"stored {name}: {_rate(result['size'], time.monotonic() - started)}, here and on "
        f"{len(held)} of {len(peers)} connected peers "
        f"({_count(result['replicas'], 'copy', 'copies')})"
    )
    for p in peers:
        if not p["ok"]:
            print(f"warning: peer {p['org']} did not store it: {p['error']}", file=sys.stderr)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def cmd_get(client: NodeClient, args: argparse.Namespace) -> None:
    started = time.monotonic()
    if args.grant is not None:
        if args.name is not None or args.org is not None:
            raise CliError("--grant names the file and its org: give no NAME or --org")
        try:
            grant = Path(args.grant).read_bytes()
        except OSError as e:
            raise CliError(f"cannot read {args.grant}: {e.strerror}") from None
        try:
            args.name = str(json.loads(grant)["name"])
        except (ValueError, KeyError, TypeError):
            raise CliError(f"{args.grant} is not a grant file") from None
        headers = {"Content-Type": "application/json", "Content-Length": str(len(grant))}
        response = client.request("POST", "/v1/grants/read", grant, headers)
    elif args.name is None:
        raise CliError("get needs a NAME (or --grant FILE)")
    else:
        response = client.request("GET", file_path(args.name) + _org_query(args))
    if response.status >= 400:
        _decode(response)
    source = response.getheader("x-dfs-source", "local")
    expected = int(response.getheader("content-length", "-1"))
    bar = _bar(args, expected, "get")
    on_terminal = not bar.disable  # closing the bar sets disable
    if args.output is None or args.output == "-":
        with bar:
            received = _copy(response, sys.stdout.buffer, bar)
        sys.stdout.buffer.flush()
    else:
        out = Path(args.output)
        partial = out.with_name(f".{out.name}.part")
        try:
            with partial.open("wb") as f, bar:
                received = _copy(response, f, bar)
            if received == expected:
                partial.replace(out)
        except OSError as e:
            raise CliError(f"cannot write {out}: {e.strerror}") from None
        finally:
            partial.unlink(missing_ok=True)
    if received != expected:
        raise CliError(
            f"transfer of {args.name} was cut after {received} of {expected} bytes "
            "(the node found damaged data: see its log; retrying fetches it from a peer)"
        )
    # Only now: the node restores its local copy once the whole stream verified.
    if source != "local" and args.org is not None:
        print(f"{args.name} of org {args.org}: read from peer {source}", file=sys.stderr)
    elif source != "local":
        print(
            f"local copy of {args.name} missing or damaged: fetched it from peer {source} "
            "and restored the local copy",
            file=sys.stderr,
        )
    if on_terminal:
        # On a terminal, after the bar: what was done, and how fast.
        print(f"got {args.name}: {_rate(received, time.monotonic() - started)}", file=sys.stderr)


def _copy(response: http.client.HTTPResponse, out: IO[bytes], bar: tqdm[Any]) -> int:
    received = 0
    buffer = memoryview(bytearray(BLOCK))  # refilled, for the reason in _read_blocks
    try:
        while n := response.readinto(buffer):
            out.write(buffer[:n])
            received += n
            bar.update(n)
    except (http.client.IncompleteRead, OSError):
        pass
    return received


def cmd_share(client: NodeClient, args: argparse.Namespace) -> None:
    body = json.dumps({"name": args.name, "to": args.to}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    grant = _decode(client.request("POST", "/v1/shares", body, headers))
    try:
        create_secret(Path(args.output), (json.dumps(grant, indent=1) + "\n").encode())
    except SecretFileError as e:
        raise CliError(str(e)) from None
    print(f"wrote a grant of {args.name} for {args.to} to {args.output}")
    print("  it opens this version of this one file, on that org's node only:")
    print(f"  dfs get --grant {Path(args.output).name} -o OUT")


def cmd_rm(client: NodeClient, args: argparse.Namespace) -> None:
    result = client.json("DELETE", file_path(args.name))
    removed = [p for p in result["peers"] if p["ok"]]
    here = "here and " if result["deleted_here"] else ""
    print(f"deleted {args.name}: {here}on {len(removed)} peers")


def _org_query(args: argparse.Namespace) -> str:
    return "" if args.org is None else "?org=" + quote(args.org, safe="")


def cmd_key_export(client: NodeClient, args: argparse.Namespace) -> None:
    status = client.json("GET", "/v1/status")
    try:
        key = OrgKey.from_bytes((client.dir / "private" / "org.key").read_bytes())
    except (OSError, CryptoError) as e:
        raise CliError(f"cannot read this org's key: {e}") from None
    try:
        ReadKey(status["node_id"], status["org"], key).write_new(Path(args.output))
    except ReadKeyError as e:
        raise CliError(str(e)) from None
    print(f"wrote the read key of org {status['org']} to {args.output}")
    print("  it lets its holder read every file of this org: hand it over privately")


def cmd_key_import(client: NodeClient, args: argparse.Namespace) -> None:
    try:
        key = ReadKey.from_bytes(Path(args.file).read_bytes())
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    except ReadKeyError as e:
        raise CliError(f"{args.file}: {e}") from None
    if key.org_id == client.json("GET", "/v1/status")["node_id"]:
        raise CliError(f"{args.file} is this org's own key")
    Keyring(client.dir / "private" / "keys").add(key)
    print(f"imported the read key of org {key.org} ({key.org_id[:16]}...)")
    print(f"  read its files with: dfs get NAME --org {key.org}")


def cmd_ls(client: NodeClient, args: argparse.Namespace) -> None:
    entries = client.json("GET", "/v1/files" + _org_query(args))
    if args.json:
        print(json.dumps([{k: e[k] for k in ("name", "size", "replicas")} for e in entries]))
        return
    if not entries:
        print("no files")
        return
    width = max(len(e["name"]) for e in entries)
    print(f"{'NAME':<{width}}  {'SIZE':>12}  REPLICAS")
    for e in entries:
        where = "" if e.get("here", True) else "  (on peers only)"
        print(f"{e['name']:<{width}}  {e['size']:>12}  {e['replicas']}{where}")
    elsewhere = sum(not e.get("here", True) for e in entries)
    if elsewhere and args.org is None:
        print(f"{elsewhere} held by peers only: dfs recover brings them back here")


def cmd_status(client: NodeClient, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(client.json("GET", "/v1/status"), indent=2))
        return
    if not args.watch:
        print(status_table(client.json("GET", "/v1/status")))
        return
    try:
        while True:
            table = status_table(client.json("GET", "/v1/status"))
            # Home the cursor and clear the screen, then redraw: no flicker of scrolling.
            print(
                f"\033[H\033[2J{table}\n\n(refreshing every {WATCH_SECONDS:.0f} s; Ctrl-C to stop)"
            )
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        return


def status_table(status: dict[str, Any]) -> str:
    storage = status["storage"]
    lines = [
        f"node    {status['node_id']}",
        f"org     {status['org']}  (version {status['version']}, up {status['uptime']:.0f} s)",
        f"stored  {_human(storage['own_bytes'])} of this org's files",
    ]
    for owner, size in storage["held_for_others"].items():
        lines.append(f"        {_human(size)} held for {owner[:16]}")
    if "free_bytes" in storage:
        lines.append(f"disk    {_human(storage['free_bytes'])} free")
    scrub = status.get("scrub")
    if scrub:
        last = scrub["last"]
        if scrub["running"]:
            lines.append("scrub   running now")
        elif last and last["finished"]:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["finished"]))
            lines.append(
                f"scrub   last {when}: checked {last['checked']} blobs "
                f"({_human(last['bytes'])}), {last['damaged']} damaged, "
                f"{last['repaired']} repaired"
            )
        else:
            lines.append("scrub   not run yet")
    lines.append("peers:" if status["peers"] else "peers:  none")
    lines.append(f"  {'ADDRESS':<22} {'STATE':<11} {'ORG':<16} {'NODE':<16} {'RTT':>8}")
    for p in status["peers"]:
        rtt = "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.1f} ms"
        error = f"  ({p['last_error']})" if p.get("last_error") else ""
        lines.append(
            f"  {p['address']:<22} {p['state']:<11} {p['org'] or '?':<16} "
            f"{(p['node_id'] or '?')[:16]:<16} {rtt:>8}{error}"
        )
    return "\n".join(lines)


def cmd_recover(client: NodeClient, args: argparse.Namespace) -> None:
    result = client.json("POST", "/v1/recover")
    for name in result["recovered"]:
        print(f"recovered {name}")
    for error in result["errors"]:
        print(f"warning: {error}", file=sys.stderr)
    print(f"recovered {len(result['recovered'])} files")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfs", description="Client of a dfs-twisted node.")
    p.add_argument(
        "--node",
        default=os.environ.get("DFS_NODE"),
        help="the node's directory (default: $DFS_NODE)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or summaries on stderr"
    )
    sub = p.add_subparsers(dest="command", required=True)
    put = sub.add_parser("put", help="store a file")
    put.add_argument("path", help="file to store, '-' for stdin")
    put.add_argument("--name", help="name to store it under (default: the file's name)")
    put.set_defaults(run=cmd_put)
    get = sub.add_parser("get", help="fetch and decrypt a file")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", help="write here instead of stdout")
    get.add_argument("--org", help="another org's file (name, id or id prefix), with its read key")
    get.add_argument("--grant", metavar="FILE", help="the file a grant to this org opens")
    get.set_defaults(run=cmd_get)
    share = sub.add_parser("share", help="hand one file to one connected org, as a grant")
    share.add_argument("name")
    share.add_argument("--to", required=True, help="the org (name, id or id prefix)")
    share.add_argument("-o", "--output", required=True, help="the grant file to write")
    share.set_defaults(run=cmd_share)
    rm = sub.add_parser("rm", help="delete a file here and on every peer")
    rm.add_argument("name")
    rm.set_defaults(run=cmd_rm)
    ls = sub.add_parser("ls", help="list this org's files")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--org", help="another org's files, with its imported read key")
    ls.set_defaults(run=cmd_ls)
    status = sub.add_parser("status", help="node, peers and storage")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="redraw every few seconds")
    status.set_defaults(run=cmd_status)
    recover = sub.add_parser("recover", help="fetch back every file of this org from peers")
    recover.set_defaults(run=cmd_recover)
    key = sub.add_parser("key", help="read keys: hand this org's to another, import another's")
    key_sub = key.add_subparsers(dest="action", required=True)
    export = key_sub.add_parser("export", help="write this org's read key to a file")
    export.add_argument("-o", "--output", required=True)
    export.set_defaults(run=cmd_key_export)
    import_ = key_sub.add_parser("import", help="accept another org's read key")
    import_.add_argument("file")
    import_.set_defaults(run=cmd_key_import)
    network_key = sub.add_parser("network-key", help="federation admission keys")
    network_key_sub = network_key.add_subparsers(dest="action", required=True)
    create = network_key_sub.add_parser("create", help="write a new network key to FILE")
    create.add_argument("file")
    return p


def fail(message: str) -> NoReturn:
    print(f"dfs: {message}", file=sys.stderr)
    raise SystemExit(1)


def cmd_network_key_create(args: argparse.Namespace) -> None:
    try:
        NetworkKey.generate().create(Path(args.file))
    except AdmissionError as e:
        raise CliError(str(e)) from None
    print(f"wrote a new network key to {args.file}: give it to every node of the federation")
    print(f"  (twistd -n dfs ... --network-key {args.file}); keep it secret")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "network-key":
            cmd_network_key_create(args)
            return
        if not args.node:
            fail("no node given: use --node DIR or set DFS_NODE")
        args.run(NodeClient(args.node), args)
    except CliError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `dfs get x | head`).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
