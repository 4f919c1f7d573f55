"""The commands that talk to a running node, one function each.

What only some commands need (certificates, key files, backups) is imported in
those commands: every command pays for what is loaded at its start.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from ..client import (
    BLOCK,
    TIMEOUT,
    ApiFailure,
    CliError,
    FileBody,
    NodeClient,
    decode,
    find_node_dir,
    follow,
    umask,
)
from ..config import CONFIG_FILE
from ..directio import DIRECT_MIN, FileFiller, write_all
from ..display import count, files_table, rate, shown, status_table
from ..names import check_new_name
from ..nodedir import CERT_FILE
from .output import (
    WATCH_SECONDS,
    OutputClosed,
    Progress,
    progress_bar,
    read_blocks,
    result,
    say,
    warn,
)

PASSPHRASE_ENV = "DFS_PASSPHRASE"


def file_path(name: str) -> str:
    return "/v1/files/" + quote(name, safe="")


def _org_query(args: argparse.Namespace) -> str:
    return "" if args.org is None else "?org=" + quote(args.org, safe="")


def _named(name: str, call: Callable[[], Any]) -> Any:
    """Run ``call``; a "no such file" answer names the file."""
    try:
        return call()
    except ApiFailure as e:
        if e.status == 404 and str(e).startswith("no such file"):
            raise CliError(f"{shown(name)}: {e}") from None
        raise


def _check_org(spec: str | None) -> None:
    if spec is not None and spec.startswith("id:"):
        prefix = spec[3:]
        if len(prefix) < 8:
            raise CliError(f"--org {shown(spec)}: an id prefix needs at least 8 hex characters")


def _local(client: NodeClient, what: str) -> Path:
    if client.local_dir is None:
        raise CliError(f"{what} reads the node's private/: run it with --node DIR on its machine")
    return client.local_dir


# -- commands that talk to a node


def cmd_put(client: NodeClient, args: argparse.Namespace) -> None:
    paths: list[str] = args.path
    if len(paths) == 1 and (paths[0] == "-" or not os.path.isdir(paths[0])):
        _put_one(client, args, paths[0])
    else:
        _put_many(client, args, _files_to_put(paths, args.name))


def _put_one(client: NodeClient, args: argparse.Namespace, spec: str) -> None:
    started = time.monotonic()
    name = args.name if args.name is not None else Path(spec).name
    if spec == "-" and args.name is None:
        raise CliError("--name is required when reading stdin")
    _check_name(name)
    if spec == "-":
        with progress_bar(args, None, "put") as bar:
            body = read_blocks(sys.stdin.buffer, bar)
            answer = decode(client.request("PUT", file_path(name), body))
    else:
        path = Path(spec)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror}") from None
        with progress_bar(args, size, "put") as bar:
            answer = _store_file(client, path, name, bar.update)
    peers = answer["peers"]
    held = [p for p in peers if p["ok"]]
    result(args, {"name": name, **answer})
    say(
        args,
        f"stored {shown(name)}: {rate(answer['size'], time.monotonic() - started)}, here and "
        f"on {len(held)} of {len(peers)} connected peers "
        f"({count(answer['replicas'], 'copy', 'copies')}"
        + (f", {count(answer['shares'], 'share', 'shares')})" if "shares" in answer else ")"),
    )
    for p in peers:
        if not p["ok"]:
            warn(f"peer {shown(p['org'])} did not store it: {shown(p['error'])}")


def _check_name(name: str) -> None:
    try:
        check_new_name(name)
    except ValueError as e:
        raise CliError(f"cannot store {shown(name)}: {e}") from None


def _store_file(
    client: NodeClient,
    path: Path,
    name: str,
    progress: Callable[[int], object],
    conn: http.client.HTTPConnection | None = None,
) -> Any:
    """PUT one regular file as ``name`` (on ``conn``, if given); the node's answer."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    with f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"{path} is not a regular file")
        size = info.st_size
        headers = {"Content-Type": "application/octet-stream"}
        body: bytes | FileBody
        if size < SENDFILE_FROM:
            # Read: a small file goes with its request head in one send, where
            # sendfile waits for the socket and sends it alone.
            try:
                body = f.read()
            except OSError as e:
                raise CliError(f"cannot read {path}: {e.strerror}") from None
            headers["Content-Length"] = str(len(body))
            progress(len(body))
        else:
            body = FileBody(f, size, progress)
        return decode(client.request("PUT", file_path(name), body, headers, conn))


