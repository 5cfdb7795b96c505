"""Test-side ENCODER for ctnetlink flow messages, and hypothesis strategies built on it.

    msg = encode_flow_message(family=AF_INET, protonum=6, orig=Tuple(...), reply=Tuple(...),
                              status=..., orig_packets=..., counters32=True, ...)
    assert decode_message(msg, 0, len(msg)) == flow_of(fields)

`encode_flow_message(**fields)` takes every `Flow` field by name (absent/None fields are not
sent, exactly as the kernel omits them) plus encoding knobs that change the bytes but not the
meaning (see `ENCODING_KNOBS`): 32-bit counters, CTA_COUNTERS_PAD / CTA_TIMESTAMP_PAD, the
NLA_F_NET_BYTEORDER flag on scalars, nests without NLA_F_NESTED (pre-5.x kernels), an explicit
zone 0, unknown attributes sprinkled at every level, the top-level attribute order, and the
netlink header fields. `flow_of(fields)` is the `Flow` those fields describe.

The encoder is written from the kernel's layout (ctnetlink_fill_info and the l3/l4 tuple_to_nlattr
helpers), independently of `cttop.conntrack.client.encode_tuple`, on top of
`cttop.netlink.attr/nest/message` only.

`flows()` yields `(fields, message_bytes)`; `attr_offsets(buf, off, end)` lists the attribute
headers of a message (for mutation-based fuzzing).
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from hypothesis import strategies as st

from cttop.conntrack import const as c
from cttop.conntrack.decode import SAME_EXPIRY
from cttop.conntrack.model import Flow, Tuple
from cttop.netlink import (
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLA_HDR,
    NLM_F_MULTI,
    NLMSG_HDR,
    attr,
    message,
)

CT_NEW = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_NEW
CT_GET = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET
CT_DELETE = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_DELETE

FLOW_FIELDS: tuple[str, ...] = Flow._fields

# Knob name -> default. They change the bytes, never the decoded Flow.
ENCODING_KNOBS: dict[str, Any] = {
    "msg_type": CT_NEW,  # nlmsg_type
    "msg_flags": NLM_F_MULTI,  # nlmsg_flags
    "seq": 0,
    "pid": 0,
    "version": c.NFNETLINK_V0,  # nfgen version
    "res_id": 0,  # nfgen res_id
    "counters32": False,  # CTA_COUNTERS32_* (old u32 form) instead of u64
    "counters_pad": False,  # a CTA_COUNTERS_PAD attribute before the u64 counters
    "timestamp_pad": False,  # a CTA_TIMESTAMP_PAD attribute before the u64 timestamps
    "net_byteorder": False,  # NLA_F_NET_BYTEORDER on every big-endian scalar
    "nested_flag": True,  # NLA_F_NESTED on nests (old kernels did not set it)
    "zone_explicit": False,  # send CTA_ZONE even when it is 0
    "protoinfo_extras": True,  # wscale/flags/vtags/role next to the state
    "labels_len": 16,  # bytes of CTA_LABELS (the kernel sends 16)
    "unknown": False,  # unknown / ignored attributes at every nesting level
    "shuffle": None,  # seed: shuffle the top-level attributes (None: kernel order)
    "extra": b"",  # raw bytes appended after the attributes
}

_PORT_PROTOS = frozenset(
    {c.IPPROTO_TCP, c.IPPROTO_UDP, c.IPPROTO_UDPLITE, c.IPPROTO_SCTP, c.IPPROTO_DCCP, c.IPPROTO_GRE}
)
_ICMP_PROTOS = frozenset({c.IPPROTO_ICMP, c.IPPROTO_ICMPV6})
_PROTOINFO_KIND = {
    c.IPPROTO_TCP: c.CTA_PROTOINFO_TCP,
    c.IPPROTO_SCTP: c.CTA_PROTOINFO_SCTP,
    c.IPPROTO_DCCP: c.CTA_PROTOINFO_DCCP,
}


# --- small encoders -------------------------------------------------------------------------


def nfgen(family: int, version: int = c.NFNETLINK_V0, res_id: int = 0) -> bytes:
    """struct nfgenmsg: family, version, res_id (big-endian)."""
    return struct.pack("=BB", family, version) + struct.pack(">H", res_id)


def raw_attr(nla_type: int, value: bytes, length: int | None = None, pad: bool = True) -> bytes:
    """An attribute with an arbitrary (possibly lying) length field; type used verbatim."""
    real = NLA_HDR.size + len(value)
    out = NLA_HDR.pack(real if length is None else length, nla_type) + value
    return out + b"\0" * ((-real) % 4) if pad else out


def _nest(nla_type: int, children: Iterable[bytes], flag: bool = True) -> bytes:
    return attr(nla_type, b"".join(children), nested=flag)


def _scalar(nla_type: int, value: bytes, net_byteorder: bool) -> bytes:
    return attr(nla_type | (NLA_F_NET_BYTEORDER if net_byteorder else 0), value)


def u8(nla_type: int, v: int, nbo: bool = False) -> bytes:
    return _scalar(nla_type, struct.pack("B", v), nbo)


def be16(nla_type: int, v: int, nbo: bool = False) -> bytes:
    return _scalar(nla_type, struct.pack(">H", v), nbo)


def be32(nla_type: int, v: int, nbo: bool = False) -> bytes:
    return _scalar(nla_type, struct.pack(">I", v), nbo)


def be64(nla_type: int, v: int, nbo: bool = False) -> bytes:
    return _scalar(nla_type, struct.pack(">Q", v), nbo)


def cstring(nla_type: int, text: str) -> bytes:
    return attr(nla_type, text.encode() + b"\0")


def flow_message(
    attrs: bytes,
    family: int = c.AF_INET,
    msg_type: int = CT_NEW,
    flags: int = NLM_F_MULTI,
    seq: int = 0,
    pid: int = 0,
) -> bytes:
    """nlmsghdr + nfgenmsg + the given (already encoded) attributes."""
    return message(msg_type, flags, seq, nfgen(family) + attrs, pid)


def with_seq(msg: bytes, seq: int) -> bytes:
    """The same netlink message with another nlmsg_seq."""
    return msg[:8] + struct.pack("=I", seq) + msg[12:]


# --- tuples ---------------------------------------------------------------------------------


def encode_tuple(
    nla_type: int,
    tup: Tuple,
    family: int,
    protonum: int | None,
    *,
    net_byteorder: bool = False,
    nested_flag: bool = True,
    unknown: bool = False,
) -> bytes:
    """A CTA_TUPLE_{ORIG,REPLY,MASTER} nest (CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE).

    protonum None leaves CTA_PROTO_NUM out (for the "missing protocol number" cases).
    """
    nbo = net_byteorder
    if family == c.AF_INET6:
        af, src_t, dst_t = socket.AF_INET6, c.CTA_IP_V6_SRC, c.CTA_IP_V6_DST
    else:
        af, src_t, dst_t = socket.AF_INET, c.CTA_IP_V4_SRC, c.CTA_IP_V4_DST
    ip = []
    if tup.src is not None:
        ip.append(_scalar(src_t, socket.inet_pton(af, tup.src), nbo))
    if tup.dst is not None:
        ip.append(_scalar(dst_t, socket.inet_pton(af, tup.dst), nbo))
    if unknown:
        ip.append(attr(9, b"\xde\xad\xbe\xef"))  # unknown CTA_IP_* (not nested)
    proto = []
    if protonum is not None:
        proto.append(u8(c.CTA_PROTO_NUM, protonum))
    if tup.sport is not None:
        proto.append(be16(c.CTA_PROTO_SRC_PORT, tup.sport, nbo))
    if tup.dport is not None:
        proto.append(be16(c.CTA_PROTO_DST_PORT, tup.dport, nbo))
    v6 = protonum == c.IPPROTO_ICMPV6
    if tup.icmp_id is not None:
        proto.append(be16(c.CTA_PROTO_ICMPV6_ID if v6 else c.CTA_PROTO_ICMP_ID, tup.icmp_id, nbo))
    if tup.icmp_type is not None:
        proto.append(u8(c.CTA_PROTO_ICMPV6_TYPE if v6 else c.CTA_PROTO_ICMP_TYPE, tup.icmp_type))
    if tup.icmp_code is not None:
        proto.append(u8(c.CTA_PROTO_ICMPV6_CODE if v6 else c.CTA_PROTO_ICMP_CODE, tup.icmp_code))
    if unknown:
        proto.append(attr(15, b"\x01\x02\x03"))  # unknown CTA_PROTO_*
        proto.append(_nest(16, [attr(1, b"\0" * 4)]))  # unknown nested CTA_PROTO_*
    parts = [_nest(c.CTA_TUPLE_IP, ip, nested_flag), _nest(c.CTA_TUPLE_PROTO, proto, nested_flag)]
    if tup.zone is not None:
        parts.append(be16(c.CTA_TUPLE_ZONE, tup.zone, nbo))
    if unknown:
        parts.append(attr(10, b"x"))  # unknown CTA_TUPLE_*
    return _nest(nla_type, parts, nested_flag)


# --- the whole flow -------------------------------------------------------------------------


def _as_tuple(value: Tuple | Mapping[str, Any]) -> Tuple:
    return value if isinstance(value, Tuple) else Tuple(**value)


def flow_of(fields: Mapping[str, Any]) -> Flow:
    """The Flow that `encode_flow_message(**fields)` describes (knobs dropped)."""
    kw = {k: v for k, v in fields.items() if k in FLOW_FIELDS}
    kw["orig"] = _as_tuple(kw["orig"])
    kw["reply"] = _as_tuple(kw["reply"])
    return Flow(**kw)


def _counters(
    nla_type: int, packets: int | None, nbytes: int | None, k: Mapping[str, Any]
) -> bytes:
    nbo = k["net_byteorder"]
    out = []
    if k["counters32"]:
        for v in (packets, nbytes):
            if v is not None and v > 0xFFFFFFFF:
                raise ValueError(f"counter {v} does not fit CTA_COUNTERS32_*")
        if packets is not None:
            out.append(be32(c.CTA_COUNTERS32_PACKETS, packets, nbo))
        if nbytes is not None:
            out.append(be32(c.CTA_COUNTERS32_BYTES, nbytes, nbo))
    else:
        for t, v in ((c.CTA_COUNTERS_PACKETS, packets), (c.CTA_COUNTERS_BYTES, nbytes)):
            if v is None:
                continue
            if k["counters_pad"]:  # what nla_put_be64() adds to align the u64
                out.append(attr(c.CTA_COUNTERS_PAD, b""))
            out.append(be64(t, v, nbo))
    if k["unknown"]:
        out.append(attr(9, b"\xff" * 8))
    return _nest(nla_type, out, k["nested_flag"])


def _protoinfo(protonum: int, state: int, k: Mapping[str, Any]) -> bytes:
    nbo, extras = k["net_byteorder"], k["protoinfo_extras"]
    kind = _PROTOINFO_KIND.get(protonum, c.CTA_PROTOINFO_TCP)
    inner = [u8(1, state)]  # CTA_PROTOINFO_{TCP,DCCP,SCTP}_STATE are all type 1, u8
    if extras and kind == c.CTA_PROTOINFO_TCP:
        inner += [
            u8(c.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, 7),
            u8(c.CTA_PROTOINFO_TCP_WSCALE_REPLY, 9),
            attr(c.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, b"\x23\x23"),  # struct nf_ct_tcp_flags
            attr(c.CTA_PROTOINFO_TCP_FLAGS_REPLY, b"\x33\x33"),
        ]
    elif extras and kind == c.CTA_PROTOINFO_SCTP:
        inner += [
            be32(c.CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, 0x01020304, nbo),
            be32(c.CTA_PROTOINFO_SCTP_VTAG_REPLY, 0x05060708, nbo),
        ]
    elif extras and kind == c.CTA_PROTOINFO_DCCP:
        inner += [
            u8(c.CTA_PROTOINFO_DCCP_ROLE, 1),
            attr(4, b""),  # CTA_PROTOINFO_DCCP_PAD
            be64(3, 0x1122334455, nbo),  # CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ
        ]
    children = [_nest(kind, inner, k["nested_flag"])]
    if k["unknown"]:
        children.append(_nest(9, [attr(1, b"\x01")]))
    return _nest(c.CTA_PROTOINFO, children, k["nested_flag"])


def _unknown_top(k: Mapping[str, Any], family: int, protonum: int, orig: Tuple) -> list[bytes]:
    """Attributes the decoder must skip: unknown types, and known ones it does not use."""
    nf = k["nested_flag"]
    return [
        attr(0, b"\x00\x01"),  # CTA_UNSPEC
        attr(28, b"\x01\x02\x03\x04\x05"),  # newer than CTA_TIMESTAMP_EVENT
        attr(0x3FFF, b""),  # the largest type there is
        _nest(200, [attr(1, b"\0" * 4), _nest(2, [attr(1, b"a")], nf)], nf),
        _nest(c.CTA_NAT_SRC, [be32(1, 0x0A000001)], nf),  # CTA_NAT_V4_MINIP
        _nest(c.CTA_SEQ_ADJ_ORIG, [be32(1, 1), be32(2, 2), be32(3, 3)], nf),
        encode_tuple(c.CTA_TUPLE_MASTER, orig, family, protonum, nested_flag=nf),
        be32(c.CTA_MARK_MASK, 0xFFFF),
        _nest(c.CTA_SYNPROXY, [be32(1, 5)], nf),
    ]


def encode_flow_attrs(**fields: Any) -> bytes:
    """The attributes of a flow message (what follows nfgenmsg), in the kernel's order."""
    unknown_keys = set(fields) - set(FLOW_FIELDS) - set(ENCODING_KNOBS)
    if unknown_keys:
        raise TypeError(f"unknown fields: {sorted(unknown_keys)}")
    k = {**ENCODING_KNOBS, **{n: v for n, v in fields.items() if n in ENCODING_KNOBS}}
    f = flow_of({"zone": 0, **{n: v for n, v in fields.items() if n in FLOW_FIELDS}})
    nbo, nf = k["net_byteorder"], k["nested_flag"]
    tuple_kw = {"net_byteorder": nbo, "nested_flag": nf, "unknown": k["unknown"]}
    parts: list[bytes] = [
        encode_tuple(c.CTA_TUPLE_ORIG, f.orig, f.family, f.protonum, **tuple_kw),
        encode_tuple(c.CTA_TUPLE_REPLY, f.reply, f.family, f.protonum, **tuple_kw),
    ]
    if f.zone or k["zone_explicit"]:
        parts.append(be16(c.CTA_ZONE, f.zone, nbo))
    if f.status is not None:
        parts.append(be32(c.CTA_STATUS, f.status, nbo))
    if f.expires is not None:  # a flow decoded at time 0: its expiry is the timeout
        parts.append(be32(c.CTA_TIMEOUT, int(f.expires), nbo))
    if f.orig_packets is not None or f.orig_bytes is not None:
        parts.append(_counters(c.CTA_COUNTERS_ORIG, f.orig_packets, f.orig_bytes, k))
    if f.reply_packets is not None or f.reply_bytes is not None:
        parts.append(_counters(c.CTA_COUNTERS_REPLY, f.reply_packets, f.reply_bytes, k))
    if f.start is not None or f.stop is not None:
        ts = []
        for t, v in ((c.CTA_TIMESTAMP_START, f.start), (c.CTA_TIMESTAMP_STOP, f.stop)):
            if v is None:
                continue
            if k["timestamp_pad"]:
                ts.append(attr(c.CTA_TIMESTAMP_PAD, b""))
            ts.append(be64(t, v, nbo))
        if k["unknown"]:
            ts.append(attr(9, b"\0" * 8))
        parts.append(_nest(c.CTA_TIMESTAMP, ts, nf))
    if f.state is not None:
        parts.append(_protoinfo(f.protonum, f.state, k))
    if f.helper is not None:
        help_ = [cstring(c.CTA_HELP_NAME, f.helper)]
        if k["unknown"]:
            help_.append(attr(2, b"\0" * 4))  # CTA_HELP_INFO
        parts.append(_nest(c.CTA_HELP, help_, nf))
    if f.mark is not None:
        parts.append(be32(c.CTA_MARK, f.mark, nbo))
    if f.secctx is not None:
        parts.append(_nest(c.CTA_SECCTX, [cstring(c.CTA_SECCTX_NAME, f.secctx)], nf))
    if f.labels is not None:
        parts.append(attr(c.CTA_LABELS, f.labels.to_bytes(k["labels_len"], "big")))
    if f.id is not None:
        parts.append(be32(c.CTA_ID, f.id, nbo))
    if f.use is not None:
        parts.append(be32(c.CTA_USE, f.use, nbo))
    if k["unknown"]:
        parts += _unknown_top(k, f.family, f.protonum, f.orig)
    if k["shuffle"] is not None:
        random.Random(k["shuffle"]).shuffle(parts)
    return b"".join(parts) + k["extra"]


