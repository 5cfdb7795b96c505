"""ctnetlink message bytes -> `Flow`: the hot path of every poll.

Walks attributes with `struct.unpack_from` over the received datagram (no slicing copies).
Tolerant: unknown attributes are ignored, absent ones stay None. Intolerant of broken framing:
anything that does not follow the rules raises `DecodeError`, which callers count and skip.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from cttop.conntrack import const as c
from cttop.conntrack.model import Flow, Tuple
from cttop.netlink import NFGENMSG, NLA_F_NESTED, NLA_TYPE_MASK, NLMSG_HDR, NetlinkError


class DecodeError(NetlinkError):
    """A conntrack message that cannot be decoded; the dump skips it and counts it."""


_HDR: Final = struct.Struct("=HH").unpack_from
_U8: Final = struct.Struct("B").unpack_from
_BE16: Final = struct.Struct(">H").unpack_from
_BE32: Final = struct.Struct(">I").unpack_from
_BE64: Final = struct.Struct(">Q").unpack_from
_NLMSG: Final = NLMSG_HDR.unpack_from
_NFGEN: Final = NFGENMSG.unpack_from

# CTA_* message types this module decodes as flows (new/update and the dump's replies).
_CT_GET: Final = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET
_CT_NEW: Final = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_NEW
_CT_DELETE: Final = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_DELETE
FLOW_MESSAGE_TYPES: Final = frozenset({_CT_GET, _CT_NEW, _CT_DELETE})

_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6

# Addresses repeat across flows (a gateway, a DNS server, loopback): intern the text so a big
# table holds one string per distinct address instead of one per flow and direction.
_ADDR_CACHE: dict[bytes, str] = {}
_ADDR_CACHE_MAX: Final = 1 << 18


def _addr(buf: bytes, s: int, e: int, size: int) -> str:
    if e - s != size:
        raise DecodeError(f"address of {e - s} bytes where {size} expected")
    raw = bytes(buf[s:e])
    text = _ADDR_CACHE.get(raw)
    if text is None:
        text = _ntop(_AF_INET if size == 4 else _AF_INET6, raw)
        if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = text
    return text


def _walk(buf: bytes, off: int, end: int) -> list[tuple[int, int, int, int]]:
    """Attributes of buf[off:end] as (type, value_start, value_end, nested_flag)."""
    out = []
    while end - off >= 4:
        length, t = _HDR(buf, off)
        if length < 4:
            raise DecodeError(f"attribute length {length} < 4")
        vend = off + length
        if vend > end:
            raise DecodeError(f"attribute {t & NLA_TYPE_MASK} of length {length} overruns its nest")
        out.append((t & NLA_TYPE_MASK, off + 4, vend, t & NLA_F_NESTED))
        off += (length + 3) & ~3
    return out


def _scalar(nested: int, s: int, e: int, size: int, what: str) -> None:
    if nested or e - s != size:
        raise DecodeError(f"{what}: {e - s} bytes{' nested' if nested else ''}, {size} expected")


def _u8(buf: bytes, s: int, e: int, nested: int, what: str) -> int:
    _scalar(nested, s, e, 1, what)
    return int(_U8(buf, s)[0])


def _u16(buf: bytes, s: int, e: int, nested: int, what: str) -> int:
    _scalar(nested, s, e, 2, what)
    return int(_BE16(buf, s)[0])


def _u32(buf: bytes, s: int, e: int, nested: int, what: str) -> int:
    _scalar(nested, s, e, 4, what)
    return int(_BE32(buf, s)[0])


def _u64(buf: bytes, s: int, e: int, nested: int, what: str) -> int:
    _scalar(nested, s, e, 8, what)
    return int(_BE64(buf, s)[0])


def _string(buf: bytes, s: int, e: int) -> str:
    raw = bytes(buf[s:e])
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_tuple(buf: bytes, off: int, end: int) -> tuple[Tuple, int | None]:
    """A CTA_TUPLE_* nest -> (Tuple, protocol number or None)."""
    src = dst = None
    proto = sport = dport = itype = icode = iid = zone = None
    for t, s, e, nested in _walk(buf, off, end):
        if t == c.CTA_TUPLE_IP:
            for at, as_, ae, an in _walk(buf, s, e):
                if an:
                    raise DecodeError("address attribute marked nested")
                if at == c.CTA_IP_V4_SRC:
                    src = _addr(buf, as_, ae, 4)
                elif at == c.CTA_IP_V4_DST:
                    dst = _addr(buf, as_, ae, 4)
                elif at == c.CTA_IP_V6_SRC:
                    src = _addr(buf, as_, ae, 16)
                elif at == c.CTA_IP_V6_DST:
                    dst = _addr(buf, as_, ae, 16)
        elif t == c.CTA_TUPLE_PROTO:
            for pt, ps, pe, pn in _walk(buf, s, e):
                if pt == c.CTA_PROTO_NUM:
                    proto = _u8(buf, ps, pe, pn, "CTA_PROTO_NUM")
                elif pt == c.CTA_PROTO_SRC_PORT:
                    sport = _u16(buf, ps, pe, pn, "CTA_PROTO_SRC_PORT")
                elif pt == c.CTA_PROTO_DST_PORT:
                    dport = _u16(buf, ps, pe, pn, "CTA_PROTO_DST_PORT")
                elif pt in (c.CTA_PROTO_ICMP_ID, c.CTA_PROTO_ICMPV6_ID):
                    iid = _u16(buf, ps, pe, pn, "CTA_PROTO_ICMP_ID")
                elif pt in (c.CTA_PROTO_ICMP_TYPE, c.CTA_PROTO_ICMPV6_TYPE):
                    itype = _u8(buf, ps, pe, pn, "CTA_PROTO_ICMP_TYPE")
                elif pt in (c.CTA_PROTO_ICMP_CODE, c.CTA_PROTO_ICMPV6_CODE):
                    icode = _u8(buf, ps, pe, pn, "CTA_PROTO_ICMP_CODE")
        elif t == c.CTA_TUPLE_ZONE:
            zone = _u16(buf, s, e, nested, "CTA_TUPLE_ZONE")
    return Tuple(src, dst, sport, dport, itype, icode, iid, zone), proto


def _counters(buf: bytes, off: int, end: int) -> tuple[int | None, int | None]:
    packets = nbytes = None
    for t, s, e, nested in _walk(buf, off, end):
        if t == c.CTA_COUNTERS_PACKETS:
            packets = _u64(buf, s, e, nested, "CTA_COUNTERS_PACKETS")
        elif t == c.CTA_COUNTERS_BYTES:
            nbytes = _u64(buf, s, e, nested, "CTA_COUNTERS_BYTES")
        elif t == c.CTA_COUNTERS32_PACKETS:
            packets = _u32(buf, s, e, nested, "CTA_COUNTERS32_PACKETS")
        elif t == c.CTA_COUNTERS32_BYTES:
            nbytes = _u32(buf, s, e, nested, "CTA_COUNTERS32_BYTES")
        # CTA_COUNTERS_PAD and anything newer: ignored
    return packets, nbytes


def _protoinfo_state(buf: bytes, off: int, end: int) -> int | None:
    state = None
    for t, s, e, _nested in _walk(buf, off, end):
        if t in (c.CTA_PROTOINFO_TCP, c.CTA_PROTOINFO_SCTP, c.CTA_PROTOINFO_DCCP):
            for it, is_, ie, inested in _walk(buf, s, e):
                # CTA_PROTOINFO_{TCP,SCTP,DCCP}_STATE are all type 1 and one byte.
                if it == 1:
                    state = _u8(buf, is_, ie, inested, "protocol state")
    return state


def decode_flow(buf: bytes, off: int, end: int, family: int) -> Flow:
    """Decode the attributes in buf[off:end] (after the nfgenmsg header) into a Flow."""
    orig = reply = None
    protonum = None
    status = state = timeout = mark = use = flow_id = None
    zone = 0
    op = ob = rp = rb = None
    start = stop = labels = None
    helper = secctx = None
    for t, s, e, nested in _walk(buf, off, end):
        if t == c.CTA_TUPLE_ORIG:
            orig, protonum = decode_tuple(buf, s, e)
        elif t == c.CTA_TUPLE_REPLY:
            reply, _ = decode_tuple(buf, s, e)
        elif t == c.CTA_COUNTERS_ORIG:
            op, ob = _counters(buf, s, e)
        elif t == c.CTA_COUNTERS_REPLY:
            rp, rb = _counters(buf, s, e)
        elif t == c.CTA_STATUS:
            status = _u32(buf, s, e, nested, "CTA_STATUS")
        elif t == c.CTA_TIMEOUT:
            timeout = _u32(buf, s, e, nested, "CTA_TIMEOUT")
        elif t == c.CTA_MARK:
            mark = _u32(buf, s, e, nested, "CTA_MARK")
        elif t == c.CTA_ID:
            flow_id = _u32(buf, s, e, nested, "CTA_ID")
        elif t == c.CTA_USE:
            use = _u32(buf, s, e, nested, "CTA_USE")
        elif t == c.CTA_ZONE:
            zone = _u16(buf, s, e, nested, "CTA_ZONE")
        elif t == c.CTA_PROTOINFO:
            state = _protoinfo_state(buf, s, e)
        elif t == c.CTA_TIMESTAMP:
            for tt, ts, te, tn in _walk(buf, s, e):
                if tt == c.CTA_TIMESTAMP_START:
                    start = _u64(buf, ts, te, tn, "CTA_TIMESTAMP_START")
                elif tt == c.CTA_TIMESTAMP_STOP:
                    stop = _u64(buf, ts, te, tn, "CTA_TIMESTAMP_STOP")
        elif t == c.CTA_LABELS:
            labels = int.from_bytes(bytes(buf[s:e]), "big")
        elif t == c.CTA_HELP:
            for ht, hs, he, _hn in _walk(buf, s, e):
                if ht == c.CTA_HELP_NAME:
                    helper = _string(buf, hs, he)
        elif t == c.CTA_SECCTX:
            for st, ss, se, _sn in _walk(buf, s, e):
                if st == c.CTA_SECCTX_NAME:
                    secctx = _string(buf, ss, se)
    if orig is None or reply is None:
        raise DecodeError("conntrack message without both tuples")
    if protonum is None:
        raise DecodeError("original tuple without a protocol number")
    return Flow(
        family,
        protonum,
        orig,
        reply,
        flow_id,
        status,
        state,
        timeout,
        mark,
        zone,
        use,
        op,
        ob,
        rp,
        rb,
        start,
        stop,
        labels,
        helper,
        secctx,
    )


def decode_message(buf: bytes, off: int, end: int) -> Flow:
    """Decode one whole netlink message (header included) at buf[off:end] into a Flow."""
    if end - off < NLMSG_HDR.size + NFGENMSG.size:
        raise DecodeError(f"message of {end - off} bytes is too short for a conntrack entry")
    _len, msg_type, _flags, _seq, _pid = _NLMSG(buf, off)
    if msg_type not in FLOW_MESSAGE_TYPES:
        raise DecodeError(f"message type {msg_type:#x} is not a conntrack entry")
    family, _version, _res = _NFGEN(buf, off + NLMSG_HDR.size)
    return decode_flow(buf, off + NLMSG_HDR.size + NFGENMSG.size, end, family)