SENDFILE_FROM = 64 << 10  # smaller files are read and sent with their request


PUTS_IN_FLIGHT = 8  # files of one `dfs put` stored at once


def _files_to_put(paths: list[str], name: str | None) -> list[tuple[Path, str, int]]:
    """The regular files of the PATHs given, directories walked (links in them not
    followed), each with its name (its path from the PATH's parent, with '/') and size.
    Any error here, before anything is stored, ends the command."""
    if name is not None:
        raise CliError("--name names one file: with several files, each keeps its path")
    if "-" in paths:
        raise CliError("'-' (stdin) is put alone")
    found: dict[str, tuple[Path, int]] = {}

    def add(path: Path, stored_as: str, size: int) -> None:
        _check_name(stored_as)
        if stored_as in found:
            raise CliError(
                f"{shown(str(found[stored_as][0]))} and {shown(str(path))} would both be "
                f"stored as {shown(stored_as)}"
            )
        found[stored_as] = (path, size)

    def unreadable(e: OSError) -> None:
        raise CliError(f"cannot read {shown(str(e.filename))}: {e.strerror}")

    for spec in paths:
        top = Path(spec)
        try:
            info = top.stat()
        except OSError as e:
            raise CliError(f"cannot read {shown(spec)}: {e.strerror}") from None
        prefix = os.path.basename(os.path.abspath(spec))
        if not stat.S_ISDIR(info.st_mode):
            if not stat.S_ISREG(info.st_mode):
                raise CliError(f"{shown(spec)} is not a regular file")
            add(top, prefix, info.st_size)
            continue
        for root, dirs, files in os.walk(top, onerror=unreadable):
            dirs.sort()
            for linked in (d for d in dirs if os.path.islink(os.path.join(root, d))):
                warn(f"skipping {shown(os.path.join(root, linked))}: a link (not followed)")
            for file in sorted(files):
                path = Path(root, file)
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode):
                    why = "a link (not followed)" if stat.S_ISLNK(info.st_mode) else "not a file"
                    warn(f"skipping {shown(str(path))}: {why}")
                    continue
                relative = path.relative_to(top).as_posix()
                add(path, f"{prefix}/{relative}" if prefix else relative, info.st_size)
    if not found:
        raise CliError("no files to store there")
    return [(path, stored_as, size) for stored_as, (path, size) in found.items()]


def _put_many(
    client: NodeClient, args: argparse.Namespace, files: list[tuple[Path, str, int]]
) -> None:
    """Store each file, `PUTS_IN_FLIGHT` at once (each answered once durable here and
    on the peers); report what failed and one line for the rest. Only --json keeps every
    answer: a tree of a million files costs little more memory than its list."""
    import threading
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor  # here: one file needs none

    started = time.monotonic()
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    totals = {"files": 0, "bytes": 0, "peers": 0}
    missed: dict[str, tuple[str, int]] = {}  # peer org -> its first error, how many
    kept = threading.local()  # each thread's connection, kept alive

    def put(file: tuple[Path, str, int]) -> tuple[str, Any, str | None]:
        path, name, _ = file
        if not hasattr(kept, "conn"):
            kept.conn = client.connection()
        try:
            return name, _store_file(client, path, name, bar.update, kept.conn), None
        except CliError as e:
            kept.conn.close()  # perhaps left mid-request: the next file starts afresh
            del kept.conn
            return name, None, str(e)

    def record(name: str, answer: Any, error: str | None) -> None:
        if error is not None:
            warn(f"cannot store {shown(name)}: {shown(error)}")
            failed.append({"name": name, "error": error})
            return
        totals["files"] += 1
        totals["bytes"] += answer["size"]
        totals["peers"] = max(totals["peers"], len(answer["peers"]))
        if args.json:
            stored.append({"name": name, **answer})
        for p in answer["peers"]:
            if not p["ok"]:
                first, n = missed.get(p["org"], (p["error"], 0))
                missed[p["org"]] = (first, n + 1)

    with progress_bar(args, sum(size for _, _, size in files), "put") as bar:
        pool = ThreadPoolExecutor(PUTS_IN_FLIGHT)
        waiting: deque[Future[tuple[str, Any, str | None]]] = deque()
        try:
            for file in files:
                waiting.append(pool.submit(put, file))
                if len(waiting) >= 2 * PUTS_IN_FLIGHT:  # a few queued ahead, not all
                    record(*waiting.popleft().result())
            while waiting:
                record(*waiting.popleft().result())
        finally:
            pool.shutdown(cancel_futures=True)  # interrupted: only the puts under way end
    result(args, {"stored": stored, "failed": failed})
    if totals["files"]:
        where = (
            "here; not all on every connected peer (below)"
            if missed
            else f"here and on every connected peer ({totals['peers']})"
            if totals["peers"]
            else "here (no peer connected)"
        )
        say(
            args,
            f"stored {count(totals['files'], 'file', 'files')}: "
            f"{rate(totals['bytes'], time.monotonic() - started)}, {where}",
        )
    for org, (first, n) in missed.items():
        warn(
            f"peer {shown(org)} did not store {count(n, 'file', 'files')} "
            f"(the first: {shown(first)})"
        )
    if failed:
        raise CliError(f"{len(failed)} of {count(len(files), 'file', 'files')} not stored")


