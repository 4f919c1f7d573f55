"""Hypothesis strategies for wire messages, shared by the framing and protocol fuzz tests."""

from __future__ import annotations

from hypothesis import strategies as st

from dfs_twisted import wire
from dfs_twisted.wire import (
    MAX_LIST_PAGE,
    Abort,
    Ack,
    Audit,
    AuditReply,
    Data,
    Delete,
    Digest,
    DigestReply,
    Error,
    Fetch,
    FetchReply,
    Head,
    HeadReply,
    Hello,
    Horizon,
    HorizonReply,
    List,
    ListEntry,
    ListReply,
    Message,
    Ping,
    Store,
    encode,
)

hex_ids = st.binary(min_size=32, max_size=32).map(bytes.hex)
request_ids = st.integers(0, 2**32 - 1)
plain = st.characters(codec="utf-8", exclude_categories=("Cc", "Zl", "Zp", "Cf"))
any_text = st.text(st.characters(codec="utf-8"), max_size=wire.MAX_TEXT)
sizes = st.integers(0, 2**62 - 1)
versions = st.integers(0, 2**64 - 1)
proofs = st.sampled_from(["", "ab" * 64, "cd" * 140])

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        version=st.integers(0, 2**32 - 1),
        node_id=hex_ids,
        org=st.text(plain, min_size=1, max_size=128),
        listen=st.sampled_from(["127.0.0.1:0", "node-1.example.org:7000", "[::1]:65535"]),
        features=st.lists(st.text(plain, min_size=1, max_size=32), max_size=32).map(tuple),
        proof=st.none() | hex_ids,
        box_key=st.none() | hex_ids,
    ),
    st.builds(Store, owner=hex_ids, blob=hex_ids, size=st.none() | sizes, version=versions),
    st.builds(Fetch, owner=hex_ids, blob=hex_ids, version=st.none() | versions, offset=sizes),
    st.builds(
        Audit,
        owner=hex_ids,
        blob=hex_ids,
        version=versions,
        index=st.integers(0, 2**32 - 1),
        nonce=hex_ids,
    ),
    st.builds(AuditReply, digest=hex_ids),
    st.builds(
        Delete,
        owner=hex_ids,
        blob=hex_ids,
        version=versions,
        key=hex_ids,
        signature=st.from_regex(r"[0-9a-f]{128}", fullmatch=True),
    ),
    st.builds(
        Horizon,
        owner=hex_ids,
        version=st.none() | versions,
        key=st.none() | hex_ids,
        signature=st.none() | st.from_regex(r"[0-9a-f]{128}", fullmatch=True),
    ),
    st.builds(
        HorizonReply,
        version=st.none() | versions,
        key=st.none() | hex_ids,
        signature=st.none() | st.from_regex(r"[0-9a-f]{128}", fullmatch=True),
        met=st.lists(hex_ids, max_size=20).map(tuple),
        complete=st.booleans(),
    ),
    st.builds(Digest, owner=hex_ids),
    st.builds(Head, owner=hex_ids, blob=hex_ids),
    st.builds(
        HeadReply,
        size=sizes,
        header=st.binary(max_size=300).map(bytes.hex),
        proof=st.binary(max_size=140).map(bytes.hex),
    ),
    st.builds(DigestReply, digest=hex_ids, count=sizes),
    st.builds(List, owner=hex_ids, after=st.none() | hex_ids, limit=st.integers(1, MAX_LIST_PAGE)),
    st.just(Ack()),
    st.just(Ping()),
    st.builds(FetchReply, size=sizes),
    st.builds(
        ListReply,
        entries=st.lists(hex_ids, max_size=40, unique=True).flatmap(
            lambda ids: st.tuples(
                *(
                    st.builds(ListEntry, st.just(b), versions, st.booleans(), proofs)
                    for b in sorted(ids)
                )
            )
        ),
        more=st.booleans(),
    ),
    st.builds(Error, code=st.from_regex(r"[a-z_]{1,32}", fullmatch=True), message=any_text),
    st.builds(Abort, reason=any_text),
    st.builds(Data, payload=st.binary(max_size=2000), end=st.booleans()),
)
framed = st.tuples(messages, request_ids, st.booleans())


def encode_all(items: list[tuple[Message, int, bool]]) -> bytes:
    return b"".join(encode(m, rid, reply=reply) for m, rid, reply in items)
