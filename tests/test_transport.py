"""The peer links' TLS layer (transport.py) over two in-memory transports: a real
TLS 1.3 handshake between two node identities, then bulk writes."""

from __future__ import annotations

import os

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.identity import MutualTLS
from dfs_twisted.transport import BulkTLSFactory, BulkTLSProtocol

from .fakes import identity

pytestmark = pytest.mark.unit


class Collect(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Only(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


class CountingTransport(StringTransport):
    """Counts the writes that reach it: on a real socket each is a system call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class BulkWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 1)
        self.clock = Clock()  # small writes wait for a turn of it (Twisted's aggregator)
        self.sides: list[tuple[BulkTLSProtocol, CountingTransport, Collect]] = []
        for client in (True, False):
            app = Collect()
            factory = BulkTLSFactory(MutualTLS(identity(self)), client, Only(app))
            factory._clock = self.clock
            tls = factory.buildProtocol(address)
            assert isinstance(tls, BulkTLSProtocol)
            transport = CountingTransport()
            tls.makeConnection(transport)
            self.sides.append((tls, transport, app))
        self.pump()
        for _, transport, _ in self.sides:
            transport.writes = 0

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything more to say."""
        (a, a_out, _), (b, b_out, _) = self.sides
        self.clock.advance(0)
        while a_out.value() or b_out.value():
            for out, to in ((a_out, b), (b_out, a)):
                data = out.value()
                out.clear()
                if data:
                    to.dataReceived(data)
            self.clock.advance(0)

    def test_a_big_write_leaves_in_a_few_writes_not_one_per_record(self) -> None:
        (client, out, _), (_, _, server) = self.sides
        data = os.urandom(1 << 20)
        client.write(data)
        # One per slice handed to OpenSSL (256 KiB), not one per TLS record (16 KiB
        # at most: 64 of them here).
        self.assertLessEqual(out.writes, 4)
        self.pump()
        self.assertEqual(bytes(server.received), data)

    def test_small_writes_and_a_big_one_arrive_in_order(self) -> None:
        (client, _, _), (_, _, server) = self.sides
        pieces = [b"header", os.urandom(300_000), b"trailer", os.urandom(5)]
        client.writeSequence(pieces)
        self.pump()
        self.assertEqual(bytes(server.received), b"".join(pieces))
