"""Fuzzing the byte-level code: the decoder, the attribute walker and the datagram splitter must
only ever raise `NetlinkError` subclasses, and must always terminate, whatever bytes arrive.
Then the dump as a whole, fed by a fake socket: valid flows survive malformed neighbours, stale
sequence numbers and cut datagrams; kernel errors become one `ConntrackError`.

The CI share is a few thousand examples (a few seconds); the `slow` variant runs 100k
(``pytest --run-slow tests/test_fuzz.py``).
"""

from __future__ import annotations

import errno
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttop import netlink as netlink_module
from cttop.conntrack import client as client_module
from cttop.conntrack import const as c
from cttop.conntrack.client import (
    ConntrackClient,
    ConntrackError,
    PermissionDenied,
)
from cttop.conntrack.decode import DecodeError, FastDecoder, decode_flow, decode_message
from cttop.conntrack.model import Flow, Tuple
from cttop.netlink import (
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLA_HDR,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    RECV_BUFFER,
    DumpStats,
    NetlinkErrno,
    NetlinkError,
    NetlinkSocket,
    TruncatedDatagram,
    decode_data_messages,
    iter_attrs,
    message,
    split_datagram,
)
from tests.ctgen import (
    CT_GET,
    CT_NEW,
    be32,
    corpus,
    decoded_alike,
    encode_flow_message,
    flow_of,
    flows,
    raw_attr,
    with_seq,
)

# --- running one input ----------------------------------------------------------------------


class Hang(AssertionError):
    """The code under test did not return within the time limit (an endless loop)."""


@contextmanager
def time_limit(seconds: float = 5.0) -> Iterator[None]:
    """Hypothesis deadlines only measure a call that returned; this one interrupts a hang."""

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_decode(buf: bytes, off: int = 0, end: int | None = None) -> Flow | None:
    end = len(buf) if end is None else end
    try:
        flow = decode_message(buf, off, end)
    except NetlinkError:
        return None
    assert isinstance(flow, Flow)
    assert isinstance(flow.orig, Tuple) and isinstance(flow.reply, Tuple)
    assert isinstance(flow.protonum, int)
    return flow


def check_iter_attrs(buf: bytes, off: int, end: int) -> int:
    """Consume iter_attrs fully; every yielded range must lie inside buf[off:end]."""
    n = 0
    prev = off - 4
    try:
        for t, s, e, nested in iter_attrs(buf, off, end):
            assert 0 <= t <= 0x3FFF
            assert isinstance(nested, bool)
            assert prev + 4 <= s - 4 and s <= e <= end
            prev = s - 4
            n += 1
    except NetlinkError:
        pass
    return n


def check_split(data: bytes) -> int:
    """Split a datagram; messages lie inside it, aligned, in order; decode each one."""
    stats = DumpStats()
    prev_end = 0
    count = 0
    for msg in split_datagram(data, stats):
        assert msg.off % 4 == 0 and msg.off >= prev_end
        assert msg.off + NLMSG_HDR.size <= msg.end <= len(data)
        prev_end = msg.end
        check_decode(data, msg.off, msg.end)
        count += 1
    assert stats.malformed in (0, 1)
    return count


def check_all(data: bytes, off: int = 0, end: int | None = None) -> None:
    end = len(data) if end is None else end
    with time_limit():
        check_decode(data, off, end)
        check_iter_attrs(data, off, end)
        if len(data) >= 20:
            check_iter_attrs(data, 20, len(data))  # the attributes of a would-be message
        check_split(data)


# --- input strategies -----------------------------------------------------------------------

NASTY_LENGTHS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 0x7FFF, 0x8000, 0xFFFC, 0xFFFD, 0xFFFF]),
    st.integers(0, 96),
    st.integers(0, 0xFFFF),
)
NASTY_TYPES = st.one_of(
    st.integers(0, 30),
    st.integers(0, 30).map(lambda t: t | NLA_F_NESTED),
    st.integers(0, 30).map(lambda t: t | NLA_F_NET_BYTEORDER),
    st.integers(0, 0xFFFF),
)
# Strategies are built once, here: building them inside the mutations costs more than drawing.
_IDX = st.integers(0, 0xFFFF)
_BIT = st.integers(0, 7)
_FLIPS = st.integers(1, 8)
_STEPS = st.integers(1, 4)
_BOOL = st.booleans()
_DELTA = st.integers(-8, 8)
_SHORT_BYTES = st.binary(max_size=24)
_TAIL_BYTES = st.binary(min_size=1, max_size=32)
_OPT_LENGTH = st.none() | NASTY_LENGTHS
_NLMSG_LENGTHS = st.sampled_from([0, 15, 16, 0xFFFF, 0xFFFFFFFF]) | st.integers(0, 400)
_NLMSG_TYPES = st.sampled_from([CT_NEW, CT_GET, NLMSG_ERROR, NLMSG_DONE, 0x105]) | _IDX


