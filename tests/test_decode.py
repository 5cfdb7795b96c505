"""The ctnetlink decoder: attribute lists -> Flow, bad inputs -> DecodeError, and a round trip
through the test-side encoder (tests/ctgen.py) for hypothesis-generated flows.
"""

from __future__ import annotations

import operator
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttop.conntrack import const as c
from cttop.conntrack.decode import (
    DecodeError,
    FastDecoder,
    _Walk,
    decode_flow,
    decode_message,
    decode_tuple,
)
from cttop.conntrack.model import Flow, Tuple
from cttop.netlink import NLA_F_NESTED, NLA_F_NET_BYTEORDER, NetlinkError, attr, message, nest
from tests import ctgen
from tests.ctgen import (
    CT_DELETE,
    CT_GET,
    CT_NEW,
    be16,
    be32,
    be64,
    cstring,
    encode_flow_message,
    encode_tuple,
    flow_message,
    flow_of,
    flows,
    raw_attr,
    u8,
)

V4, V6 = c.AF_INET, c.AF_INET6
NBO, NESTED = NLA_F_NET_BYTEORDER, NLA_F_NESTED

O4 = Tuple("192.0.2.1", "198.51.100.2", 40000, 443)
R4 = Tuple("198.51.100.2", "192.0.2.1", 443, 40000)
O6 = Tuple("2001:db8::1", "2001:db8:0:1::2", 5353, 53)
R6 = Tuple("2001:db8:0:1::2", "2001:db8::1", 53, 5353)


def orig4(proto: int | None = c.IPPROTO_TCP, tup: Tuple = O4, **kw: bool) -> bytes:
    return encode_tuple(c.CTA_TUPLE_ORIG, tup, V4, proto, **kw)


def reply4(proto: int | None = c.IPPROTO_TCP, tup: Tuple = R4, **kw: bool) -> bytes:
    return encode_tuple(c.CTA_TUPLE_REPLY, tup, V4, proto, **kw)


TUPLES4 = orig4() + reply4()
BASE4 = Flow(V4, c.IPPROTO_TCP, O4, R4)


def tuple_nest(nla_type: int, ip: bytes, proto: bytes, *more: bytes) -> bytes:
    return nest(nla_type, nest(c.CTA_TUPLE_IP, ip), nest(c.CTA_TUPLE_PROTO, proto), *more)


def ip4(src: str = "192.0.2.1", dst: str = "198.51.100.2") -> bytes:
    return attr(c.CTA_IP_V4_SRC, socket.inet_aton(src)) + attr(
        c.CTA_IP_V4_DST, socket.inet_aton(dst)
    )


def tcp_ports(sport: int = 40000, dport: int = 443) -> bytes:
    return (
        u8(c.CTA_PROTO_NUM, c.IPPROTO_TCP)
        + be16(c.CTA_PROTO_SRC_PORT, sport)
        + be16(c.CTA_PROTO_DST_PORT, dport)
    )


class Good(NamedTuple):
    id: str
    attrs: bytes
    expected: Flow
    family: int = V4


def g(id_: str, attrs: bytes, expected: Flow, family: int = V4) -> Good:
    return Good(id_, attrs, expected, family)


