"""ctnetlink message bytes -> `Flow`: the hot path of every poll.

Walks attributes with `struct.unpack_from` over the received datagram (no slicing copies).
Tolerant: unknown attributes are ignored, absent ones stay None. Intolerant of broken framing:
anything that does not follow the rules raises `DecodeError`, which callers count and skip.
"""

from __future__ import annotations

import socket
import struct
import sys
import textwrap
import weakref
from array import array
from collections.abc import Callable, Iterable, MutableSequence
from itertools import groupby
from typing import Any, Final

from cttop.conntrack import const as c
from cttop.conntrack.model import Flow, Tuple, reply_to_keep
from cttop.netlink import NFGENMSG, NLMSG_HDR, MalformedMessage, NetlinkError, iter_attrs


class DecodeError(NetlinkError):
    """A conntrack message that cannot be decoded; the dump skips it and counts it."""


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


# Ports, status words and marks repeat across flows too, and CPython makes a new object for
# each int over 256 it unpacks: 28 bytes for every port of every flow (four per flow) unless
# the compiled decoders share them through this table (`_INTS.setdefault(v, v)`).
_INTS: dict[int, int] = {}
_INTS_MAX: Final = 1 << 17


def _bound_shared_ints() -> None:
    """Empty the table of shared ints when it grew past its bound (marks can be as many as
    flows). Called per dump and per reference decode, never per compiled one."""
    if len(_INTS) > _INTS_MAX:
        _INTS.clear()


def _addr_text(raw: bytes) -> str:
    text = _ADDR_CACHE.get(raw)
    if text is None:
        text = _ntop(_AF_INET if len(raw) == 4 else _AF_INET6, raw)
        if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = text
    return text


_TUPLE_LEAVES: Final = {
    (c.CTA_TUPLE_IP, c.CTA_IP_V4_SRC): ("src", "4s", 4),
    (c.CTA_TUPLE_IP, c.CTA_IP_V4_DST): ("dst", "4s", 4),
    (c.CTA_TUPLE_IP, c.CTA_IP_V6_SRC): ("src", "16s", 16),
    (c.CTA_TUPLE_IP, c.CTA_IP_V6_DST): ("dst", "16s", 16),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_NUM): ("proto", "B", 1),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_SRC_PORT): ("sport", "H", 2),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_DST_PORT): ("dport", "H", 2),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_ICMP_ID): ("icmp_id", "H", 2),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_ICMPV6_ID): ("icmp_id", "H", 2),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_ICMP_TYPE): ("icmp_type", "B", 1),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_ICMPV6_TYPE): ("icmp_type", "B", 1),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_ICMP_CODE): ("icmp_code", "B", 1),
    (c.CTA_TUPLE_PROTO, c.CTA_PROTO_ICMPV6_CODE): ("icmp_code", "B", 1),
}
_TUPLE_FIELDS: Final = Tuple._fields


def _addr(buf: bytes, s: int, e: int, size: int) -> str:
    if e - s != size:
        raise DecodeError(f"address of {e - s} bytes where {size} expected")
    return _addr_text(bytes(buf[s:e]))


def _walk(buf: bytes, off: int, end: int) -> list[tuple[int, int, int, bool]]:
    """Attributes of buf[off:end] as (type, value_start, value_end, nested), all at once."""
    try:
        return list(iter_attrs(buf, off, end))
    except MalformedMessage as e:
        raise DecodeError(str(e)) from None


_UNSIGNED: Final = {1: _U8, 2: _BE16, 4: _BE32, 8: _BE64}


def _uint(buf: bytes, s: int, e: int, nested: bool, size: int, what: str) -> int:
    """A fixed-size big-endian unsigned value; any other size, or the nested flag, is an error."""
    if nested or e - s != size:
        raise DecodeError(f"{what}: {e - s} bytes{' nested' if nested else ''}, {size} expected")
    return int(_UNSIGNED[size](buf, s)[0])


def _u8(buf: bytes, s: int, e: int, nested: bool, what: str) -> int:
    return _uint(buf, s, e, nested, 1, what)


def _u16(buf: bytes, s: int, e: int, nested: bool, what: str) -> int:
    return _uint(buf, s, e, nested, 2, what)


def _u32(buf: bytes, s: int, e: int, nested: bool, what: str) -> int:
    return _uint(buf, s, e, nested, 4, what)


def _u64(buf: bytes, s: int, e: int, nested: bool, what: str) -> int:
    return _uint(buf, s, e, nested, 8, what)


