"""Load for the reliability tests: conntrack entries made and destroyed by the thousand through
ctnetlink, and real loopback traffic, inside a test network namespace.

In-process (after `inside(ns)` moved the calling thread into the namespace):

    with inside(ns.path), CtWriter() as w:
        w.insert(synth(i, mark=0x55) for i in range(5000))

As a process of its own, started inside the namespace (`ip netns exec NAME python -m tests.ctload
...`), printing one JSON line of figures at the end:

    churn    insert and delete inserted entries for S seconds at R per second each way, keeping a
             window of W live ones, and flush them (by mark) every F seconds
    steady   a few UDP flows with a steady rate each way, for S seconds
    traffic  real loopback traffic for S seconds: short TCP connections and UDP exchanges (the
             churn), and "held" flows — a TCP connection over IPv4 and one over IPv6 and a UDP
             pair — that live through the whole run and carry a steady trickle; prints "ready"
             once the held flows exist

Addresses: inserted entries use 10.0.0.0/8 and fd00::/8 (never used for real packets); real
traffic only 127.0.0.1 / ::1 inside the namespace. Every entry is created with IPS_CONFIRMED in
CTA_STATUS (the kernel refuses a status that would clear it: EBUSY).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the checkout's cttop and tests first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cttop.conntrack import const as c
from cttop.conntrack.client import ConntrackClient, encode_tuple, nfgenmsg
from cttop.conntrack.model import Flow, Tuple
from cttop.netlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_HDR,
    attr,
    message,
    nest,
)

CT_NEW = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_NEW
CT_DELETE = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_DELETE
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
CLONE_NEWNET = 0x40000000
TIMEOUT = 3600
ESTABLISHED = c.TCP_STATES.index("ESTABLISHED")
REPLIED = c.IPS_SEEN_REPLY | c.IPS_ASSURED

# --- entering a namespace (the calling thread only) -------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(path: str) -> Iterator[None]:
    """Run the body with the calling thread in the network namespace at `path`; sockets made
    there stay in it; threads started there inherit it. The thread goes back afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


# --- synthetic entries --------------------------------------------------------------------------


def synth(i: int, mark: int, v6_every: int = 10, base: int = 0) -> Flow:
    """Entry number i (distinct orig tuples for i < 2**24): UDP, every 3rd TCP ESTABLISHED,
    every `v6_every`-th IPv6. `base` shifts the address space (separate sets of entries)."""
    k = base + i
    sport = 1024 + k % 60000
    host = k // 60000
    tcp = i % 3 == 0
    proto = c.IPPROTO_TCP if tcp else c.IPPROTO_UDP
    dport = 443 if tcp else 53
    if v6_every and i % v6_every == 0:
        family = c.AF_INET6
        src, dst = f"fd00:77::{host >> 16:x}:{host & 0xFFFF:x}", "fd00:78::1"
    else:
        family = c.AF_INET
        src, dst = f"10.{host >> 16 & 255}.{host >> 8 & 255}.{host & 255}", "10.255.0.1"
    src, dst = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))  # as inet_ntop
    orig = Tuple(src, dst, sport, dport)
    reply = Tuple(dst, src, dport, sport)
    return Flow(
        family,
        proto,
        orig,
        reply,
        status=REPLIED,
        state=ESTABLISHED if tcp else None,
        mark=mark,
    )


def encode_new(flow: Flow, timeout: int = TIMEOUT) -> bytes:
    p = (
        nfgenmsg(flow.family)
        + encode_tuple(c.CTA_TUPLE_ORIG, flow.orig, flow)
        + encode_tuple(c.CTA_TUPLE_REPLY, flow.reply, flow)
        + attr(c.CTA_TIMEOUT, struct.pack(">I", timeout))
        + attr(c.CTA_STATUS, struct.pack(">I", (flow.status or 0) | c.IPS_CONFIRMED))
    )
    if flow.mark is not None:
        p += attr(c.CTA_MARK, struct.pack(">I", flow.mark))
    if flow.state is not None:
        tcp = nest(c.CTA_PROTOINFO_TCP, attr(c.CTA_PROTOINFO_TCP_STATE, bytes([flow.state])))
        p += nest(c.CTA_PROTOINFO, tcp)
    return p


