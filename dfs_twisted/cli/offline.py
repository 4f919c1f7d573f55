"""The commands that need no running node: a network key, a new node's data dir.

They import what they use when they run: loading it costs every other command too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..client import CliError
from ..config import CONFIG_FILE
from ..display import shown
from .commands import node_id_in
from .output import result, say

# -- commands that need no running node


def cmd_network_key_create(args: argparse.Namespace) -> None:
    from ..admission import AdmissionError, NetworkKey

    try:
        NetworkKey.generate().create(Path(args.file))
    except AdmissionError as e:
        raise CliError(str(e)) from None
    result(args, {"output": args.file})
    say(args, f"wrote a new network key to {args.file}: give it to every node of the federation")
    say(args, f"  (twistd -n dfs ... --network-key {args.file}); keep it secret")


def cmd_init(args: argparse.Namespace) -> None:
    from twisted.python import usage

    from ..node import create_keys, has_identity, write_config
    from ..options import NodeOptions

    target = Path(args.dir)
    if has_identity(target):
        raise CliError(f"{target} already holds a node (id:{node_id_in(target)})")
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
