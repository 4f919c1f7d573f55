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
    """Checks what a peer sends against its quota and the free disk.

    Space is charged to the node that sends, whoever owns what it sends: owner ids
    cost nothing to make, so a quota per owner would be no bound at all, and a node
    relaying for others spends its own allowance. Transfers in flight hold a
    reservation, so concurrent ones cannot together pass the quota.
    """

    def __init__(
        self,
        held: Callable[[str], int],
        limits: SpaceLimits,
        free: Callable[[], int],
    ) -> None:
        self.limits = limits
        self.held = held  # what a sender's committed entries count now
        self._free = free
        self._reserved: dict[str, int] = {}  # by sender: transfers in flight

    def free(self) -> int:
        """Free bytes on the store's disk."""
        return self._free()

    def charged(self, sender: str) -> int:
        """What ``sender`` holds here and has on its way."""
        return self.held(sender) + self._reserved.get(sender, 0)

    def check(self, sender: str, growth: int, disk_needed: int | None) -> None:
        """Raise NoSpace if ``sender`` holding ``growth`` more bytes breaks a limit.

        ``disk_needed``: bytes still to be written, to check against the free
        reserve (None skips that check, which costs a system call).
        """
        total = self.charged(sender) + growth
        if total > self.limits.quota:
            raise NoSpace(
                "quota",
                f"quota for your node reached: {total} of {self.limits.quota} bytes "
                "(what you sent, relayed or your own, and what you are sending)",
            )
        if disk_needed is not None and self._free() - disk_needed < self.limits.reserve:
            raise NoSpace("disk_full", "not enough free disk for this replica")

    def reserve(self, sender: str, amount: int, disk_needed: int | None) -> Reservation:
        """Hold ``amount`` bytes of ``sender``'s quota for a transfer (NoSpace: none left)."""
        self.check(sender, amount, disk_needed)
        return Reservation(self, sender, amount)

    def _adjust(self, sender: str, delta: int) -> None:
        left = self._reserved.get(sender, 0) + delta
        if left:
            self._reserved[sender] = left
        else:
            self._reserved.pop(sender, None)


class Reservation:
    """Part of a sender's quota held by one transfer until it is committed or dropped."""

    def __init__(self, account: SpaceAccount, sender: str, amount: int) -> None:
        self._account = account
        self._sender = sender
        self.amount = amount
        account._adjust(sender, amount)

    def grow(self, amount: int, disk_needed: int | None) -> None:
        """Hold ``amount`` in all (more than before, for a transfer of unknown size)."""
        if amount > self.amount:
            self._account.check(self._sender, amount - self.amount, disk_needed)
            self._account._adjust(self._sender, amount - self.amount)
            self.amount = amount
        elif disk_needed is not None:
            self._account.check(self._sender, 0, disk_needed)

    def release(self) -> None:
        """The transfer ended: committed (now counted in the catalog) or dropped."""
        self._account._adjust(self._sender, -self.amount)
        self.amount = 0