def encode_delete(flow: Flow) -> bytes:
    return nfgenmsg(flow.family) + encode_tuple(c.CTA_TUPLE_ORIG, flow.orig, flow)


def orig_key(flow: Flow) -> tuple[str | None, str | None, int | None, int | None]:
    return (flow.orig.src, flow.orig.dst, flow.orig.sport, flow.orig.dport)


# --- writing to the table -----------------------------------------------------------------------


class CtWriter:
    """A ctnetlink socket (in the calling thread's namespace) that creates and deletes entries
    in batches: one datagram of many requests, an ACK asked for the last only; errors of the
    others still come back and are counted by errno name."""

    def __init__(self, batch: int = 200) -> None:
        self.batch = batch
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        for opt, size in ((SO_RCVBUFFORCE, 8 << 20), (SO_SNDBUFFORCE, 8 << 20)):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self.sock.settimeout(30)
        self.seq = 0
        self.errors: Counter[str] = Counter()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CtWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, payloads: Iterable[bytes]) -> int:
        """Send the requests in batches; returns how many failed."""
        failed_before = sum(self.errors.values())
        batch: list[bytes] = []
        for p in payloads:
            batch.append(p)
            if len(batch) >= self.batch:
                self._flush(msg_type, flags, batch)
                batch = []
        if batch:
            self._flush(msg_type, flags, batch)
        return sum(self.errors.values()) - failed_before

    def _flush(self, msg_type: int, flags: int, payloads: list[bytes]) -> None:
        parts = []
        for i, p in enumerate(payloads):
            self.seq += 1
            f = NLM_F_REQUEST | flags | (NLM_F_ACK if i == len(payloads) - 1 else 0)
            parts.append(message(msg_type, f, self.seq, p))
        self.sock.send(b"".join(parts))
        last = self.seq
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while len(data) - off >= NLMSG_HDR.size:
                length, t, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, off)
                if length < NLMSG_HDR.size:
                    raise RuntimeError(f"bad netlink length {length}")
                if t == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", data, off + NLMSG_HDR.size)
                    if err:
                        self.errors[errno.errorcode.get(-err, str(-err))] += 1
                    if seq == last:
                        return
                off += (length + 3) & ~3

    def insert(self, flows: Iterable[Flow], timeout: int = TIMEOUT) -> int:
        return self._send(
            CT_NEW, NLM_F_CREATE | NLM_F_EXCL, (encode_new(f, timeout) for f in flows)
        )

    def delete(self, flows: Iterable[Flow]) -> int:
        return self._send(CT_DELETE, 0, (encode_delete(f) for f in flows))

    def flush(self, mark: int | None = None) -> None:
        """Delete every entry (with `mark`, only those: the kernel's filtered flush)."""
        p = nfgenmsg(c.AF_UNSPEC)
        if mark is not None:
            p += attr(c.CTA_MARK, struct.pack(">I", mark))
            p += attr(c.CTA_MARK_MASK, struct.pack(">I", 0xFFFFFFFF))
        self._send(CT_DELETE, 0, [p])


# --- the churn process --------------------------------------------------------------------------


def filled(path: str, n: int, mark: int) -> ConntrackClient:
    """Insert entries synth(0..n-1, mark) into the namespace at `path`; returns a client whose
    socket reads that namespace (from any thread)."""
    with inside(path):
        with CtWriter() as w:
            assert w.insert(synth(i, mark) for i in range(n)) == 0, dict(w.errors)
        return ConntrackClient()