def _string(buf: bytes, s: int, e: int) -> str:
    raw = bytes(buf[s:e])
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_tuple(buf: bytes, off: int, end: int) -> tuple[Tuple, int | None]:
    """A CTA_TUPLE_* nest -> (Tuple, protocol number or None). Reads _TUPLE_LEAVES, the same
    table the compiled shapes are built from."""
    values: dict[str, int | str] = {}
    for t, s, e, nested in _walk(buf, off, end):
        if t == c.CTA_TUPLE_ZONE:
            values["zone"] = _u16(buf, s, e, nested, "CTA_TUPLE_ZONE")
        elif t in (c.CTA_TUPLE_IP, c.CTA_TUPLE_PROTO):
            for lt, ls, le, ln in _walk(buf, s, e):
                leaf = _TUPLE_LEAVES.get((t, lt))
                if leaf is None:
                    continue  # unknown to us: ignored
                name, _fmt, size = leaf
                if t == c.CTA_TUPLE_IP:
                    if ln:
                        raise DecodeError("address attribute marked nested")
                    values[name] = _addr(buf, ls, le, size)
                else:
                    value = _uint(buf, ls, le, ln, size, name)
                    values[name] = _INTS.setdefault(value, value)
    fields = [values.get(name) for name in _TUPLE_FIELDS]
    proto = values.get("proto")
    return Tuple(*fields), proto  # type: ignore[arg-type,return-value]


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


def decode_flow(buf: bytes, off: int, end: int, family: int, now: float = 0.0) -> Flow:
    """Decode the attributes in buf[off:end] (after the nfgenmsg header) into a Flow; `now` is
    the time of its dump (unix seconds): the flow expires CTA_TIMEOUT after it."""
    _bound_shared_ints()
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
            status = _INTS.setdefault(status, status)
        elif t == c.CTA_TIMEOUT:
            timeout = _u32(buf, s, e, nested, "CTA_TIMEOUT")
        elif t == c.CTA_MARK:
            mark = _u32(buf, s, e, nested, "CTA_MARK")
            mark = _INTS.setdefault(mark, mark)
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
        None if timeout is None else now + timeout,
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


def decode_message(buf: bytes, off: int, end: int, now: float = 0.0) -> Flow:
    """Decode one whole netlink message (header included) at buf[off:end], of a dump at unix
    time `now`, into a Flow."""
    if end - off < NLMSG_HDR.size + NFGENMSG.size:
        raise DecodeError(f"message of {end - off} bytes is too short for a conntrack entry")
    _len, msg_type, _flags, _seq, _pid = _NLMSG(buf, off)
    if msg_type not in FLOW_MESSAGE_TYPES:
        raise DecodeError(f"message type {msg_type:#x} is not a conntrack entry")
    family, _version, _res = _NFGEN(buf, off + NLMSG_HDR.size)
    return decode_flow(buf, off + NLMSG_HDR.size + NFGENMSG.size, end, family, now)


# --- the fast path: decoding by message shape ---------------------------------------------
#
# In one table nearly every message has one of a handful of layouts: the same attributes in the
# same order with the same lengths (the kernel writes them in a fixed order). For each layout
# seen we compile one `struct.Struct` that unpacks the whole message in a single call — every
# attribute header (to prove the layout matches) and every value we keep — and a small
# generated function that builds the Flow from it (the two tuples, taken as one raw bytes field,
# by a compiled region decoder of their own). Before any of that, a message byte-identical to
# one the shape decoded before but for the timeout's and the counters' values reuses that
# decode (see FastDecoder): the same bytes through the same layout give the same values, and
# those few are read on their own. Anything that does not match a
# known layout takes `decode_flow`, which stays the reference: the fast path yields exactly what
# it would, or declines — but for `Flow.expires` of a reused decode (see `SAME_EXPIRY`).

# CTA_TIMEOUT is whole seconds, rounded down, so the expiry worked out from it (the dump's time
# + timeout) for an entry nothing happened to moves around within a second from dump to dump. A
# cached flow whose expiry is less than SAME_EXPIRY away from the new one is the decode (the
# same object: an idle entry costs no new Flow). Its seconds left at the dump's time, rounded
# (`Flow.timeout_at`), are then the CTA_TIMEOUT just received, with 0.1 s to spare for the time
# they are shown at (the snapshot's, which the dump's time only predicts): what is shown does
# not depend on which of the two flows it is. Further off (a refreshed timer, or polls a
# fraction of a second out of step with the timeout's ticks) the flow is made anew.
SAME_EXPIRY: Final = 0.4

_HASH_FINGERPRINTS: Final = sys.hash_info.width >= 64
_EXPIRES: Final = Flow._fields.index("expires")
_COUNTERS: Final = ("orig_packets", "orig_bytes", "reply_packets", "reply_bytes")
_MAX_SHAPES_PER_LENGTH: Final = 4
_MAX_SHAPES: Final = 256


_Decode = Callable[[bytes, int, int, int], Flow]


class _Shape:
    """One compiled layout: `run(buf, off, end, family)` -> Flow. It looks a message up among
    the last dump's decodes (`_Walk`) by its fingerprint (a hash of the message's bytes but the
    timeout's and the counters' values). A message the layout does not fit goes on to the
    decoder's `_miss(buf, off, end, family, after)`: the shape after this one in its length's
    chain, or the reference decoder."""

    __slots__ = ("box", "run")

    def __init__(self, after: int) -> None:
        self.run: _Decode
        # [after, decoded]: what the compiled code reads and counts. It holds neither the
        # shape nor the decoder, so a dropped decoder is freed at once (no cycle for the
        # collector).
        self.box: list[int] = [after, 0]

    @property
    def after(self) -> int:
        """The place in its length's chain of the shape tried when this one does not fit."""
        return self.box[0]

    @after.setter
    def after(self, after: int) -> None:
        self.box[0] = after

    @property
    def decoded(self) -> int:
        """Messages this shape decoded in the dump (the last one, once it ended)."""
        return self.box[1]


