"""Erasure coding of a blob into shares: any K of N rebuild it (zfec).

A blob's bytes are cut into segments of K blocks of `BLOCK` bytes; zfec turns
each segment into N blocks, and block i of every segment, in order, is the
content of share i. The last segment is padded (0x80, then zeros up to a whole
number of K blocks) so that the blob's end is found without its length. zfec is
systematic: shares 0..K-1 are the blob itself, cut in blocks, and the other N-K
are parity.

Pure code over bytes: who holds which share is placement's business, and each
share travels as a blob of its own, encrypted and signed by the owner (a share's
metadata names its index, K and N), so holders check and scrub it as any blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import zfec

from .crypto import CHUNK_SIZE

__all__ = ["BLOCK", "Erasure", "ShareDecoder", "ShareEncoder", "parse_erasure"]

# One block of a share per segment: a share's chunk, so a share blob's chunks line
# up with the segments it rebuilds.
BLOCK = CHUNK_SIZE
_PAD = b"\x80"


@dataclass(frozen=True)
class Erasure:
    """K-of-N: N shares per file, any K of which rebuild it."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not 1 <= self.k < self.n <= 256:
            raise ValueError(f"{self}: K must be 1 or more and less than N, N at most 256")

    def __str__(self) -> str:
        return f"{self.k}-of-{self.n}"

    def share_size(self, length: int, block: int = BLOCK) -> int:
        """Bytes of each share of a blob of ``length`` bytes."""
        whole, rest = divmod(length, self.k * block)
        return whole * block + -(-(rest + len(_PAD)) // self.k)


def parse_erasure(text: str) -> Erasure:
    """``K-of-N`` as given to ``--erasure`` (ValueError with the reason)."""
    k, sep, n = text.partition("-of-")
    if not (sep and k.isdigit() and n.isdigit()):
        raise ValueError(f"{text!r} is not K-of-N (for example 3-of-6)")
    return Erasure(int(k), int(n))


class ShareEncoder:
    """Cuts a blob's bytes, fed in any pieces, into the blocks of some of its shares."""

    def __init__(self, erasure: Erasure, wanted: Sequence[int], block: int = BLOCK) -> None:
        """``wanted``: the share indices to make, in the order they are returned."""
        self._k = erasure.k
        self._block = block
        self._wanted = tuple(wanted)
        self._encoder = zfec.Encoder(erasure.k, erasure.n)
        self._segment = bytearray()
        self._done = False

    def update(self, data: bytes | memoryview) -> list[list[bytes]]:
        """Take bytes; return, for each segment they complete, the wanted blocks."""
        if self._done:
            raise RuntimeError("ShareEncoder already finished")
        self._segment += data
        out = []
        size = self._k * self._block
        while len(self._segment) >= size:
            out.append(self._encode(bytes(self._segment[:size])))
            del self._segment[:size]
        return out

    def finish(self) -> list[bytes]:
        """The wanted blocks of the last, padded segment (every blob has one)."""
        if self._done:
            raise RuntimeError("ShareEncoder already finished")
        self._done = True
        last = bytes(self._segment) + _PAD
        last += bytes(-len(last) % self._k)
        self._segment = bytearray()
        return self._encode(last)

    def _encode(self, segment: bytes) -> list[bytes]:
        block = len(segment) // self._k
        view = memoryview(segment)
        primary = tuple(view[i * block : (i + 1) * block] for i in range(self._k))
        return [bytes(b) for b in self._encoder.encode(primary, self._wanted)]


class ShareDecoder:
    """Rebuilds a blob's bytes from the blocks of K of its shares, segment by segment."""

    def __init__(self, erasure: Erasure, indices: Sequence[int]) -> None:
        """``indices``: the K distinct share indices whose blocks are given."""
        if len(set(indices)) != erasure.k or not all(0 <= i < erasure.n for i in indices):
            raise ValueError(f"need {erasure.k} distinct shares of {erasure}, not {indices}")
        self._indices = tuple(indices)
        self._decoder = zfec.Decoder(erasure.k, erasure.n)

    def segment(self, blocks: Sequence[bytes], last: bool) -> bytes:
        """The blob bytes of one segment from its blocks (one per index, all of one
        length); the ``last`` segment without its padding (ValueError: no padding)."""
        if len({len(b) for b in blocks}) != 1:
            raise ValueError("the shares' blocks differ in length")
        data = b"".join(self._decoder.decode(tuple(blocks), self._indices))
        if not last:
            return data
        end = len(data.rstrip(b"\x00")) - 1
        if end < 0 or data[end : end + 1] != _PAD:
            raise ValueError("the last segment is not padded: shares of different files?")
        return data[:end]
