"""`python -m dfs_twisted.cli`: the `dfs` command."""

from .run import main

main()
