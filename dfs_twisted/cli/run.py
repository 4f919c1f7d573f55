"""Choosing the node to talk to, running a command, failing in one line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from ..client import CliError, NodeClient, find_node_dir
from ..display import shown
from .arguments import parser
from .commands import cmd_backup, cmd_restore
from .offline import cmd_init, cmd_network_key_create
from .output import OutputClosed

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
