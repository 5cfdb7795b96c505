"""A fast, seeded mutation fuzzer for the byte-level code, without hypothesis.

    report = fuzz(100_000, seed=7)
    assert not report.failures, report.describe()

Plain `random.Random(seed)`: the same inputs on every run, a few microseconds per mutation. Seeds
are the kernel's own messages (tests/fixtures/golden/mix.nlmsgs), the tests/ctgen.py corpus (with
its encoding knobs: 32-bit counters, nests without NLA_F_NESTED, unknown attributes, padding) and
hand-made bad cases (zero-length attributes, lying lengths, deep nests, wrong-size values, ...).

Each input is 1-4 stacked mutations of a seed, byte-level (bit flips, truncation, nlmsg_len and
attribute length corruption, splices from other seeds, inserted/appended bytes) or structural (the
message parsed into an attribute tree, changed, re-serialised with correct lengths, so the framing
holds and the decoder meets the damage in its semantics: 64-bit counters turned into
CTA_COUNTERS32, NLA_F_NESTED removed, unknown types, values of the wrong size, repeated, dropped
and reordered attributes, deep nests).

Every input goes through:

* `decode_message(buf, 0, len)`: a `Flow` or `DecodeError`, nothing else;
* `FastDecoder.decode` (one decoder for the whole run, shapes learned from the seeds, a new "dump"
  every 64 inputs) against `decode_flow`, the reference: the same `Flow`, or both `DecodeError`;
* one datagram of 1-4 inputs (and sometimes a control message) through `split_datagram` and
  `frame_answer`: messages in bounds, aligned and in order; `frame_answer` agrees with an oracle
  built on `split_datagram` (which messages are data, which are stale, where the answer ends, which
  errno it raises) and with `ends_answer`, the receiving thread's idea of where the answer ends;
  `decode_data_messages`, the fast path's framing, takes only what frame_answer finds clean.

Hangs: a watchdog (SIGALRM) bounds every block of inputs; a hang is reported with the input.
"""

from __future__ import annotations

import errno
import random
import signal
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from cttop.conntrack import const as c
from cttop.conntrack.decode import DecodeError, FastDecoder, decode_flow, decode_message
from cttop.conntrack.model import Flow
from cttop.netlink import (
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    DumpStats,
    NetlinkErrno,
    decode_data_messages,
    ends_answer,
    frame_answer,
    message,
    split_datagram,
)
from tests.ctgen import (
    CT_DELETE,
    CT_GET,
    CT_NEW,
    corpus,
    decoded_alike,
    encode_flow_message,
    random_flow_fields,
)

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden" / "mix.nlmsgs"
HDR = 16  # nlmsghdr
PAYLOAD = 20  # nlmsghdr + nfgenmsg
SEQ = 0x5EED

# --- the attribute tree (structural mutations) -------------------------------------------------

# (type with flags, leaf value or None, children or None)
Node = list  # [int, bytes | None, list[Node] | None]


def parse(buf: bytes, off: int, end: int, depth: int = 0) -> list[Node]:
    """Attributes of buf[off:end] as a tree; tolerant (a bad header ends the level, the rest is
    dropped). A nest is what carries NLA_F_NESTED, or — as old kernels sent them — a value that
    itself parses as attributes exactly."""
    out: list[Node] = []
    while end - off >= 4:
        length, t = struct.unpack_from("=HH", buf, off)
        if length < 4 or off + length > end:
            break
        s, e = off + 4, off + length
        kids = _as_nest(buf, s, e, depth) if (t & NLA_F_NESTED or depth < 3) else None
        if kids is not None and (t & NLA_F_NESTED or _exact(buf, s, e)):
            out.append([t, None, kids])
        else:
            out.append([t, bytes(buf[s:e]), None])
        off += (length + 3) & ~3
    return out


def _exact(buf: bytes, s: int, e: int) -> bool:
    if e - s < 4:
        return False
    while e - s >= 4:
        length, _t = struct.unpack_from("=HH", buf, s)
        if length < 4 or s + length > e:
            return False
        s += (length + 3) & ~3
    return s == e or s == (e + 3) & ~3


