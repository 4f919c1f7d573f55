"""Disk space given to other organizations' replicas: a quota per org and a free reserve.

Replicas held for others must never crowd out this org's own data: each other org
may hold at most `quota` bytes here, and no replica is accepted that would leave
less than `reserve` bytes free on the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GiB = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1T`` or a number of bytes (binary units)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 20G)") from None
    if amount < 0 or amount != amount:
        raise ValueError(f"not a size: {text!r}")
    return int(amount * _UNITS[unit])


@dataclass(frozen=True)
class SpaceLimits:
    quota: int = 10 * GiB  # most bytes held for any one other org
    reserve: int = 1 * GiB  # free disk never given to other orgs' replicas


class NoSpace(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SpaceAccount:
    """Checks a replica against the quota of its org and the free disk."""

    def __init__(
        self,
        held: Callable[[str], int],
        limits: SpaceLimits,
        free: Callable[[], int],
    ) -> None:
        self.limits = limits
        self.held = held  # bytes held now for an owner
        self._free = free

    def free(self) -> int:
        """Free bytes on the store's disk."""
        return self._free()

    def check(self, owner: str, growth: int, disk_needed: int | None) -> None:
        """Raise NoSpace if ``owner`` holding ``growth`` more bytes breaks a limit.

        ``disk_needed``: bytes still to be written, to check against the free
        reserve (None skips that check, which costs a system call).
        """
        held = self.held(owner)
        if held + growth > self.limits.quota:
            raise NoSpace(
                "quota",
                f"quota for your org reached: {held + growth} of {self.limits.quota} bytes",
            )
        if disk_needed is not None and self._free() - disk_needed < self.limits.reserve:
            raise NoSpace("disk_full", "not enough free disk for this replica")