def _fingerprints() -> MutableSequence[Any]:
    return array("q") if _HASH_FINGERPRINTS else []


# What ends the last dump's fingerprints (see `_Walk`): CPython's hash() never gives -1 (it is
# its functions' error value), and fingerprints that are bytes or tuples are no int.
_NO_FINGERPRINT: Final = -1


# How far ahead of its place the walk looks for a message's last decode (the flows of the last
# dump in between vanished), and how many messages in a row it may miss without a step before it
# is lost (a run of more than that vanished, or the table is walked in another order).
_LOOK_AHEAD: Final = 32
_LOST: Final = 16


class _Walk:
    """The last complete dump's decodes in its order, each with its message's fingerprint: where
    the compiled shapes look a message up.

    The kernel dumps its hash table in the same order poll after poll (the sampler's diff
    relies on it too), so the last decode of a message is almost always the next flow of the
    last dump: one comparison with an array's next item, and a step. (A dict of a 250k table's
    fingerprints was ~20 MiB: its table and an int object for each.) A message that is not
    next is looked for a little further on, where the flows in between vanished; one that is
    not there either is new, unless the walk has been missing for a while without a step: lost
    (a run of more than that vanished, or the table is walked in another order), it looks
    messages up in an index of the last dump by fingerprint, made once for the dump.

    The dump is written over the last one as it goes: a flow decoded anew (its counters moved)
    takes its last decode's place; the places passed over (vanished) and the new flows (and
    those found behind the walk, decoded again) are noted, and put in by `end()`, which has
    nothing to do for a table where only counters moved. Whatever the walk does not find is
    decoded in full: the walk decides how fast, never what.
    """

    __slots__ = (
        "added",
        "added_at",
        "added_fps",
        "at",
        "flows",
        "fps",
        "index",
        "lost",
        "missed",
        "missed_at",
        "skipped",
    )

    def __init__(self) -> None:
        # Fingerprints are 64-bit hashes, kept in an array: no object each. (Where they are
        # the bytes themselves, a list.) Both end in one more item, which no message matches,
        # so that the compiled code need not ask whether the walk is at the end: a fingerprint
        # no message has (`_NO_FINGERPRINT`), and None.
        self.fps: MutableSequence[Any] = _fingerprints()
        self.fps.append(_NO_FINGERPRINT)
        self.flows: list[Flow | None] = [None]
        # The place in the last dump of the next flow expected: read by the compiled code.
        self.at = [0]
        # What the dump brought that is not in the last one, in order: new places (before the
        # last dump's place `added_at[i]`) and the places passed over, as [start, stop). (The
        # compiled code appends to the first three: they are emptied in place, never replaced.)
        self.added_at = array("q")
        self.added_fps: MutableSequence[Any] = _fingerprints()
        self.added: list[Flow] = []
        self.skipped: list[tuple[int, int]] = []
        self.index: dict[Any, int] | None = None
        self.lost = False  # whether the walk was lost in this dump (or the last, once ended)
        self.missed = 0  # messages missed in a row without a step, from place `missed_at`
        self.missed_at = -1

    @property
    def kept(self) -> int:
        """Flows kept from the last dump."""
        return len(self.flows) - 1

    def begin(self) -> None:
        """A dump starts (again)."""
        self._restart()
        self.lost = False

    def end(self) -> None:
        """The dump went to its end: its decodes are the ones to look up in the next."""
        walked = self.at[0]
        if self.added or self.skipped or walked < self.kept:
            fps, flows = self.fps, self.flows
            new_fps, new_flows = _fingerprints(), []
            start = 0
            skipped = iter(self.skipped)
            gap = next(skipped, None)

            def keep(upto: int) -> None:  # the last dump's places from `start` up to `upto`
                nonlocal start, gap
                while gap is not None and gap[0] < upto:
                    new_fps.extend(fps[start : gap[0]])
                    new_flows.extend(flows[start : gap[0]])
                    start = gap[1]
                    gap = next(skipped, None)
                new_fps.extend(fps[start:upto])
                new_flows.extend(flows[start:upto])
                start = upto

            # The new flows, a run at a time: those before one place of the last dump (all of
            # a cold dump's, before its place 0) go in together.
            added = 0
            for at, run in groupby(self.added_at):
                keep(at)
                n = len(list(run))
                new_fps.extend(self.added_fps[added : added + n])
                new_flows.extend(self.added[added : added + n])
                added += n
            keep(walked)  # (and what is after the last place walked vanished)
            new_fps.append(_NO_FINGERPRINT)
            new_flows.append(None)
            self.fps[:] = new_fps
            self.flows[:] = new_flows
        self._restart()

    def _restart(self) -> None:
        self.at[0] = 0
        del self.added_at[:]
        del self.added_fps[:]
        self.added.clear()
        self.skipped.clear()
        self.index = None
        self.missed = 0
        self.missed_at = -1

    def seek(self, fp: Any) -> int:
        """The place in the last dump of the message with fingerprint `fp`, which is not the
        next one, or -1: a new place. The walk goes on after it (the places between
        vanished); a place behind the walk is none (the message is decoded again)."""
        n = self.kept
        if not n:  # (a first dump)
            return -1
        at = self.at
        j = at[0]
        k = -1
        if j < n:
            try:  # (cheaper than contextlib.suppress, for each new flow)  # noqa: SIM105
                k = self.fps.index(fp, j, min(n, j + _LOOK_AHEAD))
            except ValueError:
                pass
        if k < 0:
            index = self.index
            if index is None:
                if j != self.missed_at:
                    self.missed_at = j
                    self.missed = 0
                self.missed += 1
                if self.missed < _LOST:
                    return -1  # new, most likely
                # (A fingerprint twice: its first place.)
                index = self.index = dict(
                    zip(reversed(self.fps[:n]), range(n - 1, -1, -1), strict=True)
                )
                self.lost = True
            k = index.get(fp, -1)
            if k < j:  # not in the last dump, or passed over already
                return -1
        if k > j:
            self.skipped.append((j, k))
        at[0] = k + 1
        return k