def pick(draw: st.DrawFn, items: Sequence[Any]) -> Any:
    """One of items (non-empty), by one cheap draw."""
    return items[draw(_IDX) % len(items)]


def _walk_with_parents(
    buf: bytes | bytearray, off: int, end: int, parents: tuple[int, ...] = ()
) -> list[tuple[int, tuple[int, ...]]]:
    """(header offset, offsets of its enclosing nests) for every attribute that fits."""
    out: list[tuple[int, tuple[int, ...]]] = []
    end = min(end, len(buf))
    while end - off >= 4:
        length, t = NLA_HDR.unpack_from(buf, off)
        if length < 4 or off + length > end:
            break
        out.append((off, parents))
        if t & NLA_F_NESTED:
            out += _walk_with_parents(buf, off + 4, off + length, (*parents, off))
        off += (length + 3) & ~3
    return out


def _attrs_of(data: bytes | bytearray) -> list[tuple[int, tuple[int, ...]]]:
    return _walk_with_parents(data, 20, len(data))


Mutation = Callable[[st.DrawFn, bytearray], bytearray]


def m_bitflip(draw: st.DrawFn, data: bytearray) -> bytearray:
    if data:
        for _ in range(draw(_FLIPS)):
            data[draw(_IDX) % len(data)] ^= 1 << draw(_BIT)
    return data


def m_truncate(draw: st.DrawFn, data: bytearray) -> bytearray:
    return data[: draw(_IDX) % (len(data) + 1)]


def m_attr_length(draw: st.DrawFn, data: bytearray) -> bytearray:
    attrs = _attrs_of(data)
    if attrs:
        off, _ = pick(draw, attrs)
        (cur,) = struct.unpack_from("=H", data, off)
        new = draw(NASTY_LENGTHS) if draw(_BOOL) else max(0, min(0xFFFF, cur + draw(_DELTA)))
        struct.pack_into("=H", data, off, new)
    return data


def m_attr_type(draw: st.DrawFn, data: bytearray) -> bytearray:
    attrs = _attrs_of(data)
    if attrs:
        off, _ = pick(draw, attrs)
        struct.pack_into("=H", data, off + 2, draw(NASTY_TYPES))
    return data


def m_nlmsg_header(draw: st.DrawFn, data: bytearray) -> bytearray:
    if len(data) >= 16:
        struct.pack_into("=I", data, 0, draw(_NLMSG_LENGTHS))
        if draw(_BOOL):
            struct.pack_into("=H", data, 4, draw(_NLMSG_TYPES))
    return data


def m_huge(draw: st.DrawFn, data: bytearray) -> bytearray:
    """0xffff in every attribute length of one nesting chain."""
    attrs = _attrs_of(data)
    if attrs:
        off, parents = pick(draw, attrs)
        for o in (*parents, off):
            struct.pack_into("=H", data, o, 0xFFFF)
    return data


# A fixed corpus of valid messages (tests/ctgen.py, seeded): drawing one costs nothing, so the
# CI budget goes to the mutations. The slow run also mutates freshly generated flows().
CORPUS = corpus(256, seed=1)
CORPUS_MESSAGES = st.sampled_from([msg for _, msg in CORPUS])
FRESH_MESSAGES = st.one_of(CORPUS_MESSAGES, flows().map(lambda x: x[1]))


def _splice_chunk(draw: st.DrawFn) -> bytes:
    """An attribute cut out of another valid message, or a raw made-up one."""
    if draw(_BOOL):
        other = draw(CORPUS_MESSAGES)
        off, _ = pick(draw, _attrs_of(other))
        (length,) = struct.unpack_from("=H", other, off)
        return other[off : off + ((length + 3) & ~3)]
    return raw_attr(draw(NASTY_TYPES), draw(_SHORT_BYTES), length=draw(_OPT_LENGTH))


def m_splice(draw: st.DrawFn, data: bytearray) -> bytearray:
    """Insert an attribute before another one (at any depth) or at the end.

    Half the time the enclosing nests and nlmsg_len grow with it, so the framing stays valid
    and the decoder meets the attribute where it does not belong (an address in the counters,
    a tuple in the protoinfo, ...).
    """
    chunk = _splice_chunk(draw)
    attrs = _attrs_of(data)
    pos, parents = pick(draw, attrs) if attrs and draw(_BOOL) else (len(data), ())
    data = data[:pos] + chunk + data[pos:]
    if draw(_BOOL):
        for o in parents:
            (length,) = struct.unpack_from("=H", data, o)
            struct.pack_into("=H", data, o, min(0xFFFF, length + len(chunk)))
        if len(data) >= 16:
            struct.pack_into("=I", data, 0, len(data))
    return data


def m_drop_or_repeat(draw: st.DrawFn, data: bytearray) -> bytearray:
    attrs = _attrs_of(data)
    if attrs:
        off, _ = pick(draw, attrs)
        (length,) = struct.unpack_from("=H", data, off)
        piece = data[off : off + ((length + 3) & ~3)]
        rest = data[off + len(piece) :]
        data = data[:off] + (piece * 2 if draw(_BOOL) else b"") + rest
    return data