def cmd_get(client: NodeClient, args: argparse.Namespace) -> None:
    started = time.monotonic()
    to_stdout = args.output is None or args.output == "-"
    if args.json and to_stdout:
        raise CliError("--json needs -o OUT (without it the file itself goes to stdout)")
    _check_org(args.org)
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
        asked = Asked("POST", "/v1/grants/read", grant, headers)
    elif args.name is None:
        raise CliError("get needs a NAME (or --grant FILE)")
    else:
        asked = Asked("GET", file_path(args.name) + _org_query(args))
    if not to_stdout and client.attaches:
        response, received, on_terminal = _get_into(client, asked, args)
    else:
        response, received, on_terminal = _get_streamed(client, asked, args, to_stdout)
    source = response.getheader("x-dfs-source", "local")
    org_id = response.getheader("x-dfs-org")
    # Only now: the node restores its local copy once the whole stream verified.
    if org_id is not None:
        print(f"{shown(args.name)} of org id:{shown(org_id)}", file=sys.stderr)
    if source != "local" and args.org is not None:
        print(f"{shown(args.name)}: read from peer {shown(source)}", file=sys.stderr)
    elif source != "local":
        print(
            f"local copy of {shown(args.name)} missing or damaged: fetched it from peer "
            f"{shown(source)} and restored the local copy",
            file=sys.stderr,
        )
    result(
        args,
        {"name": args.name, "size": received, "output": args.output, "source": source}
        | ({"org_id": org_id} if org_id else {}),
    )
    if on_terminal and not args.json:
        # On a terminal, after the bar: what was done, and how fast.
        print(
            f"got {shown(args.name)}: {rate(received, time.monotonic() - started)}",
            file=sys.stderr,
        )


class Asked(NamedTuple):
    """A request to make: what `NodeClient.request` takes."""

    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None


def _get_streamed(
    client: NodeClient, asked: Asked, args: argparse.Namespace, to_stdout: bool
) -> tuple[http.client.HTTPResponse, int, bool]:
    """The file sent as the answer's body, to stdout or into OUT; the answer, the
    bytes received and whether a bar was shown."""
    response = client.request(*asked)
    if response.status >= 400:
        _named(args.name, lambda: decode(response))
    expected = int(response.getheader("content-length", "-1"))
    bar = progress_bar(args, expected, "get")
    on_terminal = not bar.disable  # closing the bar sets disable
    if to_stdout:
        with bar:
            received = _copy(response, *_through(sys.stdout.buffer.write), bar)
        try:
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise OutputClosed from None
    else:
        received = _write_output(response, Path(args.output), expected, bar)
    if received != expected:
        raise CliError(
            f"transfer of {shown(args.name)} was cut after {received} of {expected} bytes: "
            "the node stopped sending (damaged data, or a peer lost mid-read: see its log); "
            "retrying fetches it from a peer"
        )
    return response, received, on_terminal


