"""`dfs`: the command-line client of a running node, and a few offline tools.

Everything it prints that came from a node or a peer is escaped (display.shown);
every command that prints a result takes ``--json``; a mistake is one line on
stderr starting with ``dfs:`` and exit status 1.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote

from cryptography import x509
from tqdm import tqdm
from twisted.python import usage

from . import __version__, backup
from .access import AccessFile
from .admission import AdmissionError, NetworkKey
from .client import BLOCK, ApiFailure, CliError, NodeClient, decode, find_node_dir, umask
from .config import CONFIG_FILE
from .crypto import CryptoError, OrgKey
from .display import count, files_table, rate, shown, status_table
from .identity import CERT_FILE, SecretFileError, create_secret, node_id_of
from .keys import Keyring, ReadKey, ReadKeyError
from .names import check_new_name

PROGRESS_FROM = 4 << 20  # smaller transfers finish before a bar would help
WATCH_SECONDS = 2.0
PASSPHRASE_ENV = "DFS_PASSPHRASE"


class OutputClosed(Exception):
    """Whoever read our output went away (``dfs get x | head``)."""


# -- helpers


def say(args: argparse.Namespace, text: str) -> None:
    """A report of what was done, on stdout: silenced by -q, replaced by --json."""
    if not args.quiet and not args.json:
        print(text)


def result(args: argparse.Namespace, value: object) -> None:
    """The --json form of a command's result."""
    if args.json:
        print(json.dumps(value, indent=1))


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def file_path(name: str) -> str:
    return "/v1/files/" + quote(name, safe="")


def _org_query(args: argparse.Namespace) -> str:
    return "" if args.org is None else "?org=" + quote(args.org, safe="")


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
        unit="iB",  # with the 1024 divisor: KiB, MiB, MiB/s, as everywhere else
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=hidden,
    )


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
    started = time.monotonic()
    name = args.name if args.name is not None else Path(args.path).name
    if args.path == "-" and args.name is None:
        raise CliError("--name is required when reading stdin")
    try:
        check_new_name(name)
    except ValueError as e:
        raise CliError(f"cannot store {shown(name)}: {e}") from None
    if args.path == "-":
        with _bar(args, None, "put") as bar:
            body = _read_blocks(sys.stdin.buffer, bar)
            answer = decode(client.request("PUT", file_path(name), body))
    else:
        path = Path(args.path)
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
                answer = decode(client.request("PUT", file_path(name), body, headers))
    peers = answer["peers"]
    held = [p for p in peers if p["ok"]]
    result(args, {"name": name, **answer})
    say(
        args,
        f"stored {shown(name)}: {rate(answer['size'], time.monotonic() - started)}, here and "
        f"on {len(held)} of {len(peers)} connected peers "
        f"({count(answer['replicas'], 'copy', 'copies')})",
    )
    for p in peers:
        if not p["ok"]:
            warn(f"peer {shown(p['org'])} did not store it: {shown(p['error'])}")


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
        response = client.request("POST", "/v1/grants/read", grant, headers)
    elif args.name is None:
        raise CliError("get needs a NAME (or --grant FILE)")
    else:
        response = client.request("GET", file_path(args.name) + _org_query(args))
    if response.status >= 400:
        _named(args.name, lambda: decode(response))
    source = response.getheader("x-dfs-source", "local")
    org_id = response.getheader("x-dfs-org")
    expected = int(response.getheader("content-length", "-1"))
    bar = _bar(args, expected, "get")
    on_terminal = not bar.disable  # closing the bar sets disable
    if to_stdout:
        with bar:
            received = _copy(response, sys.stdout.buffer, bar)
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


def _write_output(
    response: http.client.HTTPResponse, out: Path, expected: int, bar: tqdm[Any]
) -> int:
    """Stream into a new temp file beside OUT, renamed to OUT once complete.

    The temp file has a random name and is created exclusively: a link planted
    beside OUT is never followed, and a cut transfer leaves nothing behind.
    """
    directory = out.parent
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{out.name}.", suffix=".part")
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f, bar:
            received = _copy(response, f, bar)
        if received == expected:
            os.chmod(temp, 0o666 & ~umask())
            os.replace(temp, out)
    except OutputClosed:
        raise CliError(f"cannot write {out}") from None
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from None
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
    return received