def encode_flow_message(**fields: Any) -> bytes:
    """A complete IPCTNL_MSG_CT_NEW-shaped netlink message (nlmsghdr + nfgenmsg + attributes).

    Required: family, protonum, orig, reply (Tuple or dict). Every other Flow field is optional
    (None/absent: not sent). Encoding knobs: see ENCODING_KNOBS.
    """
    k = {**ENCODING_KNOBS, **{n: v for n, v in fields.items() if n in ENCODING_KNOBS}}
    payload = nfgen(fields["family"], k["version"], k["res_id"]) + encode_flow_attrs(**fields)
    return message(k["msg_type"], k["msg_flags"], k["seq"], payload, k["pid"])


# --- walking (tolerant, for mutation) -------------------------------------------------------


def attr_offsets(buf: bytes | bytearray, off: int, end: int) -> list[int]:
    """Offsets of every attribute header in buf[off:end], descending into NLA_F_NESTED ones.

    Tolerant: stops a level at the first header that does not fit.
    """
    out: list[int] = []
    end = min(end, len(buf))
    while end - off >= 4:
        length, t = NLA_HDR.unpack_from(buf, off)
        if length < 4 or off + length > end:
            break
        out.append(off)
        if t & NLA_F_NESTED:
            out += attr_offsets(buf, off + 4, off + length)
        off += (length + 3) & ~3
    return out


