"""Make the demo recording that ships with cttop (cttop/data/demo.pcap.gz). Needs root.

    sudo python scripts/make_demo.py [--duration 150] [--output cttop/data/demo.pcap.gz]

It builds a small "gateway" in a fresh network namespace and records its conntrack table once a
second with cttop itself (`cttop --netns NS --record FILE --duration S`):

* Real traffic, all on loopback inside the namespace (127.0.0.0/8 and ::1), from a bounded
  generator (this file's `--traffic` mode; it stops by itself, the namespace's close() kills it
  anyway): long-lived TCP downloads and uploads whose rates swing, burst and pause; short
  web-like connections opened and closed every second or so (TIME_WAIT piles up); half-closed
  ones held open by the server (CLOSE_WAIT); connection attempts whose SYN is dropped
  (SYN_SENT); DNS-like UDP request/response and some queries nobody answers (UNREPLIED); two
  RTP-like UDP streams; syslog-like one-way UDP; ICMP and ICMPv6 echo; IPv6 TCP over ::1.
* Real NAT by nftables: 127.0.0.1:8080 -> 127.0.0.2:80 and [::1]:8080 -> [::1]:443 (DNAT),
  DNS 127.0.0.53:53 -> 127.0.2.53:5353 (DNAT), 127.0.1.200 -> 127.0.3.1 (SNAT); a real conntrack
  mark (0x2 on database traffic) and a real zone (7, for 127.0.1.77).
* A few hundred entries inserted with `conntrack -I`, addresses from the documentation and
  private ranges only (192.0.2.0/24 as the gateway's public address, 198.51.100.0/24 and
  203.0.113.0/24 as the internet, 10.0.0.0/24 as the LAN, 10.244.0.0/16 and 10.96.0.0/12 as a
  Kubernetes pod and service range, 2001:db8::/32): SNATed LAN clients in every TCP state,
  port forwards, DNS and NTP, ICMP, IPv6, marks and a zone. More are inserted and deleted while
  recording, so flows come and go.

Accounting and timestamps are on. The recording is then gzip-compressed (level 9, mtime 0) and
replayed once through cttop's reader to print what it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.netns import NetNS  # noqa: E402

DEFAULT_OUTPUT = REPO / "cttop" / "data" / "demo.pcap.gz"
WARMUP = 40.0  # seconds of traffic before recording starts: TIME_WAIT and DNS entries pile up

LAB_RULES = """\
table inet cttop_demo {
    chain raw_out {
        type filter hook output priority raw; policy accept;
        ip saddr 127.0.1.77 ct zone set 7
        ip daddr 127.0.1.77 ct zone set 7
    }
    chain out {
        type filter hook output priority filter; policy accept;
        tcp dport 5432 ct mark set 0x2
    }
    chain in {
        type filter hook input priority filter; policy accept;
        ip daddr 127.0.2.8 tcp dport 8443 tcp flags syn drop
    }
}
table ip cttop_demo_nat {
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr 127.0.0.1 tcp dport 8080 dnat to 127.0.0.2:80
        ip daddr 127.0.0.53 udp dport 53 dnat to 127.0.2.53:5353
    }
    chain post {
        type nat hook postrouting priority 100; policy accept;
        ip saddr 127.0.1.200 snat to 127.0.3.1
    }
}
table ip6 cttop_demo_nat6 {
    chain out {
        type nat hook output priority -100; policy accept;
        ip6 daddr ::1 tcp dport 8080 dnat to [::1]:443
    }
}
"""

SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ping_group_range": "0 2147483647",
    # As busy gateways tune it; and the table reaches its steady size within the warm-up.
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": 30,
    "net.netfilter.nf_conntrack_acct": 1,
    "net.netfilter.nf_conntrack_timestamp": 1,
}


# --- the traffic generator (runs inside the namespace) ------------------------------------------

TCP_SERVERS = [  # (host, port)
    ("127.0.0.2", 80),
    ("127.0.2.1", 443),
    ("127.0.2.2", 22),
    ("127.0.2.3", 5432),
    ("127.0.2.20", 9000),
    ("127.0.2.30", 8000),
    ("::1", 443),
    ("::1", 22),
]
DNS_SERVER = ("127.0.2.53", 5353)
SILENT_DNS = ("127.0.2.54", 53)  # bound, never answers
RTP_PORTS = (5004, 5006)
CHUNK = 0.25  # seconds between a long flow's requests


class Profile:
    """Bytes per second of one long-lived flow over time: a slow swing, bursts, pauses."""

    def __init__(self, rng: random.Random, base: float) -> None:
        self.base = base
        self.period = rng.uniform(20, 90)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.pause_every = rng.choice([None, None, 45.0, 70.0])
        self.pause_for = rng.uniform(8, 20)
        self.bursts = sorted(rng.uniform(0, 240) for _ in range(rng.randint(0, 3)))
        self.burst_len = rng.uniform(4, 12)
        self.burst_gain = rng.uniform(3, 8)

    def rate(self, t: float) -> float:
        if self.pause_every and (t % self.pause_every) < self.pause_for:
            return 0.0
        r = self.base * (0.55 + 0.45 * math.sin(2 * math.pi * t / self.period + self.phase))
        for b in self.bursts:
            if b <= t < b + self.burst_len:
                r *= self.burst_gain
        return r


async def _serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Line protocol: "D n" -> n bytes back; "U n" + n bytes -> "ok"; "H s" -> on EOF, wait s
    seconds before closing (CLOSE_WAIT on the conntrack side)."""
    hold = 0.0
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd, _, arg = line.decode().strip().partition(" ")
            if cmd == "D":
                writer.write(b"x" * int(arg))
                await writer.drain()
            elif cmd == "U":
                await reader.readexactly(int(arg))
                writer.write(b"ok\n")
                await writer.drain()
            elif cmd == "H":
                hold = float(arg)
        if hold:
            await asyncio.sleep(hold)
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class _DNS(asyncio.DatagramProtocol):
    def __init__(self, rng: random.Random, answer: bool) -> None:
        self.rng = rng
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if self.answer and self.transport is not None:
            self.transport.sendto(data[:12] + b"a" * self.rng.randint(40, 420), addr)