def _copy(response: http.client.HTTPResponse, out: IO[bytes], bar: tqdm[Any]) -> int:
    """Copy the body to ``out``; stop at the end of what the node sent."""
    received = 0
    buffer = memoryview(bytearray(BLOCK))  # refilled, for the reason in _read_blocks
    while True:
        try:
            n = response.readinto(buffer)
        except (http.client.IncompleteRead, OSError):
            break  # the node cut the transfer: the caller compares sizes
        if not n:
            break
        try:
            out.write(buffer[:n])
        except BrokenPipeError:
            raise OutputClosed from None
        except OSError as e:
            raise CliError(f"cannot write the output: {e.strerror}") from None
        received += n
        bar.update(n)
    return received


def cmd_share(client: NodeClient, args: argparse.Namespace) -> None:
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
        keys = ("name", "size", "replicas") + (("mtime", "here") if args.long else ())
        print(json.dumps([{k: e.get(k) for k in keys} for e in entries]))
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
    node_id = _node_id(node_dir)
    result(args, {"node_id": node_id, "files": len(entries), "output": args.output})
    say(args, f"wrote {count(len(entries), 'file', 'files')} of node id:{node_id} to {args.output}")
    say(args, "  encrypted with the passphrase: keep both, apart; restore with dfs restore")


def cmd_restore(args: argparse.Namespace) -> None:
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
    node_id = _node_id(target)
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


def _node_id(node_dir: Path) -> str:
    try:
        return node_id_of(
            x509.load_pem_x509_certificate((node_dir / "private" / CERT_FILE).read_bytes())
        )
    except (OSError, ValueError):
        return "?"


def _passphrase(args: argparse.Namespace, confirm: bool) -> str:
    """From --passphrase-file, else $DFS_PASSPHRASE, else asked on the terminal."""
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


# -- commands that need no running node


def cmd_network_key_create(args: argparse.Namespace) -> None:
    try:
        NetworkKey.generate().create(Path(args.file))
    except AdmissionError as e:
        raise CliError(str(e)) from None
    result(args, {"output": args.file})
    say(args, f"wrote a new network key to {args.file}: give it to every node of the federation")
    say(args, f"  (twistd -n dfs ... --network-key {args.file}); keep it secret")


def cmd_init(args: argparse.Namespace) -> None:
    from .node import create_keys, has_identity, write_config
    from .options import NodeOptions

    target = Path(args.dir)
    if has_identity(target):
        raise CliError(f"{target} already holds a node (id:{_node_id(target)})")
    if (target / CONFIG_FILE).exists():
        raise CliError(f"{target / CONFIG_FILE} exists; not overwriting it")
    settings: dict[str, Any] = {}
    for name in ("port", "org", "listen", "api", "api-tls", "network-key", "allow"):
        value = getattr(args, "node_api" if name == "api" else name.replace("-", "_"))
        if value is not None:
            absolute = name in ("network-key", "allow")
            settings[name] = str(Path(value).absolute()) if absolute else str(value)
    if args.peers is not None:
        settings["peers"] = [p.strip() for p in args.peers.split(",") if p.strip()]
    for name in ("quota", "reserve"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.no_relay:
        settings["no-relay"] = True
    if "org" not in settings:
        if "port" not in settings:
            raise CliError("dfs init needs --port or --org (the org's name is kept in dfs.toml)")
        settings["org"] = f"node-{settings['port']}"
    # The same checks the node makes, before anything is written.
    flags = [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in settings.items()]
    flags = [f for f in flags if not f.startswith("--no-relay")]
    if "port" not in settings:
        flags.append("--port=1")
    try:
        NodeOptions(check_admission=False).parseOptions([*flags, f"--data-dir={target}"])
    except usage.UsageError as e:
        raise CliError(str(e)) from None
    try:
        target.mkdir(parents=True, exist_ok=True)
        identity, _, _ = create_keys(target / "private")
        write_config(
            target,
            settings,
            "dfs node settings, made by dfs init: the keys are the long names of the\n"
            "node's flags, and a flag given on the command line overrides the value here.",
        )
    except OSError as e:
        raise CliError(f"cannot create the node in {target}: {e.strerror}") from None
    result(
        args,
        {"node_id": identity.node_id, "org": settings["org"], "data_dir": str(target)},
    )
    say(args, f"created node id:{identity.node_id} (org {shown(settings['org'])}) in {target}")
    start = f"twistd -n dfs --data-dir {target}" + ("" if "port" in settings else " --port N")
    say(args, f"  settings in {target / CONFIG_FILE}; start it with: {start}")
    say(args, f"  back up {target}/private/ now: dfs --node {target} backup -o FILE")


# -- the parser


EXAMPLES = {
    "put": "dfs --node ./dfs-3000 put report.pdf\n"
    "dfs --node ./dfs-3000 put - --name logs/today.txt < today.txt",
    "get": "dfs --node ./dfs-3000 get report.pdf -o report.pdf\n"
    "dfs --node 3000 get report.pdf | less\n"
    "dfs get report.pdf --org acme -o acme-report.pdf\n"
    "dfs get --grant q1.grant -o q1.pdf",
    "rm": "dfs --node ./dfs-3000 rm report.pdf",
    "ls": "dfs --node ./dfs-3000 ls -l\ndfs ls --org id:4f1c2a9b --json",
    "status": "dfs --node ./dfs-3000 status\ndfs status --json\ndfs status --watch",
    "recover": "dfs --node ./dfs-3000 recover",
    "share": "dfs --node ./dfs-3000 share q1.pdf --to acme -o q1.grant",
    "key": "dfs key export -o globex.key\ndfs key import acme.key",
    "export": "dfs --node ./dfs-3000 key export -o globex.key",
    "import": "dfs --node ./dfs-3000 key import acme.key",
    "access": "dfs --node /var/lib/dfs access -o laptop.access\n"
    "dfs --api https://files.example.org:7443/ --token-file laptop.access status",
    "backup": "dfs --node /var/lib/dfs backup -o dfs-private-2026-12-01.dfsbak\n"
    "DFS_PASSPHRASE=... dfs --node /var/lib/dfs backup -o nightly.dfsbak",
    "restore": "dfs restore dfs-private-2026-12-01.dfsbak /var/lib/dfs",
    "init": "dfs init /var/lib/dfs --port 7000 --org globex --listen 0.0.0.0 \\\n"
    "    --peers storage.acme.example:7000 --network-key /etc/dfs/federation.key",
    "network-key": "dfs network-key create federation.key",
    "create": "dfs network-key create federation.key",
}


def _globals(sub: bool, client: bool = True) -> argparse.ArgumentParser:
    """Flags accepted before and after the subcommand (after it, they win).

    ``client``: the flags that pick a node, for commands that talk to one.
    """
    g = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    if client:
        _node_flags(g, default)
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress bars and no reports of what was done (results still print)",
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the result as JSON",
    )
    return g