GOOD: list[Good] = [
    g("tuples only: everything else None, zone 0", TUPLES4, BASE4),
    g("status", TUPLES4 + be32(c.CTA_STATUS, 0x18E), BASE4._replace(status=0x18E)),
    g("timeout", TUPLES4 + be32(c.CTA_TIMEOUT, 431999), BASE4._replace(expires=431999)),
    g("mark", TUPLES4 + be32(c.CTA_MARK, 0xDEADBEEF), BASE4._replace(mark=0xDEADBEEF)),
    g("mark 0 is 0, not None", TUPLES4 + be32(c.CTA_MARK, 0), BASE4._replace(mark=0)),
    g("id", TUPLES4 + be32(c.CTA_ID, 0xFFFFFFFF), BASE4._replace(id=0xFFFFFFFF)),
    g("use", TUPLES4 + be32(c.CTA_USE, 2), BASE4._replace(use=2)),
    g("zone", TUPLES4 + be16(c.CTA_ZONE, 65535), BASE4._replace(zone=65535)),
    g("zone sent as 0", TUPLES4 + be16(c.CTA_ZONE, 0), BASE4),
    g(
        "directional tuple zones",
        encode_tuple(c.CTA_TUPLE_ORIG, O4._replace(zone=3), V4, 6)
        + encode_tuple(c.CTA_TUPLE_REPLY, R4._replace(zone=4), V4, 6),
        BASE4._replace(orig=O4._replace(zone=3), reply=R4._replace(zone=4)),
    ),
    g(
        "64-bit counters both directions",
        TUPLES4
        + nest(
            c.CTA_COUNTERS_ORIG,
            be64(c.CTA_COUNTERS_PACKETS, 2**64 - 1),
            be64(c.CTA_COUNTERS_BYTES, 2**40),
        )
        + nest(
            c.CTA_COUNTERS_REPLY, be64(c.CTA_COUNTERS_PACKETS, 0), be64(c.CTA_COUNTERS_BYTES, 0)
        ),
        BASE4._replace(orig_packets=2**64 - 1, orig_bytes=2**40, reply_packets=0, reply_bytes=0),
    ),
    g(
        "64-bit counters with CTA_COUNTERS_PAD",
        TUPLES4
        + nest(
            c.CTA_COUNTERS_ORIG,
            attr(c.CTA_COUNTERS_PAD, b""),
            be64(c.CTA_COUNTERS_PACKETS, 12),
            attr(c.CTA_COUNTERS_PAD, b""),
            be64(c.CTA_COUNTERS_BYTES, 3000),
        ),
        BASE4._replace(orig_packets=12, orig_bytes=3000),
    ),
    g(
        "32-bit counters (old kernels)",
        TUPLES4
        + nest(
            c.CTA_COUNTERS_REPLY,
            be32(c.CTA_COUNTERS32_PACKETS, 40),
            be32(c.CTA_COUNTERS32_BYTES, 0xFFFFFFFF),
        ),
        BASE4._replace(reply_packets=40, reply_bytes=0xFFFFFFFF),
    ),
    g(
        "counters: only packets sent, bytes stay None",
        TUPLES4 + nest(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_PACKETS, 5)),
        BASE4._replace(orig_packets=5),
    ),
    g(
        "empty counters nest",
        TUPLES4 + nest(c.CTA_COUNTERS_ORIG),
        BASE4,
    ),
    g(
        "timestamps start+stop with CTA_TIMESTAMP_PAD",
        TUPLES4
        + nest(
            c.CTA_TIMESTAMP,
            attr(c.CTA_TIMESTAMP_PAD, b""),
            be64(c.CTA_TIMESTAMP_START, 1_700_000_000_123_456_789),
            be64(c.CTA_TIMESTAMP_STOP, 1_700_000_060_000_000_000),
        ),
        BASE4._replace(start=1_700_000_000_123_456_789, stop=1_700_000_060_000_000_000),
    ),
    g(
        "timestamp start only",
        TUPLES4 + nest(c.CTA_TIMESTAMP, be64(c.CTA_TIMESTAMP_START, 1)),
        BASE4._replace(start=1),
    ),
    g(
        "labels, 16 bytes big-endian",
        TUPLES4 + attr(c.CTA_LABELS, (1 << 127 | 1 << 3).to_bytes(16, "big")),
        BASE4._replace(labels=1 << 127 | 1 << 3),
    ),
    g("labels all zero is 0", TUPLES4 + attr(c.CTA_LABELS, b"\0" * 16), BASE4._replace(labels=0)),
    g(
        "helper name",
        TUPLES4 + nest(c.CTA_HELP, cstring(c.CTA_HELP_NAME, "ftp")),
        BASE4._replace(helper="ftp"),
    ),
    g(
        "helper name without NUL, with CTA_HELP_INFO",
        TUPLES4 + nest(c.CTA_HELP, attr(c.CTA_HELP_NAME, b"sip"), attr(2, b"\0" * 8)),
        BASE4._replace(helper="sip"),
    ),
    g(
        "secctx",
        TUPLES4 + nest(c.CTA_SECCTX, cstring(c.CTA_SECCTX_NAME, "system_u:object_r:x_t:s0")),
        BASE4._replace(secctx="system_u:object_r:x_t:s0"),
    ),
    g(
        "TCP protoinfo: state beside wscale and flags",
        TUPLES4
        + nest(
            c.CTA_PROTOINFO,
            nest(
                c.CTA_PROTOINFO_TCP,
                u8(c.CTA_PROTOINFO_TCP_STATE, 3),
                u8(c.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, 7),
                u8(c.CTA_PROTOINFO_TCP_WSCALE_REPLY, 7),
                attr(c.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, b"\x23\x23"),
                attr(c.CTA_PROTOINFO_TCP_FLAGS_REPLY, b"\x23\x23"),
            ),
        ),
        BASE4._replace(state=3),
    ),
    g(
        "SCTP protoinfo",
        orig4(c.IPPROTO_SCTP)
        + reply4(c.IPPROTO_SCTP)
        + nest(
            c.CTA_PROTOINFO,
            nest(
                c.CTA_PROTOINFO_SCTP,
                u8(c.CTA_PROTOINFO_SCTP_STATE, 4),
                be32(c.CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, 1),
                be32(c.CTA_PROTOINFO_SCTP_VTAG_REPLY, 2),
            ),
        ),
        BASE4._replace(protonum=c.IPPROTO_SCTP, state=4),
    ),
    g(
        "DCCP protoinfo",
        orig4(c.IPPROTO_DCCP)
        + reply4(c.IPPROTO_DCCP)
        + nest(
            c.CTA_PROTOINFO,
            nest(c.CTA_PROTOINFO_DCCP, u8(c.CTA_PROTOINFO_DCCP_STATE, 4), u8(2, 1)),
        ),
        BASE4._replace(protonum=c.IPPROTO_DCCP, state=4),
    ),
    g(
        "protoinfo without a state",
        TUPLES4 + nest(c.CTA_PROTOINFO, nest(c.CTA_PROTOINFO_TCP, u8(2, 7))),
        BASE4,
    ),
    g(
        "IPv6 UDP",
        encode_tuple(c.CTA_TUPLE_ORIG, O6, V6, c.IPPROTO_UDP)
        + encode_tuple(c.CTA_TUPLE_REPLY, R6, V6, c.IPPROTO_UDP),
        Flow(V6, c.IPPROTO_UDP, O6, R6),
        V6,
    ),
    g(
        "ICMP echo",
        encode_tuple(c.CTA_TUPLE_ORIG, Tuple("10.0.0.1", "10.0.0.2", None, None, 8, 0, 77), V4, 1)
        + encode_tuple(
            c.CTA_TUPLE_REPLY, Tuple("10.0.0.2", "10.0.0.1", None, None, 0, 0, 77), V4, 1
        ),
        Flow(
            V4,
            c.IPPROTO_ICMP,
            Tuple("10.0.0.1", "10.0.0.2", icmp_type=8, icmp_code=0, icmp_id=77),
            Tuple("10.0.0.2", "10.0.0.1", icmp_type=0, icmp_code=0, icmp_id=77),
        ),
    ),
    g(
        "ICMPv6 echo (CTA_PROTO_ICMPV6_* types)",
        encode_tuple(
            c.CTA_TUPLE_ORIG, Tuple("::1", "::2", None, None, 128, 0, 4343), V6, c.IPPROTO_ICMPV6
        )
        + encode_tuple(
            c.CTA_TUPLE_REPLY, Tuple("::2", "::1", None, None, 129, 0, 4343), V6, c.IPPROTO_ICMPV6
        ),
        Flow(
            V6,
            c.IPPROTO_ICMPV6,
            Tuple("::1", "::2", icmp_type=128, icmp_code=0, icmp_id=4343),
            Tuple("::2", "::1", icmp_type=129, icmp_code=0, icmp_id=4343),
        ),
        V6,
    ),
    g(
        "GRE keys in the port attributes",
        orig4(c.IPPROTO_GRE, Tuple("192.0.2.1", "192.0.2.2", 1, 2))
        + reply4(c.IPPROTO_GRE, Tuple("192.0.2.2", "192.0.2.1", 2, 1)),
        Flow(
            V4,
            c.IPPROTO_GRE,
            Tuple("192.0.2.1", "192.0.2.2", 1, 2),
            Tuple("192.0.2.2", "192.0.2.1", 2, 1),
        ),
    ),
    g(
        "unknown protocol 99: no ports",
        orig4(99, Tuple("192.0.2.1", "192.0.2.2")) + reply4(99, Tuple("192.0.2.2", "192.0.2.1")),
        Flow(V4, 99, Tuple("192.0.2.1", "192.0.2.2"), Tuple("192.0.2.2", "192.0.2.1")),
    ),
    g(
        "tuple without addresses",
        tuple_nest(c.CTA_TUPLE_ORIG, b"", u8(c.CTA_PROTO_NUM, 6))
        + tuple_nest(c.CTA_TUPLE_REPLY, b"", b""),
        Flow(V4, 6, Tuple(None, None), Tuple(None, None)),
    ),
    g(
        "reply tuple without CTA_PROTO_NUM is fine (orig has it)",
        orig4() + reply4(None),
        BASE4,
    ),
    g(
        "reply before orig, scalars in between",
        be32(c.CTA_MARK, 1) + reply4() + be32(c.CTA_STATUS, 8) + orig4(),
        BASE4._replace(mark=1, status=8),
    ),
    g(
        "unknown top-level attributes ignored",
        attr(0, b"\1\2")
        + TUPLES4
        + attr(28, b"hello")
        + attr(0x3FFF, b"")
        + nest(300, attr(1, b"\0" * 4), nest(2, attr(1, b"x")))
        + be32(c.CTA_MARK, 5),
        BASE4._replace(mark=5),
    ),
    g(
        "known attributes the decoder does not use are ignored",
        TUPLES4
        + nest(c.CTA_NAT_SRC, be32(1, 0x0A000001))
        + nest(c.CTA_SEQ_ADJ_ORIG, be32(1, 1), be32(2, 2), be32(3, 3))
        + encode_tuple(c.CTA_TUPLE_MASTER, Tuple("10.9.9.9", "10.8.8.8", 1, 2), V4, 6)
        + be32(c.CTA_MARK_MASK, 0xFF)
        + be32(c.CTA_STATUS_MASK, 0xFF)
        + nest(c.CTA_SYNPROXY, be32(1, 5)),
        BASE4,
    ),
    g(
        "unknown attributes inside every nest ignored",
        encode_tuple(c.CTA_TUPLE_ORIG, O4, V4, 6, unknown=True)
        + encode_tuple(c.CTA_TUPLE_REPLY, R4, V4, 6, unknown=True)
        + nest(c.CTA_COUNTERS_ORIG, attr(9, b"\xff" * 8), be64(c.CTA_COUNTERS_BYTES, 9))
        + nest(c.CTA_TIMESTAMP, attr(9, b"\0"), be64(c.CTA_TIMESTAMP_START, 7))
        + nest(c.CTA_PROTOINFO, nest(9, u8(1, 200)), nest(c.CTA_PROTOINFO_TCP, u8(1, 2), u8(9, 9)))
        + nest(c.CTA_HELP, attr(7, b"zz"), cstring(c.CTA_HELP_NAME, "tftp")),
        BASE4._replace(orig_bytes=9, start=7, state=2, helper="tftp"),
    ),
    g(
        "unknown nested attribute inside CTA_TUPLE_IP ignored",
        tuple_nest(c.CTA_TUPLE_ORIG, ip4() + nest(9, attr(1, b"\0" * 4)), tcp_ports()) + reply4(),
        BASE4,
    ),
    g(
        "NLA_F_NET_BYTEORDER masked on scalars",
        encode_tuple(c.CTA_TUPLE_ORIG, O4, V4, 6, net_byteorder=True)
        + encode_tuple(c.CTA_TUPLE_REPLY, R4, V4, 6, net_byteorder=True)
        + be32(c.CTA_STATUS, 6, True)
        + be32(c.CTA_MARK, 9, True)
        + be16(c.CTA_ZONE, 2, True)
        + nest(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_PACKETS, 1, True)),
        BASE4._replace(status=6, mark=9, zone=2, orig_packets=1),
    ),
    g(
        "NLA_F_NET_BYTEORDER masked on nest types too",
        raw_attr(c.CTA_TUPLE_ORIG | NBO | NESTED, orig4()[4:])
        + raw_attr(c.CTA_TUPLE_REPLY | NBO, reply4()[4:]),
        BASE4,
    ),
    g(
        "nests without NLA_F_NESTED (older kernels)",
        encode_tuple(c.CTA_TUPLE_ORIG, O4, V4, 6, nested_flag=False)
        + encode_tuple(c.CTA_TUPLE_REPLY, R4, V4, 6, nested_flag=False)
        + attr(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_BYTES, 3)),
        BASE4._replace(orig_bytes=3),
    ),
    g("trailing 3 bytes shorter than a header: padding", TUPLES4 + b"\xff\xff\xff", BASE4),
    g(
        "last attribute unaligned, no padding after it",
        TUPLES4 + raw_attr(c.CTA_LABELS, b"\x05", pad=False),
        BASE4._replace(labels=5),
    ),
    g(
        "everything at once",
        encode_flow_message(
            family=V4,
            protonum=6,
            orig=O4,
            reply=R4,
            id=1,
            status=0xE,
            state=3,
            expires=100,
            mark=2,
            zone=7,
            use=1,
            orig_packets=10,
            orig_bytes=1000,
            reply_packets=20,
            reply_bytes=2000,
            start=5,
            stop=6,
            labels=1,
            helper="ftp",
            secctx="s",
        )[20:],
        Flow(V4, 6, O4, R4, 1, 0xE, 3, 100, 2, 7, 1, 10, 1000, 20, 2000, 5, 6, 1, "ftp", "s"),
    ),
]