def _decode_tuples_region_reference(region: bytes) -> tuple[Tuple, Tuple, int]:
    """The raw bytes of CTA_TUPLE_ORIG followed by CTA_TUPLE_REPLY -> (orig, reply, protonum)."""
    attrs = _walk(region, 0, len(region))
    if len(attrs) != 2 or attrs[0][0] != c.CTA_TUPLE_ORIG or attrs[1][0] != c.CTA_TUPLE_REPLY:
        raise DecodeError("tuple region does not hold exactly the two tuples")
    orig, protonum = decode_tuple(region, attrs[0][1], attrs[0][2])
    reply, _ = decode_tuple(region, attrs[1][1], attrs[1][2])
    if protonum is None:
        raise DecodeError("original tuple without a protocol number")
    return orig, reply, protonum


def _compile_region(region: bytes) -> object | None:
    """A compiled decoder for tuple regions laid out like this one, or None."""
    b = _ShapeBuilder()
    fields: list[dict[str, str]] = [{}, {}]
    try:
        tops = _walk(region, 0, len(region))
        if len(tops) != 2 or (tops[0][0], tops[1][0]) != (c.CTA_TUPLE_ORIG, c.CTA_TUPLE_REPLY):
            return None
        for d, (_t, s, e, _n) in enumerate(tops):
            b._pad_to(s - 4)
            b._header(region, s - 4)
            for ct, cs, ce, cn in _walk(region, s, e):
                b._pad_to(cs - 4)
                b._header(region, cs - 4)
                if ct == c.CTA_TUPLE_ZONE:
                    fields[d]["zone"] = _shared(f"v[{b._value(region, cs, ce, cn, 'H', 2)}]")
                elif ct in (c.CTA_TUPLE_IP, c.CTA_TUPLE_PROTO):
                    for lt, ls, le, ln in _walk(region, cs, ce):
                        b._pad_to(ls - 4)
                        b._header(region, ls - 4)
                        leaf = _TUPLE_LEAVES.get((ct, lt))
                        if leaf is not None:
                            name, fmt, size = leaf
                            if ct == c.CTA_TUPLE_IP and ln:
                                return None
                            item = f"v[{b._value(region, ls, le, ln, fmt, size)}]"
                            if ct == c.CTA_TUPLE_IP:  # (the cache's get is a C call)
                                item = f"(G({item}) or A({item}))"
                            elif size > 1:
                                item = _shared(item)
                            fields[d][name] = item
                        b._pad_to(le)
                b._pad_to(ce)
            b._pad_to(e)
        b._pad_to(len(region))
    except DecodeError:
        return None
    if "proto" not in fields[0]:
        return None
    unpacker = struct.Struct(">" + "".join(b.fmt))
    if unpacker.size != len(region):
        return None
    tuples = [
        "new(Tuple, ("
        + ", ".join(_record((fields[d].get(n, "None") for n in _TUPLE_FIELDS), Tuple._short))
        + "))"
        for d in (0, 1)
    ]
    got = "".join(f"v[{i}], " for i, _ in b.headers)
    src = (
        "def run(r):\n"
        "    v = unpack(r)\n"
        f"    if ({got}) != want:\n"
        "        return None\n"
        f"    o = {tuples[0]}\n"
        f"    t = {tuples[1]}\n"
        # (The original mirrored is not kept: `reply_to_keep`, inline.)
        f"    return (o, None if t == (o[1], o[0], o[3], o[2]) else t, {fields[0]['proto']})\n"
    )
    env: dict[str, object] = {
        "unpack": unpacker.unpack,
        "want": tuple(w for _, w in b.headers),
        "new": tuple.__new__,
        "Tuple": Tuple,
        "A": _addr_text,
        "G": _ADDR_CACHE.get,
        "I": _INTS.setdefault,
    }
    # Generated from our own struct layout above; no outside text reaches it.
    exec(src, env)
    return env["run"]


def _record(items: Iterable[str], short: int) -> tuple[str, ...]:
    """The expressions of a record's fields, without its optional last ones (from `short`)
    when the layout has none of them (`None` for each): the one form of such a record (see
    `cttop.conntrack.model._Record._of`). A field the layout has is never None."""
    items = tuple(items)
    return items[:short] if items[short:].count("None") == len(items) - short else items


