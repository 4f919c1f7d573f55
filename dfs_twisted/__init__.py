"""dfs-twisted: a distributed encrypted file store for organizations."""

__version__ = "0.1.0"