def m_append(draw: st.DrawFn, data: bytearray) -> bytearray:
    return data + draw(_TAIL_BYTES)


MUTATIONS: list[Mutation] = [
    m_bitflip,
    m_truncate,
    m_attr_length,
    m_attr_type,
    m_nlmsg_header,
    m_huge,
    m_splice,
    m_drop_or_repeat,
    m_append,
]


@st.composite
def mutated_messages(draw: st.DrawFn, source: st.SearchStrategy[bytes] = CORPUS_MESSAGES) -> bytes:
    data = bytearray(draw(source))
    for _ in range(draw(_STEPS)):
        data = bytearray(pick(draw, MUTATIONS)(draw, data))
    return bytes(data)


# Values a soup leaf may carry: the sizes the decoder checks for, and wrong ones.
_LEAF_VALUES = [b"", b"\x06", b"\0\x50", b"\xc0\0\2\1", b"\0" * 8, b"\xfe\x80" * 8, b"\1\2\3"]


def build_soup(program: bytes) -> bytes:
    """Interpret bytes as a little program that writes an attribute tree.

    Random trees of plausible (small) attribute types with plausible value sizes reach deeper
    into the decoder than random bytes do; one binary draw makes them cheap, and hypothesis
    shrinks the program like any bytes.
    """
    prog = memoryview(program)
    i = 0

    def take() -> int:
        nonlocal i
        i += 1
        return prog[i - 1] if i - 1 < len(prog) else 0

    stack: list[tuple[int, list[bytes]]] = [(0, [])]
    while i < len(prog):
        op = take()
        kind = op % 8
        if kind <= 2:  # a leaf of a small type with a typical value, maybe a lying length
            t = take() % 16 | (NLA_F_NET_BYTEORDER if op & 0x20 else 0)
            value = _LEAF_VALUES[take() % len(_LEAF_VALUES)]
            length = (take() | take() << 8) if op & 0x40 else None
            stack[-1][1].append(raw_attr(t, value, length=length))
        elif kind == 3:  # a leaf with bytes from the program itself
            t = take() | take() << 8
            size = take() % 24
            stack[-1][1].append(raw_attr(t, bytes(prog[i : i + size])))
            i += size
        elif kind in (4, 5) and len(stack) < 8:  # open a nest
            stack.append((take() % 16, []))
        elif kind == 6 and len(stack) > 1:  # close the innermost nest
            t, kids = stack.pop()
            flag = 0 if op & 0x80 else NLA_F_NESTED
            stack[-1][1].append(raw_attr(t | flag, b"".join(kids)))
        elif kind == 7:  # 1-3 stray bytes
            stack[-1][1].append(bytes(prog[i : i + 1 + op % 3]))
            i += 1 + op % 3
    while len(stack) > 1:
        t, kids = stack.pop()
        stack[-1][1].append(raw_attr(t | NLA_F_NESTED, b"".join(kids)))
    return b"".join(stack[0][1])


_PROGRAMS = st.binary(max_size=200)
_SOUP_FAMILIES = st.sampled_from([c.AF_INET, c.AF_INET6, 0, 255])
_SOUP_TYPES = st.sampled_from([CT_NEW, CT_GET])


@st.composite
def soup_messages(draw: st.DrawFn) -> bytes:
    nfgen = struct.pack("=BBH", draw(_SOUP_FAMILIES), 0, 0)
    attrs = build_soup(draw(_PROGRAMS))
    return message(draw(_SOUP_TYPES), NLM_F_MULTI, 1, nfgen + attrs)


SEQ = 0x1234


def control_message(msg_type: int, err: int | None = None, seq: int = SEQ, flags: int = 0) -> bytes:
    payload = b"" if err is None else struct.pack("=i", err) + b"\0" * 16
    return message(msg_type, flags, seq, payload)


ERRNOS = st.sampled_from([0, -errno.EPERM, -errno.ENOBUFS, -errno.EINVAL, 1]) | st.integers(
    -(2**31), 2**31 - 1
)
_CONTROL_TYPES = st.sampled_from([NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN])
_CONTROL_ERRNOS = st.none() | ERRNOS
_CONTROL_SEQS = st.sampled_from([SEQ, SEQ, SEQ - 1])


@st.composite
def control_messages(draw: st.DrawFn) -> bytes:
    return control_message(draw(_CONTROL_TYPES), draw(_CONTROL_ERRNOS), draw(_CONTROL_SEQS))


_PARTS = st.lists(
    st.one_of(CORPUS_MESSAGES, mutated_messages(), soup_messages(), control_messages()),
    min_size=1,
    max_size=4,
)


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """Several messages (valid, mutated, soup, control) back to back, maybe corrupted after."""
    data = bytearray(b"".join(p + b"\0" * ((-len(p)) % 4) for p in draw(_PARTS)))
    if draw(_BOOL):
        data = m_bitflip(draw, data)
    if draw(_BOOL):
        data = m_truncate(draw, data)
    return bytes(data)