def message_attr_offsets(msg: bytes | bytearray) -> list[int]:
    """attr_offsets of a whole flow message (after nlmsghdr + nfgenmsg)."""
    return attr_offsets(msg, NLMSG_HDR.size + 4, len(msg))


def iter_messages(datagram: bytes) -> Iterator[bytes]:
    """The messages of a well-formed datagram (test helper, no checks)."""
    off = 0
    while off + NLMSG_HDR.size <= len(datagram):
        (length,) = struct.unpack_from("=I", datagram, off)
        yield datagram[off : off + length]
        off += (length + 3) & ~3


# --- hypothesis strategies ------------------------------------------------------------------

u8s = st.integers(0, 0xFF)
u16s = st.integers(0, 0xFFFF)
u32s = st.integers(0, 0xFFFFFFFF)
u64s = st.integers(0, 0xFFFFFFFFFFFFFFFF)
# Strategies are built once here: building them inside a composite costs more than drawing.
_opt_u8s, _opt_u16s, _opt_u32s, _opt_u64s = (st.none() | s for s in (u8s, u16s, u32s, u64s))
_bools = st.booleans()
_ADDR = {
    c.AF_INET: st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(2, b)),
    c.AF_INET6: st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(10, b)),
}
# Mostly present; sometimes absent (the decoder must leave None, not invent a value).
_MAYBE_ADDR = {f: st.one_of(a, a, a, st.none()) for f, a in _ADDR.items()}
_TUPLE_ZONE = st.one_of(st.none(), st.none(), st.none(), u16s)
_FAMILIES = st.sampled_from([c.AF_INET, c.AF_INET6])
_KNOWN = [c.IPPROTO_TCP, c.IPPROTO_UDP, c.IPPROTO_SCTP, c.IPPROTO_DCCP, c.IPPROTO_GRE]
_PROTONUMS = {
    c.AF_INET: st.sampled_from([*_KNOWN, c.IPPROTO_UDPLITE, c.IPPROTO_ICMP]) | u8s,
    c.AF_INET6: st.sampled_from([*_KNOWN, c.IPPROTO_UDPLITE, c.IPPROTO_ICMPV6]) | u8s,
}
_STATES = st.none() | st.integers(0, 12) | u8s
_ZONES = st.sampled_from([0, 0, 0]) | u16s
_LABELS = st.none() | st.integers(0, 2**128 - 1)
_NAMES = st.none() | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=24
)
_MSG_TYPES = st.sampled_from([CT_NEW, CT_NEW, CT_GET, CT_DELETE])
_MSG_FLAGS = st.sampled_from([NLM_F_MULTI, 0, NLM_F_MULTI | 0x10])
_SHUFFLE = st.none() | st.integers(0, 2**16)


