"""A peer connection's handshake, as explicit states: no I/O here.

    AWAITING_TLS --tls_done--> AWAITING_HELLO --hello--> READY
          \\                         \\
           `--------- refused, timed out, lost -------> CLOSED

TLS first (mutual: each side's node id is the hash of its certificate's key), then
HELLO both ways: the dialler speaks first, the acceptor answers only once the
dialler passed admission, so a stranger learns nothing about this node. Each event
returns what to do (`Step`s); the protocol carries them out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from . import wire
from .admission import Admission
from .identity import PeerPins, PinMismatch
from .session import PeerInfo


class Stage(enum.Enum):
    AWAITING_TLS = "awaiting TLS"
    AWAITING_HELLO = "awaiting HELLO"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True)
class Close:
    """Cut the connection at once, logging why."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """Tell the peer why it is refused, then close (a dialled address remembers it)."""

    reason: str


@dataclass(frozen=True)
class SendHello:
    """Send this node's HELLO."""


@dataclass(frozen=True)
class Ready:
    """The session is ready: this is who the peer is."""

    info: PeerInfo


Step = Close | Refuse | SendHello | Ready


class Handshake:
    def __init__(
        self,
        node_id: str,
        dialled: str | None,
        admission: Admission,
        pins: PeerPins,
        binding: Callable[[], bytes | None],
        over_limit: Callable[[str], str | None],
        address: Callable[[], str],
    ) -> None:
        """``binding()``: the TLS session's exported keying material (for the network
        key's proof); ``over_limit(node_id)``: why one more session may not join."""
        self._node_id = node_id
        self._dialled = dialled
        self._admission = admission
        self._pins = pins
        self._binding = binding
        self._over_limit = over_limit
        self._address = address
        self.stage = Stage.AWAITING_TLS
        self.peer_id: str | None = None

    def tls_done(self, peer_id: str | None) -> list[Step]:
        """TLS is up; ``peer_id``: the hash of the peer certificate's key (None: none)."""
        if self.stage is not Stage.AWAITING_TLS:
            return []
        if peer_id is None:
            return self._end(Close("no client certificate"))
        self.peer_id = peer_id
        if peer_id == self._node_id:
            return self._end(Close("connected to itself"))
        refusal = self._admission.refuse_certificate(peer_id)
        if refusal is not None:
            return self._end(Refuse(f"admission refused: {refusal}"))
        self.stage = Stage.AWAITING_HELLO
        if self._dialled is None:
            return []
        try:
            self._pins.check(self._dialled, peer_id)
        except PinMismatch as e:
            return self._end(Refuse(str(e)))
        # The dialler speaks first.
        return [SendHello()]

    def hello(self, message: wire.Message) -> list[Step]:
        """A message before the session is ready (ProtocolError: not a HELLO here)."""
        if self.stage is Stage.AWAITING_TLS:
            raise wire.ProtocolError("message before the TLS handshake completed")
        if self.stage is not Stage.AWAITING_HELLO:
            return []
        if not isinstance(message, wire.Hello):
            raise wire.ProtocolError(f"expected HELLO, got {type(message).__name__}")
        assert self.peer_id is not None
        if message.version != wire.PROTOCOL_VERSION:
            return self._end(
                Refuse(
                    f"protocol version {message.version} not supported "
                    f"(this node speaks {wire.PROTOCOL_VERSION})"
                )
            )
        if message.node_id != self.peer_id:
            raise wire.ProtocolError("HELLO node id does not match the TLS certificate")
        refusal = self._admission.refuse_proof(self._binding(), self.peer_id, message.proof)
        if refusal is not None:
            return self._end(Refuse(f"admission refused: {refusal}"))
        refusal = self._over_limit(self.peer_id)
        if refusal is not None:
            return self._end(Refuse(refusal))
        self.stage = Stage.READY
        info = PeerInfo(
            node_id=self.peer_id,
            org=message.org,
            listen=message.listen,
            address=self._dialled or self._address(),
            box_key=message.box_key,
            placed=wire.PLACED in message.features,
        )
        # The acceptor answers only now that the dialler passed admission.
        return [Ready(info)] if self._dialled is not None else [SendHello(), Ready(info)]

    def closed(self) -> None:
        self.stage = Stage.CLOSED

    def _end(self, step: Close | Refuse) -> list[Step]:
        self.stage = Stage.CLOSED
        return [step]