@pytest.mark.parametrize("case", GOOD, ids=[case.id for case in GOOD])
def test_decode_flow_good(case: Good) -> None:
    assert decode_flow(case.attrs, 0, len(case.attrs), case.family) == case.expected


@pytest.mark.parametrize("case", GOOD, ids=[case.id for case in GOOD])
@pytest.mark.parametrize("msg_type", [CT_NEW, CT_GET, CT_DELETE], ids=["NEW", "GET", "DELETE"])
def test_decode_message_good(case: Good, msg_type: int) -> None:
    msg = flow_message(case.attrs, case.family, msg_type=msg_type, seq=7)
    (nlmsg_len,) = struct.unpack_from("=I", msg)  # the end a dump passes (Message.end)
    assert decode_message(msg, 0, nlmsg_len) == case.expected


@pytest.mark.parametrize("case", GOOD[:8], ids=[case.id for case in GOOD[:8]])
def test_decode_respects_bounds(case: Good) -> None:
    """The message sits in the middle of a bigger buffer: nothing outside off:end is read."""
    msg = flow_message(case.attrs, case.family)
    junk = b"\xff" * 13
    buf = junk + msg + junk
    assert decode_message(buf, len(junk), len(junk) + len(msg)) == case.expected


@pytest.mark.parametrize("case", GOOD, ids=[case.id for case in GOOD])
def test_fast_decoder_good(case: Good) -> None:
    """The dump decodes with FastDecoder: the first message teaches it the shape, later ones
    of that shape take the compiled path. Both must give the reference's Flow."""
    dec = FastDecoder()
    for _ in range(3):
        dec.begin()
        assert dec.decode(case.attrs, 0, len(case.attrs), case.family) == case.expected
        dec.end()


REPEATED_NESTS = {
    "CTA_SECCTX, then an empty one": nest(c.CTA_SECCTX, cstring(c.CTA_SECCTX_NAME, "x_t"))
    + nest(c.CTA_SECCTX),
    "CTA_HELP, then an empty one": nest(c.CTA_HELP, cstring(c.CTA_HELP_NAME, "ftp"))
    + nest(c.CTA_HELP),
    "CTA_HELP twice with names": nest(c.CTA_HELP, cstring(c.CTA_HELP_NAME, "ftp"))
    + nest(c.CTA_HELP, cstring(c.CTA_HELP_NAME, "sip")),
    "CTA_TIMESTAMP, then an empty one": nest(c.CTA_TIMESTAMP, be64(c.CTA_TIMESTAMP_START, 5))
    + nest(c.CTA_TIMESTAMP),
    "CTA_COUNTERS_ORIG, then an empty one": nest(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_BYTES, 5))
    + nest(c.CTA_COUNTERS_ORIG),
    "CTA_PROTOINFO, then an empty one": nest(
        c.CTA_PROTOINFO, nest(c.CTA_PROTOINFO_TCP, u8(c.CTA_PROTOINFO_TCP_STATE, 3))
    )
    + nest(c.CTA_PROTOINFO),
    "CTA_LABELS twice": attr(c.CTA_LABELS, b"\1" * 16) + attr(c.CTA_LABELS, b"\2" * 4),
}


@pytest.mark.parametrize("extra", list(REPEATED_NESTS.values()), ids=list(REPEATED_NESTS))
def test_fast_decoder_repeated_nests(extra: bytes) -> None:
    """A repeated attribute (a corrupt or crafted message; the kernel sends each once): the fast
    path must give what the reference gives, on the learning pass and on the compiled one."""
    attrs = TUPLES4 + be32(c.CTA_STATUS, 8) + extra
    expected = decode_flow(attrs, 0, len(attrs), V4)
    dec = FastDecoder()
    for _ in range(3):
        dec.begin()
        assert dec.decode(attrs, 0, len(attrs), V4) == expected
        dec.end()


