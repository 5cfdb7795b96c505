"""Netlink plumbing: the socket, request building, multipart dump receive and attribute walking.

Knows nothing of conntrack meaning. Headers are native-endian (struct "=" formats); the payloads
the callers decode are their business.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, Final, TypeVar

NETLINK_NETFILTER: Final = 12

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLMSG_MIN_TYPE: Final = 0x10

NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH
NLM_F_CREATE: Final = 0x400
NLM_F_EXCL: Final = 0x200

NLA_F_NESTED: Final = 0x8000
NLA_F_NET_BYTEORDER: Final = 0x4000
NLA_TYPE_MASK: Final = 0x3FFF

SOL_NETLINK: Final = 270
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12

NLMSG_HDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA_HDR: Final = struct.Struct("=HH")  # len, type
NFGENMSG: Final = struct.Struct("=BBH")  # family, version, res_id (big-endian on the wire)
NLMSGERR: Final = struct.Struct("=i")

# The kernel caps one dump datagram at 32 KiB; a larger buffer costs nothing and any
# datagram that still does not fit is an error rather than silent loss (MSG_TRUNC).
RECV_BUFFER: Final = 64 * 1024
# Room for the kernel to queue several datagrams ahead of us while we decode.
SOCKET_RCVBUF: Final = 4 * 1024 * 1024


class NetlinkError(Exception):
    """Any failure talking netlink."""


class NetlinkErrno(NetlinkError):
    """The kernel answered with a negative errno (NLMSG_ERROR or NLMSG_DONE)."""

    def __init__(self, err: int, context: str = "") -> None:
        self.errno = err
        name = errno.errorcode.get(err)
        # A corrupt message can carry any 32-bit value; only real errnos get a description.
        text = f"{os.strerror(err)} ({name})" if name else f"error {err}"
        super().__init__(f"{context}: {text}" if context else text)


class MalformedMessage(NetlinkError):
    """Bytes that do not follow the netlink framing rules."""


class TruncatedDatagram(NetlinkError):
    """A datagram was larger than the receive buffer: part of the dump is lost."""


def align4(n: int) -> int:
    return (n + 3) & ~3


def attr(nla_type: int, value: bytes, nested: bool = False) -> bytes:
    """Encode one attribute (header + value + padding)."""
    length = NLA_HDR.size + len(value)
    flag = NLA_F_NESTED if nested else 0
    return NLA_HDR.pack(length, nla_type | flag) + value + b"\0" * (align4(length) - length)


def nest(nla_type: int, *children: bytes) -> bytes:
    return attr(nla_type, b"".join(children), nested=True)


def message(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    """Encode one netlink message; the payload is padded to 4 bytes."""
    length = NLMSG_HDR.size + len(payload)
    pad = b"\0" * (align4(length) - length)
    return NLMSG_HDR.pack(length, msg_type, flags, seq, pid) + payload + pad


def iter_attrs(
    buf: bytes | bytearray | memoryview, off: int, end: int
) -> Iterator[tuple[int, int, int, bool]]:
    """Walk attributes in buf[off:end]: yields (type, value_start, value_end, nested).

    The type is masked with NLA_TYPE_MASK. Raises MalformedMessage on an attribute
    shorter than its header or running past `end`; trailing bytes shorter than a header
    are padding and are ignored.
    """
    unpack = NLA_HDR.unpack_from
    while end - off >= 4:
        length, nla_type = unpack(buf, off)
        if length < 4:
            raise MalformedMessage(f"attribute length {length} < 4 at offset {off}")
        vend = off + length
        if vend > end:
            raise MalformedMessage(
                f"attribute type {nla_type & NLA_TYPE_MASK} length {length} at offset {off} "
                f"runs past its container ({end - off} bytes left)"
            )
        yield nla_type & NLA_TYPE_MASK, off + 4, vend, bool(nla_type & NLA_F_NESTED)
        off += (length + 3) & ~3


class Message:
    """One received netlink message as a view into its datagram (no copy)."""

    __slots__ = ("buf", "end", "flags", "off", "seq", "type")

    def __init__(self, buf: bytes, off: int, end: int, msg_type: int, flags: int, seq: int):
        self.buf = buf
        self.off = off  # start of the netlink header
        self.end = end  # end of this message (not aligned)
        self.type = msg_type
        self.flags = flags
        self.seq = seq

    @property
    def payload_off(self) -> int:
        return self.off + NLMSG_HDR.size

    def raw(self) -> bytes:
        return bytes(self.buf[self.off : self.end])


class DumpStats:
    """What went wrong, quietly, during one request: counted, never raised."""

    __slots__ = ("datagrams", "interrupted", "malformed", "messages", "stale")

    def __init__(self) -> None:
        self.datagrams = 0
        self.messages = 0
        self.malformed = 0  # messages or datagram tails that broke the framing rules
        self.stale = 0  # messages with another sequence number (an earlier, aborted dump)
        self.interrupted = False  # NLM_F_DUMP_INTR: the table changed under the dump


def split_datagram(data: bytes, stats: DumpStats) -> Iterator[Message]:
    """Split one datagram into messages. Framing errors end the datagram and are counted."""
    off = 0
    n = len(data)
    unpack = NLMSG_HDR.unpack_from
    hdr = NLMSG_HDR.size
    while n - off >= hdr:
        length, msg_type, flags, seq, _pid = unpack(data, off)
        if length < hdr or off + length > n:
            # Nothing after a bad length can be trusted: the next header's place is unknown.
            stats.malformed += 1
            return
        yield Message(data, off, off + length, msg_type, flags, seq)
        off += (length + 3) & ~3
    if off < n and n - off >= 4:
        stats.malformed += 1


def frame_answer(
    data: bytes, seq: int, stats: DumpStats, start: int = 0
) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Frame one datagram of the answer to request `seq` (from the message at `start`: where
    `decode_data_messages` stopped).

    Returns the (start, end) of each data message, and of the message that ended the answer
    (NLMSG_DONE or an ACK) if this datagram holds it. Negative errnos in NLMSG_ERROR or
    NLMSG_DONE raise NetlinkErrno; framing errors and other sequence numbers are counted.
    """
    out: list[tuple[int, int]] = []
    try:
        return _frame(data, seq, stats, out, start)
    finally:
        stats.messages += len(out)  # counted once a datagram: this runs per message


