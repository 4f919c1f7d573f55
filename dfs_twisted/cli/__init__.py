"""`dfs`: the command-line client of a running node, and a few offline tools.

Everything it prints that came from a node or a peer is escaped (display.shown);
every command that prints a result takes ``--json``; a mistake is one line on
stderr starting with ``dfs:`` and exit status 1.

- `arguments`: the parser, with help and an example for every subcommand;
- `commands`: the commands that talk to a node; `offline`: those that need none;
- `output`: reports, --json, warnings and progress bars; `run`: `main`.
"""

from .arguments import parser
from .run import main

__all__ = ["main", "parser"]