def test_fast_decoder_cache_follows_the_table() -> None:
    """The decoder keeps exactly the last complete dump's decodes: a table whose flows all
    change every dump keeps no flow of an older dump, and a steady table keeps itself. A dump
    not ended (given up, or taken again) leaves what the last one kept."""
    dec = FastDecoder()
    per_dump = 500
    for dump in range(12):
        dec.begin()
        for i in range(per_dump):
            attrs = orig4(tup=O4._replace(sport=1024 + dump * per_dump + i)) + reply4()
            flow = dec.decode(attrs, 0, len(attrs), V4)
            assert flow.orig.sport == 1024 + dump * per_dump + i
        dec.end()
        # (the very first message teaches the shape: it is decoded, not kept)
        assert dec.cached == per_dump - (dump == 0)
        assert {f.orig.sport for f in dec.walk.flows if f} <= {
            1024 + dump * per_dump + i for i in range(per_dump)
        }
    # A steady table: the same flows every dump, the same objects.
    dec = FastDecoder()
    kept: list[Flow] = []
    for dump in range(6):
        dec.begin()
        flows = []
        for i in range(per_dump):
            attrs = orig4(tup=O4._replace(sport=1024 + i)) + reply4()
            flows.append(dec.decode(attrs, 0, len(attrs), V4))
        if dump == 4:
            continue  # given up: not ended
        dec.end()
        assert dec.cached == per_dump - (dump == 0)
        if dump >= 2:
            assert all(map(operator.is_, flows, kept))
        kept = flows


def test_fast_decoder_finds_the_last_decode_out_of_step() -> None:
    """The last dump's decodes are looked up at the walk's place: new flows in between, a run of
    vanished flows longer than the walk looks ahead, a dump in another order, duplicates — each
    message still decodes as the reference does, and what the last dump had is reused but for
    the few messages the walk misses before it knows it is lost (and turns to an index), and
    those it finds behind it."""
    from cttop.conntrack.decode import _LOOK_AHEAD, _LOST

    def message(i: int) -> bytes:
        return orig4(tup=O4._replace(sport=1024 + i)) + reply4() + be32(c.CTA_TIMEOUT, 60)

    dec = FastDecoder()
    dec.clock[0] = 1000.0

    def dump(ports: list[int]) -> dict[int, Flow]:
        dec.begin()
        got = {}
        for i in ports:
            m = message(i)
            got[i] = dec.decode(m, 0, len(m), V4)
            assert got[i] == decode_flow(m, 0, len(m), V4, 1000.0)
        dec.end()
        return got

    table = list(range(400))
    dump(table)
    last = dump(table)
    assert not dec.walk.lost

    def reused(got: dict[int, Flow]) -> int:
        return sum(got[i] is last[i] for i in got if i in last)

    # New flows here and there, and fewer vanished in a row than the walk looks ahead: in step.
    ports = [i for i in table if not 100 <= i < 100 + _LOOK_AHEAD - 1]
    for at, new in ((10, 1000), (50, 1001), (51, 1002), (300, 1003)):
        ports.insert(at, new)
    got = dump(ports)
    assert not dec.walk.lost
    assert reused(got) == len(ports) - 4
    last = got
    # A run of vanished flows longer than that: lost for a moment, then found by the index.
    ports = [i for i in ports if not 150 <= i < 250]
    got = dump(ports)
    assert dec.walk.lost
    assert reused(got) == len(ports) - (_LOST - 1)
    last = got
    # The whole dump in another order (a resized table), and a flow twice: the flows behind
    # where the walk found itself are decoded again; the next dump in that order is in step.
    ports = ports[::-1]
    ports.insert(100, ports[5])
    last = dump(ports)
    assert dec.walk.lost and dec.walk.index is None  # (let go with the dump)
    assert dec.cached == len(ports)
    got = dump(ports)
    assert not dec.walk.lost
    assert reused(got) == len(got)


def test_flows_given_the_same_seconds_left_in_a_dump_share_their_expiry() -> None:
    """One float per expiry value in a dump, whether the flow is new or a cached one whose
    counters moved; the table of them is empty between dumps."""
    dec = FastDecoder()
    flows = []
    for dump in range(3):
        dec.begin()
        dec.clock[0] = 1000.0 + dump
        flows = []
        for i in range(300):
            attrs = (
                orig4(tup=O4._replace(sport=1024 + i % 200))  # 200 flows, and 100 again
                + reply4()
                + be32(c.CTA_TIMEOUT, 30 + i % 3)
                + nest(
                    c.CTA_COUNTERS_ORIG,
                    be64(c.CTA_COUNTERS_PACKETS, dump),
                    be64(c.CTA_COUNTERS_BYTES, dump),
                )
            )
            flows.append(dec.decode(attrs, 0, len(attrs), V4))
        dec.end()
        assert dec.expiries == {}
    assert sorted({f.expires for f in flows}) == [1032.0, 1033.0, 1034.0]
    assert len({id(f.expires) for f in flows}) == 3


def test_fast_decoder_cache_of_a_busy_table_stays_near_its_size() -> None:
    """On a busy table, a third of the flows move between two dumps: each of those is the
    cached decode with its new counters (its tuples not decoded again), and the cache stays
    the table. A third replaced by new flows every dump (short DNS flows): the gone ones'
    decodes go with the dump that no longer brings them."""
    n = 32_000
    third = n // 3
    counters = [0] * n
    dec = FastDecoder()
    last: list[Flow] = []
    for dump in range(8):
        for i in range(dump * third, (dump + 1) * third):
            counters[i % n] += 1
        dec.begin()
        flows = []
        for i in range(n):
            attrs = (
                orig4(tup=O4._replace(sport=1024 + i))
                + reply4()
                + nest(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_PACKETS, counters[i]))
            )
            flow = dec.decode(attrs, 0, len(attrs), V4)
            assert flow == decode_flow(attrs, 0, len(attrs), V4, dec.clock[0])
            flows.append(flow)
        dec.end()
        if dump >= 2:  # (the very first message teaches the shape: it is not cached)
            assert dec.cached == n
            assert all(f.orig is g.orig for f, g in zip(flows, last, strict=True))
        last = flows
    sizes = []
    dec = FastDecoder()
    for dump in range(12):
        dec.begin()
        for i in range(dump * third, dump * third + n):
            attrs = orig4(tup=O4._replace(sport=1024 + i % 60_000)) + reply4()
            dec.decode(attrs, 0, len(attrs), V4)
        dec.end()
        sizes.append(dec.cached)
    assert sizes == [n - 1] + [n] * 11  # (the very first message teaches the shape)