def _node_flags(g: argparse.ArgumentParser, default: Callable[[object], object]) -> None:
    g.add_argument(
        "--node",
        metavar="DIR",
        default=default(os.environ.get("DFS_NODE")),
        help="the node's directory, or the PORT of ./dfs-PORT (default: $DFS_NODE)",
    )
    g.add_argument(
        "--api",
        metavar="URL",
        default=default(None),
        help="a node elsewhere: https://HOST:PORT/ of its --api-tls (needs --token-file)",
    )
    g.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help="with --api: the access file (`dfs access -o FILE` on the node's machine)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfs",
        description="Client of a dfs-twisted node: store, read, share and manage files.",
        epilog="Run `dfs COMMAND --help` for a command's options and examples.",
        parents=[_globals(False)],
    )
    p.add_argument("--version", action="version", version=f"dfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, summary: str, run: Callable[..., None]
    ) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = parent.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog="examples:\n" + textwrap.indent(EXAMPLES[name], "  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[_globals(True, client=name not in ("init", "restore", "create"))],
        )
        c.set_defaults(run=run)
        return c

    put = command(sub, "put", "store a file (here and on every connected peer)", cmd_put)
    put.add_argument("path", metavar="PATH", help="file to store, '-' for stdin")
    put.add_argument("--name", help="name to store it under (default: the file's name)")

    get = command(sub, "get", "fetch and decrypt a file", cmd_get)
    get.add_argument("name", metavar="NAME", nargs="?", help="the file's name")
    get.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    get.add_argument(
        "--org", metavar="ORG", help="another org's file, with its read key: NAME or id:HEX"
    )
    get.add_argument("--grant", metavar="FILE", help="the file a grant to this org opens")

    rm = command(sub, "rm", "delete a file here and on every connected peer", cmd_rm)
    rm.add_argument("name", metavar="NAME", help="the file's name")

    ls = command(sub, "ls", "list this org's files (name, size, replicas)", cmd_ls)
    ls.add_argument("-l", "--long", action="store_true", help="human sizes and modification times")
    ls.add_argument(
        "--org", metavar="ORG", help="another org's files, with its read key: NAME or id:HEX"
    )

    status = command(sub, "status", "this node, its peers and its storage", cmd_status)
    status.add_argument("--watch", action="store_true", help="redraw every few seconds")

    command(sub, "recover", "fetch back every file of this org from peers", cmd_recover)

    share = command(sub, "share", "hand one file to one org, as a grant", cmd_share)
    share.add_argument("name", metavar="NAME", help="the file to share")
    share.add_argument(
        "--to", metavar="ORG", required=True, help="an org this node has met: NAME or id:HEX"
    )
    share.add_argument("-o", "--output", metavar="GRANT", required=True, help="grant to write")

    key = command(sub, "key", "read keys: export this org's, import another's", cmd_key_export)
    key_sub = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = command(key_sub, "export", "write this org's read key to a new file", cmd_key_export)
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="file to write")
    import_ = command(key_sub, "import", "accept another org's read key", cmd_key_import)
    import_.add_argument("file", metavar="FILE", help="a read key another org handed over")

    access = command(
        sub, "access", "write an access file for a remote dfs (token + node id)", cmd_access
    )
    access.add_argument("-o", "--output", metavar="FILE", required=True, help="file to write")

    for name, summary in (
        ("backup", "write private/ and dfs.toml as one passphrase-encrypted archive"),
        ("restore", "make a node directory from such an archive"),
    ):
        c = command(sub, name, summary, cmd_backup)
        c.add_argument(
            "--passphrase-file",
            metavar="FILE",
            help=f"read the passphrase from FILE (else ${PASSPHRASE_ENV}, else asked)",
        )
        if name == "backup":
            c.add_argument(
                "-o", "--output", metavar="FILE", required=True, help="a new file (mode 0600)"
            )
        else:
            c.add_argument("file", metavar="FILE", help="the archive")
            c.add_argument("dir", metavar="DIR", help="a new or empty node directory")

    network_key = command(sub, "network-key", "federation admission keys", cmd_network_key_create)
    nk_sub = network_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = command(
        nk_sub, "create", "write a new network key to FILE (mode 0600)", cmd_network_key_create
    )
    create.add_argument("file", metavar="FILE", help="a new file")

    init = command(sub, "init", "create a node directory: its identity and dfs.toml", cmd_init)
    init.add_argument("dir", metavar="DIR", help="the new node's directory")
    init.add_argument("--port", help="TCP port of the peer protocol")
    init.add_argument("--org", help="the organization's name (default node-PORT)")
    init.add_argument("--peers", metavar="LIST", help="peers to dial: PORT or HOST:PORT, ...")
    init.add_argument("--listen", metavar="ADDR", help="interface for the peer port")
    init.add_argument(
        "--api", dest="node_api", metavar="ENDPOINT", help="Twisted endpoint for the API"
    )
    init.add_argument("--api-tls", metavar="ENDPOINT", help="endpoint for the API over TLS")
    init.add_argument("--network-key", metavar="FILE", help="the federation's network key")
    init.add_argument("--allow", metavar="FILE", help="a file of node ids to admit")
    init.add_argument("--quota", metavar="SIZE", help="most bytes held for any one other org")
    init.add_argument("--reserve", metavar="SIZE", help="free disk never given to other orgs")
    init.add_argument("--no-relay", action="store_true", help="do not relay other orgs' blobs")
    return p


OFFLINE = {"network-key", "init", "restore", "backup"}


def fail(message: str) -> NoReturn:
    print(f"dfs: {shown(message)}", file=sys.stderr)
    raise SystemExit(1)


def connect(args: argparse.Namespace) -> NodeClient:
    if args.api is not None:
        if args.node is not None and "DFS_NODE" not in os.environ:
            raise CliError("give --node or --api, not both")
        return NodeClient.remote(args.api, args.token_file)
    if args.token_file is not None:
        raise CliError("--token-file goes with --api URL")
    if not args.node:
        raise CliError("no node given: use --node DIR (or set DFS_NODE), or --api URL")
    return NodeClient.local(find_node_dir(args.node))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "network-key":
            cmd_network_key_create(args)
        elif args.command == "init":
            cmd_init(args)
        elif args.command == "restore":
            cmd_restore(args)
        elif args.command == "backup":
            cmd_backup(None, args)
        else:
            args.run(connect(args), args)
    except CliError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")
    except (OutputClosed, BrokenPipeError):
        # Whoever read our output stopped (`dfs get x | head -c 16`): a quiet
        # end, as for any Unix tool, with the status a SIGPIPE would give.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        raise SystemExit(141) from None