def _get_into(
    client: NodeClient, asked: Asked, args: argparse.Namespace
) -> tuple[http.client.HTTPResponse, int, bool]:
    """The node writes the file into a temp file this process attaches to the
    request (attached.py), renamed to OUT once the node says it is complete."""
    out = Path(args.output)
    with _new_beside(out) as (fd, temp):
        conn = client.connection()
        response = client.request(*asked, conn=conn, output=fd)
        if response.status >= 400:
            _named(args.name, lambda: decode(response))
        expected = int(response.getheader("x-dfs-size", "-1"))
        assert conn.sock is not None  # the answer is being read from it
        with progress_bar(args, expected, "get") as bar:
            on_terminal = not bar.disable
            answer = _followed(response, conn.sock, fd, expected, bar)
        if "error" in answer:
            raise CliError(
                f"transfer of {shown(args.name)} was {shown(answer['error'])} (see the "
                "node's log); retrying fetches it from a peer"
            )
        _publish(temp, out)
    return response, int(answer["size"]), on_terminal


def _followed(
    response: http.client.HTTPResponse,
    sock: socket.socket,
    fd: int,
    size: int,
    bar: Progress,
) -> Any:
    """The node's answer once it wrote the file (a JSON line after its headers),
    the bar following its writes meanwhile. No socket timeout while it writes (that
    may take long): its writes standing still for `TIMEOUT` is what says it stopped."""
    answers: list[Any] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            answers.append(decode(response))
        except BaseException as e:
            failures.append(e)

    sock.settimeout(None)
    reader = threading.Thread(target=read, name="dfs-answer", daemon=True)
    reader.start()

    def answered(seconds: float) -> bool:
        reader.join(seconds)
        return not reader.is_alive()

    try:
        follow(fd, size, bar.update, answered, "writing")
        if not answered(TIMEOUT):
            raise TimeoutError(f"no answer from the node in {TIMEOUT:.0f} s")
    except TimeoutError as e:
        sock.shutdown(socket.SHUT_RDWR)  # ends the read
        raise CliError(f"lost the node: {e}") from None
    if failures:
        raise failures[0]
    return answers[0]


@contextmanager
def _new_beside(out: Path) -> Iterator[tuple[int, str]]:
    """A new temp file beside OUT (its descriptor and path), gone after unless
    `_publish` made it OUT.

    It has a random name and is created exclusively: a link planted beside OUT is
    never followed, and a cut transfer leaves nothing behind."""
    import tempfile  # here: the other commands need not load it

    try:
        fd, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb"):
            yield fd, temp
    except OutputClosed:
        raise CliError(f"cannot write {out}") from None
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from None
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def _publish(temp: str, out: Path) -> None:
    os.chmod(temp, 0o666 & ~umask())
    os.replace(temp, out)


def _write_output(
    response: http.client.HTTPResponse, out: Path, expected: int, bar: Progress
) -> int:
    """Stream into a new temp file beside OUT, renamed to OUT once complete. A big
    file is written past the page cache (directio.py) where the file system allows,
    by a thread of its own while the next part is read."""
    with _new_beside(out) as (fd, temp), bar:
        filler = FileFiller.begin(fd) if expected >= DIRECT_MIN else None
        if filler is None:
            received = _copy(response, *_through(lambda data: write_all(fd, data)), bar)
        else:
            try:
                received = _copy(response, filler.space, filler.filled, bar)
                filler.finish()
            finally:
                filler.close()
        if received == expected:
            _publish(temp, out)
    return received


Space = Callable[[], memoryview]
Filled = Callable[[int], object]


def _through(write: Callable[[memoryview], object]) -> tuple[Space, Filled]:
    """`_copy` into one buffer, refilled (for the reason in read_blocks), and ``write``."""
    buffer = memoryview(bytearray(BLOCK))
    return (lambda: buffer), (lambda n: write(buffer[:n]))