def test_fast_decoder_reuses_only_what_differs_in_the_timeout() -> None:
    """A message equal to one decoded before but for the timeout's value is not decoded again:
    while the expiry it gives (receive time + timeout) is within SAME_EXPIRY of the cached
    flow's, the decode *is* the cached flow (the same object), whose seconds left then are the
    timeout received; further off, the cached fields with the new expiry. Counters that moved
    are read alone too: the cached fields with the new counters (a moving flow's tuples are
    not decoded again). Any other byte that differs — the status, the mark, the family — is
    decoded. Every result equals the reference's (but the reused expiry)."""

    def message(timeout: int, packets: int = 3, status: int = 8, mark: int = 1) -> bytes:
        return (
            TUPLES4
            + be32(c.CTA_STATUS, status)
            + be32(c.CTA_TIMEOUT, timeout)
            + be32(c.CTA_MARK, mark)
            + nest(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_PACKETS, packets))
        )

    def decode(dec: FastDecoder, msg: bytes, family: int = V4) -> Flow:
        """The message as a dump of its own."""
        dec.begin()
        try:
            return dec.decode(msg, 0, len(msg), family)
        finally:
            dec.end()

    dec = FastDecoder()
    dec.clock[0] = 1000.0
    decode(dec, message(100))  # teaches the shape (decoded by the reference: not kept)
    first = decode(dec, message(100))
    reference = decode_flow(message(100), 0, len(message(100)), V4, 1000.0)
    assert first == reference and first.expires == 1100.0
    calls = []
    shape = dec.shapes[len(message(100))][0]
    unpack = shape.run.__globals__["unpack"]  # type: ignore[attr-defined]
    shape.run.__globals__["unpack"] = lambda *a: calls.append(a) or unpack(*a)  # type: ignore[attr-defined]
    # The next dumps, an idle entry: whole seconds left (rounded down), stamped a little early
    # or late against the ticks of the timeout.
    for now, timeout in ((1001.0, 99), (1001.3, 99), (1000.7, 99), (1050.35, 50), (1099.9, 0)):
        dec.clock[0] = now
        assert decode(dec, message(timeout)) is first
        assert first.timeout_at(now) == timeout  # shown as if decoded now
    # A timer refreshed, or out of step with the ticks: the cached decode with the new expiry.
    for now, timeout in ((1000.5, 99), (1001.0, 99), (1002.0, 100), (2000.0, 2**32 - 1)):
        dec.clock[0] = now
        got = decode(dec, message(timeout))
        assert got == reference._replace(expires=now + timeout)
        assert got.orig is first.orig  # the cached decode, not a new one
    assert calls == []
    moved = message(98, packets=4)
    got = decode(dec, moved)
    assert got == decode_flow(moved, 0, len(moved), V4, 2000.0) and got.orig is first.orig
    assert decode(dec, moved) is got  # and that is the cached decode now
    assert dec.cached == 1  # in place of the last one, not beside it
    assert calls == []
    # The same bytes from another family (nfgen_family is not in them): decoded.
    m = message(97)
    assert decode(dec, m, V6) == decode_flow(m, 0, len(m), V6, 2000.0)
    assert len(calls) == 1
    variants = [message(98, status=10), message(98, mark=2)]
    for m in variants:
        assert decode(dec, m) == decode_flow(m, 0, len(m), V4, 2000.0)
    assert len(calls) == 1 + len(variants)


def _counters_nest(t: int, packets: int, nbytes: int, wide: bool = True) -> bytes:
    if wide:
        return nest(t, be64(c.CTA_COUNTERS_PACKETS, packets), be64(c.CTA_COUNTERS_BYTES, nbytes))
    return nest(t, be32(c.CTA_COUNTERS32_PACKETS, packets), be32(c.CTA_COUNTERS32_BYTES, nbytes))


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(
            lambda p: (
                TUPLES4
                + _counters_nest(c.CTA_COUNTERS_ORIG, p, 10 * p)
                + _counters_nest(c.CTA_COUNTERS_REPLY, 2 * p, 0)
            ),
            id="no timeout (offloaded)",
        ),
        pytest.param(
            lambda p: (
                TUPLES4
                + be32(c.CTA_TIMEOUT, 50)
                + _counters_nest(c.CTA_COUNTERS_ORIG, p, 10 * p, wide=False)
                + _counters_nest(c.CTA_COUNTERS_REPLY, 2 * p, 0, wide=False)
            ),
            id="32-bit counters",
        ),
        pytest.param(
            lambda p: (
                TUPLES4
                + be32(c.CTA_TIMEOUT, 50)
                + nest(c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_BYTES, 10))  # (replaced)
                + _counters_nest(c.CTA_COUNTERS_ORIG, p, 10 * p)
            ),
            id="orig counters twice",
        ),
        pytest.param(
            lambda p: (
                TUPLES4
                + be32(c.CTA_TIMEOUT, 50)
                + nest(
                    c.CTA_COUNTERS_ORIG,
                    be64(c.CTA_COUNTERS_BYTES, 10 * p),
                    be64(c.CTA_COUNTERS_PACKETS, p),
                )
            ),
            id="bytes before packets",
        ),
    ],
)
def test_fast_decoder_reads_moved_counters_into_the_cached_flow(
    layout: Callable[[int], bytes],
) -> None:
    """A flow whose counters moved is the cached decode with the counters read from the
    message, whatever their layout: the reference's values, the cached tuples, one cache
    entry per flow, and the same object again while nothing moves."""
    dec = FastDecoder()
    dec.clock[0] = 1000.0

    def decode(m: bytes) -> Flow:  # (a dump of its own)
        dec.begin()
        flow = dec.decode(m, 0, len(m), V4)
        dec.end()
        return flow

    decode(layout(1))  # (teaches the shape)
    first = decode(layout(1))
    for p in (2, 3, 3, 70000, 70000, 0):
        m = layout(p)
        got = decode(m)
        assert got == decode_flow(m, 0, len(m), V4, 1000.0)
        assert got.orig is first.orig and got[3] is first[3]  # (the reply as kept)
        assert decode(m) is got
        assert dec.cached == 1


def test_absent_is_none_not_zero() -> None:
    """Only the two tuples: every optional field is None (n/a), never 0; the zone is 0."""
    flow = decode_flow(TUPLES4, 0, len(TUPLES4), V4)
    optional = set(Flow._fields) - {"family", "protonum", "orig", "reply", "zone"}
    assert {name: getattr(flow, name) for name in optional} == dict.fromkeys(optional)
    assert flow.zone == 0
    assert flow.orig.zone is None and flow.reply.icmp_type is None


def test_decode_tuple_returns_protonum() -> None:
    body = orig4()[4:]
    assert decode_tuple(body, 0, len(body)) == (O4, c.IPPROTO_TCP)
    body = orig4(None)[4:]
    assert decode_tuple(body, 0, len(body)) == (O4, None)


# --- bad inputs -----------------------------------------------------------------------------


class Bad(NamedTuple):
    id: str
    msg: bytes  # a whole netlink message


def bad_attrs(id_: str, attrs: bytes) -> Bad:
    return Bad(id_, flow_message(attrs))


def _v4_ip(src: bytes) -> bytes:
    return attr(c.CTA_IP_V4_SRC, src)


def _nested_flag(a: bytes) -> bytes:
    """The same attribute with NLA_F_NESTED set in its type."""
    length, t = struct.unpack_from("=HH", a)
    return struct.pack("=HH", length, t | NESTED) + a[4:]