def _frame(
    data: bytes, seq: int, stats: DumpStats, out: list[tuple[int, int]], off: int
) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    n = len(data)
    unpack = _LEN_TYPE_SEQ.unpack_from
    append = out.append
    hdr = NLMSG_HDR.size
    flagged = 0
    try:
        while n - off >= hdr:
            length, t, flags, mseq = unpack(data, off)
            end = off + length
            if length < hdr or end > n:
                # Nothing after a bad length can be trusted: the next header's place is unknown.
                stats.malformed += 1
                return out, None
            if mseq != seq:
                stats.stale += 1
            elif t >= NLMSG_MIN_TYPE:
                flagged |= flags
                append((off, end))
            elif t == NLMSG_DONE:
                if length >= hdr + 4:
                    (err,) = NLMSGERR.unpack_from(data, off + hdr)
                    if err < 0:
                        raise NetlinkErrno(-err, "dump")
                return out, (off, end)
            elif t == NLMSG_ERROR:
                if length < hdr + 4:
                    stats.malformed += 1
                else:
                    (err,) = NLMSGERR.unpack_from(data, off + hdr)
                    if err < 0:
                        raise NetlinkErrno(-err)
                    return out, (off, end)  # an ACK
            elif t == NLMSG_OVERRUN:
                raise NetlinkErrno(errno.ENOBUFS, "netlink overrun")
            # NLMSG_NOOP and reserved control types: nothing to do
            off += (length + 3) & ~3
        if off < n and n - off >= 4:
            stats.malformed += 1
        return out, None
    finally:
        if flagged & NLM_F_DUMP_INTR:
            stats.interrupted = True


# A netfilter message: the netlink header, then nfgenmsg (family, version, resource id).
NF_FAMILY: Final = NLMSG_HDR.size  # nfgen_family: the first byte after the netlink header
NF_PAYLOAD: Final = NLMSG_HDR.size + NFGENMSG.size  # where the attributes start

_T = TypeVar("_T")