def _as_nest(buf: bytes, s: int, e: int, depth: int) -> list[Node] | None:
    if depth > 12 or e - s < 4:
        return None
    return parse(buf, s, e, depth + 1)


def serialize(nodes: list[Node]) -> bytes:
    parts = []
    for t, value, kids in nodes:
        body = serialize(kids) if kids is not None else value
        length = 4 + len(body)
        if length > 0xFFFF:  # cannot be framed: cut it (still a valid, shorter attribute)
            body = body[: 0xFFFF - 4]
            length = 0xFFFF
        parts.append(struct.pack("=HH", length, t) + body + b"\0" * ((-length) % 4))
    return b"".join(parts)


def all_nodes(nodes: list[Node], parent: list[Node] | None = None) -> Iterator[tuple[Node, list]]:
    """(node, the list holding it) for every node, depth first."""
    for n in nodes:
        yield n, nodes
        if n[2] is not None:
            yield from all_nodes(n[2], nodes)


def rebuild(head: bytes, nodes: list[Node]) -> bytearray:
    """nlmsghdr + nfgenmsg `head` (nlmsg_len fixed up) + the serialised tree."""
    body = serialize(nodes)
    out = bytearray(head + body)
    if len(out) >= 4:
        struct.pack_into("=I", out, 0, len(out))
    return out


# --- seeds --------------------------------------------------------------------------------------


def golden_messages() -> list[bytes]:
    """The kernel's messages of the known mix, as captured (tests/fixtures/golden)."""
    data = GOLDEN.read_bytes()
    return [m.raw() for m in split_datagram(data, DumpStats())]


def _bad(attrs: bytes, family: int = c.AF_INET, msg_type: int = CT_NEW) -> bytes:
    nfgen = struct.pack("=BBH", family, 0, 0)
    return message(msg_type, NLM_F_MULTI, 0, nfgen + attrs)


def _a(t: int, value: bytes, length: int | None = None) -> bytes:
    real = 4 + len(value)
    return struct.pack("=HH", real if length is None else length, t) + value + b"\0" * (-real % 4)


def _n(t: int, *kids: bytes) -> bytes:
    return _a(t | NLA_F_NESTED, b"".join(kids))