# Bad attribute lists (wrapped in a valid CT_NEW message).
BAD_ATTRS: list[Bad] = [
    # framing: attribute lengths
    bad_attrs("top-level attribute of length 0", TUPLES4 + raw_attr(c.CTA_MARK, b"", length=0)),
    *(
        bad_attrs(
            f"top-level attribute of length {n}", TUPLES4 + struct.pack("=HH", n, 8) + b"\0" * 4
        )
        for n in (1, 2, 3)
    ),
    bad_attrs(
        "top-level attribute one byte past the end",
        TUPLES4 + raw_attr(c.CTA_MARK, b"\0" * 4, length=9),
    ),
    bad_attrs("top-level length 0xffff", TUPLES4 + raw_attr(c.CTA_MARK, b"\0" * 4, length=0xFFFF)),
    bad_attrs(
        "length 0 inside the tuple nest",
        nest(c.CTA_TUPLE_ORIG, raw_attr(c.CTA_TUPLE_IP, b"", length=0)) + reply4(),
    ),
    bad_attrs(
        "length 2 inside CTA_TUPLE_IP",
        tuple_nest(c.CTA_TUPLE_ORIG, struct.pack("=HH", 2, 1) + b"\0" * 4, tcp_ports()) + reply4(),
    ),
    bad_attrs(
        "child overruns its nest (the message has room after it)",
        nest(c.CTA_COUNTERS_ORIG, raw_attr(c.CTA_COUNTERS_BYTES, b"\0" * 8, length=16)) + TUPLES4,
    ),
    bad_attrs(
        "address overruns CTA_TUPLE_IP",
        tuple_nest(c.CTA_TUPLE_ORIG, raw_attr(c.CTA_IP_V4_SRC, b"\1\2\3\4", length=12), tcp_ports())
        + reply4(),
    ),
    bad_attrs(
        "truncated nest: header claims more than the message holds",
        TUPLES4 + orig4()[:20],
    ),
    bad_attrs("truncated tuple nest is the whole message", orig4()[:-8]),
    # addresses
    bad_attrs(
        "IPv4 address of 3 bytes",
        tuple_nest(c.CTA_TUPLE_ORIG, _v4_ip(b"\1\2\3"), tcp_ports()) + reply4(),
    ),
    bad_attrs(
        "IPv4 address of 16 bytes",
        tuple_nest(c.CTA_TUPLE_ORIG, _v4_ip(b"\1" * 16), tcp_ports()) + reply4(),
    ),
    bad_attrs(
        "IPv6 address of 4 bytes",
        tuple_nest(c.CTA_TUPLE_ORIG, attr(c.CTA_IP_V6_DST, b"\1" * 4), tcp_ports()) + reply4(),
    ),
    bad_attrs(
        "IPv6 address of 0 bytes in the reply",
        orig4() + tuple_nest(c.CTA_TUPLE_REPLY, attr(c.CTA_IP_V6_SRC, b""), tcp_ports()),
    ),
    bad_attrs(
        "address with the nested flag",
        tuple_nest(c.CTA_TUPLE_ORIG, _nested_flag(_v4_ip(b"\1\2\3\4")), tcp_ports()) + reply4(),
    ),
    # scalars with the nested flag
    *(
        bad_attrs(f"{name} with the nested flag", TUPLES4 + _nested_flag(a))
        for name, a in [
            ("CTA_STATUS", be32(c.CTA_STATUS, 1)),
            ("CTA_TIMEOUT", be32(c.CTA_TIMEOUT, 1)),
            ("CTA_MARK", be32(c.CTA_MARK, 1)),
            ("CTA_ID", be32(c.CTA_ID, 1)),
            ("CTA_USE", be32(c.CTA_USE, 1)),
            ("CTA_ZONE", be16(c.CTA_ZONE, 1)),
        ]
    ),
    bad_attrs(
        "CTA_PROTO_NUM with the nested flag",
        tuple_nest(c.CTA_TUPLE_ORIG, ip4(), _nested_flag(u8(c.CTA_PROTO_NUM, 6))) + reply4(),
    ),
    bad_attrs(
        "CTA_PROTO_SRC_PORT with the nested flag",
        tuple_nest(
            c.CTA_TUPLE_ORIG,
            ip4(),
            u8(c.CTA_PROTO_NUM, 6) + _nested_flag(be16(c.CTA_PROTO_SRC_PORT, 1)),
        )
        + reply4(),
    ),
    bad_attrs(
        "CTA_TUPLE_ZONE with the nested flag",
        nest(c.CTA_TUPLE_ORIG, orig4()[4:], _nested_flag(be16(c.CTA_TUPLE_ZONE, 1))) + reply4(),
    ),
    bad_attrs(
        "CTA_COUNTERS_BYTES with the nested flag",
        TUPLES4 + nest(c.CTA_COUNTERS_ORIG, _nested_flag(be64(c.CTA_COUNTERS_BYTES, 1))),
    ),
    bad_attrs(
        "CTA_TIMESTAMP_START with the nested flag",
        TUPLES4 + nest(c.CTA_TIMESTAMP, _nested_flag(be64(c.CTA_TIMESTAMP_START, 1))),
    ),
    bad_attrs(
        "TCP state with the nested flag",
        TUPLES4 + nest(c.CTA_PROTOINFO, nest(c.CTA_PROTOINFO_TCP, _nested_flag(u8(1, 3)))),
    ),
    # scalars of the wrong size
    bad_attrs("CTA_STATUS of 2 bytes", TUPLES4 + attr(c.CTA_STATUS, b"\0\1")),
    bad_attrs("CTA_MARK of 8 bytes", TUPLES4 + attr(c.CTA_MARK, b"\0" * 8)),
    bad_attrs("CTA_ZONE of 4 bytes", TUPLES4 + attr(c.CTA_ZONE, b"\0" * 4)),
    bad_attrs(
        "CTA_COUNTERS_PACKETS of 4 bytes",
        TUPLES4 + nest(c.CTA_COUNTERS_ORIG, attr(c.CTA_COUNTERS_PACKETS, b"\0" * 4)),
    ),
    bad_attrs(
        "CTA_COUNTERS32_BYTES of 8 bytes",
        TUPLES4 + nest(c.CTA_COUNTERS_REPLY, attr(c.CTA_COUNTERS32_BYTES, b"\0" * 8)),
    ),
    bad_attrs(
        "CTA_PROTO_NUM of 2 bytes",
        tuple_nest(c.CTA_TUPLE_ORIG, ip4(), attr(c.CTA_PROTO_NUM, b"\0\6")) + reply4(),
    ),
    bad_attrs(
        "port of 1 byte",
        tuple_nest(c.CTA_TUPLE_ORIG, ip4(), u8(c.CTA_PROTO_NUM, 6) + attr(2, b"\1")) + reply4(),
    ),
    # missing pieces
    bad_attrs("no attributes at all", b""),
    bad_attrs("no tuples", be32(c.CTA_STATUS, 8) + be32(c.CTA_MARK, 1)),
    bad_attrs("no reply tuple", orig4() + be32(c.CTA_STATUS, 8)),
    bad_attrs("no orig tuple", reply4() + be32(c.CTA_STATUS, 8)),
    bad_attrs("orig tuple without CTA_PROTO_NUM", orig4(None) + reply4()),
    bad_attrs(
        "orig tuple without CTA_TUPLE_PROTO",
        nest(c.CTA_TUPLE_ORIG, nest(c.CTA_TUPLE_IP, ip4())) + reply4(),
    ),
    bad_attrs(
        "missing protocol number even with CTA_PROTO_NUM in the reply",
        orig4(None) + reply4(c.IPPROTO_TCP),
    ),
]

