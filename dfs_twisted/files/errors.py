"""What can go wrong with a file, as the API and CLI report it."""

from __future__ import annotations


class FileNotFound(Exception):
    """Neither this node nor any connected peer holds the file."""


class DamagedBlob(Exception):
    """A blob failed verification."""


class PutInProgress(Exception):
    """The same name is being put already."""


class UnknownPeer(Exception):
    """No (single) org this node has met answers to that name or id."""