def churn(seconds: float, rate: int, window: int, mark: int, flush_every: float) -> dict:
    """Insert `rate` entries a second and delete as many (the oldest), keeping about `window`
    alive; every `flush_every` seconds a filtered flush of `mark` empties the window."""
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    live: deque[Flow] = deque()
    made = deleted = flushes = 0
    n = 0
    start = time.monotonic()
    next_flush = start + flush_every if flush_every else float("inf")
    with CtWriter() as w:
        while (now := time.monotonic()) - start < seconds:
            new = [synth(n + i, mark, base=1 << 20) for i in range(per_tick)]
            n += per_tick
            w.insert(new)
            live.extend(new)
            made += len(new)
            old = [live.popleft() for _ in range(min(len(live), max(0, len(live) - window)))]
            if len(old) < per_tick and len(live) > per_tick:
                old += [live.popleft() for _ in range(per_tick - len(old))]
            if old:
                w.delete(old)
                deleted += len(old)
            if now >= next_flush:
                w.flush(mark)
                live.clear()
                flushes += 1
                next_flush += flush_every
            pause = tick - (time.monotonic() - now)
            if pause > 0:
                time.sleep(pause)
        elapsed = time.monotonic() - start
        return {
            "created": made,
            "deleted": deleted,
            "flushes": flushes,
            "seconds": elapsed,
            "created_per_s": made / elapsed,
            "errors": dict(w.errors),
        }


# --- the traffic process ------------------------------------------------------------------------

HELD_TCP4 = (41001, 6001)
HELD_TCP6 = (41002, 6002)
HELD_UDP = (41003, 6003)
CHURN_TCP_PORT = 6100
CHURN_UDP_PORTS = range(6200, 6216)


def _tcp_pair(
    family: int, host: str, ports: tuple[int, int]
) -> tuple[socket.socket, socket.socket]:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, ports[1]))
    srv.listen(1)
    cli = socket.socket(family, socket.SOCK_STREAM)
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    cli.bind((host, ports[0]))
    cli.connect((host, ports[1]))
    acc, _ = srv.accept()
    srv.close()
    return cli, acc


def _echo_server(stop: threading.Event, srv: socket.socket) -> None:
    """Accept short connections, read until EOF, close."""
    srv.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(1)
            with contextlib.suppress(OSError):
                while conn.recv(4096):
                    pass