def _shared(item: str) -> str:
    """The expression `item` (an int), through the table of shared ints."""
    return f"I({item}, {item})"


_REGION_SHAPES: dict[int, list[object]] = {}


def _decode_tuples_region(region: bytes) -> tuple[Tuple, Tuple | None, int]:
    """(orig, reply, protonum) by learned layout when one fits, else (and then learning) by
    the reference; the reply None where it is the original mirrored (see Flow.reply)."""
    shapes = _REGION_SHAPES.get(len(region))
    if shapes is not None:
        for run in shapes:
            got = run(region)  # type: ignore[operator]
            if got is not None:
                return got  # type: ignore[no-any-return]
    orig, reply, protonum = _decode_tuples_region_reference(region)
    result = (orig, reply_to_keep(orig, reply), protonum)
    if shapes is None or len(shapes) < _MAX_SHAPES_PER_LENGTH:
        run = _compile_region(region)
        if run is not None and sum(map(len, _REGION_SHAPES.values())) < _MAX_SHAPES:
            _REGION_SHAPES.setdefault(len(region), []).append(run)
    return result


def _region_run(region: bytes) -> Callable[[bytes], tuple[Tuple, Tuple | None, int] | None] | None:
    """The compiled tuple layout that decodes `region` (learned now if need be), or None."""
    try:
        _decode_tuples_region(region)
    except DecodeError:
        return None
    for run in _REGION_SHAPES.get(len(region), ()):
        if run(region) is not None:  # type: ignore[operator]
            return run  # type: ignore[return-value]
    return None