def _copy(response: http.client.HTTPResponse, space: Space, filled: Filled, bar: Progress) -> int:
    """Read the body into ``space()``, telling ``filled(n)`` of each read; stop at
    the end of what the node sent."""
    received = 0
    while True:
        try:
            n = response.readinto(space())
        except (http.client.IncompleteRead, OSError):
            break  # the node cut the transfer: the caller compares sizes
        if not n:
            break
        try:
            filled(n)
        except BrokenPipeError:
            raise OutputClosed from None
        except OSError as e:
            raise CliError(f"cannot write the output: {e.strerror}") from None
        received += n
        bar.update(n)
    return received


def cmd_share(client: NodeClient, args: argparse.Namespace) -> None:
    from ..identity import SecretFileError, create_secret

    grant = _named(
        args.name, lambda: client.json("POST", "/v1/shares", {"name": args.name, "to": args.to})
    )
    try:
        create_secret(Path(args.output), (json.dumps(grant, indent=1) + "\n").encode())
    except SecretFileError as e:
        raise CliError(str(e)) from None
    recipient = str(grant.get("recipient", "?"))
    result(args, {"name": args.name, "to": args.to, "org_id": recipient, "output": args.output})
    say(args, f"wrote a grant of {shown(args.name)} for {shown(args.to)} to {args.output}")
    say(args, f"  recipient: org id:{shown(recipient)}")
    say(args, "  it opens this version of this one file, on that org's node only:")
    say(args, f"  dfs get --grant {Path(args.output).name} -o OUT")


def cmd_rm(client: NodeClient, args: argparse.Namespace) -> None:
    answer = _named(args.name, lambda: client.json("DELETE", file_path(args.name)))
    removed = [p for p in answer["peers"] if p["ok"]]
    here = "here and " if answer["deleted_here"] else ""
    result(args, {"name": args.name, **answer})
    say(args, f"deleted {shown(args.name)}: {here}on {len(removed)} peers")


def cmd_key_export(client: NodeClient, args: argparse.Namespace) -> None:
    from ..crypto import CryptoError, OrgKey
    from ..keys import ReadKey, ReadKeyError

    node_dir = _local(client, "key export")
    status = client.json("GET", "/v1/status")
    try:
        key = OrgKey.from_bytes((node_dir / "private" / "org.key").read_bytes())
    except (OSError, CryptoError) as e:
        raise CliError(f"cannot read this org's key: {e}") from None
    try:
        ReadKey(status["node_id"], status["org"], key).write_new(Path(args.output))
    except ReadKeyError as e:
        raise CliError(str(e)) from None
    result(args, {"org": status["org"], "org_id": status["node_id"], "output": args.output})
    say(args, f"wrote the read key of org {shown(status['org'])} to {args.output}")
    say(args, "  it lets its holder read every file of this org: hand it over privately")


def cmd_key_import(client: NodeClient, args: argparse.Namespace) -> None:
    from ..keys import Keyring, ReadKey, ReadKeyError

    node_dir = _local(client, "key import")
    try:
        key = ReadKey.from_bytes(Path(args.file).read_bytes())
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    except ReadKeyError as e:
        raise CliError(f"{args.file}: {e}") from None
    if key.org_id == client.json("GET", "/v1/status")["node_id"]:
        raise CliError(f"{args.file} is this org's own key")
    Keyring(node_dir / "private" / "keys").add(key)
    result(args, {"org": key.org, "org_id": key.org_id})
    say(args, f"imported the read key of org {shown(key.org)} (id:{key.org_id})")
    say(args, f"  read its files with: dfs get NAME --org id:{key.org_id[:16]}")


def cmd_ls(client: NodeClient, args: argparse.Namespace) -> None:
    _check_org(args.org)
    response = client.request("GET", "/v1/files" + _org_query(args))
    org_id = response.getheader("x-dfs-org")
    entries = decode(response)
    if args.json:
        keys = ("name", "size", "replicas") + (("mtime", "here", "wanted") if args.long else ())
        rows = [{k: e.get(k) for k in keys} for e in entries]
        for row, e in zip(rows, entries, strict=True):
            if e.get("shares") is not None:
                row["shares"] = e["shares"]  # erasure coded
        print(json.dumps(rows))
        return
    if org_id is not None:
        print(f"files of org id:{shown(org_id)}")
    if not entries:
        print("no files")
        return
    for line in files_table(entries, args.long):
        print(line)
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