def hand_made() -> list[bytes]:
    """Inputs no kernel sends, each aimed at one rule of the decoder."""
    v4 = _n(
        c.CTA_TUPLE_IP,
        _a(c.CTA_IP_V4_SRC, b"\x0a\0\0\1"),
        _a(c.CTA_IP_V4_DST, b"\x0a\0\0\2"),
    )
    proto = _n(c.CTA_TUPLE_PROTO, _a(c.CTA_PROTO_NUM, b"\x11"), _a(c.CTA_PROTO_SRC_PORT, b"\0\1"))
    tup = _n(c.CTA_TUPLE_ORIG, v4, proto)
    rep = _n(c.CTA_TUPLE_REPLY, v4, proto)
    deep = _a(c.CTA_MARK, b"\0\0\0\1")
    for _ in range(200):
        deep = _n(c.CTA_PROTOINFO, deep)
    return [
        b"",
        b"\0" * 4,
        struct.pack("=IHHII", 16, CT_NEW, 0, 0, 0),  # header only
        _bad(b""),  # no attributes
        _bad(tup + rep),  # minimal valid
        _bad(tup + rep + _a(0, b"", length=0)),  # zero-length attribute: must not loop
        _bad(_a(0, b"", length=0) * 8 + tup + rep),
        _bad(tup + rep + _a(c.CTA_MARK, b"\0\0\0\1", length=3)),
        _bad(tup + rep + _a(c.CTA_MARK, b"\0\0\0\1", length=0xFFFF)),
        _bad(tup + rep + _n(c.CTA_COUNTERS_ORIG)),  # empty nest
        _bad(tup + rep + _n(c.CTA_COUNTERS_ORIG, _a(c.CTA_COUNTERS_BYTES, b"\1" * 7))),
        _bad(tup + rep + _n(c.CTA_COUNTERS_ORIG, _a(c.CTA_COUNTERS32_BYTES, b"\1" * 4))),
        _bad(tup + rep + _n(c.CTA_COUNTERS_REPLY, _n(c.CTA_COUNTERS_PACKETS, b"\0" * 8))),
        _bad(tup + rep + _a(c.CTA_STATUS | NLA_F_NESTED, b"\0\0\0\1")),
        _bad(tup + rep + _a(c.CTA_STATUS | NLA_F_NET_BYTEORDER, b"\0\0\0\1")),
        _bad(rep + tup),  # reply before orig
        _bad(tup),  # one tuple
        _bad(tup + tup + rep + rep),  # repeated tuples
        _bad(_n(c.CTA_TUPLE_ORIG, v4) + rep),  # no protocol number
        _bad(_n(c.CTA_TUPLE_ORIG, _n(c.CTA_TUPLE_IP, _a(c.CTA_IP_V4_SRC, b"\1" * 5)), proto) + rep),
        _bad(_n(c.CTA_TUPLE_ORIG, _n(c.CTA_TUPLE_IP, _a(c.CTA_IP_V6_SRC, b"\1" * 4)), proto) + rep),
        _bad(_n(c.CTA_TUPLE_ORIG, _n(c.CTA_TUPLE_IP, _n(c.CTA_IP_V4_SRC, b"\1" * 4)), proto) + rep),
        _bad(tup + rep + deep),  # 200 levels of nesting
        _bad(tup + rep + _a(0x3FFF, b"")),
        _bad(tup + rep + _a(c.CTA_LABELS, b"\xff" * 1000)),
        _bad(tup + rep + _n(c.CTA_HELP, _a(c.CTA_HELP_NAME, b"\xff\xfe\0junk"))),
        _bad(tup + rep + _a(c.CTA_ID, b"")),
        _bad(tup + rep + _a(99, b"x") * 2000),  # many small unknown attributes
        _bad(tup + rep, family=0),
        _bad(tup + rep, family=255),
        _bad(tup + rep, msg_type=CT_DELETE),
        _bad(tup + rep, msg_type=CT_GET | 0x2000),  # another subsystem
        _bad(tup + rep + b"\1\2\3"),  # trailing bytes shorter than a header
        _bad(tup + rep)[:-1],  # cut by one
        message(NLMSG_DONE, NLM_F_MULTI, 0, b""),
        message(NLMSG_ERROR, 0, 0, b""),
    ]


