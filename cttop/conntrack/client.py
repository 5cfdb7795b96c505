"""Talking to ctnetlink: the streamed table dump, kernel-side dump filters, table count and
max, per-CPU statistics, and deleting entries.

No rates and no UI here: `snapshot()` is the whole of what a poll asks of the kernel.
"""

from __future__ import annotations

import errno
import gc
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cttop.conntrack import const as c
from cttop.conntrack.decode import DecodeError, FastDecoder, decode_tuple
from cttop.conntrack.model import Flow, FlowFeed, FlowKey, Snapshot, Tuple
from cttop.heap import trim_heap
from cttop.netlink import (
    NF_FAMILY,
    NF_PAYLOAD,
    NLM_F_ACK,
    NLM_F_DUMP,
    DumpStats,
    Message,
    NetlinkErrno,
    NetlinkError,
    NetlinkSocket,
    attr,
    decode_data_messages,
    ends_answer,
    frame_answer,
    iter_attrs,
    nest,
)

_CT = c.NFNL_SUBSYS_CTNETLINK << 8
_BUCKETS = "/proc/sys/net/netfilter/nf_conntrack_buckets"
_RESIZE_RETRIES = 3


class ConntrackError(Exception):
    """A failure the operator must be told about in one line."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


class PermissionDenied(ConntrackError):
    def __init__(self) -> None:
        super().__init__(
            "cttop needs root or CAP_NET_ADMIN to read the conntrack table", errno.EPERM
        )


class ConntrackUnavailable(ConntrackError):
    pass


def _explain(e: NetlinkErrno) -> ConntrackError:
    if e.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied()
    if e.errno in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ENOENT):
        return ConntrackUnavailable(
            "conntrack is not available in this kernel "
            "(load nf_conntrack and nf_conntrack_netlink, or use --replay/--demo)",
            e.errno,
        )
    return ConntrackError(f"conntrack netlink request failed: {e}", e.errno)


def nfgenmsg(family: int, res_id: int = 0) -> bytes:
    return struct.pack("=BB", family, c.NFNETLINK_V0) + struct.pack(">H", res_id)


@dataclass(frozen=True)
class DumpFilter:
    """Filters the kernel can apply to a dump; always re-applied here as well, since older
    kernels ignore the ones they do not know.
    """

    family: int = c.AF_UNSPEC  # AF_UNSPEC: IPv4 and IPv6 in one pass
    mark: int | None = None
    mark_mask: int = 0xFFFFFFFF
    zone: int | None = None
    status: int | None = None
    status_mask: int | None = None  # defaults to `status`: all those bits set

    def request_attrs(self) -> bytes:
        out = b""
        if self.mark is not None:
            out += attr(c.CTA_MARK, struct.pack(">I", self.mark))
            out += attr(c.CTA_MARK_MASK, struct.pack(">I", self.mark_mask))
        if self.zone is not None:
            out += attr(c.CTA_ZONE, struct.pack(">H", self.zone))
        if self.status is not None:
            mask = self.status if self.status_mask is None else self.status_mask
            out += attr(c.CTA_STATUS, struct.pack(">I", self.status))
            out += attr(c.CTA_STATUS_MASK, struct.pack(">I", mask))
        return out

    @property
    def empty(self) -> bool:
        return (
            self.family == c.AF_UNSPEC
            and self.mark is None
            and self.zone is None
            and self.status is None
        )

    def match(self, flow: Flow) -> bool:
        if self.family != c.AF_UNSPEC and flow.family != self.family:
            return False
        if self.mark is not None and ((flow.mark or 0) & self.mark_mask) != (
            self.mark & self.mark_mask
        ):
            return False
        if self.zone is not None and flow.zone != self.zone:
            return False
        if self.status is not None and flow.status is not None:
            # (no status at all: the view's status terms decide)
            mask = self.status if self.status_mask is None else self.status_mask
            if (flow.status & mask) != (self.status & mask):
                return False
        return True


RawSink = Callable[[bytes], None]


_TRIM_EVERY = 256  # datagrams (~8 MiB)


def _drained(received: list[bytes]) -> Iterator[bytes]:
    """The datagrams of a dump received whole, in order, each let go once the next is asked
    for, the C heap trimmed as they go: the dump's bytes (62 MiB at 250k flows) and the flows
    decoded from them are not all resident at once."""
    received.reverse()
    pop = received.pop
    while received:
        yield pop()
        if len(received) % _TRIM_EVERY == 0:
            trim_heap()


class ConntrackClient:
    """One ctnetlink session. Not thread-safe: one request at a time.

    A dump that raised midway leaves the socket in an unknown state, so the socket is
    replaced before the next request.
    """

    def __init__(self, dump_filter: DumpFilter | None = None) -> None:
        self.filter = dump_filter or DumpFilter()
        self.decoder = FastDecoder()
        # Monotonic times between which the kernel read the last dump's entries: a dump
        # received whole (see dump_batches) is read by then, however long its decoding takes.
        self.last_read = (0.0, 0.0)
        self._sock: NetlinkSocket | None = None
        self._open()

    def _open(self) -> NetlinkSocket:
        if self._sock is not None and self._sock.closed:  # (given up by a dump: see receive_answer)
            self._sock = None
        if self._sock is None:
            try:
                self._sock = NetlinkSocket()
            except NetlinkErrno as e:
                raise _explain(e) from None
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ConntrackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _session(self) -> Iterator[NetlinkSocket]:
        """One request on the socket: netlink errors become the operator's one-liners, and
        a request that did not run to its end leaves no socket behind for the next one."""
        sock = self._open()
        try:
            yield sock
        except NetlinkErrno as e:
            self.close()
            raise _explain(e) from None
        except NetlinkError as e:
            self.close()
            raise ConntrackError(f"conntrack netlink request failed: {e}") from None
        except BaseException:
            self.close()  # a half-read answer (or an abandoned generator): start afresh
            raise

    def _request(
        self, msg_type: int, flags: int, payload: bytes, stats: DumpStats
    ) -> Iterator[Message]:
        with self._session() as sock:
            yield from sock.request(_CT | msg_type, flags, payload, stats)

    def dump_messages(self, stats: DumpStats | None = None) -> Iterator[Message]:
        """The raw dump: every conntrack message the kernel sends, undecoded."""
        stats = stats if stats is not None else DumpStats()
        payload = nfgenmsg(self.filter.family) + self.filter.request_attrs()
        yield from self._request(c.IPCTNL_MSG_CT_GET, NLM_F_DUMP, payload, stats)

    def dump_batches(
        self, stats: DumpStats | None = None, raw_sink: RawSink | None = None
    ) -> Iterator[list[Flow]]:
        """The table, one list of flows per received datagram (the fast path of a poll).

        Malformed messages are skipped and counted in stats.malformed. `raw_sink`, when given,
        receives every message's bytes exactly as the kernel sent them, the closing
        NLMSG_DONE included (for recordings).
        """
        stats = stats if stats is not None else DumpStats()
        flt = self.filter
        # A flow expires its CTA_TIMEOUT after one time for the whole dump: its middle, as
        # far as the last dump's length tells, which is the snapshot's time when the table
        # is steady. Counted to that time, every flow shows the seconds left the kernel sent,
        # whether the decoder made it anew or reused it (decode.SAME_EXPIRY).
        started = time.monotonic()
        wall = time.time()
        payload = nfgenmsg(flt.family) + flt.request_attrs()
        # A cold decoder (the first dump) decodes every message in full, ~4x slower than the
        # kernel dumps them: streamed, the kernel would wait for it and read the table over
        # seconds instead of half of one, the dump's one time would be seconds off for the
        # entries at its ends, and the next dump would decode them all again (a second table
        # of Flows, whose memory the allocator keeps). So it is received whole first.
        cold = self.decoder.cached == 0
        self.decoder.begin()
        with self._session() as sock:
            seq = sock.send(_CT | c.IPCTNL_MSG_CT_GET, NLM_F_DUMP, payload)
            answer = sock.receive_answer(seq, stats)
            datagrams: Iterable[bytes] = answer
            half = (self.last_read[1] - self.last_read[0]) / 2  # as the last dump took
            received = 0.0
            try:
                if cold:
                    whole = []
                    for data in answer:
                        whole.append(data)
                        if ends_answer(data, seq):
                            break
                    datagrams = _drained(whole)
                    received = time.monotonic()
                    half = (received - started) / 2
                self.decoder.clock[0] = wall + half
                yield from self._decode_answer(datagrams, seq, stats, raw_sink)
            finally:
                answer.close()
        self.last_read = (started, received if cold else time.monotonic())
        self.decoder.end()

    def _decode_answer(
        self, datagrams: Iterable[bytes], seq: int, stats: DumpStats, raw_sink: RawSink | None
    ) -> Iterator[list[Flow]]:
        """The flows of each datagram of the answer, up to the one that ends it."""
        flt = self.filter
        check = not flt.empty
        fast = not check and raw_sink is None
        decode = self.decoder.decode
        decoders, fallback = self.decoder.entries, self.decoder.fallback
        for data in datagrams:
            batch: list[Flow] = []
            start = 0
            if fast:
                # Nothing recorded, nothing to filter: framed and decoded in one pass, as far
                # as the datagram holds data messages of this dump (all of it but in the
                # last); from where that stopped, the careful way. A message the decoder
                # rejects sends the whole datagram the careful way, which skips and counts it.
                try:
                    batch, start = decode_data_messages(data, seq, stats, decoders, fallback)
                except DecodeError:
                    batch, start = [], 0
                if start >= len(data):
                    yield batch
                    continue
            offsets, ending = frame_answer(data, seq, stats, start)
            for off, end in offsets:
                if raw_sink is not None:
                    raw_sink(data[off:end])
                if end - off < NF_PAYLOAD:
                    stats.malformed += 1
                    continue
                try:
                    flow = decode(data, off + NF_PAYLOAD, end, data[off + NF_FAMILY])
                except DecodeError:
                    stats.malformed += 1
                    continue
                if check and not flt.match(flow):
                    continue
                batch.append(flow)
            if ending is not None and raw_sink is not None:
                raw_sink(data[ending[0] : ending[1]])
            yield batch
            if ending is not None:
                break

    def dump(
        self, stats: DumpStats | None = None, raw_sink: RawSink | None = None
    ) -> Iterator[Flow]:
        """Stream the table flow by flow (see dump_batches)."""
        for batch in self.dump_batches(stats, raw_sink):
            yield from batch

    def probe(self) -> None:
        """Ask the kernel one small question, so that a missing permission or a kernel without
        ctnetlink is reported before anything else starts."""
        for _ in self._request(c.IPCTNL_MSG_CT_GET_STATS, 0, nfgenmsg(0), DumpStats()):
            pass

    def table_size(self, raw_sink: RawSink | None = None) -> tuple[int | None, int | None]:
        """(nf_conntrack_count, nf_conntrack_max) of this socket's namespace.

        Asked of ctnetlink (IPCTNL_MSG_CT_GET_STATS); /proc/sys/net/netfilter of the
        calling thread's namespace is the fallback for kernels without it. `raw_sink` receives
        the kernel's reply message (nothing when the fallback was used).
        """
        count = maximum = None
        try:
            for msg in self._request(c.IPCTNL_MSG_CT_GET_STATS, 0, nfgenmsg(0), DumpStats()):
                if raw_sink is not None:
                    raw_sink(msg.raw())
                for t, s, e, _n in iter_attrs(msg.buf, msg.off + NF_PAYLOAD, msg.end):
                    if e - s == 4 and t == c.CTA_STATS_GLOBAL_ENTRIES:
                        count = struct.unpack_from(">I", msg.buf, s)[0]
                    elif e - s == 4 and t == c.CTA_STATS_GLOBAL_MAX_ENTRIES:
                        maximum = struct.unpack_from(">I", msg.buf, s)[0]
        except PermissionDenied:
            raise
        except Exception:
            pass
        if count is None:
            count = _read_int("/proc/sys/net/netfilter/nf_conntrack_count")
        if maximum is None:
            maximum = _read_int("/proc/sys/net/netfilter/nf_conntrack_max")
        return count, maximum

    def cpu_stats(self) -> dict[str, int]:
        """Per-CPU conntrack statistics (IPCTNL_MSG_CT_GET_STATS_CPU), summed over CPUs."""
        totals: dict[str, int] = {}
        for msg in self._request(
            c.IPCTNL_MSG_CT_GET_STATS_CPU, NLM_F_DUMP, nfgenmsg(0), DumpStats()
        ):
            for t, s, e, _n in iter_attrs(msg.buf, msg.off + NF_PAYLOAD, msg.end):
                name = c.STATS_CPU_NAMES.get(t)
                if name is not None and e - s == 4:
                    totals[name] = totals.get(name, 0) + struct.unpack_from(">I", msg.buf, s)[0]
        return totals

    def _dump_into_dict(
        self, stats: DumpStats, raw_sink: RawSink | None, feed: FlowFeed | None = None
    ) -> tuple[dict[FlowKey, Flow], float, float]:
        flows: dict[FlowKey, Flow] = {}
        # Nothing built here can form a cycle; without this the collector would walk the
        # whole growing table again and again while it is being built.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        if feed is not None:
            feed.begin()
        try:
            if feed is None:
                for batch in self.dump_batches(stats, raw_sink):
                    # A dump is not atomic: an entry can be sent twice; the later copy is fresher.
                    for flow in batch:
                        flows[(flow.zone, flow.orig, flow.id)] = flow
            else:
                for batch in self.dump_batches(stats, raw_sink):
                    feed.add(flows, batch)
                feed.end(flows)
        finally:
            if gc_was_enabled:
                gc.enable()
        return flows, *self.last_read

    def snapshot(
        self,
        with_stats: bool = False,
        raw_sink: RawSink | None = None,
        feed: FlowFeed | None = None,
    ) -> Snapshot:
        """One poll: the deduplicated table plus its count and max, timestamped.

        `raw_sink` receives the poll's messages as the kernel sent them, in order: the dump's
        messages, its NLMSG_DONE, then the IPCTNL_MSG_CT_GET_STATS reply (when the kernel
        answered it) — what a recording stores (cttop.record). `feed` is given the flows as
        they arrive (see `FlowFeed`).
        """
        # A resize of the (shared) hash table while the kernel walks it makes the dump skip or
        # repeat entries, silently (no NLM_F_DUMP_INTR). nf_conntrack_buckets tells: a dump that
        # saw it change is taken again, a few times at most; then the poll says so.
        resized = True
        messages: list[bytes] = []
        for _attempt in range(_RESIZE_RETRIES + 1):
            buckets = _read_int(_BUCKETS)
            stats = DumpStats()
            messages.clear()
            sink = messages.append if raw_sink is not None else None
            flows, started, ended = self._dump_into_dict(stats, sink, feed)
            if _read_int(_BUCKETS) == buckets:
                resized = False
                break
        if raw_sink is not None:
            for message in messages:  # the dump that is shown is the dump that is recorded
                raw_sink(message)
        # The kernel reads each entry at some moment during the dump (a small table's all at
        # once, while it walks the shared hash table): the middle of the dump is the best
        # single time for all of them, and what rates are computed against.
        wall = time.time() - (time.monotonic() - (started + ended) / 2)
        mono = (started + ended) / 2
        count, maximum = self.table_size(raw_sink) if raw_sink is not None else self.table_size()
        cpu = None
        if with_stats:
            try:
                cpu = self.cpu_stats()
            except ConntrackError:
                cpu = None
        return Snapshot(mono, wall, flows, count, maximum, cpu, stats.malformed, resized)

    def delete(self, flow: Flow) -> bool:
        """Delete one entry by its original tuple (and id, so a reused tuple is spared).

        Returns False when the entry was already gone.
        """
        payload = nfgenmsg(flow.family) + encode_tuple(c.CTA_TUPLE_ORIG, flow.orig, flow)
        if flow.id is not None:
            payload += attr(c.CTA_ID, struct.pack(">I", flow.id))
        if flow.zone:
            payload += attr(c.CTA_ZONE, struct.pack(">H", flow.zone))
        try:
            for _ in self._request(c.IPCTNL_MSG_CT_DELETE, NLM_F_ACK, payload, DumpStats()):
                pass
        except ConntrackError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True


def encode_tuple(nla_type: int, tup: Tuple, flow: Flow) -> bytes:
    """A CTA_TUPLE_* nest for requests (delete, tests)."""
    import socket

    if flow.family == c.AF_INET6:
        af, src_t, dst_t = socket.AF_INET6, c.CTA_IP_V6_SRC, c.CTA_IP_V6_DST
    else:
        af, src_t, dst_t = socket.AF_INET, c.CTA_IP_V4_SRC, c.CTA_IP_V4_DST
    ip = b""
    if tup.src is not None:
        ip += attr(src_t, socket.inet_pton(af, tup.src))
    if tup.dst is not None:
        ip += attr(dst_t, socket.inet_pton(af, tup.dst))
    proto = attr(c.CTA_PROTO_NUM, bytes([flow.protonum]))
    icmp6 = flow.protonum == c.IPPROTO_ICMPV6
    if tup.sport is not None:
        proto += attr(c.CTA_PROTO_SRC_PORT, struct.pack(">H", tup.sport))
    if tup.dport is not None:
        proto += attr(c.CTA_PROTO_DST_PORT, struct.pack(">H", tup.dport))
    if tup.icmp_id is not None:
        t = c.CTA_PROTO_ICMPV6_ID if icmp6 else c.CTA_PROTO_ICMP_ID
        proto += attr(t, struct.pack(">H", tup.icmp_id))
    if tup.icmp_type is not None:
        t = c.CTA_PROTO_ICMPV6_TYPE if icmp6 else c.CTA_PROTO_ICMP_TYPE
        proto += attr(t, bytes([tup.icmp_type]))
    if tup.icmp_code is not None:
        t = c.CTA_PROTO_ICMPV6_CODE if icmp6 else c.CTA_PROTO_ICMP_CODE
        proto += attr(t, bytes([tup.icmp_code]))
    parts = [nest(c.CTA_TUPLE_IP, ip), nest(c.CTA_TUPLE_PROTO, proto)]
    if tup.zone is not None:
        parts.append(attr(c.CTA_TUPLE_ZONE, struct.pack(">H", tup.zone)))
    return nest(nla_type, *parts)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


__all__ = [
    "ConntrackClient",
    "ConntrackError",
    "ConntrackUnavailable",
    "DecodeError",
    "DumpFilter",
    "PermissionDenied",
    "decode_tuple",
]