def cmd_recover(client: NodeClient, args: argparse.Namespace) -> None:
    answer = client.json("POST", "/v1/recover")
    result(args, answer)
    for name in answer["recovered"]:
        say(args, f"recovered {shown(name)}")
    for error in answer["errors"]:
        warn(shown(error))
    say(args, f"recovered {count(len(answer['recovered']), 'file', 'files')}")


def cmd_access(client: NodeClient, args: argparse.Namespace) -> None:
    from ..access import AccessFile
    from ..identity import SecretFileError, create_secret

    node_dir = _local(client, "access")
    status = client.json("GET", "/v1/status")
    token = (node_dir / "private" / "api_token").read_text().strip()
    access = AccessFile(status["node_id"], status["org"], token)
    try:
        create_secret(Path(args.output), access.to_bytes())
    except SecretFileError as e:
        raise CliError(str(e)) from None
    result(args, {"node_id": status["node_id"], "org": status["org"], "output": args.output})
    say(args, f"wrote access to node id:{status['node_id']} to {args.output}")
    say(args, "  it holds the API token: copy it privately; use it with")
    say(args, f"  dfs --api https://HOST:PORT/ --token-file {Path(args.output).name} status")


def cmd_backup(client: NodeClient | None, args: argparse.Namespace) -> None:
    from .. import backup
    from ..identity import SecretFileError, create_secret

    node_dir = find_node_dir(args.node) if args.node else None
    if node_dir is None:
        raise CliError("backup reads a node's private/: give --node DIR")
    try:
        entries = backup.collect(node_dir)
        passphrase = _passphrase(args, confirm=True)
        archive = backup.seal(entries, passphrase)
    except backup.BackupError as e:
        raise CliError(str(e)) from None
    try:
        create_secret(Path(args.output), archive)
    except SecretFileError as e:
        raise CliError(str(e)) from None
    node_id = node_id_in(node_dir)
    result(args, {"node_id": node_id, "files": len(entries), "output": args.output})
    say(args, f"wrote {count(len(entries), 'file', 'files')} of node id:{node_id} to {args.output}")
    say(args, "  encrypted with the passphrase: keep both, apart; restore with dfs restore")


def cmd_restore(args: argparse.Namespace) -> None:
    from .. import backup

    try:
        archive = Path(args.file).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror}") from None
    target = Path(args.dir)
    try:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise backup.BackupError(f"{target} exists and is not empty: give a new directory")
        entries = backup.unseal(archive, _passphrase(args, confirm=False))
        backup.restore(entries, target)
    except backup.BackupError as e:
        raise CliError(f"{args.file}: {e}" if "passphrase" in str(e) else str(e)) from None
    node_id = node_id_in(target)
    result(args, {"node_id": node_id, "files": len(entries), "data_dir": args.dir})
    say(
        args, f"restored node id:{node_id} into {args.dir} ({count(len(entries), 'file', 'files')})"
    )
    has_config = (target / CONFIG_FILE).exists()
    say(
        args,
        f"  start it: twistd -n dfs --data-dir {args.dir}" + ("" if has_config else " --port N"),
    )
    say(args, f"  then fetch its files back from peers: dfs --node {args.dir} recover")


def node_id_in(node_dir: Path) -> str:
    from cryptography import x509

    from ..identity import node_id_of

    try:
        return node_id_of(
            x509.load_pem_x509_certificate((node_dir / "private" / CERT_FILE).read_bytes())
        )
    except (OSError, ValueError):
        return "?"


def _passphrase(args: argparse.Namespace, confirm: bool) -> str:
    """From --passphrase-file, else $DFS_PASSPHRASE, else asked on the terminal."""
    from .. import backup

    if args.passphrase_file is not None:
        try:
            text = Path(args.passphrase_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read {args.passphrase_file}: {e}") from None
        return text.rstrip("\r\n")
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        raise CliError(
            f"no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV} (or run it "
            "on a terminal to be asked)"
        )
    passphrase = getpass.getpass("passphrase: ")
    if confirm:
        backup.check_passphrase(passphrase)
        if getpass.getpass("passphrase again: ") != passphrase:
            raise CliError("the two passphrases differ")
    return passphrase