SLOW_INPUTS = st.one_of(
    st.binary(max_size=400),
    mutated_messages(FRESH_MESSAGES),
    soup_messages(),
    datagrams(),
)

# --- the fuzz tests -------------------------------------------------------------------------

FUZZ = settings(
    deadline=timedelta(seconds=1),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(FUZZ, max_examples=800)
@given(st.binary(max_size=400), st.integers(0, 400), st.integers(0, 400))
def test_fuzz_arbitrary_bytes(data: bytes, a: int, b: int) -> None:
    check_all(data)
    # any window inside the buffer (the decoder is given off/end into a datagram)
    off, end = sorted((min(a, len(data)), min(b, len(data))))
    check_all(data, off, end)


@settings(FUZZ, max_examples=1000)
@given(mutated_messages())
def test_fuzz_mutated_messages(data: bytes) -> None:
    check_all(data)


@settings(FUZZ, max_examples=600)
@given(soup_messages())
def test_fuzz_attribute_soup(data: bytes) -> None:
    check_all(data)


@settings(FUZZ, max_examples=300)
@given(datagrams())
def test_fuzz_datagrams(data: bytes) -> None:
    check_all(data)


@pytest.mark.slow
@settings(FUZZ, max_examples=100_000)
@given(SLOW_INPUTS)
def test_fuzz_slow(data: bytes) -> None:
    check_all(data)


# --- the fast decoder against the reference --------------------------------------------------


def _reference(buf: bytes, family: int) -> Flow | type[DecodeError]:
    try:
        return decode_flow(buf, 20, len(buf), family)
    except DecodeError:
        return DecodeError


def _fast(dec: FastDecoder, buf: bytes, family: int) -> Flow | type[DecodeError]:
    try:
        return dec.decode(buf, 20, len(buf), family)
    except DecodeError:
        return DecodeError


# Length-preserving damage: the message still fits a shape the fast decoder has learned, so it
# is the compiled shape (not the reference fallback) that must notice what changed.
SAME_LENGTH = [m_bitflip, m_attr_length, m_attr_type, m_huge]


@st.composite
def shape_variants(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> tuple[bytes, bytes]:
    base = draw(source)
    data = bytearray(base)
    for _ in range(draw(_STEPS)):
        data = pick(draw, SAME_LENGTH)(draw, data)
    if draw(_IDX) % 10 == 0:
        data = pick(draw, MUTATIONS)(draw, data)
    return base, bytes(data)


def check_fast_matches_reference(base: bytes, variant: bytes) -> None:
    """FastDecoder (what the dump uses) gives exactly what decode_flow gives, or the same
    DecodeError, for a learned shape and for every damaged copy of it."""
    family = base[16]
    dec = FastDecoder()
    with time_limit():
        for _ in range(2):  # dump 1 learns the shape; dump 2 decodes by it (and its cache)
            dec.begin()
            assert decoded_alike(_fast(dec, base, family), _reference(base, family))
            dec.end()
        dec.begin()
        if len(variant) >= 20:
            assert decoded_alike(_fast(dec, variant, family), _reference(variant, family))
            # now learned
            assert decoded_alike(_fast(dec, variant, family), _reference(variant, family))
        assert decoded_alike(_fast(dec, base, family), _reference(base, family))
        dec.end()


@settings(FUZZ, max_examples=800)
@given(shape_variants(CORPUS_MESSAGES))
def test_fuzz_fast_decoder_matches_reference(pair: tuple[bytes, bytes]) -> None:
    check_fast_matches_reference(*pair)


@pytest.mark.slow
@settings(FUZZ, max_examples=100_000)
@given(shape_variants(FRESH_MESSAGES))
def test_fuzz_fast_decoder_matches_reference_slow(pair: tuple[bytes, bytes]) -> None:
    check_fast_matches_reference(*pair)


@settings(FUZZ, max_examples=200)
@given(flows())
def test_fast_decoder_round_trip(x: tuple[dict[str, Any], bytes]) -> None:
    fields, msg = x
    dec = FastDecoder()
    for _ in range(3):
        dec.begin()
        assert dec.decode(msg, 20, len(msg), fields["family"]) == flow_of(fields)
        dec.end()


def test_fast_decoder_whole_corpus_twice() -> None:
    """Every corpus message through one decoder, twice (the second pass by learned shapes)."""
    dec = FastDecoder()
    for _ in range(2):
        dec.begin()
        got = [dec.decode(msg, 20, len(msg), fields["family"]) for fields, msg in CORPUS]
        dec.end()
        assert got == [flow_of(fields) for fields, _ in CORPUS]
    assert dec.nshapes > 0  # the fast path was really taken


def test_fuzz_checks_are_not_vacuous() -> None:
    """The checks above do see valid input: a well-formed datagram decodes fully."""
    msgs = [encode_flow_message(**fields_of(i)) for i in range(3)]
    data = b"".join(msgs)
    assert check_split(data) == 3
    assert check_decode(msgs[0]) == flow_of(fields_of(0))
    # orig, reply, status, counters, protoinfo, id
    assert check_iter_attrs(msgs[0], 20, len(msgs[0])) == 6
    assert check_decode(msgs[0][:-4]) is None  # cut: DecodeError, swallowed by the check


# --- the dump, end to end over a fake socket -------------------------------------------------


class FakeSock:
    """Stands in for the AF_NETLINK socket: records requests, replays datagrams."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.datagrams = list(datagrams)
        self.sent: list[bytes] = []
        self.closed = False

    def sendto(self, data: bytes, addr: object) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int, flags: int = 0) -> int:
        if not self.datagrams:
            raise AssertionError("the dump read past the end of the kernel's answer")
        assert flags & socket.MSG_TRUNC, "receive without MSG_TRUNC cannot detect truncation"
        data = self.datagrams.pop(0)
        n = min(len(data), nbytes)
        buf[:n] = data[:n]
        return len(data)  # MSG_TRUNC: the real length, even when it did not fit

    def close(self) -> None:
        self.closed = True


def fake_netlink(datagrams: list[bytes], cls: type[NetlinkSocket] = NetlinkSocket) -> NetlinkSocket:
    """A real NetlinkSocket (or subclass) whose kernel is a FakeSock; the next request gets SEQ.

    Built by its own __init__ (so every attribute it sets is there), then the AF_NETLINK
    socket is swapped for the fake.
    """
    nl = cls()
    nl.sock.close()
    nl.sock = FakeSock(datagrams)  # type: ignore[assignment]
    nl.seq = SEQ - 1
    return nl


def fake_client(datagrams: list[bytes]) -> tuple[ConntrackClient, FakeSock]:
    """A real ConntrackClient whose socket is swapped for the fake (of the class it uses)."""
    client = ConntrackClient()
    real = client._sock
    assert real is not None
    real.close()
    client._sock = fake_netlink(datagrams, type(real))
    return client, client._sock.sock  # type: ignore[return-value]


def fields_of(i: int, **more: Any) -> dict[str, Any]:
    return {
        "family": c.AF_INET,
        "protonum": c.IPPROTO_TCP,
        "orig": Tuple(f"10.0.0.{i}", "10.0.1.1", 40000 + i, 443),
        "reply": Tuple("10.0.1.1", f"10.0.0.{i}", 443, 40000 + i),
        "id": 1000 + i,
        "status": c.IPS_CONFIRMED,
        "state": 3,
        "orig_bytes": i,
        "seq": SEQ,
        **more,
    }


def entry(i: int, **more: Any) -> bytes:
    return encode_flow_message(**fields_of(i, **more))


def done(err: int = 0, seq: int = SEQ) -> bytes:
    return control_message(NLMSG_DONE, err, seq, NLM_F_MULTI)


def error(err: int, seq: int = SEQ) -> bytes:
    return control_message(NLMSG_ERROR, err, seq)


def test_dump_survives_malformed_stale_and_cut() -> None:
    missing_tuples = encode_flow_message(**fields_of(9))[:20] + be32(c.CTA_MARK, 1)
    missing_tuples = struct.pack("=I", len(missing_tuples)) + missing_tuples[4:]
    header_only = message(CT_NEW, NLM_F_MULTI, SEQ, b"")  # < nlmsghdr + nfgenmsg
    cut = entry(8)[:40]  # its header still says the full length: the datagram's tail is cut
    d1 = b"".join(
        [
            entry(1),
            missing_tuples,  # DecodeError: skipped, counted
            entry(2),
            entry(7, seq=SEQ - 3),  # stale: from an earlier, aborted dump
            error(-errno.EPERM, seq=SEQ - 3),  # a stale error must not end this dump
            done(seq=SEQ - 3),  # ... nor a stale DONE
        ]
    )
    d2 = b"".join([entry(3), header_only, control_message(NLMSG_NOOP), entry(4), cut])
    d3 = b"".join(
        [
            control_message(NLMSG_ERROR),  # no errno in it: malformed, counted
            entry(5, msg_flags=NLM_F_MULTI | NLM_F_DUMP_INTR),
            done(),
            entry(6),  # after DONE: never read
        ]
    )
    d4 = entry(10)  # a datagram after DONE: never received
    client, sock = fake_client([d1, d2, d3, d4])
    stats = DumpStats()
    raw: list[bytes] = []

    got = list(client.dump(stats, raw_sink=raw.append))

    assert got == [flow_of(fields_of(i)) for i in (1, 2, 3, 4, 5)]
    assert stats.malformed == 4  # missing tuples, header only, cut tail, short NLMSG_ERROR
    assert stats.stale == 3
    assert stats.datagrams == 3
    assert stats.messages == 7  # 5 flows + 2 undecodable conntrack messages
    assert stats.interrupted is True
    assert sock.datagrams == [d4]  # ended at NLMSG_DONE
    # the recording sink sees every message of this dump as sent, the closing DONE included
    e5 = entry(5, msg_flags=NLM_F_MULTI | NLM_F_DUMP_INTR)
    assert raw == [entry(1), missing_tuples, entry(2), entry(3), header_only, entry(4), e5, done()]
    # the request: one CT_GET dump for both families, with the sequence number answered
    (req,) = sock.sent
    length, msg_type, flags, seq, pid = NLMSG_HDR.unpack_from(req)
    assert client._sock is not None
    assert (length, msg_type, seq, pid) == (len(req), CT_GET, SEQ, client._sock.pid)
    assert flags == NLM_F_REQUEST | NLM_F_DUMP
    assert req[16] == c.AF_UNSPEC
    assert client._sock is not None and not sock.closed  # a clean end keeps the socket


def test_fast_framing_yields_what_the_careful_way_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dump with nothing to record or filter frames and decodes each datagram in one pass
    (`decode_data_messages`) as far as it holds data messages of the dump; from a message it
    does not take (the end, a stale or malformed one, NLM_F_DUMP_INTR), the careful way.
    Flows and counts are those of the careful way for every datagram (a recording sink forces
    it), on a client's first dump (received whole first) and on the next (streamed)."""
    missing_tuples = encode_flow_message(**fields_of(9))[:20] + be32(c.CTA_MARK, 1)
    missing_tuples = struct.pack("=I", len(missing_tuples)) + missing_tuples[4:]
    datagrams = [
        entry(1) + entry(2),  # clean: the fast path
        entry(3) + missing_tuples + entry(4),  # a DecodeError: careful, skipped and counted
        entry(5) + entry(6, seq=SEQ - 1) + entry(15),  # stale: careful from there
        entry(7, msg_flags=NLM_F_MULTI | NLM_F_DUMP_INTR),
        entry(8) + entry(8),  # clean, a key sent twice
        entry(11) + entry(12) + b"\0" * 8,  # trailing bytes
        entry(13) + done(),
        entry(14),  # after DONE: never received
    ]
    want = [flow_of(fields_of(i)) for i in (1, 2, 3, 4, 5, 15, 7, 8, 8, 11, 12, 13)]
    fused: list[int] = []
    real = client_module.decode_data_messages

    def spy(data: bytes, *args: Any) -> tuple[list[Flow], int]:
        flows, at = real(data, *args)
        fused.append(len(flows))
        return flows, at

    monkeypatch.setattr(client_module, "decode_data_messages", spy)
    for sink in (None, [].append):
        client, sock = fake_client(datagrams + datagrams)  # two dumps
        for dump in ("first", "next"):
            assert client._sock is not None
            client._sock.seq = SEQ - 1  # the same datagrams answer the next request
            stats = DumpStats()
            fused.clear()
            assert list(client.dump(stats, raw_sink=sink)) == want, dump
            counts = {name: getattr(stats, name) for name in DumpStats.__slots__}
            assert counts == {
                "datagrams": 7,
                "messages": 13,
                "malformed": 2,  # missing tuples, trailing bytes
                "stale": 1,
                "interrupted": True,
            }, dump
            # Taken by the fast path: 1, 2 | 5 (to the stale one) | 8, 8 | 11, 12 | 13 (to
            # DONE); datagrams 2 and 4 went the careful way whole. None with a sink.
            assert fused == ([2, 1, 0, 2, 2, 1] if sink is None else []), dump
            sock.datagrams.pop(0)  # the datagram after DONE, never received


def test_fast_framing_stops_where_the_data_messages_stop() -> None:
    """`decode_data_messages` on its own: every leading data message of the dump handed to
    its decoder, and where it stopped; counted, the messages it took."""
    seen: list[tuple[int, int, int]] = []

    def where(data: bytes, off: int, end: int, family: int) -> int:
        seen.append((off, end, family))
        return off

    one, two = entry(1), entry(2)
    clean = one + two
    stats = DumpStats()
    assert decode_data_messages(clean, SEQ, stats, {}, where) == ([20, len(one) + 20], len(clean))
    assert seen == [(20, len(one), c.AF_INET), (len(one) + 20, len(clean), c.AF_INET)]
    assert stats.messages == 2
    unpadded = one + message(CT_NEW, NLM_F_MULTI, SEQ, two[16:-1])  # its length not 4-aligned
    stats = DumpStats()
    assert decode_data_messages(unpadded, SEQ, stats, {}, where)[1] >= len(unpadded)
    assert stats.messages == 2
    for other, stop in (
        (clean + done(), len(clean)),
        (clean + error(0), len(clean)),
        (one + entry(2, seq=SEQ + 1), len(one)),
        (one + entry(2, msg_flags=NLM_F_MULTI | NLM_F_DUMP_INTR), len(one)),
        (clean + b"\0" * 3, len(clean)),
        (clean + b"\0" * 19, len(clean)),
        (clean + message(NLMSG_DONE, NLM_F_MULTI, SEQ, b""), len(clean)),  # bare, 16 bytes
        (clean[:-4], len(one)),  # the last message runs past the datagram
        (message(CT_NEW, NLM_F_MULTI, SEQ, b"") + clean, 0),  # shorter than nfgenmsg
    ):
        stats = DumpStats()
        flows, at = decode_data_messages(other, SEQ, stats, {}, where)
        assert at == stop and stats.messages == len(flows) == stop // len(one)


def test_a_dump_ends_at_the_end_whatever_comes_after_it_in_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dump ends at the datagram that ends the answer, even where something came after it
    in the same batch of recvmmsg (an event on a socket that listens to them): the first dump
    (received whole) does not wait for more, and the receiving thread, which only looks at a
    batch's last datagram and so goes on receiving, does not keep the socket: it would take
    the next answer's datagrams. The next request opens another."""
    batches = [[entry(1), entry(2) + done(), entry(50, seq=0)]]
    calls: list[str] = []
    release = threading.Event()

    def recv_batch(self: NetlinkSocket) -> list[bytes]:
        calls.append(threading.current_thread().name)
        if not batches:
            release.wait(10)  # as the kernel would: nothing more to receive
            raise NetlinkError("asked for more after the end of the answer")
        return batches.pop(0)

    monkeypatch.setattr(NetlinkSocket, "recv_batch", recv_batch)
    real_stop = netlink_module._Receiver.stop

    def stop(self: Any) -> None:  # once the thread is back in recv (no race with it)
        for _ in range(1000):
            if len(calls) == 2:
                break
            time.sleep(0.005)
        real_stop(self)

    monkeypatch.setattr(netlink_module._Receiver, "stop", stop)
    client, _sock = fake_client([])
    nl = client._sock
    assert nl is not None
    stats = DumpStats()
    try:
        assert list(client.dump(stats)) == [flow_of(fields_of(1)), flow_of(fields_of(2))]
        assert stats.datagrams == 2  # the event after the end was received, never read
        assert calls == ["cttop-netlink-recv", "cttop-netlink-recv"]  # the second: blocked
        assert nl.closed  # given up, with the receiving thread still in it
        fresh = client._open()
        assert fresh is not nl and not fresh.closed
    finally:
        release.set()
        client.close()


def test_dump_repeated_secctx_is_skipped_or_decoded_never_a_crash() -> None:
    """The same (odd but well-framed) message twice in one dump: the second goes through the
    fast decoder's compiled shape. It must yield what the reference decoder yields (or skip
    it as malformed), never raise something that is not a ConntrackError."""
    odd = entry(1, secctx="x_t")
    # a second, empty CTA_SECCTX after the real one (length 4, no children)
    odd = odd + struct.pack("=HH", 4, c.CTA_SECCTX | NLA_F_NESTED)
    odd = struct.pack("=I", len(odd)) + odd[4:]
    expected = flow_of(fields_of(1, secctx="x_t"))
    client, _ = fake_client([odd + odd, odd, done()])
    assert list(client.dump()) == [expected, expected, expected]


def test_dump_empty_table() -> None:
    client, _ = fake_client([done()])
    stats = DumpStats()
    assert list(client.dump(stats)) == []
    assert (stats.datagrams, stats.messages, stats.malformed, stats.stale) == (1, 0, 0, 0)


def test_dump_done_without_errno_payload() -> None:
    """Old kernels send NLMSG_DONE with no payload at all."""
    client, _ = fake_client([entry(1) + message(NLMSG_DONE, NLM_F_MULTI, SEQ, b"")])
    assert list(client.dump()) == [flow_of(fields_of(1))]


def test_dump_eperm_is_permission_denied() -> None:
    client, sock = fake_client([entry(1), error(-errno.EPERM)])
    flows_seen: list[Flow] = []
    with pytest.raises(PermissionDenied) as info:
        for flow in client.dump():
            flows_seen.append(flow)
    assert str(info.value) == "cttop needs root or CAP_NET_ADMIN to read the conntrack table"
    assert info.value.errno == errno.EPERM
    # Framed as it is decoded (a fresh client's first dump too, received whole first): the
    # entry before the error came out, then the error stopped the dump.
    assert flows_seen == [flow_of(fields_of(1))]
    assert sock.closed and client._sock is None  # never reuse a half-read socket


def test_a_dump_received_whole_is_let_go_as_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cold client's dump, received whole, is handed out in order, and each datagram
    handed out is no longer held by the client; the heap is trimmed every few hundred."""
    trims: list[int] = []
    monkeypatch.setattr(client_module, "trim_heap", lambda: trims.append(len(received)))
    items = [bytes([i % 256]) * 8 for i in range(600)]
    received = list(items)
    seen = []
    for item in client_module._drained(received):
        seen.append(item)
        assert len(received) == len(items) - len(seen)
    assert seen == items
    assert trims == [512, 256, 0]


def test_netlink_responses_eperm() -> None:
    nl = fake_netlink([error(-errno.EPERM)])
    with pytest.raises(NetlinkErrno) as info:
        list(nl.responses(SEQ, DumpStats()))
    assert info.value.errno == errno.EPERM


@pytest.mark.parametrize(
    ("err", "exc"),
    [
        (errno.ENOBUFS, ConntrackError),
        (errno.EINVAL, ConntrackError),
        (errno.EINTR, ConntrackError),
        (errno.EPERM, PermissionDenied),
    ],
)
def test_dump_done_with_negative_errno_raises(err: int, exc: type[ConntrackError]) -> None:
    client, sock = fake_client([entry(1) + done(-err)])
    with pytest.raises(exc) as info:
        list(client.dump())
    assert info.value.errno == err
    assert type(info.value) is exc
    assert sock.closed
    # at the netlink layer: NetlinkErrno with the same errno
    nl = fake_netlink([entry(1) + done(-err)])
    with pytest.raises(NetlinkErrno) as raw:
        list(nl.responses(SEQ, DumpStats()))
    assert raw.value.errno == err


def test_dump_ack_ends_it() -> None:
    client, sock = fake_client([entry(1) + error(0), entry(2)])
    assert list(client.dump()) == [flow_of(fields_of(1))]
    assert len(sock.datagrams) == 1


def test_dump_overrun_raises() -> None:
    client, _ = fake_client([entry(1) + control_message(NLMSG_OVERRUN)])
    with pytest.raises(ConntrackError) as info:
        list(client.dump())
    assert info.value.errno == errno.ENOBUFS


def test_dump_truncated_datagram_raises() -> None:
    """A datagram bigger than the receive buffer (MSG_TRUNC) loses flows: an error, loudly."""
    big = b"".join(entry(i % 200) for i in range(RECV_BUFFER // len(entry(1)) + 10))
    assert len(big) > RECV_BUFFER
    nl = fake_netlink([big])
    with pytest.raises(TruncatedDatagram):
        list(nl.responses(SEQ, DumpStats()))

    client, sock = fake_client([entry(1), big, done()])
    with pytest.raises(ConntrackError) as info:
        list(client.dump())
    assert not isinstance(info.value, PermissionDenied)
    assert "does not fit" in str(info.value)
    assert sock.closed


@pytest.mark.parametrize("err", [-4096, -(2**31 - 1), -(2**31)])
@pytest.mark.parametrize("kind", [NLMSG_ERROR, NLMSG_DONE])
def test_odd_negative_errno_values_stay_netlink_errors(kind: int, err: int) -> None:
    """Whatever negative errno the kernel (or a corrupted datagram) puts in NLMSG_ERROR or
    NLMSG_DONE, the netlink layer raises a NetlinkError and the operator gets a ConntrackError,
    never a traceback. (INT_MIN cannot be negated into a C int for os.strerror.)"""
    answer = control_message(kind, err, SEQ, NLM_F_MULTI if kind == NLMSG_DONE else 0)
    nl = fake_netlink([answer])
    with pytest.raises(NetlinkError):
        list(nl.responses(SEQ, DumpStats()))
    client, _ = fake_client([answer])
    with pytest.raises(ConntrackError):
        list(client.dump())


_ANSWER_ITEMS = st.lists(
    st.one_of(
        CORPUS_MESSAGES.map(lambda m: with_seq(m, SEQ)),
        CORPUS_MESSAGES,  # seq 0: stale
        mutated_messages().map(lambda m: with_seq(m, SEQ) if len(m) >= 16 else m),
        soup_messages().map(lambda m: with_seq(m, SEQ)),
        control_messages(),
        st.binary(max_size=40),
    ),
    max_size=8,
)


@st.composite
def dump_answers(draw: st.DrawFn) -> list[bytes]:
    """A kernel answer gone wrong in every way: datagrams of valid, mutated, stale and control
    messages, ending with a DONE datagram."""
    out: list[bytes] = []
    cur = b""
    for item in draw(_ANSWER_ITEMS):
        cur += item + b"\0" * ((-len(item)) % 4)
        if draw(_BOOL):
            out.append(cur)
            cur = b""
    if cur:
        out.append(cur)
    # DONE in a datagram of its own: a bad length before it in the same datagram would
    # (rightly) hide it, and the fake socket would then have nothing more to give.
    out.append(done())
    return out


@settings(FUZZ, max_examples=300)
@given(dump_answers())
def test_fuzz_dump(answer: list[bytes]) -> None:
    client, sock = fake_client(answer)
    stats = DumpStats()
    got: list[Flow] = []
    with time_limit():
        try:
            for flow in client.dump(stats):
                got.append(flow)
        except ConntrackError:
            assert sock.closed
    assert all(isinstance(f, Flow) for f in got)
    assert len(got) <= stats.messages
    assert 1 <= stats.datagrams <= len(answer)
