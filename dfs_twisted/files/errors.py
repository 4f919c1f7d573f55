"""What can go wrong with a file, as the API and CLI report it."""

from __future__ import annotations

import time


class FileNotFound(Exception):
    """Neither this node nor any connected peer holds the file."""


class DamagedBlob(Exception):
    """A blob failed verification."""


class NewestUnavailable(Exception):
    """This org's newest version of a file is neither here nor on any connected peer.

    Older versions may be: they are never served in its place.
    """

    def __init__(self, name: str, version: int) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(version / 1e9))
        super().__init__(
            f"the newest version of {name} (written {when} UTC) is not on this node and no "
            "connected peer serves it; older versions are not served in its place"
        )
        self.name = name
        self.version = version


class PutInProgress(Exception):
    """The same name is being put already."""


class UnknownPeer(Exception):
    """No (single) org this node has met answers to that name or id."""