class _Sink(asyncio.DatagramProtocol):
    """Echoes when asked to (RTP-like streams go both ways), else swallows."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _connect(
    src: str, dst: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(dst, port, local_addr=(src, 0), family=_family(dst))


async def long_flow(
    rng: random.Random, src: str, dst: str, port: int, down: Profile, up: Profile, end: float
) -> None:
    """A long-lived connection moving bytes both ways at its profiles' rates until `end`."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        try:
            reader, writer = await _connect(src, dst, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        t0 = loop.time()
        try:
            while loop.time() < end:
                t = loop.time() - t0
                n_down = int(down.rate(t) * CHUNK)
                n_up = int(up.rate(t) * CHUNK)
                if n_down:
                    writer.write(f"D {n_down}\n".encode())
                    await writer.drain()
                    await reader.readexactly(n_down)
                if n_up:
                    writer.write(f"U {n_up}\n".encode() + b"u" * n_up)
                    await writer.drain()
                    await reader.readline()
                await asyncio.sleep(CHUNK * rng.uniform(0.8, 1.2))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# Tasks started and forgotten: referenced here so that the loop does not lose them midway.
_running: set[asyncio.Task[None]] = set()


def _start(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)


async def short_connections(rng: random.Random, end: float) -> None:
    """Web-like fetches, opened and closed by the client (TIME_WAIT afterwards)."""
    loop = asyncio.get_running_loop()
    targets = [("127.0.0.1", 8080), ("127.0.2.1", 443), ("127.0.2.30", 8000), ("::1", 8080)]
    while loop.time() < end:
        dst, port = rng.choice(targets)
        src = "::1" if ":" in dst else f"127.0.1.{rng.randint(10, 60)}"

        async def fetch(src: str = src, dst: str = dst, port: int = port) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                reader, writer = await _connect(src, dst, port)
                n = int(rng.lognormvariate(9.5, 1.2))
                writer.write(f"D {n}\n".encode())
                await writer.drain()
                await reader.readexactly(n)
                writer.close()

        _start(fetch())
        await asyncio.sleep(rng.uniform(0.4, 1.6))


async def half_closed(rng: random.Random, end: float) -> None:
    """The client says goodbye, the server takes its time (CLOSE_WAIT, then LAST_ACK)."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:

        async def one() -> None:
            src = f"127.0.1.{rng.randint(100, 120)}"
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                reader, writer = await _connect(src, "127.0.2.30", 8000)
                writer.write(f"D 2000\nH {rng.uniform(20, 50):.1f}\n".encode())
                await writer.drain()
                await reader.readexactly(2000)
                writer.write_eof()
                await reader.read()  # until the server finally closes
                writer.close()

        _start(one())
        await asyncio.sleep(rng.uniform(5, 12))


async def unanswered_syns(rng: random.Random, end: float) -> None:
    """Connection attempts whose SYN the namespace drops (SYN_SENT)."""
    loop = asyncio.get_running_loop()
    while loop.time() < end:

        async def one() -> None:
            src = f"127.0.1.{rng.randint(130, 140)}"
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(_connect(src, "127.0.2.8", 8443), timeout=15)

        _start(one())
        await asyncio.sleep(rng.uniform(6, 15))


async def dns_queries(rng: random.Random, end: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        silent = rng.random() < 0.12
        dst = SILENT_DNS if silent else ("127.0.0.53", 53)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((f"127.0.1.{rng.randint(10, 60)}", 0))
            s.setblocking(False)
            s.sendto(os.urandom(2) + b"\x01\x00" + b"q" * rng.randint(20, 60), dst)
            if not silent:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(loop.sock_recv(s, 1024), timeout=1)
        await asyncio.sleep(rng.expovariate(1.6))


async def udp_stream(src: tuple[str, int], dst: tuple[str, int], pps: int, end: float) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=src, remote_addr=dst
    )
    try:
        while loop.time() < end:
            transport.sendto(b"r" * 172)
            await asyncio.sleep(1 / pps)
    finally:
        transport.close()


async def pings(end: float) -> None:
    """ICMP and ICMPv6 echo through "ping sockets" (the id is the bound port)."""
    loop = asyncio.get_running_loop()
    socks = []
    for family, proto, src, dst, ident, kind in (
        (socket.AF_INET, socket.IPPROTO_ICMP, "127.0.0.1", "127.0.2.1", 1001, 8),
        (socket.AF_INET, socket.IPPROTO_ICMP, "127.0.0.1", "127.0.0.2", 1002, 8),
        (socket.AF_INET, socket.IPPROTO_ICMP, "127.0.1.5", "127.0.2.53", 1003, 8),
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, "::1", "::1", 2001, 128),
    ):
        s = socket.socket(family, socket.SOCK_DGRAM, proto)
        s.bind((src, ident))
        s.setblocking(False)
        socks.append((s, dst, kind))
    seq = 0
    try:
        while loop.time() < end:
            seq += 1
            for s, dst, kind in socks:
                s.sendto(
                    bytes([kind, 0, 0, 0, 0, 0, seq >> 8 & 0xFF, seq & 0xFF]) + b"p" * 56, (dst, 0)
                )
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(loop.sock_recv(s, 1024), timeout=0.5)
            await asyncio.sleep(1)
    finally:
        for s, _, _ in socks:
            s.close()


async def traffic(seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    servers = [await asyncio.start_server(_serve_tcp, h, p) for h, p in TCP_SERVERS]
    await loop.create_datagram_endpoint(lambda: _DNS(rng, True), local_addr=DNS_SERVER)
    await loop.create_datagram_endpoint(lambda: _DNS(rng, False), local_addr=SILENT_DNS)
    await loop.create_datagram_endpoint(lambda: _Sink(False), local_addr=("127.0.2.9", 514))
    for port in RTP_PORTS:
        await loop.create_datagram_endpoint(lambda: _Sink(True), local_addr=("127.0.2.5", port))

    def kb(lo: float, hi: float) -> float:  # log-uniform
        return 1024 * math.exp(rng.uniform(math.log(lo), math.log(hi)))

    # (source, destination, port, download B/s, upload B/s)
    long_flows = [
        *((f"127.0.1.{10 + i}", "127.0.0.1", 8080, kb(4, 300), kb(0.5, 8)) for i in range(6)),
        *((f"127.0.1.{20 + i}", "127.0.2.1", 443, kb(2, 400), kb(0.5, 20)) for i in range(6)),
        *(("::1", "::1", 443, kb(4, 250), kb(1, 12)) for _ in range(4)),
        ("::1", "::1", 8080, kb(20, 120), kb(1, 4)),
        ("::1", "::1", 22, kb(0.2, 2), kb(0.1, 1)),
        ("127.0.1.30", "127.0.2.2", 22, kb(0.3, 3), kb(0.2, 1)),
        *((f"127.0.1.{40 + i}", "127.0.2.3", 5432, kb(10, 150), kb(5, 80)) for i in range(3)),
        ("127.0.1.200", "127.0.2.20", 9000, kb(30, 200), kb(2, 10)),
        ("127.0.1.200", "127.0.2.20", 9000, kb(1, 10), kb(20, 150)),
        ("127.0.1.77", "127.0.2.1", 443, kb(10, 100), kb(1, 5)),
        ("127.0.1.77", "127.0.2.30", 8000, kb(1, 20), kb(0.5, 2)),
    ]
    tasks = [
        loop.create_task(long_flow(rng, s, d, p, Profile(rng, dn), Profile(rng, up), end))
        for s, d, p, dn, up in long_flows
    ]
    tasks += [
        loop.create_task(short_connections(rng, end)),
        loop.create_task(half_closed(rng, end)),
        loop.create_task(unanswered_syns(rng, end)),
        loop.create_task(dns_queries(rng, end)),
        loop.create_task(udp_stream(("127.0.1.50", 5004), ("127.0.2.5", 5004), 50, end)),
        loop.create_task(udp_stream(("127.0.1.51", 5006), ("127.0.2.5", 5006), 25, end)),
        loop.create_task(udp_stream(("127.0.1.9", 40514), ("127.0.2.9", 514), 1, end)),
        loop.create_task(pings(end)),
    ]
    print("ready", flush=True)
    await asyncio.wait(tasks, timeout=seconds + 5)
    for server in servers:
        server.close()


# --- the gateway's inserted entries -------------------------------------------------------------


def _tcp_status(state: str) -> str | None:
    if state in ("SYN_SENT", "NONE"):
        return None
    if state in ("SYN_RECV", "CLOSE"):
        return "SEEN_REPLY"
    return "SEEN_REPLY,ASSURED"


# Seconds left on inserted entries. Short-lived states expire within the warm-up and are
# replaced by new ones at the same pace (see churn), so the table keeps a steady size.
TCP_TIMEOUTS = {
    "ESTABLISHED": (3000, 432000),
    "TIME_WAIT": (5, 40),
    "SYN_SENT": (5, 40),
    "SYN_RECV": (5, 40),
    "FIN_WAIT": (5, 40),
    "CLOSE_WAIT": (5, 40),
    "LAST_ACK": (5, 30),
    "CLOSE": (2, 10),
}


KINDS = ["web", "web6", "dns", "ntp", "forward", "k8s", "icmp", "vpn", "zone"]
WEIGHTS = [40, 10, 14, 3, 5, 8, 4, 4, 3]
# While recording: mostly short-lived entries, so that the table churns but keeps its size.
CHURN_WEIGHTS = [10, 2, 30, 0, 0, 6, 10, 1, 1]
CHURN_TCP_STATES = {"TIME_WAIT": 6, "SYN_SENT": 3, "CLOSE": 1, "SYN_RECV": 1}


def gateway_entry(rng: random.Random, n: int, churn: bool = False) -> list[str]:
    """`conntrack -I` arguments of one plausible gateway entry (documentation addresses)."""
    kind = rng.choices(KINDS, weights=CHURN_WEIGHTS if churn else WEIGHTS)[0]
    lan = f"10.0.0.{rng.randint(2, 250)}"
    sport = rng.randint(32768, 60999)
    net = rng.choice(["198.51.100", "203.0.113"])
    remote = f"{net}.{rng.randint(1, 254)}"
    if kind in ("web", "vpn", "zone", "web6"):
        if churn:
            state = rng.choices(list(CHURN_TCP_STATES), weights=list(CHURN_TCP_STATES.values()))[0]
        else:
            state = rng.choices(list(TCP_TIMEOUTS), weights=[70, 14, 3, 1, 2, 4, 1, 1])[0]
        lo, hi = TCP_TIMEOUTS[state]
        args = ["-p", "tcp", "--state", state, "-t", str(rng.randint(lo, hi))]
        if kind == "web6":
            src = f"2001:db8:10::{rng.randint(2, 0xFFF):x}"
            dst = f"2001:db8:{rng.randint(0x100, 0xFFFF):x}::{rng.randint(1, 0xFF):x}"
            args += ["-s", src, "-d", dst]
        else:
            args += ["-s", lan, "-d", remote, "--src-nat", "192.0.2.1"]
        args += ["--sport", str(sport), "--dport", rng.choice(["443", "443", "443", "80", "993"])]
        status = _tcp_status(state)
        if status:
            args += ["-u", status]
        if kind == "vpn":
            args += ["-m", "1"]
        if kind == "zone":
            args += ["-w", "10"]
        return args
    if kind == "dns":
        replied = rng.random() < 0.85
        args = ["-p", "udp", "-s", lan, "-d", "198.51.100.53", "--src-nat", "192.0.2.1"]
        args += ["--sport", str(sport), "--dport", "53", "-t", str(rng.randint(3, 30))]
        return args + (["-u", "SEEN_REPLY"] if replied else [])
    if kind == "ntp":
        args = ["-p", "udp", "-s", lan, "-d", f"203.0.113.{rng.randint(1, 9)}"]
        args += ["--src-nat", "192.0.2.1", "--sport", "123", "--dport", "123"]
        return [*args, "-t", str(rng.randint(1800, 3600)), "-u", "SEEN_REPLY,ASSURED"]
    if kind == "forward":
        port, inside = rng.choice([(443, "10.0.0.10:8443"), (25, "10.0.0.11:25"), (51820, None)])
        if inside is None:
            args = ["-p", "udp", "-s", remote, "-d", "192.0.2.1", "--dst-nat", "10.0.0.12"]
            args += ["--sport", str(sport), "--dport", str(port)]
            return [*args, "-t", str(rng.randint(1800, 3600)), "-u", "SEEN_REPLY,ASSURED"]
        args = ["-p", "tcp", "--state", "ESTABLISHED", "-s", remote, "-d", "192.0.2.1"]
        args += ["--dst-nat", inside, "--sport", str(sport), "--dport", str(port)]
        return [*args, "-t", str(rng.randint(3000, 432000)), "-u", "SEEN_REPLY,ASSURED"]
    if kind == "k8s":
        pod = f"10.244.{rng.randint(1, 3)}.{rng.randint(2, 250)}"
        svc, backend, proto = rng.choice(
            [
                ("10.96.0.10", f"10.244.0.{rng.randint(2, 3)}", "udp"),
                ("10.96.0.1", "10.0.0.5", "tcp"),
                (
                    f"10.96.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                    f"10.244.2.{n % 250 + 2}",
                    "tcp",
                ),
            ]
        )
        port = {"udp": 53, "tcp": rng.choice([443, 8080, 6379])}[proto]
        if svc == "10.96.0.1":
            port = 443
        args = ["-p", proto, "-s", pod, "-d", svc, "--dst-nat", f"{backend}:{port}"]
        args += ["--sport", str(sport), "--dport", str(port)]
        if proto == "tcp":
            return [*args, "--state", "ESTABLISHED", "-t", "86400", "-u", "SEEN_REPLY,ASSURED"]
        return [*args, "-t", str(rng.randint(5, 30)), "-u", "SEEN_REPLY"]
    # icmp
    args = ["-p", "icmp", "-s", lan, "-d", remote, "--src-nat", "192.0.2.1"]
    args += ["--icmp-type", "8", "--icmp-code", "0", "--icmp-id", str(rng.randint(1, 65535))]
    return [*args, "-t", str(rng.randint(5, 30)), "-u", "SEEN_REPLY"]


def insert(ns: NetNS, args: list[str]) -> bool:
    return ns.conntrack("-I", *args, check=False).returncode == 0


def delete(ns: NetNS, args: list[str]) -> bool:
    """Delete the entry `conntrack -I args` made (by its original tuple and zone)."""
    keep = {"-p", "-s", "-d", "--sport", "--dport", "-w"}
    which = [x for i in range(0, len(args) - 1) if args[i] in keep for x in args[i : i + 2]]
    return ns.conntrack("-D", *which, check=False).returncode == 0


# --- the whole run ------------------------------------------------------------------------------


def make(output: Path, duration: float, seed: int, entries: int, warmup: float) -> None:
    rng = random.Random(seed)
    with NetNS(acct=True, timestamp=True) as ns:
        for name, value in SYSCTLS.items():
            ns.sysctl(name, value)
        ns.nft(LAB_RULES)
        established = []
        for i in range(entries):
            args = gateway_entry(rng, i)
            if insert(ns, args) and "ESTABLISHED" in args:
                established.append(args)
        print(f"inserted {entries} gateway entries", file=sys.stderr)
        gen = ns.spawn(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--traffic",
                str(warmup + duration + 10),
                "--seed",
                str(seed),
            ]
        )
        assert gen.stdout is not None
        if gen.stdout.readline().strip() != "ready":
            raise RuntimeError(
                f"traffic generator failed: {gen.stderr.read() if gen.stderr else ''}"
            )
        stop = threading.Event()
        churner = threading.Thread(target=churn, args=(ns, rng, established, entries, stop))
        churner.start()
        try:
            time.sleep(warmup)
            record(ns, output, duration)
        finally:
            stop.set()
            churner.join()
    describe(output)


def churn(
    ns: NetNS, rng: random.Random, established: list[list[str]], first: int, stop: threading.Event
) -> None:
    """The gateway keeps seeing new, short-lived flows; now and then a long-lived one ends and
    another begins. From the warm-up on, so the table is at its steady size when recording."""
    i = first
    while not stop.is_set():
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            insert(ns, gateway_entry(rng, i, churn=True))
            i += 1
        if established and rng.random() < 0.2:
            delete(ns, established.pop(rng.randrange(len(established))))
            args = gateway_entry(rng, i)
            i += 1
            if insert(ns, args) and "ESTABLISHED" in args:
                established.append(args)
        stop.wait(rng.uniform(0.3, 1.0))


def record(ns: NetNS, output: Path, duration: float) -> None:
    """`cttop --record` the namespace's table for `duration` seconds, then gzip it to `output`."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "demo.pcap"
        rec = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cttop",
                "--netns",
                ns.name,
                "--record",
                str(raw),
                "--duration",
                str(duration),
                "-b",  # batch: quiet or not, never the interactive view
                "-o",
                "csv",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        if rec.wait(timeout=duration + 60) != 0:
            raise RuntimeError("cttop --record failed")
        with (
            raw.open("rb") as src,
            output.open("wb") as out,
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as dst,
        ):
            shutil.copyfileobj(src, dst)


def describe(path: Path) -> None:
    from cttop.fmt import nat_destination, nat_source
    from cttop.record import ReplaySource
    from cttop.sampler import Sampler

    source = ReplaySource(path)
    sampler = Sampler()
    keys: set[object] = set()
    sizes = []
    protos: Counter[str] = Counter()
    states: Counter[str] = Counter()
    nat = moving = 0
    while not source.at_end:
        sample = sampler.step(source.snapshot())
        sizes.append(len(sample.rows))
        for flow, rate in sample.rows:
            keys.add(flow.key)
            protos[f"{flow.family_name}/{flow.proto}"] += 1
            if flow.state_name:
                states[flow.state_name] += 1
            if nat_destination(flow) or nat_source(flow):
                nat += 1
            if rate is not None and rate.total_bytes_per_s > 0:
                moving += 1
    polls = len(source)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {polls} polls, {source.duration:.0f} s")
    print(
        f"flows per poll {min(sizes)}..{max(sizes)} (first {sizes[0]}, last {sizes[-1]}), "
        f"{len(keys)} distinct flows"
    )
    print(f"flow-polls: moving {moving}, NAT {nat}")
    print("per protocol (flow-polls):", dict(protos.most_common()))
    print("TCP states (flow-polls):", dict(states.most_common()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--duration", type=float, default=150.0, help="seconds to record (default 150)")
    p.add_argument("--entries", type=int, default=220, help="gateway entries inserted at start")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--warmup", type=float, default=WARMUP, help="seconds of traffic before")
    p.add_argument("--traffic", type=float, help=argparse.SUPPRESS)  # inside the namespace
    p.add_argument("--describe", type=Path, help="only print what a recording holds")
    args = p.parse_args()
    if args.traffic is not None:
        asyncio.run(traffic(args.traffic, args.seed))
        return 0
    if args.describe is not None:
        describe(args.describe)
        return 0
    if os.geteuid() != 0:
        print("make_demo.py needs root (network namespaces, nftables, conntrack)", file=sys.stderr)
        return 1
    make(args.output, args.duration, args.seed, args.entries, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