def knob_corpus(n: int, seed: int) -> list[bytes]:
    """ctgen messages with the encodings old or odd kernels use, forced on."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fields = random_flow_fields(rng)
        fields["unknown"] = i % 2 == 0
        fields["nested_flag"] = i % 3 != 0
        if i % 4 == 0 and all(
            v is None or v < 2**32
            for v in (fields[k] for k in ("orig_packets", "orig_bytes", "reply_packets"))
        ):
            rb = fields["reply_bytes"]
            if rb is None or rb < 2**32:
                fields["counters32"] = True
        out.append(encode_flow_message(**fields))
    return out


def seeds(ctgen: int = 256, knobs: int = 64) -> list[bytes]:
    return [
        *golden_messages(),
        *(msg for _, msg in corpus(ctgen, seed=11)),
        *knob_corpus(knobs, seed=12),
        *hand_made(),
    ]


# --- mutations ----------------------------------------------------------------------------------

INTERESTING16 = (0, 1, 2, 3, 4, 5, 7, 8, 12, 0x7FFF, 0x8000, 0xFFFC, 0xFFFF)
INTERESTING32 = (0, 1, 15, 16, 19, 20, 21, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
WRONG_SIZES = (0, 1, 2, 3, 5, 6, 7, 8, 9, 15, 16, 17, 32)


class Mutator:
    def __init__(self, rng: random.Random, pool: list[bytes]) -> None:
        self.r = rng
        self.pool = pool
        self.used: Counter[str] = Counter()  # how often each mutation ran
        self.byte_ops: list[Callable[[bytearray], bytearray]] = [
            self.bitflip,
            self.bitflip,
            self.set_bytes,
            self.truncate,
            self.nlmsg_len,
            self.attr_len,
            self.attr_len,
            self.attr_type,
            self.splice,
            self.insert_bytes,
            self.append,
            self.crossover,
        ]
        self.tree_ops: list[Callable[[list[Node]], None]] = [
            self.counters32,
            self.drop_nested_flag,
            self.add_unknown,
            self.retype_unknown,
            self.resize_value,
            self.resize_value,
            self.drop,
            self.repeat,
            self.shuffle,
            self.flatten_or_wrap,
            self.splice_tree,
        ]

    # -- helpers --

    def _headers(self, data: bytearray) -> list[int]:
        """Offsets of attribute headers that fit (tolerant, any depth)."""
        out: list[int] = []

        def walk(off: int, end: int, depth: int) -> None:
            while end - off >= 4 and depth < 16:
                length, t = struct.unpack_from("=HH", data, off)
                if length < 4 or off + length > end:
                    return
                out.append(off)
                if t & NLA_F_NESTED or (length >= 8 and depth < 3):
                    walk(off + 4, off + length, depth + 1)
                off += (length + 3) & ~3

        walk(PAYLOAD, len(data), 0)
        return out

    # -- byte level --

    def bitflip(self, d: bytearray) -> bytearray:
        r = self.r
        if d:
            for _ in range(r.randint(1, 6)):
                d[r.randrange(len(d))] ^= 1 << r.randrange(8)
        return d

    def set_bytes(self, d: bytearray) -> bytearray:
        if d:
            i = self.r.randrange(len(d))
            d[i] = self.r.choice((0, 1, 3, 4, 0x7F, 0x80, 0xFF))
        return d

    def truncate(self, d: bytearray) -> bytearray:
        cut = self.r.randrange(len(d) + 1)
        d = d[:cut]
        if len(d) >= 4 and self.r.random() < 0.5:
            struct.pack_into("=I", d, 0, len(d))  # a consistent, shorter message
        return d

    def nlmsg_len(self, d: bytearray) -> bytearray:
        if len(d) >= 4:
            r = self.r
            v = r.choice((*INTERESTING32, len(d) - 1, len(d) + 1, len(d) + 4, r.randrange(1 << 32)))
            struct.pack_into("=I", d, 0, max(0, min(v, 0xFFFFFFFF)))
        return d

    def attr_len(self, d: bytearray) -> bytearray:
        heads = self._headers(d)
        if heads:
            r = self.r
            off = r.choice(heads)
            (cur,) = struct.unpack_from("=H", d, off)
            v = r.choice((*INTERESTING16, cur + r.randint(-8, 8), r.randrange(0x10000)))
            struct.pack_into("=H", d, off, max(0, min(v, 0xFFFF)))
        return d

    def attr_type(self, d: bytearray) -> bytearray:
        heads = self._headers(d)
        if heads:
            r = self.r
            off = r.choice(heads)
            (t,) = struct.unpack_from("=H", d, off + 2)
            t = r.choice(
                (
                    t ^ NLA_F_NESTED,
                    t ^ NLA_F_NET_BYTEORDER,
                    r.randrange(32) | (t & 0xC000),
                    r.randrange(0x10000),
                    0x3FFF,
                )
            )
            struct.pack_into("=H", d, off + 2, t)
        return d

    def _chunk(self) -> bytes:
        """One attribute cut out of another seed (its own length, padded)."""
        other = bytearray(self.r.choice(self.pool))
        heads = self._headers(other)
        if not heads:
            return bytes(self.r.randbytes(self.r.randint(1, 12)))
        off = self.r.choice(heads)
        (length,) = struct.unpack_from("=H", other, off)
        return bytes(other[off : off + ((length + 3) & ~3)])

    def splice(self, d: bytearray) -> bytearray:
        heads = self._headers(d)
        pos = self.r.choice(heads) if heads and self.r.random() < 0.7 else len(d)
        return d[:pos] + self._chunk() + d[pos:]

    def insert_bytes(self, d: bytearray) -> bytearray:
        pos = self.r.randrange(len(d) + 1)
        return d[:pos] + self.r.randbytes(self.r.randint(1, 8)) + d[pos:]

    def append(self, d: bytearray) -> bytearray:
        return d + self.r.randbytes(self.r.randint(1, 40))

    def crossover(self, d: bytearray) -> bytearray:
        other = self.r.choice(self.pool)
        if not d or not other:
            return d
        a = self.r.randrange(len(d))
        n = self.r.randint(1, 64)
        d[a : a + n] = other[a : a + n] if a < len(other) else other[:n]
        return d

    # -- structural (framing stays valid) --

    def counters32(self, nodes: list[Node]) -> None:
        """u64 counters -> CTA_COUNTERS32_* (value cut to its low 32 bits, or any u32)."""
        for n, _ in all_nodes(nodes):
            if n[2] is not None and n[0] & 0x3FFF in (c.CTA_COUNTERS_ORIG, c.CTA_COUNTERS_REPLY):
                for k in n[2]:
                    kt = k[0] & 0x3FFF
                    if kt in (c.CTA_COUNTERS_PACKETS, c.CTA_COUNTERS_BYTES) and k[1] is not None:
                        k[0] = (k[0] & 0xC000) | (kt + 2)
                        k[1] = (k[1][-4:] if self.r.random() < 0.8 else self.r.randbytes(4)).rjust(
                            4, b"\0"
                        )
                if self.r.random() < 0.5:
                    return

    def drop_nested_flag(self, nodes: list[Node]) -> None:
        nests = [n for n, _ in all_nodes(nodes) if n[2] is not None]
        if not nests:
            return
        every = self.r.random() < 0.3
        for n in nests if every else [self.r.choice(nests)]:
            n[0] &= ~NLA_F_NESTED

    def add_unknown(self, nodes: list[Node]) -> None:
        r = self.r
        lists = [nodes] + [n[2] for n, _ in all_nodes(nodes) if n[2] is not None]
        target = r.choice(lists)
        t = r.choice((0, 29, 30, 99, 0x3FFF, r.randrange(0x4000))) | r.choice((0, NLA_F_NESTED))
        value = r.randbytes(r.choice(WRONG_SIZES))
        target.insert(r.randint(0, len(target)), [t, value, None])

    def retype_unknown(self, nodes: list[Node]) -> None:
        everything = list(all_nodes(nodes))
        if everything:
            n, _ = self.r.choice(everything)
            n[0] = (n[0] & 0xC000) | self.r.choice((0, 28, 31, 200, 0x3FFF))

    def resize_value(self, nodes: list[Node]) -> None:
        leaves = [n for n, _ in all_nodes(nodes) if n[1] is not None]
        if leaves:
            n = self.r.choice(leaves)
            size = self.r.choice(WRONG_SIZES)
            n[1] = (n[1] + self.r.randbytes(size))[:size]

    def drop(self, nodes: list[Node]) -> None:
        everything = list(all_nodes(nodes))
        if everything:
            n, holder = self.r.choice(everything)
            holder.remove(n)

    def repeat(self, nodes: list[Node]) -> None:
        everything = list(all_nodes(nodes))
        if everything:
            n, holder = self.r.choice(everything)
            copy = parse(serialize([n]), 0, len(serialize([n])))
            holder.insert(self.r.randint(0, len(holder)), copy[0] if copy else n)

    def shuffle(self, nodes: list[Node]) -> None:
        lists = [nodes] + [n[2] for n, _ in all_nodes(nodes) if n[2] is not None]
        self.r.shuffle(self.r.choice(lists))

    def flatten_or_wrap(self, nodes: list[Node]) -> None:
        everything = list(all_nodes(nodes))
        if not everything:
            return
        n, _ = self.r.choice(everything)
        if n[2] is not None and self.r.random() < 0.5:  # a nest becomes its raw bytes
            n[1], n[2] = serialize(n[2]), None
        else:  # wrapped in 1-40 more nests
            inner = [n[0], n[1], n[2]]
            for _ in range(self.r.randint(1, 40)):
                inner = [n[0] | NLA_F_NESTED, None, [inner]]
            n[0], n[1], n[2] = inner

    def splice_tree(self, nodes: list[Node]) -> None:
        chunk = self._chunk()
        got = parse(chunk, 0, len(chunk))
        if got:
            lists = [nodes] + [n[2] for n, _ in all_nodes(nodes) if n[2] is not None]
            target = self.r.choice(lists)
            target.insert(self.r.randint(0, len(target)), got[0])

    # -- one input --

    def mutate(self, seed: bytes) -> bytes:
        r = self.r
        data = bytearray(seed)
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4))):
            if r.random() < 0.45 and len(data) >= PAYLOAD:
                head = bytes(data[:PAYLOAD])
                nodes = parse(data, PAYLOAD, len(data))
                tree_op = r.choice(self.tree_ops)
                tree_op(nodes)
                data = rebuild(head, nodes)
                self.used[tree_op.__name__] += 1
            else:
                byte_op = r.choice(self.byte_ops)
                data = byte_op(data)
                self.used[byte_op.__name__] += 1
        return bytes(data)


# --- the checks ---------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"no progress for {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Failure:
    check: str
    data: bytes
    problem: str

    def __str__(self) -> str:
        return f"{self.check}: {self.problem}\n  input ({len(self.data)} bytes): {self.data.hex()}"


@dataclass
class Report:
    inputs: int = 0
    decoded: int = 0  # decode_message gave a Flow
    rejected: int = 0  # decode_message raised DecodeError
    fast_path: int = 0  # inputs the fast decoder decoded by a learned shape (not the reference)
    datagrams: int = 0
    fused: int = 0  # datagrams decode_data_messages took
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    mutations: dict[str, int] = field(default_factory=dict)  # mutation name -> times applied

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def fail(self, check: str, data: bytes, problem: str) -> None:
        key = f"{check}: {problem.split(':')[0]}"
        self.kinds[key] = self.kinds.get(key, 0) + 1
        if len(self.failures) < 20:
            self.failures.append(Failure(check, data, problem))

    def describe(self) -> str:
        head = (
            f"{self.inputs:,} inputs in {self.seconds:.1f} s ({self.rate:,.0f}/s): "
            f"{self.decoded:,} decoded, {self.rejected:,} rejected, {self.fast_path:,} by a "
            f"learned shape, {self.datagrams:,} datagrams ({self.fused:,} framed by the fast "
            f"path); failures by kind: {self.kinds}"
        )
        return "\n".join([head, *map(str, self.failures)])


def check_message(data: bytes, dec: FastDecoder, report: Report) -> None:
    try:
        flow = decode_message(data, 0, len(data))
    except DecodeError:
        report.rejected += 1
    except Hang:
        raise
    except Exception as e:
        report.fail("decode_message", data, f"{type(e).__name__}: {e}")
    else:
        if not isinstance(flow, Flow):
            report.fail("decode_message", data, f"returned {type(flow).__name__}")
        else:
            report.decoded += 1
    if len(data) < PAYLOAD:
        return
    family = data[HDR]
    try:
        ref: Flow | str = decode_flow(data, PAYLOAD, len(data), family)
    except DecodeError:
        ref = "DecodeError"
    except Hang:
        raise
    except Exception as e:
        report.fail("decode_flow", data, f"{type(e).__name__}: {e}")
        return
    before = dec.nshapes
    shapes = dec.shapes.get(len(data) - PAYLOAD)
    try:
        fast: Flow | str = dec.decode(data, PAYLOAD, len(data), family)
    except DecodeError:
        fast = "DecodeError"
    except Hang:
        raise
    except Exception as e:
        report.fail("FastDecoder.decode", data, f"{type(e).__name__}: {e}")
        return
    if not decoded_alike(fast, ref):
        report.fail("FastDecoder.decode", data, f"differs from decode_flow: {fast!r} != {ref!r}")
    elif shapes and dec.nshapes == before and not isinstance(fast, str):
        report.fast_path += 1


def _oracle(data: bytes, seq: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None, int]:
    """What frame_answer must return, from split_datagram's framing: (data messages, ending,
    errno it must raise or 0). Raises nothing."""
    out: list[tuple[int, int]] = []
    for m in split_datagram(data, DumpStats()):
        if m.seq != seq:
            continue
        length = m.end - m.off
        if m.type >= NLMSG_MIN_TYPE:
            out.append((m.off, m.end))
        elif m.type == NLMSG_DONE:
            if length >= HDR + 4:
                (err,) = struct.unpack_from("=i", data, m.off + HDR)
                if err < 0:
                    return out, None, -err
            return out, (m.off, m.end), 0
        elif m.type == NLMSG_ERROR and length >= HDR + 4:
            (err,) = struct.unpack_from("=i", data, m.off + HDR)
            if err < 0:
                return out, None, -err
            return out, (m.off, m.end), 0
        elif m.type == NLMSG_OVERRUN:
            return out, None, errno.ENOBUFS
    return out, None, 0


def check_datagram(data: bytes, seq: int, report: Report) -> None:
    report.datagrams += 1
    stats = DumpStats()
    prev = 0
    n = len(data)
    try:
        for m in split_datagram(data, stats):
            if m.off % 4 or m.off < prev or not (m.off + HDR <= m.end <= n):
                report.fail("split_datagram", data, f"message [{m.off}, {m.end}) out of order")
            prev = m.end
        if stats.malformed not in (0, 1):
            report.fail("split_datagram", data, f"malformed counted {stats.malformed} times")
    except Hang:
        raise
    except Exception as e:
        report.fail("split_datagram", data, f"{type(e).__name__}: {e}")
        return

    want_out, want_end, want_err = _oracle(data, seq)
    stats = DumpStats()
    try:
        out, ending = frame_answer(data, seq, stats)
    except NetlinkErrno as e:
        if e.errno != want_err:
            report.fail("frame_answer", data, f"raised errno {e.errno}, oracle says {want_err}")
        got_end = True
    except Hang:
        raise
    except Exception as e:
        report.fail("frame_answer", data, f"{type(e).__name__}: {e}")
        return
    else:
        if want_err:
            report.fail("frame_answer", data, f"did not raise errno {want_err}")
        elif (out, ending) != (want_out, want_end):
            report.fail(
                "frame_answer",
                data,
                f"framed {out} ending {ending}, oracle says {want_out} ending {want_end}",
            )
        elif stats.messages != len(out):
            report.fail("frame_answer", data, f"counted {stats.messages} for {len(out)} messages")
        got_end = ending is not None
    check_fused_framing(data, seq, report)
    ends = ends_answer(data, seq)
    if ends != got_end:
        short_error = any(
            m.seq == seq and m.type == NLMSG_ERROR and m.end - m.off < HDR + 4
            for m in split_datagram(data, DumpStats())
        )
        report.fail(
            "ends_answer (short NLMSG_ERROR)" if short_error else "ends_answer",
            data,
            f"receiving thread says the answer {'ends' if ends else 'goes on'} here, "
            f"frame_answer says it {'ends' if got_end else 'goes on'}",
        )


def _message_bounds(data: bytes, off: int, end: int, family: int) -> tuple[int, int, int]:
    """A stand-in decoder for `decode_data_messages`: where it was called."""
    return off - PAYLOAD, end, family


def _framed(
    data: bytes, seq: int, start: int = 0
) -> tuple[list[tuple[int, int]], tuple[int, int] | None, int, dict[str, int]]:
    """frame_answer from `start`: (messages, ending, errno raised or 0, counts)."""
    stats = DumpStats()
    try:
        out, ending = frame_answer(data, seq, stats, start)
        err = 0
    except NetlinkErrno as e:
        out, ending, err = [], None, e.errno
    return out, ending, err, {name: getattr(stats, name) for name in DumpStats.__slots__}


def check_fused_framing(data: bytes, seq: int, report: Report) -> None:
    """`decode_data_messages`, the fast path's framing, takes the datagram's leading data
    messages of `seq` and hands each to its decoder; `frame_answer` from where it stopped
    must then say what frame_answer says of the whole datagram, about the rest of it."""
    stats = DumpStats()
    try:
        got, at = decode_data_messages(data, seq, stats, {}, _message_bounds)
    except Hang:
        raise
    except Exception as e:
        report.fail("decode_data_messages", data, f"{type(e).__name__}: {e}")
        return
    if got:
        report.fused += 1
    whole, ending, err, counts = _framed(data, seq)
    rest, rest_ending, rest_err, rest_counts = _framed(data, seq, at)
    taken = [(off, end) for off, end, _family in got]
    problems = []
    if not all(end - off >= PAYLOAD for off, end in taken):
        problems.append(f"took a message too short to decode: {taken}")
    if not err and whole != taken + rest:  # (an errno: frame_answer returns nothing)
        problems.append(f"took {taken}, then framing found {rest}; of the whole: {whole}")
    if got != [(off, end, data[off + HDR]) for off, end in taken]:
        problems.append(f"decoded {got}")
    if (rest_ending, rest_err) != (ending, err):
        problems.append(f"the rest ends {rest_ending} errno {rest_err}, not {ending} {err}")
    rest_counts["messages"] += stats.messages
    if not err and rest_counts != counts:
        problems.append(f"counted {rest_counts} with what it took, not {counts}")
    for problem in problems:
        report.fail("decode_data_messages", data, problem)


def _control(r: random.Random, seq: int) -> bytes:
    t = r.choice((NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN))
    err = r.choice((0, 0, -errno.EPERM, -errno.ENOBUFS, -errno.EINTR, 5, -(2**31), None))
    payload = b"" if err is None else struct.pack("=i", err) + b"\0" * r.choice((0, 16))
    return message(t, NLM_F_MULTI, r.choice((seq, seq, seq - 1)), payload)


def _datagram(r: random.Random, messages: list[bytes], seq: int) -> bytes:
    parts = []
    for m in messages:
        m = bytearray(m)
        if len(m) >= 16 and r.random() < 0.8:
            struct.pack_into("=I", m, 8, seq if r.random() < 0.85 else r.randrange(1 << 32))
            if r.random() < 0.1:
                struct.pack_into("=H", m, 6, NLM_F_MULTI | NLM_F_DUMP_INTR)
        parts.append(bytes(m) + b"\0" * (-len(m) % 4))
        if r.random() < 0.15:
            parts.insert(r.randint(0, len(parts)), _control(r, seq))
    data = b"".join(parts)
    if r.random() < 0.1:
        data = data[: r.randrange(len(data) + 1)]
    return data


def prime(dec: FastDecoder, pool: list[bytes]) -> None:
    """Two clean dumps of every seed: the decoder learns their shapes and tuples."""
    for _ in range(2):
        dec.begin()
        for m in pool:
            if len(m) >= PAYLOAD:
                with suppress(DecodeError):
                    dec.decode(m, PAYLOAD, len(m), m[HDR])
        dec.end()


def fuzz(n: int, seed: int = 0, block: int = 2000, block_seconds: float = 30.0) -> Report:
    """n generated inputs through every check; the same inputs for the same (n, seed)."""
    rng = random.Random(seed)
    pool = seeds()
    mut = Mutator(rng, pool)
    dec = FastDecoder()
    prime(dec, pool)
    report = Report()
    started = time.perf_counter()
    done = 0
    current = b""
    try:
        while done < n:
            with watchdog(block_seconds):
                dec.begin()
                pending: list[bytes] = []
                for i in range(min(block, n - done)):
                    current = seed_data = rng.choice(pool)
                    current = mut.mutate(seed_data) if rng.random() < 0.97 else seed_data
                    report.inputs += 1
                    check_message(current, dec, report)
                    pending.append(current)
                    if len(pending) >= rng.randint(1, 4):
                        current = _datagram(rng, pending, SEQ)
                        check_datagram(current, SEQ, report)
                        pending = []
                    if i % 64 == 63:  # a new "dump": the tuple cache turns over
                        dec.end()
                        dec.begin()
                if pending:
                    current = _datagram(rng, pending, SEQ)
                    check_datagram(current, SEQ, report)
                dec.end()
                done += min(block, n - done)
    except Hang as e:
        report.fail("hang", current, str(e))
    report.seconds = time.perf_counter() - started
    report.mutations = dict(mut.used)
    return report


if __name__ == "__main__":
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    r = fuzz(count, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(r.describe())
    sys.exit(1 if r.failures else 0)