def _labels(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class _ShapeBuilder:
    """Learns a layout from one message the reference decoder accepted."""

    _SCALARS: Final = {
        c.CTA_STATUS: ("status", "I", 4),
        c.CTA_TIMEOUT: ("timeout", "I", 4),
        c.CTA_MARK: ("mark", "I", 4),
        c.CTA_ID: ("id", "I", 4),
        c.CTA_USE: ("use", "I", 4),
        c.CTA_ZONE: ("zone", "H", 2),
    }

    def __init__(self) -> None:
        self.fmt: list[str] = []
        self.n = 0  # items the struct yields so far
        self.pos = 0  # bytes covered so far
        self.headers: list[tuple[int, int]] = []  # (item index, expected header word)
        self.fields: dict[str, str] = {}  # Flow field -> expression over v[...]
        self.region: int | None = None
        self.timeout_at: int | None = None  # offset of the (last) CTA_TIMEOUT value
        # Flow field -> (offset, struct format) of the value it was last unpacked from
        self.at: dict[str, tuple[int, str]] = {}

    def _item(self, fmt: str, size: int) -> int:
        self.fmt.append(fmt)
        self.pos += size
        self.n += 1
        return self.n - 1

    def _skip(self, size: int) -> None:
        if size:
            self.fmt.append(f"{size}x")
            self.pos += size

    def _header(self, buf: bytes, at: int) -> None:
        (word,) = struct.unpack_from(">I", buf, at)
        self.headers.append((self._item("I", 4), word))

    def _value(self, buf: bytes, s: int, e: int, nested: int, fmt: str, size: int) -> int:
        if nested or e - s != size:
            raise DecodeError("unexpected value size")  # the reference would have refused too
        return self._item(fmt, size)

    def _pad_to(self, rel: int) -> None:
        if rel < self.pos:
            raise DecodeError("overlapping attributes")
        self._skip(rel - self.pos)

    def _children(
        self, buf: bytes, base: int, s: int, e: int, wanted: dict[int, tuple[str, str, int]]
    ) -> None:
        """Headers of every child verified; the children named in `wanted` are unpacked."""
        for t, cs, ce, cn in _walk(buf, s, e):
            self._pad_to(cs - 4 - base)
            self._header(buf, cs - 4)
            spec = wanted.get(t)
            if spec is not None:
                field, fmt, size = spec
                if fmt == "z":  # a NUL-terminated string
                    self.fields[field] = f"_cstring(v[{self._item(f'{ce - cs}s', ce - cs)}])"
                else:
                    self.at[field] = (self.pos, fmt)
                    self.fields[field] = f"v[{self._value(buf, cs, ce, cn, fmt, size)}]"
            self._pad_to(ce - base)

    def learn(self, buf: bytes, off: int, end: int) -> str | None:
        attrs = _walk(buf, off, end)
        i = 0
        while i < len(attrs):
            t, s, e, nested = attrs[i]
            self._pad_to(s - 4 - off)
            if t == c.CTA_TUPLE_ORIG:
                if self.region is not None or i + 1 >= len(attrs):
                    return None
                if attrs[i + 1][0] != c.CTA_TUPLE_REPLY:
                    return None
                rend = min((attrs[i + 1][2] + 3) & ~3, end)
                self.region = self._item(f"{rend - (s - 4)}s", rend - (s - 4))
                i += 2
                continue
            if t == c.CTA_TUPLE_REPLY:
                return None  # reply before orig: leave such messages to the reference
            self._header(buf, s - 4)
            scalar = self._SCALARS.get(t)
            if scalar is not None:
                field, fmt, size = scalar
                if field == "timeout":
                    self.timeout_at = self.pos
                self.fields[field] = f"v[{self._value(buf, s, e, nested, fmt, size)}]"
            elif t in (c.CTA_COUNTERS_ORIG, c.CTA_COUNTERS_REPLY):
                d = "orig" if t == c.CTA_COUNTERS_ORIG else "reply"
                # A repeated nest replaces both counters, as in the reference decoder.
                self.fields[f"{d}_packets"] = self.fields[f"{d}_bytes"] = "None"
                self.at.pop(f"{d}_packets", None)
                self.at.pop(f"{d}_bytes", None)
                self._children(
                    buf,
                    off,
                    s,
                    e,
                    {
                        c.CTA_COUNTERS_PACKETS: (f"{d}_packets", "Q", 8),
                        c.CTA_COUNTERS_BYTES: (f"{d}_bytes", "Q", 8),
                        c.CTA_COUNTERS32_PACKETS: (f"{d}_packets", "I", 4),
                        c.CTA_COUNTERS32_BYTES: (f"{d}_bytes", "I", 4),
                    },
                )
            elif t == c.CTA_PROTOINFO:
                self.fields["state"] = "None"  # a repeated nest replaces the state
                for pt, ps, pe, _pn in _walk(buf, s, e):
                    self._pad_to(ps - 4 - off)
                    self._header(buf, ps - 4)
                    if pt in (c.CTA_PROTOINFO_TCP, c.CTA_PROTOINFO_SCTP, c.CTA_PROTOINFO_DCCP):
                        self._children(buf, off, ps, pe, {1: ("state", "B", 1)})
                    self._pad_to(pe - off)
            elif t == c.CTA_TIMESTAMP:
                self._children(
                    buf,
                    off,
                    s,
                    e,
                    {
                        c.CTA_TIMESTAMP_START: ("start", "Q", 8),
                        c.CTA_TIMESTAMP_STOP: ("stop", "Q", 8),
                    },
                )
            elif t == c.CTA_HELP:
                self._children(buf, off, s, e, {c.CTA_HELP_NAME: ("helper", "z", 0)})
            elif t == c.CTA_SECCTX:
                self._children(buf, off, s, e, {c.CTA_SECCTX_NAME: ("secctx", "z", 0)})
            elif t == c.CTA_LABELS:
                self.fields["labels"] = f"_labels(v[{self._item(f'{e - s}s', e - s)}])"
            # anything else is unknown to us: its header is checked, its value skipped
            self._pad_to(e - off)
            i += 1
        self._pad_to(end - off)
        if self.region is None:
            return None
        return "".join(self.fmt)


def _compile_shape(
    buf: bytes,
    off: int,
    end: int,
    decoder: Callable[[], FastDecoder | None],
    after: int,
    clock: list[float],
    expiries: dict[float, float],
    walk: _Walk,
    salt: int,
) -> _Shape | None:
    """A shape for messages laid out like buf[off:end]; what it does not fit goes to
    `decoder()._miss(..., shape.after)` (`decoder` is a weak reference: no cycle to collect).
    `clock[0]` is the time of the dump being decoded, `expiries` the expiries it made, `walk`
    the last dump's decodes (see `FastDecoder`); `salt` (0 for the first shape of a length,
    one of its own for each other) goes into its fingerprints."""
    b = _ShapeBuilder()
    try:
        fmt = b.learn(buf, off, end)
    except DecodeError:
        return None
    if fmt is None or b.region is None:
        return None
    unpacker = struct.Struct(">" + fmt)
    if unpacker.size != end - off:
        return None
    # The compiled layout of this message's tuples, tried first for a new decode: one Python
    # call less than `_decode_tuples_region`, which any other layout of them goes on to.
    region_run = _region_run(unpacker.unpack_from(buf, off)[b.region])
    f = b.fields
    flow_fields: tuple[str, ...] = (
        "family",
        "t[2]",
        "t[0]",
        "t[1]",
        f.get("id", "None"),
        _shared(f["status"]) if "status" in f else "None",
        f.get("state", "None"),
        f"E(e := now + {f['timeout']}, e)" if "timeout" in f else "None",
        _shared(f["mark"]) if "mark" in f else "None",
        f.get("zone", "0"),
        f.get("use", "None"),
        f.get("orig_packets", "None"),
        f.get("orig_bytes", "None"),
        f.get("reply_packets", "None"),
        f.get("reply_bytes", "None"),
        f.get("start", "None"),
        f.get("stop", "None"),
        f.get("labels", "None"),
        f.get("helper", "None"),
        f.get("secctx", "None"),
    )
    flow_fields = _record(flow_fields, Flow._short)
    got = "".join(f"v[{i}], " for i, _ in b.headers)
    want = tuple(w for _, w in b.headers)
    size = end - off
    # What changes while an entry lives on — its seconds left and its counters — is left out
    # of the fingerprint and read on its own: a message the shape decoded before but for these
    # is the cached flow (nothing changed but the timeout ticking: the same object), or its
    # fields with these values (a flow that moved: no tuples decoded again, and put in its
    # last decode's place).
    moving: list[tuple[int, str, int]] = []  # (offset, struct format, index in Flow)
    if b.timeout_at is not None:
        moving.append((b.timeout_at, "I", _EXPIRES))
    for name in _COUNTERS:
        if f.get(name, "None") != "None" and name in b.at:
            moving.append((*b.at[name], Flow._fields.index(name)))
    moving.sort()
    fmt_split, segments, values = ">", [], {}
    pos = item = 0
    for at, vfmt, index in moving:
        if at > pos:
            fmt_split += f"{at - pos}s"
            segments.append(f"s{item}")
            item += 1
        fmt_split += vfmt
        values[index] = f"x{item}"
        item += 1
        pos = at + struct.calcsize(">" + vfmt)
    if size > pos:
        fmt_split += f"{size - pos}s"
        segments.append(f"s{item}")
        item += 1
    split = struct.Struct(fmt_split)
    # The fingerprint is the 64-bit hash of the bytes, not the bytes: at 250k flows that keeps
    # ~60 MB of keys out of memory. Two messages split alike with the same hash would share a
    # decode; with Python's keyed SipHash that is a 2**-64 chance per pair. (A 32-bit build's
    # hash is too short for that: there the bytes are the fingerprint.) Two layouts of one
    # length with their moving values at the same places split alike, and a message of one
    # would be taken for the other's (whose fields mean something else): each but the first
    # shape of a length puts its salt in.
    # (Past two pieces, hashing them as a tuple is cheaper than joining them first.)
    if salt:
        joined = f"({salt}, {', '.join(segments)})"
    elif len(segments) <= 2:
        joined = " + ".join(segments)
    else:
        joined = f"({', '.join(segments)})"
    fp = f"hash({joined})" if _HASH_FINGERPRINTS else joined
    unpacked = ", ".join(f"s{i}" if f"s{i}" in segments else f"x{i}" for i in range(item))
    parts = f"{unpacked}, = split(buf, off)\n    fp = {fp}"
    # A known message: the cached flow while the expiry it gives agrees and the counters are
    # the same; else its fields unpacked at once (faster than a subscript each) with the new
    # values.
    same = [f"h[{i}] == {x}" for i, x in sorted(values.items()) if i != _EXPIRES]
    hit = ""
    if _EXPIRES in values:
        hit = f"        e = clock[0] + {values[_EXPIRES]}\n"
        values[_EXPIRES] = "E(e, e)"
        same.insert(0, f"-SAME < h[{_EXPIRES}] - e < SAME")
    if same:
        names = [f"f{i}" for i in range(len(flow_fields))]
        fresh = ", ".join(values.get(i, name) for i, name in enumerate(names))
        hit += (
            f"        if {' and '.join(same)}:\n"
            "            return h\n"
            f"        {', '.join(names)} = h\n"
            f"        flow = PF[k] = new(Flow, ({fresh}))\n"
            "        return flow\n"
        )
    else:  # nothing in the message changes while it lives: the cached flow is the decode
        hit += "        return h\n"
    hit = textwrap.indent(hit, "    ")
    tuples = f"region(v[{b.region}])"
    if region_run is not None:
        tuples = f"R(v[{b.region}]) or {tuples}"
    # The message's place in the last dump is k (its flow PF[k] is replaced there by a new
    # decode), or -1: none (PF[-1] is None), a new place in the next. A message not at its
    # place is first checked against the layout: one of another layout of this length (whose
    # fingerprint is never this shape's) goes down the chain without a `seek`, and without
    # counting as a miss of the walk.
    src = (
        "def run(buf, off, end, family):\n"
        f"    {parts}\n"
        "    k = at[0]\n"
        "    if P[k] == fp:\n"
        "        at[0] = k + 1\n"
        "        box[1] += 1\n"
        "        h = PF[k]\n"
        "        if h[0] == family:\n"
        f"{hit}"
        "        v = unpack(buf, off)\n"
        "    else:\n"
        "        v = unpack(buf, off)\n"
        f"        if ({got}) != want:\n"
        "            return decoder()._miss(buf, off, end, family, box[0])\n"
        "        box[1] += 1\n"
        "        k = seek(fp) if PF[0] is not None else -1\n"  # (none: a first dump)
        "        h = PF[k]\n"
        "        if h is not None and h[0] == family:\n"
        f"{hit}"
        "    try:\n"
        f"        t = {tuples}\n"
        "    except DecodeError:\n"
        "        box[1] -= 1\n"
        "        return decoder()._miss(buf, off, end, family, box[0])\n"
        "    now = clock[0]\n"
        f"    flow = new(Flow, ({', '.join(flow_fields)}))\n"
        # (What `_Walk.end` puts in: a new place, or its last decode's place written over.)
        "    if k < 0:\n"
        "        AA(at[0])\n"
        "        AF(fp)\n"
        "        AD(flow)\n"
        "    else:\n"
        "        PF[k] = flow\n"
        "    return flow\n"
    )
    shape = _Shape(after)
    env: dict[str, object] = {
        "unpack": unpacker.unpack_from,
        "split": split.unpack_from,
        "want": want,
        "region": _decode_tuples_region,
        "new": tuple.__new__,
        "Flow": Flow,
        "DecodeError": DecodeError,
        "_labels": _labels,
        "_cstring": _cstring,
        "I": _INTS.setdefault,
        "box": shape.box,
        "at": walk.at,
        "P": walk.fps,
        "PF": walk.flows,
        "seek": walk.seek,
        "AA": walk.added_at.append,
        "AF": walk.added_fps.append,
        "AD": walk.added.append,
        "R": region_run,
        "decoder": decoder,
        "clock": clock,
        "E": expiries.setdefault,
        "SAME": SAME_EXPIRY,
    }
    # Generated from our own struct layout above; no outside text reaches it.
    exec(src, env)
    shape.run = env["run"]  # type: ignore[assignment]
    return shape


class FastDecoder:
    """Decodes the messages of successive dumps, learning their shapes as it goes.

    Most entries of a big table do not change between two polls but for the seconds left
    (CTA_TIMEOUT), and those that carry traffic only in their counters: the decoder keeps the
    last dump's flows with their messages' bytes but for these values, fingerprinted, in the
    dump's order (`_Walk`), and such a message costs one short struct call, a hash and a
    comparison with the fingerprint of the last dump's flow at its place. The decode is that
    flow itself, the same object as the poll before, while the counters are the same and the
    expiry it implies agrees with the cached one (`SAME_EXPIRY`); else its fields with the new
    values. Only messages never seen (new flows, a state change) are decoded. A flow the next
    dump does not bring is let go when that dump ends. Call `begin()` before a dump and
    `end()` after it (a dump not ended leaves what the last one that was kept, but for the
    decodes it made of messages the walk found there, which take their places: they decode as
    well), and set `clock[0]` to the time of the dump (unix seconds).
    """

    def __init__(self) -> None:
        self.shapes: dict[int, list[_Shape]] = {}
        # Message length -> the run of the first shape of that length (see `decode`): a dump
        # calls the compiled code directly, one Python call per message.
        self.entries: dict[int, _Decode] = {}
        self.nshapes = 0
        self.walk = _Walk()
        # The time of the dump being decoded (unix seconds): what `Flow.expires` counts from.
        # A list, read by the compiled shapes at each decode.
        self.clock: list[float] = [0.0]
        # The expiries of this dump's new decodes, by value: the flows of one dump that the
        # kernel gave the same seconds left share one float (24 bytes a flow otherwise, ~6
        # MiB at 250k flows), and keep it while they are reused. Emptied before and after
        # each dump (a cold dump of 250k flows may leave ~10 MiB of them).
        self.expiries: dict[float, float] = {}

    @property
    def cached(self) -> int:
        """Flows kept from the last dump, to be reused by the next."""
        return self.walk.kept

    def begin(self) -> None:
        _bound_shared_ints()
        self.expiries.clear()
        self.walk.begin()
        for shapes in self.shapes.values():
            for shape in shapes:
                shape.box[1] = 0

    def end(self) -> None:
        """The dump went to its end: its flows are the ones the next dump reuses."""
        self.expiries.clear()
        self.walk.end()
        # Where layouts share a length, the one that decoded most of the dump goes first: every
        # message a shape does not fit pays for its try before going on down the chain.
        for length, shapes in self.shapes.items():
            if len(shapes) > 1:
                shapes.sort(key=lambda shape: shape.decoded, reverse=True)
                for i, shape in enumerate(shapes):
                    shape.after = i + 1
                self.entries[length] = shapes[0].run

    def decode(self, buf: bytes, off: int, end: int, family: int) -> Flow:
        """Same result as `decode_flow(buf, off, end, family, clock[0])`, usually much faster
        (but for `Flow.expires` of an unchanged entry: see `SAME_EXPIRY`).

        A loop over many messages can do what this does without its call:
        `decoder.entries.get(end - off, decoder.fallback)(buf, off, end, family)`."""
        return self.entries.get(end - off, self.fallback)(buf, off, end, family)

    def fallback(self, buf: bytes, off: int, end: int, family: int) -> Flow:
        """Decode a message of a length no shape has (yet)."""
        return self._miss(buf, off, end, family, 0)

    def _miss(self, buf: bytes, off: int, end: int, family: int, after: int) -> Flow:
        """Shape `after - 1` did not fit (or none was tried): the next shape of this length,
        or the reference decoder (a layout met for the first time is learned then). Shapes
        of one length differ where a zone moves attributes around."""
        shapes = self.shapes.get(end - off)
        if shapes is not None and after < len(shapes):
            return shapes[after].run(buf, off, end, family)
        flow = decode_flow(buf, off, end, family, self.clock[0])
        if self.nshapes < _MAX_SHAPES and (shapes is None or len(shapes) < _MAX_SHAPES_PER_LENGTH):
            # On a miss, the new shape hands over to the one after it (none yet: the reference).
            after = 1 + (0 if shapes is None else len(shapes))
            learned = _compile_shape(
                buf,
                off,
                end,
                weakref.ref(self),
                after,
                self.clock,
                self.expiries,
                self.walk,
                after - 1,
            )
            if learned is not None:
                self.shapes.setdefault(end - off, []).append(learned)
                self.entries.setdefault(end - off, learned.run)
                self.nshapes += 1
        return flow