def traffic(seconds: float, tcp_rate: int, udp_rate: int, held_bps: int) -> dict:
    """Real loopback traffic; prints "ready" once the held flows exist."""
    stop = threading.Event()
    held = [
        *_tcp_pair(socket.AF_INET, "127.0.0.1", HELD_TCP4),
        *_tcp_pair(socket.AF_INET6, "::1", HELD_TCP6),
    ]
    u_srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u_srv.bind(("127.0.0.1", HELD_UDP[1]))
    u_cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u_cli.bind(("127.0.0.1", HELD_UDP[0]))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", CHURN_TCP_PORT))
    srv.listen(512)
    udp_sinks = []
    for port in CHURN_UDP_PORTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        s.setblocking(False)
        udp_sinks.append(s)
    server = threading.Thread(target=_echo_server, args=(stop, srv), daemon=True)
    server.start()

    def exchange_held() -> None:
        chunk = max(1, held_bps // 20)
        held[0].sendall(b"a" * chunk)
        held[1].recv(1 << 16)
        held[3].sendall(b"b" * chunk)
        held[2].recv(1 << 16)
        u_cli.sendto(b"c" * min(chunk, 1400), ("127.0.0.1", HELD_UDP[1]))
        data, addr = u_srv.recvfrom(1 << 16)
        u_srv.sendto(data[:100], addr)
        u_cli.recvfrom(1 << 16)

    exchange_held()
    exchange_held()
    print("ready", flush=True)
    tcp_made = udp_made = tcp_failed = 0
    tick = 0.05
    start = time.monotonic()
    try:
        while (now := time.monotonic()) - start < seconds:
            exchange_held()
            for _ in range(max(1, round(tcp_rate * tick))):
                try:
                    with socket.create_connection(("127.0.0.1", CHURN_TCP_PORT), timeout=1) as s:
                        s.sendall(b"x" * 64)
                    tcp_made += 1
                except OSError:
                    tcp_failed += 1
            for i in range(max(1, round(udp_rate * tick))):
                # a fresh socket, so a fresh source port: a new flow each time
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.sendto(b"y" * 32, ("127.0.0.1", CHURN_UDP_PORTS[i % 16]))
                udp_made += 1
            for sink in udp_sinks:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sink.recv(2048)
            pause = tick - (time.monotonic() - now)
            if pause > 0:
                time.sleep(pause)
    finally:
        stop.set()
        server.join(timeout=2)
        for s in [*held, u_srv, u_cli, srv, *udp_sinks]:
            s.close()
    elapsed = time.monotonic() - start
    return {
        "tcp_connections": tcp_made,
        "tcp_failed": tcp_failed,
        "udp_flows": udp_made,
        "seconds": elapsed,
        "per_s": (tcp_made + udp_made) / elapsed,
    }


def steady(seconds: float, ports: list[int], pps: int, size: int) -> dict:
    """One UDP flow per port (client port = port + 10000), `pps` datagrams of `size` bytes a
    second each way (the reply is half the size); prints "ready" after the first exchange."""
    pairs = []
    for port in ports:
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", port))
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cli.bind(("127.0.0.1", port + 10000))
        pairs.append((cli, srv, port))

    def exchange() -> None:
        for cli, srv, port in pairs:
            cli.sendto(b"s" * size, ("127.0.0.1", port))
            _, addr = srv.recvfrom(1 << 16)
            srv.sendto(b"r" * (size // 2), addr)
            cli.recvfrom(1 << 16)

    exchange()
    print("ready", flush=True)
    sent = 1
    start = time.monotonic()
    try:
        while (now := time.monotonic()) - start < seconds:
            exchange()
            sent += 1
            pause = start + sent / pps - now
            if pause > 0:
                time.sleep(pause)
    finally:
        for cli, srv, _ in pairs:
            cli.close()
            srv.close()
    return {"exchanges": sent, "seconds": time.monotonic() - start}


def wait_ready(proc: object, timeout: float = 20) -> None:
    """Wait for a `traffic` process (subprocess.Popen, text stdout) to print "ready"."""
    stdout = proc.stdout  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = stdout.readline()
                if line.strip() == "ready":
                    return
                if line == "":
                    break
            if proc.poll() is not None:  # type: ignore[attr-defined]
                break
    err = proc.stderr.read() if proc.poll() is not None else ""  # type: ignore[attr-defined]
    raise RuntimeError(f"traffic did not get ready: {err}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.ctload")
    sub = p.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("churn")
    ch.add_argument("--seconds", type=float, default=10)
    ch.add_argument("--rate", type=int, default=2000)
    ch.add_argument("--window", type=int, default=800)
    ch.add_argument("--mark", type=lambda s: int(s, 0), default=0x77)
    ch.add_argument("--flush-every", type=float, default=0)
    tr = sub.add_parser("traffic")
    tr.add_argument("--seconds", type=float, default=10)
    tr.add_argument("--tcp-rate", type=int, default=100)
    tr.add_argument("--udp-rate", type=int, default=200)
    tr.add_argument("--held-bps", type=int, default=20000)
    sd = sub.add_parser("steady")
    sd.add_argument("--seconds", type=float, default=10)
    sd.add_argument("--ports", default="7001")
    sd.add_argument("--pps", type=int, default=50)
    sd.add_argument("--size", type=int, default=200)
    args = p.parse_args(argv)
    if args.cmd == "churn":
        out = churn(args.seconds, args.rate, args.window, args.mark, args.flush_every)
    elif args.cmd == "steady":
        ports = [int(x) for x in args.ports.split(",")]
        out = steady(args.seconds, ports, args.pps, args.size)
    else:
        out = traffic(args.seconds, args.tcp_rate, args.udp_rate, args.held_bps)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