def decode_data_messages(
    data: bytes,
    seq: int,
    stats: DumpStats,
    decoders: Mapping[int, Callable[[bytes, int, int, int], _T]],
    fallback: Callable[[bytes, int, int, int], _T],
) -> tuple[list[_T], int]:
    """Frame and decode a datagram of netfilter messages in one pass, as far as it holds data
    messages answering `seq` (every datagram of a dump but its last holds nothing else): each
    is decoded by `decoders.get(payload length, fallback)(data, payload start, end,
    nfgen_family)`.

    Returns the decodes and where it stopped: the datagram's end (up to 3 bytes past it, where
    the last message is not padded), or the first message it does not take — a control
    message (the end of the answer), another sequence number, NLM_F_DUMP_INTR, a length that
    does not add up — for `frame_answer(..., start=)` to say what that is. Counted: the
    messages decoded. A decoder's exception goes to the caller,
    with nothing counted. One loop instead of framing's and then decoding's: at 250k flows,
    ~60 ms less of the poll's Python time.
    """
    off = 0
    n = len(data)
    unpack = _LEN_TYPE_SEQ.unpack_from
    get = decoders.get
    out: list[_T] = []
    append = out.append
    while n - off >= NF_PAYLOAD:
        length, t, flags, mseq = unpack(data, off)
        end = off + length
        if (
            t < NLMSG_MIN_TYPE
            or mseq != seq
            or flags & NLM_F_DUMP_INTR
            or length < NF_PAYLOAD
            or end > n
        ):
            break
        decode = get(length - NF_PAYLOAD, fallback)
        append(decode(data, off + NF_PAYLOAD, end, data[off + NF_FAMILY]))
        off += (length + 3) & ~3
    stats.messages += len(out)
    return out, off


def ends_answer(data: bytes, seq: int) -> bool:
    """Does this datagram hold the message that ends the answer to `seq` (done, error,
    overrun)? What receiving asks to know when to stop (`frame_answer` still checks
    everything properly). Broken framing is not an end: the kernel goes on.
    """
    off = 0
    n = len(data)
    unpack = _LEN_TYPE_SEQ.unpack_from
    while n - off >= 16:
        length, t, _flags, mseq = unpack(data, off)
        if length < 16 or off + length > n:
            return False
        # frame_answer counts an NLMSG_ERROR too short for its errno as malformed and reads
        # on: so must we.
        short_error = t == NLMSG_ERROR and length < 20
        if NLMSG_ERROR <= t <= NLMSG_OVERRUN and mseq == seq and not short_error:
            return True
        off += (length + 3) & ~3
    return False


_LEN_TYPE_SEQ: Final = struct.Struct("=IHHI")


# A batch of datagrams, and whether its last one ends the answer (`ends_answer`).
_Batch = tuple[list[bytes], bool]


class _Receiver(threading.Thread):
    """Receives the datagrams of one answer ahead of the consumer, a batch at a time (bounded:
    8 batches of at most `RECV_BATCH` datagrams)."""

    def __init__(self, nl: NetlinkSocket, seq: int) -> None:
        super().__init__(name="cttop-netlink-recv", daemon=True)
        self.nl = nl
        self.seq = seq
        self.queue: queue.Queue[_Batch | BaseException] = queue.Queue(maxsize=8)
        self.stopping = False

    def run(self) -> None:
        try:
            while not self.stopping:
                batch = self.nl.receive_batch(self.seq)
                self._put(batch)
                if batch[1]:
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def _put(self, item: _Batch | BaseException) -> None:
        while not self.stopping:
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self) -> _Batch:
        while True:
            try:
                item = self.queue.get(timeout=0.2)
                break
            except queue.Empty:
                if not self.is_alive() and self.queue.empty():
                    raise NetlinkError("netlink receiver stopped without an answer") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """The consumer is done (or gave up): let the thread finish. If it is blocked in
        recv() on an abandoned dump, the socket's owner closes the socket."""
        self.stopping = True
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=0.05)


# recvmmsg(2) through ctypes: the kernel builds a dump's next datagram inside each recvmsg, so
# one call with MSG_WAITFORONE collects the datagrams it builds back to back, and the receiving
# thread takes the GIL once a batch instead of once a datagram (at 250k flows: 130 hand-offs
# instead of 2,000, which is what let decoding fall behind the kernel). Python has no recvmmsg;
# where libc lacks it (or the socket is not a real one) datagrams are read one by one.
RECV_BATCH: Final = 16
_MSG_WAITFORONE: Final = 0x10000
# (Plain ints: `socket.MSG_TRUNC` is an enum member, and `int & member` runs enum's Python
# code: ~30 ms a poll at 250k flows, in the receiving thread.)
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)
_RECVMMSG_FLAGS: Final = _MSG_WAITFORONE | int(socket.MSG_DONTWAIT) | _MSG_TRUNC


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _libc_recvmmsg() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_MMsgHdr),
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    fn.restype = ctypes.c_int
    return fn


_recvmmsg: Any = None
_recvmmsg_looked_up = False


