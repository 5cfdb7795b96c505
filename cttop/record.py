"""Recordings: every poll's netlink messages in a pcap file, written by `Recorder`, played back by
`ReplaySource` through the same decoder the live table goes through.

The file is classic pcap (nanosecond timestamps, header fields in the writer's byte order) with
link type LINKTYPE_NETLINK (253), the format libpcap writes for the kernel's nlmon device, so
`tshark -r FILE` decodes it as netfilter netlink. Each packet is one netlink message, exactly the
bytes the kernel sent, behind the 16-byte "cooked" header LINKTYPE_NETLINK defines (big-endian:
packet type 4 = PACKET_OUTGOING as nlmon captures show it, ARPHRD_NETLINK = 824, address length
0, 8 address bytes 0, netlink protocol 12 = NETLINK_NETFILTER). One poll is, in order:

* the table dump's messages (IPCTNL_MSG_CT_NEW, one per entry),
* the dump's closing NLMSG_DONE,
* the kernel's reply to IPCTNL_MSG_CT_GET_STATS (nf_conntrack_count and _max), which closes the
  poll. On kernels that do not answer it, `Recorder` writes a message of the same shape itself
  (port id 0, sequence 0) with whatever count/max the poll had.

All packets of a poll carry the poll's time: the wall clock at the first recorded poll plus the
monotonic time elapsed since, so a wall-clock step during a recording cannot bend the intervals
that rates are computed from. The netlink headers inside are in the recording machine's byte
order, as the kernel sent them (nlmon captures are the same).

A file being written is valid after every poll: a poll is written in one piece and flushed.
`FILE.pcap.gz` is written (and read) gzip-compressed; tshark reads those too. A file cut short —
a killed cttop, a full disk — replays up to its last whole poll (`ReplaySource.warning` says so).
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import itertools
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import BinaryIO, Final, NamedTuple

from cttop.conntrack import const as c
from cttop.conntrack.decode import DecodeError, FastDecoder
from cttop.conntrack.model import Flow, FlowKey, Snapshot
from cttop.netlink import (
    NETLINK_NETFILTER,
    NFGENMSG,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_HDR,
    MalformedMessage,
    align4,
    attr,
    iter_attrs,
    message,
)

__all__ = [
    "ARPHRD_NETLINK",
    "LINKTYPE_NETLINK",
    "EndOfRecording",
    "Recorder",
    "RecordingError",
    "ReplaySource",
    "demo_source",
]

LINKTYPE_NETLINK: Final = 253  # LINKTYPE_NETLINK / DLT_NETLINK
ARPHRD_NETLINK: Final = 824  # ARPHRD_NETLINK (include/uapi/linux/if_arp.h)
PACKET_OUTGOING: Final = 4  # sll_pkttype of every packet an nlmon capture shows

PCAP_MAGIC_USEC: Final = 0xA1B2C3D4
PCAP_MAGIC_NSEC: Final = 0xA1B23C4D
PCAP_VERSION: Final = (2, 4)
# libpcap's MAXIMUM_SNAPLEN. A netlink message never comes near it: the kernel's dump
# datagrams are at most 32 KiB (netlink.RECV_BUFFER).
SNAPLEN: Final = 262144
# Larger records are rejected as corrupt whatever the file's snaplen claims.
MAX_RECORD: Final = 16 * 1024 * 1024

# Written in this machine's byte order ("="), read in the file's (its magic says which).
_PCAP_FIELDS: Final = "IHHiIII"  # magic, major, minor, thiszone, sigfigs, snaplen, network
_RECORD_FIELDS: Final = "IIII"  # ts_sec, ts_frac (µs or ns), incl_len, orig_len
PCAP_HEADER: Final = struct.Struct("=" + _PCAP_FIELDS)
RECORD_HEADER: Final = struct.Struct("=" + _RECORD_FIELDS)
COOKED: Final = struct.Struct(">HHH8sH")  # pkttype, hatype, halen, address, protocol
COOKED_NETFILTER: Final = COOKED.pack(
    PACKET_OUTGOING, ARPHRD_NETLINK, 0, b"\0" * 8, NETLINK_NETFILTER
)

_CT_STATS: Final = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET_STATS
_FLOW_TYPES: Final = frozenset(
    (c.NFNL_SUBSYS_CTNETLINK << 8) | t
    for t in (c.IPCTNL_MSG_CT_NEW, c.IPCTNL_MSG_CT_GET, c.IPCTNL_MSG_CT_DELETE)
)
_PAYLOAD: Final = NLMSG_HDR.size + NFGENMSG.size
_GZIP_MAGIC: Final = b"\x1f\x8b"
_LINKTYPE_NAMES: Final = {
    0: "LINKTYPE_NULL",
    1: "LINKTYPE_ETHERNET",
    101: "LINKTYPE_RAW",
    113: "LINKTYPE_LINUX_SLL",
    239: "LINKTYPE_NFLOG",
    276: "LINKTYPE_LINUX_SLL2",
}


class RecordingError(Exception):
    """A recording that cannot be written or read, said in one line (with the byte offset)."""

    def __init__(self, message: str) -> None:
        # One line even when a file name holds a line break.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class EndOfRecording(Exception):
    """`ReplaySource.snapshot()` past the last poll of a recording that does not loop."""


def stats_message(count: int | None, maximum: int | None) -> bytes:
    """An IPCTNL_MSG_CT_GET_STATS reply as the kernel builds it, for polls whose count/max came
    from /proc (port id and sequence 0 mark it as made here)."""
    payload = struct.pack("=BB", c.AF_UNSPEC, c.NFNETLINK_V0) + b"\0\0"
    if count is not None:
        payload += attr(c.CTA_STATS_GLOBAL_ENTRIES, struct.pack(">I", count))
    if maximum is not None:
        payload += attr(c.CTA_STATS_GLOBAL_MAX_ENTRIES, struct.pack(">I", maximum))
    return message(_CT_STATS, NLM_F_MULTI, 0, payload)


def _is_stats_reply(msg: bytes | memoryview, off: int = 0) -> bool:
    _len, mtype, flags, _seq, _pid = NLMSG_HDR.unpack_from(msg, off)
    return mtype == _CT_STATS and not flags & NLM_F_REQUEST


# --- writing ------------------------------------------------------------------------------------


class Recorder:
    """Writes polls to a pcap file (gzip-compressed when the name ends in ".gz").

    Thread-safe: a poll worker may write while the UI thread closes it; a poll that loses that
    race is simply not recorded. Attach one to `cttop.source.LiveSource.recorder` to record a
    live session.
    """

    def __init__(self, path: str | os.PathLike[str], *, compress: bool | None = None) -> None:
        self.path = os.fspath(path)
        self.compress = self.path.endswith(".gz") if compress is None else compress
        self.polls = 0
        self.messages = 0
        self.bytes = 0  # uncompressed pcap bytes written, header included
        self.last_flows = 0  # dump messages in the last poll written
        self._lock = threading.Lock()
        self._anchor: tuple[int, float] | None = None  # (wall ns, monotonic s) of the first poll
        self._last_ns = 0
        self._gz: gzip.GzipFile | None = None
        try:
            self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (kept open)
        except OSError as e:
            raise RecordingError(f"cannot write {self.path}: {e.strerror or e}") from None
        header = PCAP_HEADER.pack(PCAP_MAGIC_NSEC, *PCAP_VERSION, 0, 0, SNAPLEN, LINKTYPE_NETLINK)
        if self.compress:
            self._gz = gzip.GzipFile(fileobj=self._file, mode="wb", mtime=0)
        self._write(header)

    @property
    def closed(self) -> bool:
        return self._file is None

    def __str__(self) -> str:
        return f"{os.path.basename(self.path)} · {self.polls} polls"

    def __repr__(self) -> str:
        return f"Recorder({self.path!r}, polls={self.polls})"

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        try:
            if self._gz is not None:
                self._gz.write(data)
                self._gz.flush()  # Z_SYNC_FLUSH: everything so far can be decompressed
            elif self._file is not None:
                self._file.write(data)
            if self._file is not None:
                self._file.flush()
        except OSError as e:
            self._abort()
            raise RecordingError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.bytes += len(data)

    def _abort(self) -> None:
        """After a failed write: let go of the file (what made it this far stays readable)."""
        f, gz = self._file, self._gz
        self._file = self._gz = None
        if gz is not None:
            with contextlib.suppress(OSError, ValueError):
                gz.close()
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def _timestamp(self, time_wall: float, time_monotonic: float | None) -> int:
        if time_monotonic is None:
            ns = round(time_wall * 1e9)
        elif self._anchor is None:
            ns = round(time_wall * 1e9)
            self._anchor = (ns, time_monotonic)
        else:
            wall0, mono0 = self._anchor
            ns = wall0 + round((time_monotonic - mono0) * 1e9)
        ns = max(ns, self._last_ns)  # never backwards, whatever the caller's clocks did
        self._last_ns = ns
        return ns

    def write_poll(
        self,
        time_wall: float,
        messages: Sequence[bytes],
        count: int | None,
        maximum: int | None,
        time_monotonic: float | None = None,
    ) -> bool:
        """Append one poll: `messages` as `ConntrackClient.snapshot(raw_sink=...)` passed them
        (dump messages, NLMSG_DONE, GET_STATS reply). Without a GET_STATS reply at the end, one is
        made from `count`/`maximum`. Times as in `Snapshot`. Returns False when the recorder was
        already closed (the poll is dropped).
        """
        for i, msg in enumerate(messages):
            if len(msg) < NLMSG_HDR.size or NLMSG_HDR.unpack_from(msg)[0] != len(msg):
                raise ValueError(f"message {i} is not one whole netlink message")
            if len(msg) + COOKED.size > SNAPLEN:
                raise ValueError(f"message {i} of {len(msg)} bytes exceeds the snapshot length")
            if _is_stats_reply(msg) and i != len(messages) - 1:
                raise ValueError("a GET_STATS reply closes a poll: it must come last")
        msgs = list(messages)
        if not msgs or not _is_stats_reply(msgs[-1]):
            msgs.append(stats_message(count, maximum))
        with self._lock:
            if self._file is None:
                return False
            ns = self._timestamp(time_wall, time_monotonic)
            sec, frac = divmod(ns, 1_000_000_000)
            out = bytearray()
            pack = RECORD_HEADER.pack
            for msg in msgs:
                size = COOKED.size + len(msg)
                out += pack(sec, frac, size, size)
                out += COOKED_NETFILTER
                out += msg
            self._write(bytes(out))
            self.polls += 1
            self.messages += len(msgs)
            self.last_flows = sum(1 for m in msgs if NLMSG_HDR.unpack_from(m)[1] in _FLOW_TYPES)
        return True

    def write_snapshot(self, snapshot: Snapshot, messages: Sequence[bytes]) -> bool:
        """`write_poll` with the times and table size of the snapshot the messages made."""
        return self.write_poll(
            snapshot.time_wall,
            messages,
            snapshot.table_count,
            snapshot.table_max,
            snapshot.time_monotonic,
        )

    def close(self) -> None:
        """Finish the file (the gzip trailer). Idempotent."""
        with self._lock:
            f, gz = self._file, self._gz
            self._file = self._gz = None
            if f is None:
                return
            try:
                if gz is not None:
                    gz.close()
                f.close()
            except OSError as e:
                raise RecordingError(f"cannot write {self.path}: {e.strerror or e}") from None


# --- reading ------------------------------------------------------------------------------------


class _Poll(NamedTuple):
    time_ns: int
    start: int  # offset of the poll's first record header
    end: int  # offset just past its last record


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _decompress(data: bytes, name: str) -> tuple[bytes, str | None]:
    """gunzip, keeping whatever a stream cut short still gives (with a warning)."""
    out = []
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(data[pos:]))
            out.append(d.flush())
        except zlib.error as e:
            raise RecordingError(
                f"{name}: corrupt gzip data in the member starting at compressed offset {pos} ({e})"
            ) from None
        if not d.eof:
            return b"".join(out), "the gzip stream ends early (a recording cut short?)"
        pos = len(data) - len(d.unused_data)
        if d.unused_data and not d.unused_data.startswith(_GZIP_MAGIC):
            break  # trailing garbage after the last member: gzip(1) ignores it too
    return b"".join(out), None


class _File:
    """A pcap recording, validated and indexed by poll."""

    def __init__(self, data: bytes | mmap.mmap, name: str, where: str = "") -> None:
        self.data = data
        self.name = name
        self.where = where  # " of the decompressed pcap" for gzip files
        self.polls: list[_Poll] = []
        self.warning: str | None = None
        self._incl = struct.Struct("<I")  # the record header's incl_len, in the file's order
        self._parse()

    def _error(self, what: str, off: int) -> RecordingError:
        return RecordingError(f"{self.name}: {what} at offset {off}{self.where}")

    def _parse(self) -> None:
        data = self.data
        n = len(data)
        if n < 4:
            raise RecordingError(f"{self.name}: not a pcap file (only {n} bytes)")
        head = bytes(data[:4])
        if head == b"\x0a\x0d\x0d\x0a":
            raise RecordingError(
                f"{self.name}: a pcapng file; cttop reads classic pcap "
                "(convert it with: editcap -F pcap IN OUT)"
            )
        order = nsec = None
        for endian in ("<", ">"):
            (magic,) = struct.unpack(endian + "I", head)
            if magic in (PCAP_MAGIC_USEC, PCAP_MAGIC_NSEC):
                order, nsec = endian, magic == PCAP_MAGIC_NSEC
        if order is None:
            raise self._error(f"not a pcap file (magic {_hex(head)})", 0)
        if n < PCAP_HEADER.size:
            raise self._error(f"truncated pcap file header ({n} of {PCAP_HEADER.size} bytes)", 0)
        hdr = struct.Struct(order + _PCAP_FIELDS)
        _m, major, minor, _zone, _sigfigs, snaplen, network = hdr.unpack_from(data, 0)
        if major != 2:
            raise self._error(f"unsupported pcap version {major}.{minor} (expected 2.4)", 4)
        linktype = network & 0xFFFF
        if linktype != LINKTYPE_NETLINK:
            name = _LINKTYPE_NAMES.get(linktype, str(linktype))
            raise self._error(
                f"link type {name}, not LINKTYPE_NETLINK ({LINKTYPE_NETLINK}): "
                "not a netlink recording",
                20,
            )
        limit = min(snaplen, MAX_RECORD) if snaplen else MAX_RECORD
        rec = struct.Struct(order + _RECORD_FIELDS)
        self._incl = struct.Struct(order + "I")
        frac_limit = 1_000_000_000 if nsec else 1_000_000
        scale = 1 if nsec else 1000
        nl_hdr = NLMSG_HDR.unpack_from
        cooked = COOKED.unpack_from
        polls = self.polls
        off = PCAP_HEADER.size
        poll_start: int | None = None
        cut: str | None = None
        while off < n:
            if n - off < rec.size:
                cut = f"a record header is cut short at offset {off}{self.where}"
                break
            sec, frac, incl, orig = rec.unpack_from(data, off)
            if frac >= frac_limit:
                raise self._error(f"bad timestamp fraction {frac} in the record header", off)
            if incl > limit:
                why = "the snapshot length" if incl <= MAX_RECORD and snaplen else "any netlink"
                raise self._error(
                    f"a {incl}-byte record, larger than {why} ({limit} bytes): corrupt file", off
                )
            if incl != orig:
                raise self._error(
                    f"a record of {incl} bytes from a {orig}-byte packet "
                    "(cut by the capture's snapshot length: its netlink message is incomplete)",
                    off,
                )
            body = off + rec.size
            end = body + incl
            if end > n:
                cut = f"a packet is cut short at offset {off}{self.where}"
                break
            if incl < COOKED.size:
                raise self._error(
                    f"a {incl}-byte packet, too short for the {COOKED.size}-byte netlink header",
                    off,
                )
            _pkttype, hatype, _halen, _addr, proto = cooked(data, body)
            if hatype != ARPHRD_NETLINK:
                raise self._error(
                    f"a packet of ARPHRD type {hatype}, not ARPHRD_NETLINK ({ARPHRD_NETLINK})",
                    body,
                )
            if proto != NETLINK_NETFILTER:
                raise self._error(
                    f"a packet of netlink protocol {proto}, not NETLINK_NETFILTER "
                    f"({NETLINK_NETFILTER})",
                    body + 14,
                )
            if poll_start is None:
                poll_start = off
            m = body + COOKED.size
            closes = False
            while end - m >= NLMSG_HDR.size:
                length, mtype, flags, _seq, _pid = nl_hdr(data, m)
                if length < NLMSG_HDR.size or m + length > end:
                    raise self._error(
                        f"a netlink message of length {length} that does not fit its packet "
                        f"({end - m} bytes left; recorded on a machine of another byte order?)",
                        m,
                    )
                if mtype == _CT_STATS and not flags & NLM_F_REQUEST:
                    closes = True
                m += align4(length)
            if m < end:
                raise self._error(f"{end - m} stray bytes after the last netlink message", m)
            if closes:
                polls.append(_Poll(sec * 1_000_000_000 + frac * scale, poll_start, end))
                poll_start = None
            off = end
        if cut is None and poll_start is not None:
            cut = f"the last poll has no closing GET_STATS reply (from offset {poll_start})"
        if not polls:
            raise RecordingError(
                f"{self.name}: no complete poll in the recording"
                + (f" ({cut})" if cut else " (no packets)")
            )
        if cut is not None:
            self.warning = f"{self.name}: {cut}; replaying its {len(polls)} whole polls"

    def packets(self, poll: _Poll) -> Iterator[bytes]:
        """The netlink payload of each packet of one poll (validated by _parse)."""
        data = self.data
        off = poll.start
        incl_len = self._incl.unpack_from
        while off < poll.end:
            (incl,) = incl_len(data, off + 8)
            body = off + RECORD_HEADER.size
            yield bytes(data[body + COOKED.size : body + incl])
            off = body + incl


def _open(path: str | os.PathLike[str]) -> _File:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(2)
            if head == _GZIP_MAGIC:
                f.seek(0)
                raw = f.read()
                return _from_gzip(raw, name)
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise RecordingError(f"{name}: empty file, not a pcap recording")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise RecordingError(f"cannot read {name}: {e.strerror or e}") from None
    try:
        return _File(data, name)
    except RecordingError:
        data.close()
        raise


def _from_gzip(raw: bytes, name: str) -> _File:
    data, warning = _decompress(raw, name)
    rec = _File(data, name, " of the decompressed pcap") if data else None
    if rec is None:
        raise RecordingError(f"{name}: the gzip stream holds no data")
    if warning is not None and rec.warning is None:
        rec.warning = f"{name}: {warning}; replaying its {len(rec.polls)} whole polls"
    return rec


def _from_bytes(data: bytes, name: str) -> _File:
    if data[:2] == _GZIP_MAGIC:
        return _from_gzip(data, name)
    return _File(data, name)


# --- playing ------------------------------------------------------------------------------------


class ReplaySource:
    """Plays a recording: `snapshot()` returns its polls one after another, decoded exactly as
    a live dump is, with the recording's own times.

    Pacing is the caller's: `snapshot()` never sleeps; `delay()` says how long to wait before the
    next one at `speed` (the recording's own spacing divided by it).

    Positions: `position` is the poll last returned (-1 before the first). `seek(i)` makes the
    next `snapshot()` return poll i; `jump(i)` and `step(n)` do the same and return the poll(s)
    before it, so that a `Sampler` that is `reset()` and fed them shows poll i with its rates.
    `source[i]` is poll i, the position untouched. With `loop`, the poll after the last is the
    first again, and `Snapshot.time_monotonic` keeps growing across laps (the wall time stays the
    recording's own).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        speed: float = 1.0,
        loop: bool = False,
        *,
        data: bytes | None = None,
        name: str | None = None,
    ) -> None:
        if (path is None) == (data is None):
            raise TypeError("ReplaySource needs a path or data (one of them)")
        if not speed > 0:
            raise ValueError("speed must be positive")
        if path is not None:
            self.name = name or os.fspath(path)
            self._file = _open(path)
        else:
            assert data is not None
            self.name = name or "<recording>"
            self._file = _from_bytes(data, self.name)
        self.speed = speed
        self.loop = loop
        self.position = -1
        self.laps = 0
        self._next = 0
        self._decoder = FastDecoder()
        polls = self._file.polls
        self._t0 = polls[0].time_ns
        gaps = sorted(b.time_ns - a.time_ns for a, b in itertools.pairwise(polls))
        # The spacing at the loop's seam: the recording's typical (median) interval.
        self._seam_ns = gaps[len(gaps) // 2] if gaps else 1_000_000_000

    # -- what is in it ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._file.polls)

    @property
    def warning(self) -> str | None:
        """One line when the file was cut short (replay stops at its last whole poll)."""
        warning = self._file.warning
        return None if warning is None else str(RecordingError(warning))

    def poll_time(self, i: int) -> float:
        """Wall-clock time (unix seconds) of poll i as recorded."""
        return self._file.polls[i].time_ns / 1e9

    @property
    def start_time(self) -> float:
        return self.poll_time(0)

    @property
    def end_time(self) -> float:
        return self.poll_time(-1)

    @property
    def duration(self) -> float:
        """Seconds from the first poll to the last."""
        return (self._file.polls[-1].time_ns - self._t0) / 1e9

    @property
    def time_wall(self) -> float | None:
        """The recording's wall-clock time of the current poll (None before the first)."""
        return None if self.position < 0 else self.poll_time(self.position)

    def clock(self) -> float | None:
        """What a header shows as "now": the recording's own time of the poll on screen."""
        return self.time_wall

    @property
    def at_end(self) -> bool:
        """No poll comes next (never, when looping)."""
        return not self.loop and self._next >= len(self)

    # -- moving -----------------------------------------------------------------------------

    def _index(self, i: int) -> int:
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"poll {i} out of range: the recording has {n} polls")
        return j

    def seek(self, i: int) -> None:
        """The next `snapshot()` returns poll i (negative counts from the end)."""
        self._next = self._index(i)

    def jump(self, i: int, warmup: int = 1) -> list[Snapshot]:
        """`seek(i)`, returning the up to `warmup` polls before i, oldest first, for a freshly
        reset Sampler to step through before the next `snapshot()` (which is poll i)."""
        j = self._index(i)
        self._next = j
        return [self[k] for k in range(max(0, j - warmup), j)]

    def step(self, n: int = 1) -> list[Snapshot]:
        """`jump()` n polls from the current one (clamped to the recording): step(-1) is the poll
        before the one on screen, step(1) the one after (with `loop`, past the end is the start).
        """
        target = self.position + n
        if self.loop:
            target %= len(self)
        return self.jump(min(max(target, 0), len(self) - 1))

    def __getitem__(self, i: int) -> Snapshot:
        j = self._index(i)
        return self._build(j, self.laps)

    def snapshot(self) -> Snapshot:
        """The next poll. Raises EndOfRecording after the last one unless looping."""
        if self._next >= len(self):
            if not self.loop:
                raise EndOfRecording(f"{self.name}: end of the recording ({len(self)} polls)")
            self._next = 0
            self.laps += 1
        j = self._next
        snap = self._build(j, self.laps)
        self.position = j
        self._next = j + 1
        return snap

    def delay(self) -> float:
        """Seconds to wait before the next `snapshot()` to play at `speed` (0 before the first)."""
        if self.position < 0 or self.at_end:
            return 0.0
        polls = self._file.polls
        nxt = self._next % len(polls)
        if nxt > self.position:
            gap = polls[nxt].time_ns - polls[self.position].time_ns
        else:
            gap = self._seam_ns
        return max(gap, 0) / 1e9 / self.speed

    def close(self) -> None:
        data = self._file.data
        if isinstance(data, mmap.mmap):
            data.close()

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decoding ---------------------------------------------------------------------------

    def _build(self, i: int, lap: int) -> Snapshot:
        poll = self._file.polls[i]
        lap_ns = lap * (self._file.polls[-1].time_ns - self._t0 + self._seam_ns)
        flows: dict[FlowKey, Flow] = {}
        count = maximum = None
        skipped = 0
        decoder = self._decoder
        decode = decoder.decode
        nl_hdr = NLMSG_HDR.unpack_from
        gc_was_enabled = gc.isenabled()
        gc.disable()  # as in ConntrackClient.snapshot: nothing built here forms a cycle
        decoder.begin()
        # Stamped with the poll's own time, the flows' seconds left are what was recorded.
        decoder.clock[0] = poll.time_ns / 1e9
        try:
            for buf in self._file.packets(poll):
                off = 0
                n = len(buf)
                while n - off >= NLMSG_HDR.size:
                    length, mtype, flags, _seq, _pid = nl_hdr(buf, off)
                    end = off + length
                    if flags & NLM_F_REQUEST or mtype == NLMSG_DONE:
                        pass
                    elif mtype in _FLOW_TYPES:
                        if length < _PAYLOAD:
                            skipped += 1
                        else:
                            try:
                                flow = decode(buf, off + _PAYLOAD, end, buf[off + NLMSG_HDR.size])
                            except DecodeError:
                                skipped += 1
                            else:
                                flows[(flow.zone, flow.orig, flow.id)] = flow
                    elif mtype == _CT_STATS:
                        try:
                            for t, s, e, _nested in iter_attrs(buf, off + _PAYLOAD, end):
                                if e - s == 4 and t == c.CTA_STATS_GLOBAL_ENTRIES:
                                    count = struct.unpack_from(">I", buf, s)[0]
                                elif e - s == 4 and t == c.CTA_STATS_GLOBAL_MAX_ENTRIES:
                                    maximum = struct.unpack_from(">I", buf, s)[0]
                        except MalformedMessage:
                            skipped += 1
                    off += align4(length)
        finally:
            decoder.end()
            if gc_was_enabled:
                gc.enable()
        mono = (poll.time_ns - self._t0 + lap_ns) / 1e9
        return Snapshot(mono, poll.time_ns / 1e9, flows, count, maximum, None, skipped)


# --- the bundled demo ---------------------------------------------------------------------------

DEMO_NAME: Final = "demo.pcap.gz"  # in cttop/data


def demo_source(speed: float = 1.0, loop: bool = True) -> ReplaySource:
    """The recording that ships inside the package (made by scripts/make_demo.py)."""
    try:
        data = resources.files("cttop").joinpath("data").joinpath(DEMO_NAME).read_bytes()
    except OSError as e:
        raise RecordingError(f"the bundled demo recording is missing: {e}") from None
    return ReplaySource(data=data, speed=speed, loop=loop, name="demo")
