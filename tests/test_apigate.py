"""API connections without the token: how many may wait, and for how long (in memory).

`WaitingConnections` is plain bookkeeping. The channel tests run twisted.web's real
HTTP parser and our `ApiSite` over in-memory transports, with a fake clock for the
deadlines; `test_api_limits.py` plays the same attacks against a node process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.api import Api, ApiSite
from dfs_twisted.apigate import ApiChannel, WaitingConnections
from dfs_twisted.keys import Keyring

pytestmark = pytest.mark.unit

TOKEN = "the-token"
# The status page: the one answer served both with and without the token.
PAGE = b"GET / HTTP/1.1\r\nHost: x\r\n"
WITH_TOKEN = PAGE + b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
WITHOUT_TOKEN = PAGE + b"\r\n"


class WaitingConnectionsTests(SynchronousTestCase):
    def test_oldest_from_the_same_address_goes_first(self) -> None:
        waiting: WaitingConnections[str] = WaitingConnections(total=10, per_address=2)
        self.assertEqual(waiting.add("a1", "A"), [])
        self.assertEqual(waiting.add("b1", "B"), [])
        self.assertEqual(waiting.add("a2", "A"), [])
        self.assertEqual(waiting.add("a3", "A"), ["a1"])
        self.assertEqual((waiting.from_address("A"), waiting.from_address("B")), (2, 1))
        self.assertNotIn("a1", waiting)
        self.assertIn("b1", waiting)

    def test_oldest_of_all_goes_past_the_total(self) -> None:
        waiting: WaitingConnections[str] = WaitingConnections(total=3, per_address=3)
        for name, address in (("a1", "A"), ("b1", "B"), ("c1", "C")):
            self.assertEqual(waiting.add(name, address), [])
        self.assertEqual(waiting.add("d1", "D"), ["a1"])
        self.assertEqual(len(waiting), 3)
        self.assertEqual(waiting.from_address("A"), 0)

    def test_discard_frees_a_place(self) -> None:
        waiting: WaitingConnections[str] = WaitingConnections(total=2, per_address=2)
        waiting.add("a1", "A")
        waiting.add("a2", "A")
        waiting.discard("a1")
        waiting.discard("a1")  # twice, or never added: nothing happens
        waiting.discard("zz")
        self.assertEqual(waiting.add("a3", "A"), [])
        self.assertEqual(waiting.from_address("A"), 2)

    def test_limits_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            WaitingConnections(total=0, per_address=1)


class ChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        # The files are never reached: the page and the gate need only the token.
        api = Api(cast(Any, None), TOKEN, "org", Keyring(Path(self.mktemp())))
        self.site = ApiSite(
            api,
            reactor=self.clock,
            waiting=WaitingConnections(total=4, per_address=2),
            head_timeout=10.0,
            waiting_lifetime=30.0,
        )
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)

    def connect(self, host: str = "127.0.0.1") -> tuple[ApiChannel, StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        channel = cast(ApiChannel, self.site.buildProtocol(address))
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        self.addCleanup(self.disconnect, channel, transport)
        return channel, transport

    @staticmethod
    def disconnect(channel: ApiChannel, transport: StringTransport) -> None:
        if not transport.disconnected:
            channel.connectionLost()

    def test_a_request_with_the_token_is_served_and_trusted(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(WITH_TOKEN)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertTrue(channel.trusted)
        self.assertEqual(len(self.site.waiting), 0)
        # Trusted for good: the lifetime of a waiting connection no longer applies.
        self.clock.advance(45)
        self.assertFalse(transport.disconnected)

    def test_idle_connection_without_the_token_is_dropped(self) -> None:
        _, transport = self.connect()
        self.assertEqual(len(self.site.waiting), 1)
        self.clock.advance(29)
        self.assertFalse(transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.site.waiting), 0)

    def test_public_requests_do_not_make_a_connection_trusted(self) -> None:
        channel, transport = self.connect()
        for _ in range(7):
            channel.dataReceived(WITHOUT_TOKEN)
            self.clock.advance(5)
        self.assertIn(b"HTTP/1.1 200 ", transport.value())
        self.assertFalse(channel.trusted)
        self.assertTrue(transport.disconnected, "kept alive past its lifetime")

    def test_a_trickled_head_is_dropped(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for i in range(4):
            self.clock.advance(3)
            if transport.disconnected:
                break
            channel.dataReceived(b"X-Slow-%d: y\r\n" % i)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.site.waiting), 0)

    def test_a_trusted_connection_trickling_its_next_head_is_dropped(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(WITH_TOKEN)
        self.assertTrue(channel.trusted)
        # Idle between requests is not a head: it may wait (twisted.web's idle timeout).
        self.clock.advance(15)
        self.assertFalse(transport.disconnected)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(9)
        channel.dataReceived(b"X-Slow: y\r\n")
        self.assertFalse(transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_past_the_cap_the_oldest_waiting_connection_goes(self) -> None:
        _, first_transport = self.connect("10.0.0.1")
        _, second_transport = self.connect("10.0.0.1")
        _, third_transport = self.connect("10.0.0.1")
        self.assertTrue(first_transport.disconnected)
        self.assertFalse(second_transport.disconnected or third_transport.disconnected)
        self.assertEqual(self.site.waiting.from_address("10.0.0.1"), 2)
        # A trusted connection is not counted and never pushed out.
        trusted, trusted_transport = self.connect("10.0.0.2")
        trusted.dataReceived(WITH_TOKEN)
        for host in ("10.0.0.3", "10.0.0.4", "10.0.0.5"):
            self.connect(host)
        self.assertEqual(len(self.site.waiting), 4)
        self.assertTrue(second_transport.disconnected)
        self.assertFalse(trusted_transport.disconnected)
        # The newest one can still be served once it shows the token.
        newest, newest_transport = self.connect("10.0.0.1")
        newest.dataReceived(WITH_TOKEN)
        self.assertTrue(newest_transport.value().startswith(b"HTTP/1.1 200 "))