# Bad messages: the header itself is wrong.
BAD_MESSAGES: list[Bad] = [
    Bad("empty message", b""),
    Bad("4 bytes", b"\x14\0\0\0"),
    Bad("nlmsghdr only (16 bytes)", message(CT_NEW, 0, 0, b"")),
    Bad("19 bytes: nfgenmsg cut", message(CT_NEW, 0, 0, b"\2\0\0")[:19]),
    *(
        Bad(f"message type {t:#x}", flow_message(TUPLES4, msg_type=t))
        for t in (
            1,  # NLMSG_NOOP
            2,  # NLMSG_ERROR
            3,  # NLMSG_DONE
            (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET_STATS,
            (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET_STATS_CPU,
            (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET_CTRZERO,
            (2 << 8) | 0,  # NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_NEW
            0x0010,  # another family's first type
        )
    ),
]

BAD = BAD_ATTRS + BAD_MESSAGES


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_decode_message_bad(case: Bad) -> None:
    with pytest.raises(DecodeError):
        decode_message(case.msg, 0, len(case.msg))


@pytest.mark.parametrize("case", BAD_ATTRS, ids=[case.id for case in BAD_ATTRS])
def test_decode_flow_bad(case: Bad) -> None:
    """The same bodies straight into decode_flow (what ConntrackClient.dump calls)."""
    with pytest.raises(DecodeError):
        decode_flow(case.msg, 20, len(case.msg), V4)


@pytest.mark.parametrize("case", BAD_ATTRS, ids=[case.id for case in BAD_ATTRS])
def test_fast_decoder_bad(case: Bad) -> None:
    """FastDecoder refuses what the reference refuses, also after learning the good shape."""
    dec = FastDecoder()
    good = flow_message(TUPLES4 + be32(c.CTA_STATUS, 8))
    assert dec.decode(good, 20, len(good), V4) == BASE4._replace(status=8)
    for _ in range(2):
        with pytest.raises(DecodeError):
            dec.decode(case.msg, 20, len(case.msg), V4)


def test_decode_error_is_a_netlink_error() -> None:
    assert issubclass(DecodeError, NetlinkError)


def test_bad_corpus_base_is_good() -> None:
    """Sanity of the corpus itself: what the bad cases are built on decodes fine."""
    msg = flow_message(TUPLES4)
    assert decode_message(msg, 0, len(msg)) == BASE4
    body = tuple_nest(c.CTA_TUPLE_ORIG, ip4(), tcp_ports()) + reply4()
    assert decode_flow(body, 0, len(body), V4) == BASE4


# --- round trip -----------------------------------------------------------------------------


@settings(max_examples=600, deadline=None, database=None)
@given(flows())
def test_round_trip(x: tuple[dict, bytes]) -> None:
    fields, msg = x
    assert decode_message(msg, 0, len(msg)) == flow_of(fields)
    # deterministic encoder, and the decoder reads only buf[off:end]
    assert encode_flow_message(**fields) == msg
    buf = b"\x01" * 7 + msg + b"\xfe" * 9
    assert decode_message(buf, 7, 7 + len(msg)) == flow_of(fields)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(flows(), st.integers(1, 3))
def test_round_trip_trailing_padding(x: tuple[dict, bytes], n: int) -> None:
    """1-3 stray bytes after the last attribute are padding, not an error."""
    fields, msg = x
    msg += b"\xaa" * n
    assert decode_message(msg, 0, len(msg)) == flow_of(fields)


def test_ctgen_knobs_change_bytes_not_meaning() -> None:
    base = {
        "family": V4,
        "protonum": 6,
        "orig": O4,
        "reply": R4,
        "orig_packets": 1,
        "orig_bytes": 2,
        "start": 3,
        "state": 3,
    }
    variants = [
        {},
        {"counters32": True},
        {"counters_pad": True, "timestamp_pad": True},
        {"net_byteorder": True},
        {"nested_flag": False},
        {"zone_explicit": True},
        {"unknown": True},
        {"shuffle": 1},
    ]
    seen = set()
    for knobs in variants:
        msg = encode_flow_message(**base, **knobs)
        seen.add(msg)
        assert decode_message(msg, 0, len(msg)) == flow_of(base)
    assert len(seen) == len(variants)
    with pytest.raises(ValueError):
        encode_flow_message(**base | {"orig_bytes": 2**32}, counters32=True)
    with pytest.raises(TypeError):
        encode_flow_message(**base, colour="blue")
    assert ctgen.message_attr_offsets(encode_flow_message(**base))[0] == 20


def test_fast_decoder_tells_layouts_of_one_length_apart() -> None:
    """Messages of one length laid out differently (a zone, a mark or a status first: the same
    sizes in another order) each get their own shape; a message the first shape of its length
    does not fit goes on to the next, then to the reference decoder, which teaches a new one.
    Alternating them, every result is the reference's, on every pass."""
    layouts = [
        TUPLES4 + be32(c.CTA_STATUS, 8) + be32(c.CTA_MARK, 7),
        TUPLES4 + be32(c.CTA_MARK, 7) + be32(c.CTA_STATUS, 8),
        TUPLES4 + be32(c.CTA_USE, 2) + be32(c.CTA_STATUS, 8),
        TUPLES4 + be32(c.CTA_STATUS, 8) + be32(c.CTA_TIMEOUT, 30),
    ]
    assert len({len(m) for m in layouts}) == 1
    dec = FastDecoder()
    for _ in range(3):
        dec.begin()
        for m in layouts + layouts[::-1]:
            assert dec.decode(m, 0, len(m), V4) == decode_flow(m, 0, len(m), V4)
        dec.end()
    assert len(dec.shapes[len(layouts[0])]) == len(layouts)
    # The same, through the entry a dump loop calls directly.
    for m in layouts:
        run = dec.entries.get(len(m), dec.fallback)
        assert run(m, 0, len(m), V4) == decode_flow(m, 0, len(m), V4)


def test_the_layout_most_of_a_table_has_goes_first_in_its_chain() -> None:
    """Learned first, a rare layout would make every message of the common one of that length
    try it first. After a dump, the shapes of one length are ordered by how many flows each
    decoded in full, the dump loop's entry is the most used, and every layout still decodes exactly
    as the reference does, through the entry and on down the chain."""
    rare = TUPLES4 + be32(c.CTA_STATUS, 8) + be32(c.CTA_MARK, 7)

    def common(mark: int) -> bytes:
        return TUPLES4 + be32(c.CTA_MARK, mark) + be32(c.CTA_STATUS, 8)

    assert len(rare) == len(common(0))
    dec = FastDecoder()
    dec.begin()
    dec.decode(rare, 0, len(rare), V4)
    for mark in range(20):
        dec.decode(common(mark), 0, len(rare), V4)
    first = dec.entries[len(rare)]
    assert dec.shapes[len(rare)][0].run is first  # learned first, tried first so far
    dec.end()
    shapes = dec.shapes[len(rare)]
    # (The first message of each layout was decoded by the reference, which learned it.)
    assert [s.decoded for s in shapes] == [19, 0]
    assert [s.after for s in shapes] == [1, 2]
    assert dec.entries[len(rare)] is shapes[0].run is not first
    for _ in range(2):
        dec.begin()
        for m in (rare, common(3), common(99)):
            run = dec.entries.get(len(m), dec.fallback)
            assert run(m, 0, len(m), V4) == decode_flow(m, 0, len(m), V4)
        dec.end()
    assert dec.nshapes == 2


def test_a_message_of_another_layout_goes_down_its_chain_without_a_look_in_the_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where two layouts share a length, a message of the second is not at the first shape's
    place in the walk (its fingerprint there is never the first's): the first shape checks the
    layout before it looks the message up further on, and hands it on. A steady dump of both,
    mixed, is then found at its places, every flow reused, without one `seek`."""
    seeks: list[object] = []
    seek = _Walk.seek

    def counted(walk: _Walk, fp: object) -> int:
        seeks.append(fp)
        return seek(walk, fp)

    monkeypatch.setattr(_Walk, "seek", counted)

    def common(sport: int) -> bytes:
        tup = orig4(tup=O4._replace(sport=sport)) + reply4(tup=R4._replace(dport=sport))
        return tup + be32(c.CTA_MARK, 7) + be32(c.CTA_STATUS, 8)

    def rare(sport: int) -> bytes:
        tup = orig4(tup=O4._replace(sport=sport)) + reply4(tup=R4._replace(dport=sport))
        return tup + be32(c.CTA_STATUS, 8) + be32(c.CTA_MARK, 7)

    messages = [(rare if i % 3 == 2 or 40 <= i < 70 else common)(1000 + i) for i in range(90)]
    assert len({len(m) for m in messages}) == 1
    dec = FastDecoder()
    dumps = []
    for _ in range(3):
        dec.begin()
        dumps.append([dec.decode(m, 0, len(m), V4) for m in messages])
        dec.end()
        assert dumps[-1] == [decode_flow(m, 0, len(m), V4) for m in messages]
    assert len(dec.shapes[len(messages[0])]) == 2
    assert not dec.walk.lost
    seeks.clear()
    dec.begin()
    again = [dec.decode(m, 0, len(m), V4) for m in messages]
    dec.end()
    assert all(a is b for a, b in zip(again, dumps[-1], strict=True))
    assert seeks == []
    assert dec.cached == len(messages)


def test_both_decoders_keep_a_reply_only_where_it_is_not_the_original_mirrored() -> None:
    """A flow does not keep a reply that is its original mirrored (see `Flow.reply`): the
    reference and the fast decoder, learned or learning, give such a flow None in its place,
    and keep a NATed reply (one the shape learned from a mirrored one, too)."""
    timeout = be32(c.CTA_TIMEOUT, 60)
    nat = R4._replace(src="203.0.113.9")
    plain_msg = orig4() + reply4() + timeout
    nat_msg = orig4() + reply4(tup=nat) + timeout
    dec = FastDecoder()
    for _ in range(2):
        dec.begin()
        for m, reply, kept in ((plain_msg, R4, None), (nat_msg, nat, nat)):
            for got in (dec.decode(m, 0, len(m), V4), decode_flow(m, 0, len(m), V4)):
                assert got.reply == reply and got[3] == kept
        dec.end()
    assert dec.nshapes == 1 and dec.cached == 2


def test_layouts_of_one_length_that_split_alike_keep_their_own_flows() -> None:
    """Two layouts of one length with their timeout and counters at the same places give the
    same fingerprint to a message of either: each shape but the first of a length salts its
    fingerprints, so a message is never taken for the other layout's flow (whose fields mean
    something else, or which has another form), and no place of the last dump is left behind."""

    def tuples(sport: int) -> bytes:
        return orig4(tup=O4._replace(sport=sport)) + reply4(tup=R4._replace(dport=sport))

    def counters(t: int, packets: int, nbytes: int) -> bytes:
        return nest(t, be64(c.CTA_COUNTERS_PACKETS, packets), be64(c.CTA_COUNTERS_BYTES, nbytes))

    timeout = be32(c.CTA_TIMEOUT, 60)
    pairs = [
        # the counters' nests the other way round: orig and reply counters would swap
        (
            lambda sport, p: (
                tuples(sport)
                + timeout
                + counters(c.CTA_COUNTERS_REPLY, 1, 2)
                + counters(c.CTA_COUNTERS_ORIG, p, 100)
            ),
            lambda sport, p: (
                tuples(sport)
                + timeout
                + counters(c.CTA_COUNTERS_ORIG, p, 100)
                + counters(c.CTA_COUNTERS_REPLY, 1, 2)
            ),
        ),
        # labels (a long-form Flow) against status, mark and id (a short one)
        (
            lambda sport, p: (
                tuples(sport)
                + timeout
                + be32(c.CTA_STATUS, 8)
                + be32(c.CTA_MARK, p)
                + be32(c.CTA_ID, 5)
            ),
            lambda sport, p: tuples(sport) + timeout + attr(c.CTA_LABELS, bytes([p]) * 20),
        ),
    ]
    for first, second in pairs:
        assert len(first(1, 1)) == len(second(1, 1))
        dec = FastDecoder()
        for dump in range(4):
            dec.begin()
            messages = [first(1000 + i, 1) for i in range(4)] + [second(2000, 1), second(2001, 2)]
            for family in (V4, V6) if dump == 3 else (V4,):
                for m in messages:
                    got = dec.decode(m, 0, len(m), family)
                    assert got == decode_flow(m, 0, len(m), family, dec.clock[0])
            dec.end()
            # Every decode kept, in place, but the first of each layout (which taught it).
            assert dec.cached == [4, 6, 6, 12][dump]


def test_a_dropped_decoder_is_freed_without_the_collector() -> None:
    """The compiled shapes do not hold their decoder: a decoder dropped (a replaced client, a
    replay that starts over) is freed with its caches at once, not at the next full collection
    (which the heap policy runs every ten minutes)."""
    import gc
    import weakref

    dec = FastDecoder()
    for _ in range(2):
        dec.begin()
        for m in (TUPLES4 + be32(c.CTA_STATUS, 8), TUPLES4 + be32(c.CTA_MARK, 8)):
            dec.decode(m, 0, len(m), V4)
        dec.end()
    assert dec.nshapes == 2 and dec.cached == 2
    gone = weakref.ref(dec)
    was = gc.isenabled()
    gc.disable()
    try:
        del dec
        assert gone() is None
    finally:
        if was:
            gc.enable()


def test_flows_share_their_ports_status_and_mark_objects() -> None:
    """Ints over 256 are a new object each time struct unpacks them (28 bytes each, four ports
    a flow): the compiled decoders share one object per value, and the table that does it
    stays bounded."""
    from cttop.conntrack import decode as decode_module

    def msg(sport: int) -> bytes:
        return encode_flow_message(
            family=V4,
            protonum=6,
            orig=Tuple("10.0.0.1", "10.0.0.2", sport, 8443),
            reply=Tuple("10.0.0.2", "10.0.0.1", 8443, sport),
            status=0x18E,
            mark=70000,
            id=sport,
            expires=100,
        )

    dec = FastDecoder()
    dec.begin()
    got = [dec.decode(m, 20, len(m), V4) for m in map(msg, range(40000, 40010))]
    dec.end()
    for f, m in zip(got, map(msg, range(40000, 40010)), strict=True):
        assert f == decode_message(m, 0, len(m))
    # The reference decoder (the first message, the first of its tuple layout) shares too.
    assert len({id(f.orig.dport) for f in got} | {id(f.reply.sport) for f in got}) == 1
    assert len({id(f.status) for f in got}) == len({id(f.mark) for f in got}) == 1
    assert all(f.orig.sport is f.reply.dport for f in got)

    decode_module._INTS.update((i, i) for i in range(decode_module._INTS_MAX + 1))
    dec.begin()
    assert not decode_module._INTS  # over its bound: emptied before the next dump
    dec.end()


def test_a_32_bit_build_keys_fingerprints_by_their_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where hash() is 32 bits a collision in a 250k table is likely: the compiled shapes then
    fingerprint messages by the bytes themselves, and decode exactly as before."""
    from cttop.conntrack import decode as decode_module

    monkeypatch.setattr(decode_module, "_HASH_FINGERPRINTS", False)

    def cache_after_two_dumps(messages: list[bytes]) -> list[object]:
        dec = FastDecoder()
        for _ in range(2):
            dec.begin()
            for m in messages:
                assert dec.decode(m, 0, len(m), V4) == decode_flow(m, 0, len(m), V4)
            dec.end()
        assert len(dec.shapes[len(messages[0])]) == 1
        assert dec.cached == len(messages)
        return list(dec.walk.fps)[:-1]  # (but the end's)

    cache = cache_after_two_dumps(
        [TUPLES4 + be32(c.CTA_STATUS, 8) + be32(c.CTA_TIMEOUT, t) for t in (30, 20, 10)]
    )
    assert len(set(cache)) == 1 and all(isinstance(fp, bytes) for fp in cache)
    # With counters, the pieces around them: a tuple of bytes.
    cache = cache_after_two_dumps(
        [
            TUPLES4
            + be32(c.CTA_TIMEOUT, 30)
            + nest(
                c.CTA_COUNTERS_ORIG, be64(c.CTA_COUNTERS_PACKETS, p), be64(c.CTA_COUNTERS_BYTES, 9)
            )
            for p in (1, 2, 3)
        ]
    )
    assert len(set(cache)) == 1 and all(isinstance(fp, tuple) for fp in cache)
