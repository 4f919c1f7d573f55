"""The argument parser: every subcommand, its flags, help and an example."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Callable
from typing import Any

from .. import __version__
from .commands import (
    PASSPHRASE_ENV,
    cmd_access,
    cmd_backup,
    cmd_get,
    cmd_key_export,
    cmd_key_import,
    cmd_ls,
    cmd_put,
    cmd_recover,
    cmd_rm,
    cmd_share,
    cmd_status,
)
from .offline import cmd_init, cmd_network_key_create

# -- the parser


EXAMPLES = {
    "put": "dfs --node ./dfs-3000 put report.pdf\n"
    "dfs --node ./dfs-3000 put - --name logs/today.txt < today.txt\n"
    "dfs --node ./dfs-3000 put photos notes.txt   # photos/..., notes.txt",
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

    put = command(sub, "put", "store files (here and on every connected peer)", cmd_put)
    put.add_argument(
        "path",
        metavar="PATH",
        nargs="+",
        help="file to store, '-' for stdin; several, or a directory: each of their files, "
        "named by its path from the PATH's parent",
    )
    put.add_argument("--name", help="name to store a single file under (default: the file's name)")

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
