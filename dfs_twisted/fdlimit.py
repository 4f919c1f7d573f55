"""The process's open-file limit: raised to the most the system allows, at start.

Every peer link, API connection, blob being written and store file being read is
a file descriptor. The usual soft limit (1,024) is far below what a busy node can
need and far below the hard limit an administrator set; running out makes the node
refuse its own operator. Raising the soft limit to the hard one needs no privilege.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

log = Logger()


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        # An unlimited hard limit is not accepted as a soft one everywhere
        # (Linux caps it at fs.nr_open): keep what we have.
        return soft, soft
    log.info("open-file limit raised from {soft} to {limit}", soft=soft, limit=hard)
    return soft, hard


__all__ = ["raise_fd_limit"]