def addresses(family: int) -> st.SearchStrategy[str]:
    """Address text as inet_ntop writes it (the decoder's canonical form)."""
    return _ADDR[family]


@st.composite
def tuples(draw: st.DrawFn, family: int, protonum: int) -> Tuple:
    src = draw(_MAYBE_ADDR[family])
    dst = draw(_MAYBE_ADDR[family])
    sport = dport = itype = icode = iid = None
    if protonum in _PORT_PROTOS:
        sport, dport = draw(u16s), draw(u16s)
    elif protonum in _ICMP_PROTOS:
        itype, icode, iid = draw(u8s), draw(u8s), draw(u16s)
    elif draw(_bools):  # an unknown protocol may still carry anything
        sport, dport = draw(_opt_u16s), draw(_opt_u16s)
        itype, icode, iid = draw(_opt_u8s), draw(_opt_u8s), draw(_opt_u16s)
    return Tuple(src, dst, sport, dport, itype, icode, iid, draw(_TUPLE_ZONE))


@st.composite
def flow_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for encode_flow_message: Flow fields + random encoding knobs."""
    family = draw(_FAMILIES)
    protonum = draw(_PROTONUMS[family])
    counters32 = draw(_bools)
    counter = _opt_u32s if counters32 else _opt_u64s
    state = draw(_STATES) if protonum in _PROTOINFO_KIND else None
    zone = draw(_ZONES)
    fields: dict[str, Any] = {
        "family": family,
        "protonum": protonum,
        "orig": draw(tuples(family, protonum)),
        "reply": draw(tuples(family, protonum)),
        "id": draw(_opt_u32s),
        "status": draw(_opt_u32s),
        "state": state,
        "expires": draw(_opt_u32s),
        "mark": draw(_opt_u32s),
        "zone": zone,
        "use": draw(_opt_u32s),
        "orig_packets": draw(counter),
        "orig_bytes": draw(counter),
        "reply_packets": draw(counter),
        "reply_bytes": draw(counter),
        "start": draw(_opt_u64s),
        "stop": draw(_opt_u64s),
        "labels": draw(_LABELS),
        "helper": draw(_NAMES),
        "secctx": draw(_NAMES),
        # knobs
        "msg_type": draw(_MSG_TYPES),
        "msg_flags": draw(_MSG_FLAGS),
        "seq": draw(u32s),
        "pid": draw(u32s),
        "res_id": draw(u16s),
        "counters32": counters32,
        "counters_pad": draw(_bools),
        "timestamp_pad": draw(_bools),
        "net_byteorder": draw(_bools),
        "nested_flag": draw(_bools),
        "zone_explicit": zone == 0 and draw(_bools),
        "protoinfo_extras": draw(_bools),
        "unknown": draw(_bools),
        "shuffle": draw(_SHUFFLE),
    }
    return fields


@st.composite
def flows(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """(fields, message bytes): decode_message(bytes) must equal flow_of(fields)."""
    fields = draw(flow_fields())
    return fields, encode_flow_message(**fields)


# --- plain random flows (no hypothesis), for fixed corpora -----------------------------------


def random_flow_fields(rng: random.Random) -> dict[str, Any]:
    """Like `flow_fields()`, drawn from a seeded `random.Random`: a fixed corpus of valid
    messages costs nothing per fuzz example."""

    def maybe(value: Any, p: float = 0.8) -> Any:
        return value if rng.random() < p else None

    family = rng.choice([c.AF_INET, c.AF_INET6])
    icmp = c.IPPROTO_ICMP if family == c.AF_INET else c.IPPROTO_ICMPV6
    protonum = rng.choice([*_KNOWN, c.IPPROTO_UDPLITE, icmp, rng.randrange(256)])
    size = 4 if family == c.AF_INET else 16

    def tup() -> Tuple:
        def addr() -> str | None:
            return maybe(socket.inet_ntop(family, rng.randbytes(size)), 0.9)

        if protonum in _PORT_PROTOS:
            l4: tuple[int | None, ...] = (rng.randrange(65536), rng.randrange(65536), None, None)
            l4 += (None,)
        elif protonum in _ICMP_PROTOS:
            l4 = (None, None, rng.randrange(256), rng.randrange(256), rng.randrange(65536))
        else:
            l4 = (None,) * 5
        return Tuple(addr(), addr(), *l4, maybe(rng.randrange(65536), 0.1))  # type: ignore[arg-type]

    counters32 = rng.random() < 0.3
    top = 2**32 if counters32 else 2**64
    zone = rng.choice([0, 0, 0, rng.randrange(65536)])
    return {
        "family": family,
        "protonum": protonum,
        "orig": tup(),
        "reply": tup(),
        "id": maybe(rng.randrange(2**32)),
        "status": maybe(rng.randrange(2**32)),
        "state": maybe(rng.randrange(12)) if protonum in _PROTOINFO_KIND else None,
        "expires": maybe(rng.randrange(2**32)),
        "mark": maybe(rng.randrange(2**32)),
        "zone": zone,
        "use": maybe(rng.randrange(2**32)),
        "orig_packets": maybe(rng.randrange(top)),
        "orig_bytes": maybe(rng.randrange(top)),
        "reply_packets": maybe(rng.randrange(top)),
        "reply_bytes": maybe(rng.randrange(top)),
        "start": maybe(rng.randrange(2**64), 0.3),
        "stop": maybe(rng.randrange(2**64), 0.1),
        "labels": maybe(rng.randrange(2**128), 0.2),
        "helper": maybe(rng.choice(["ftp", "sip", "tftp", "", "h\u00e9"]), 0.2),
        "secctx": maybe("system_u:object_r:unlabeled_t:s0", 0.1),
        "counters32": counters32,
        "counters_pad": rng.random() < 0.5,
        "timestamp_pad": rng.random() < 0.5,
        "net_byteorder": rng.random() < 0.2,
        "nested_flag": rng.random() < 0.8,
        "zone_explicit": zone == 0 and rng.random() < 0.2,
        "protoinfo_extras": rng.random() < 0.7,
        "unknown": rng.random() < 0.3,
        "shuffle": maybe(rng.randrange(2**16), 0.2),
        "msg_type": rng.choice([CT_NEW, CT_NEW, CT_GET, CT_DELETE]),
    }


def corpus(n: int, seed: int = 0) -> list[tuple[dict[str, Any], bytes]]:
    """n (fields, message) pairs, the same on every run."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        fields = random_flow_fields(rng)
        out.append((fields, encode_flow_message(**fields)))
    return out


def decoded_alike(fast: object, ref: object) -> bool:
    """What FastDecoder returned is what decode_flow returned (a Flow, or the same refusal),
    but an expiry may be the one a cached decode has, within SAME_EXPIRY of the reference's:
    an entry that differs only in its timeout's value decodes to the cached Flow itself."""
    if fast == ref:
        return True
    if not isinstance(fast, Flow) or not isinstance(ref, Flow):
        return False
    if len(fast) != len(ref):  # (`_replace` below would make both the canonical form)
        return False
    if fast.expires is None or ref.expires is None:
        return False
    if fast._replace(expires=ref.expires) != ref:
        return False
    return abs(fast.expires - ref.expires) < SAME_EXPIRY