class _BatchBuffers:
    """RECV_BATCH receive buffers of RECV_BUFFER bytes and the mmsghdr vector pointing at them."""

    def __init__(self) -> None:
        self.raw = ctypes.create_string_buffer(RECV_BATCH * RECV_BUFFER)
        self.view = memoryview(self.raw).cast("B")
        self.iovecs = (_IoVec * RECV_BATCH)()
        self.msgs = (_MMsgHdr * RECV_BATCH)()
        base = ctypes.addressof(self.raw)
        for i in range(RECV_BATCH):
            self.iovecs[i].base = base + i * RECV_BUFFER
            self.iovecs[i].len = RECV_BUFFER
            self.msgs[i].hdr.iov = ctypes.pointer(self.iovecs[i])
            self.msgs[i].hdr.iovlen = 1


class NetlinkSocket:
    """A NETLINK_NETFILTER (by default) socket that sends requests and reads the answers.

    One request at a time: a dump must be read to its end (or the socket closed) before
    the next request; a half-read dump leaves the socket busy (EBUSY) — callers that
    abandon a dump should close the socket and open a new one.
    """

    def __init__(self, protocol: int = NETLINK_NETFILTER, rcvbuf: int = SOCKET_RCVBUF) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        except OSError as e:
            raise NetlinkErrno(e.errno or errno.EPROTONOSUPPORT, "netlink socket") from None
        try:
            self._set_rcvbuf(rcvbuf)
            self.sock.bind((0, 0))
            self.pid = self.sock.getsockname()[0]
            self._setopt(NETLINK_EXT_ACK, 1)
        except OSError as e:
            self.sock.close()
            raise NetlinkErrno(e.errno or errno.EIO, "netlink bind") from None
        self.seq = int.from_bytes(os.urandom(2), "little") + 1
        self.buffer = bytearray(RECV_BUFFER)
        # A receiving thread must notice when its socket is closed under it (an abandoned
        # dump); close() alone does not wake a blocked recv(), so recv waits in slices.
        self.sock.settimeout(1.0)
        self.closed = False

    def _set_rcvbuf(self, size: int) -> None:
        # SO_RCVBUFFORCE lets root exceed net.core.rmem_max; fall back quietly.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
        except OSError:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _setopt(self, opt: int, value: int) -> None:
        with contextlib.suppress(OSError):  # older kernels: not fatal
            self.sock.setsockopt(SOL_NETLINK, opt, value)

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg_type: int, flags: int, payload: bytes) -> int:
        """Send one request; returns its sequence number."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        data = message(msg_type, flags | NLM_F_REQUEST, self.seq, payload, self.pid)
        while True:
            try:
                self.sock.sendto(data, (0, 0))
                return self.seq
            except InterruptedError:
                continue
            except OSError as e:
                raise NetlinkErrno(e.errno or errno.EIO, "netlink send") from None

    def recv_datagram(self) -> bytes:
        """One datagram, copied out of the receive buffer. EINTR is retried."""
        buf = self.buffer
        while True:
            try:
                n = self.sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
                break
            except InterruptedError:
                continue
            except TimeoutError:
                if getattr(self, "closed", False):
                    raise NetlinkError("netlink socket closed while receiving") from None
                continue
            except OSError as e:
                raise NetlinkErrno(e.errno or errno.EIO, "netlink receive") from None
        if n > len(buf):
            raise TruncatedDatagram(
                f"netlink datagram of {n} bytes does not fit a {len(buf)}-byte buffer"
            )
        return bytes(memoryview(buf)[:n])

    def recv_batch(self) -> list[bytes]:
        """One or more datagrams (at most RECV_BATCH), each copied out; blocks for the first.

        Same errors as recv_datagram. Uses recvmmsg(2) on a real socket where libc has it.
        """
        global _recvmmsg, _recvmmsg_looked_up
        if not _recvmmsg_looked_up:
            _recvmmsg = _libc_recvmmsg()
            _recvmmsg_looked_up = True
        if _recvmmsg is None or type(self.sock) is not socket.socket:
            return [self.recv_datagram()]
        bufs: _BatchBuffers | None = getattr(self, "_batch", None)
        if bufs is None:
            bufs = self._batch = _BatchBuffers()
        msgs = bufs.msgs
        flags = _RECVMMSG_FLAGS
        while True:
            n = _recvmmsg(self.sock.fileno(), msgs, RECV_BATCH, flags, None)
            if n > 0:
                break
            err = ctypes.get_errno() if n < 0 else errno.EIO
            if err == errno.EINTR:
                continue
            if err not in (errno.EAGAIN, errno.EWOULDBLOCK):
                if self.closed:
                    raise NetlinkError("netlink socket closed while receiving")
                raise NetlinkErrno(err, "netlink receive")
            self._wait_readable()
        view = bufs.view
        out = []
        for i in range(n):
            size = msgs[i].len
            if msgs[i].hdr.flags & _MSG_TRUNC or size > RECV_BUFFER:
                raise TruncatedDatagram(
                    f"netlink datagram of {size} bytes does not fit a {RECV_BUFFER}-byte buffer"
                )
            start = i * RECV_BUFFER
            out.append(bytes(view[start : start + size]))
        return out

    def _wait_readable(self) -> None:
        """Until the socket has a datagram (in 1 s slices, to notice a close under us)."""
        while True:
            if self.closed:
                raise NetlinkError("netlink socket closed while receiving")
            try:
                ready, _w, _x = select.select([self.sock], [], [], 1.0)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                raise NetlinkError("netlink socket closed while receiving") from None
            if ready:
                return

    def responses(self, seq: int, stats: DumpStats, multi: bool = True) -> Iterator[Message]:
        """Messages answering request `seq`, until NLMSG_DONE (dump) or an ack/first reply.

        NLMSG_ERROR with a non-zero errno and NLMSG_DONE carrying a negative errno raise
        NetlinkErrno. Messages of other sequence numbers (left over from an aborted dump)
        are skipped and counted.
        """
        while True:
            data = self.recv_datagram()
            stats.datagrams += 1
            offsets, ending = frame_answer(data, seq, stats)
            for off, end in offsets:
                _l, msg_type, flags, mseq, _p = NLMSG_HDR.unpack_from(data, off)
                yield Message(data, off, end, msg_type, flags, mseq)
                if not multi:
                    return
            if ending is not None:
                return

    def receive_batch(self, seq: int) -> _Batch:
        """`recv_batch`, and whether its last datagram ends the answer to `seq` (asked once a
        batch, by whichever thread receives it)."""
        batch = self.recv_batch()
        return batch, ends_answer(batch[-1], seq)

    def receive_answer(
        self, seq: int, stats: DumpStats, threaded: bool = True
    ) -> Generator[bytes, None, None]:
        """The datagrams answering dump request `seq`, as received, not framed: the caller
        frames them (`decode_data_messages`, `frame_answer`) and stops at the one that ends
        the answer. Ends after a batch whose last datagram ends it (the end is the last the
        kernel sends); a caller that takes them without framing (a dump received whole)
        stops at the datagram `ends_answer` says ends it.

        With `threaded`, another thread receives while the caller decodes: the kernel builds
        each datagram inside recv(), which releases the GIL, so its work and ours overlap.
        """
        receiver = _Receiver(self, seq) if threaded else None
        if receiver is not None:
            receiver.start()
        try:
            while True:
                batch, ended = receiver.get() if receiver is not None else self.receive_batch(seq)
                for data in batch:
                    stats.datagrams += 1
                    yield data
                if ended:
                    return
        finally:
            if receiver is not None:
                receiver.stop()
                if receiver.is_alive():
                    # Still in recv() (the answer ended inside a batch: something came after
                    # it), it would take the next answer's datagrams: this socket is done.
                    self.close()

    def dump_datagrams(
        self, seq: int, stats: DumpStats, threaded: bool = True
    ) -> Iterator[tuple[bytes, list[tuple[int, int]], tuple[int, int] | None]]:
        """The answer to dump request `seq`, one datagram at a time, framed:
        (data, [(start, end) of each data message], (start, end) of the closing message or None).
        """
        datagrams = self.receive_answer(seq, stats, threaded)
        try:
            for data in datagrams:
                offsets, ending = frame_answer(data, seq, stats)
                yield data, offsets, ending
                if ending is not None:
                    return
        finally:
            datagrams.close()

    def request(
        self, msg_type: int, flags: int, payload: bytes, stats: DumpStats | None = None
    ) -> Iterator[Message]:
        """Send a request and iterate over its answer (a dump if NLM_F_DUMP is in flags)."""
        stats = stats if stats is not None else DumpStats()
        seq = self.send(msg_type, flags, payload)
        return self.responses(seq, stats, multi=bool(flags & NLM_F_DUMP))


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (e.g. /run/netns/NAME).

    Threads started afterwards inherit it. Raises OSError (ENOENT when the path does not
    exist, EINVAL when it is not a network namespace).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)
        if setns is not None:  # Python 3.12+
            setns(fd, 0x40000000)  # CLONE_NEWNET
            return
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.setns(fd, 0x40000000) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)
