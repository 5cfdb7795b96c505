"""The "known mix": a conntrack table with one entry of every kind cttop must get right.

`populate_mix(ns)` fills a fresh `NetNS` and returns a `Mix` describing every entry it made (see
`Mix.entries`; `len(mix)` entries, asserted with ``conntrack -C`` and ``conntrack -L``). Golden
fixtures and the differential test (our decoder vs `conntrack -L`) are built on it.

How the entries are made:

* ``conntrack -I`` for everything that needs a particular state, status, mark, zone, NAT or a
  protocol we cannot produce on loopback (SCTP, GRE, UDPLITE, DCCP, protocol 99). Timeouts are
  3600 s, addresses are documentation/private ranges (never used for real traffic).
* Real loopback traffic (127.0.0.1 / ::1 inside the namespace only) for TCP, UDP, ICMP, ICMPv6,
  an FTP-helper flow and a DNAT flow, so that counters, helper and NAT come from the kernel itself.

TCP ESTABLISHED with real counters: a real connection closed cleanly ends in TIME_WAIT, so the
*held* connections (IPv4 and IPv6) stay open in a background process started with `NetNS.spawn`
(`Mix.holder`); they are idle when populate_mix returns (no keepalive, delayed ACKs settled), so
their counters do not move. The namespace's close() kills the holder. One more real connection
(to port 2121, with the FTP helper attached) is closed cleanly and sits in TIME_WAIT.

To keep real entries from expiring during a test run, populate_mix raises the namespace's UDP,
ICMP, ICMPv6 and TCP TIME_WAIT timeouts to 3600 s before any traffic.

Accounting: the first three entries (kinds "noacct-*": two inserted, one real UDP exchange) are
created with net.netfilter.nf_conntrack_acct=0 and have no counters; then acct is switched on and
everything else has counters (0 for inserted entries, real numbers for traffic).

Regenerate tests/fixtures/conntrack_L_sample.txt with
tests/fixtures/capture_conntrack_L_sample.sh (runs ``python -m tests.lab capture``; needs root).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.netns import NetNS

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 3600
MIX_SIZE = 40  # entries populate_mix makes (see its docstring)

# Real-traffic endpoints (all inside the namespace). Client ports are fixed too, so the original
# tuples of real flows are deterministic.
LO4 = "127.0.0.1"
LO6 = "::1"
NOACCT_UDP = (40100, 5100)
TCP4_HELD = (40001, 5001)
TCP6_HELD = (40002, 5002)
TCP4_FTP = (40003, 2121)
UDP4_REPLIED = (40004, 5004)
UDP4_UNREPLIED = (40005, 5005)
UDP6_REPLIED = (40006, 5006)
UDP4_DNAT = (40007, 7777, 7778)  # client port, port dialled, port DNATed to
ICMP4_ID = 4242
ICMP6_ID = 4343

LAB_RULES = f"""\
table inet cttop_lab {{
    ct helper ftp {{ type "ftp" protocol tcp; }}
    chain out {{
        type filter hook output priority 0; policy accept;
        tcp dport {TCP4_FTP[1]} ct helper set "ftp"
    }}
}}
table ip cttop_lab_nat {{
    chain out {{
        type nat hook output priority -100; policy accept;
        udp dport {UDP4_DNAT[1]} dnat to {LO4}:{UDP4_DNAT[2]}
    }}
}}
"""

LAB_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ping_group_range": "0 2147483647",  # ICMP "ping" sockets for root
    "net.netfilter.nf_conntrack_udp_timeout": TIMEOUT,
    "net.netfilter.nf_conntrack_udp_timeout_stream": TIMEOUT,
    "net.netfilter.nf_conntrack_icmp_timeout": TIMEOUT,
    "net.netfilter.nf_conntrack_icmpv6_timeout": TIMEOUT,
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": TIMEOUT,
}


@dataclass(frozen=True)
class MixEntry:
    """One entry populate_mix creates, described as `conntrack -L` shows it (see tests.ctref)."""

    kind: str  # unique label
    family: str  # "ipv4" / "ipv6"
    proto: str  # as the JSON schema spells it
    src: str
    dst: str
    sport: int | None = None  # port, or GRE key
    dport: int | None = None
    icmp_type: int | None = None
    icmp_id: int | None = None
    state: str | None = None
    counters: bool = True  # packets/bytes printed (acct was on at creation)
    real: bool = False  # made by real traffic (counters > 0)
    unreplied: bool = True
    flag: str | None = None  # printed flag: "assured" / "offload" / "hw_offload"
    mark: int = 0
    zone: int = 0
    zone_orig: int | None = None
    zone_reply: int | None = None
    helper: str | None = None
    reply: tuple[str, str, int | None, int | None] | None = None  # non-inverted reply tuple
    insert: tuple[str, ...] = ()  # `conntrack -I` arguments; empty for real traffic

    def matches(self, ref: dict[str, Any]) -> bool:
        """Whether a parsed `conntrack -L` flow has this entry's original tuple and zones."""
        orig = ref["orig"]
        return (
            ref["family"] == self.family
            and ref["proto"] == self.proto
            and ref["zone"] == self.zone
            and ref["zone_orig"] == self.zone_orig
            and orig["src"] == self.src
            and orig["dst"] == self.dst
            and (self.sport is None or orig["sport"] == self.sport)
            and (self.dport is None or orig["dport"] == self.dport)
            and (self.icmp_type is None or orig["icmp_type"] == self.icmp_type)
            and (self.icmp_id is None or orig["icmp_id"] == self.icmp_id)
        )


@dataclass
class Mix:
    """What populate_mix made. ``len(mix)`` is the number of entries in the table."""

    entries: list[MixEntry]
    holder: subprocess.Popen[str] | None = None  # keeps the ESTABLISHED real connections open
    dccp_tracked: bool = False  # whether the kernel has a DCCP tracker (gone in 6.16+)
    counts: dict[str, int] = field(default_factory=dict)  # entries per protocol

    def __len__(self) -> int:
        return len(self.entries)

    def by_kind(self, kind: str) -> MixEntry:
        for entry in self.entries:
            if entry.kind == kind:
                return entry
        raise KeyError(kind)


# --- inserted entries ---------------------------------------------------------------------


def _ins(
    kind: str,
    proto: str,
    src: str,
    dst: str,
    *,
    sport: int | None = None,
    dport: int | None = None,
    state: str | None = None,
    status: Sequence[str] = (),
    mark: int | None = None,
    zone: int | None = None,
    zone_orig: int | None = None,
    zone_reply: int | None = None,
    reply: tuple[str, str, int | None, int | None] | None = None,
    dst_nat: str | None = None,
    src_nat: str | None = None,
    nat_reply: tuple[str, str, int | None, int | None] | None = None,
    extra: Sequence[str] = (),
    counters: bool = True,
    state_printed: bool = True,
    printed_ports: tuple[int, int] | None = None,
) -> MixEntry:
    """Build the `conntrack -I` argv and the matching expectation from one description.

    reply: an explicit reply tuple (src, dst, sport, dport), passed with -r/-q/--reply-port-*.
    nat_reply: the reply tuple the kernel will compute for --dst-nat/--src-nat (not passed).
    state_printed / printed_ports: what conntrack shows when the kernel ignores state/ports.
    """
    family = "ipv6" if ":" in src else "ipv4"
    argv = ["-I", "-p", proto, "-s", src, "-d", dst, "-t", str(TIMEOUT)]
    l4_ports = proto in ("tcp", "udp", "udplite", "sctp", "dccp")
    if proto == "gre":
        argv += ["--srckey", str(sport), "--dstkey", str(dport)]
    elif l4_ports:
        argv += ["--sport", str(sport), "--dport", str(dport)]
    if state is not None:
        argv += ["--state", state]
    if reply is not None:
        argv += ["-r", reply[0], "-q", reply[1]]
        if reply[2] is not None:
            argv += ["--reply-port-src", str(reply[2]), "--reply-port-dst", str(reply[3])]
    # conntrack 1.4.7 bug: "-u STATUS" given *after* "-m MARK" overwrites the mark with the
    # status bits. So -u always goes first.
    if status:
        argv += ["-u", ",".join(status)]
    if mark is not None:
        argv += ["-m", str(mark)]
    if zone is not None:
        argv += ["-w", str(zone)]
    if zone_orig is not None:
        argv += ["--orig-zone", str(zone_orig)]
    if zone_reply is not None:
        argv += ["--reply-zone", str(zone_reply)]
    if dst_nat is not None:
        argv += ["--dst-nat", dst_nat]
    if src_nat is not None:
        argv += ["--src-nat", src_nat]
    argv += list(extra)
    if printed_ports is not None:
        sport, dport = printed_ports
    flag = "assured" if "ASSURED" in status else None
    return MixEntry(
        kind=kind,
        family=family,
        proto=proto,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        state=state if state_printed else None,
        counters=counters,
        unreplied="SEEN_REPLY" not in status,
        flag=flag,
        mark=mark or 0,
        zone=zone or 0,
        zone_orig=zone_orig,
        zone_reply=zone_reply,
        reply=reply or nat_reply,
        insert=tuple(argv),
    )


REPLIED = ("SEEN_REPLY",)
REPLIED_ASSURED = ("SEEN_REPLY", "ASSURED")
# TCP states as conntrack -L prints them, and the status an entry in that state typically has.
TCP_STATE_STATUS: dict[str, tuple[str, ...]] = {
    "NONE": (),
    "SYN_SENT": (),
    "SYN_SENT2": (),
    "SYN_RECV": REPLIED,
    "ESTABLISHED": REPLIED_ASSURED,
    "FIN_WAIT": REPLIED_ASSURED,
    "CLOSE_WAIT": REPLIED_ASSURED,
    "LAST_ACK": REPLIED_ASSURED,
    "TIME_WAIT": REPLIED_ASSURED,
    "CLOSE": REPLIED,
}


def _noacct_inserted() -> list[MixEntry]:
    return [
        _ins(
            "noacct-tcp",
            "tcp",
            "10.0.0.1",
            "10.0.0.2",
            sport=2001,
            dport=80,
            state="ESTABLISHED",
            status=REPLIED_ASSURED,
            counters=False,
        ),
        _ins("noacct-udp", "udp", "10.0.0.1", "10.0.0.2", sport=2002, dport=53, counters=False),
    ]


def _acct_inserted(dccp_tracked: bool) -> list[MixEntry]:
    entries = [
        _ins(
            f"tcp-{state}",
            "tcp",
            "10.0.1.1",
            "10.0.1.2",
            sport=3000 + i,
            dport=443,
            state=state,
            status=status,
        )
        for i, (state, status) in enumerate(TCP_STATE_STATUS.items())
    ]
    entries += [
        # ASSURED without SEEN_REPLY: prints both [UNREPLIED] and [ASSURED].
        _ins(
            "tcp-assured-unreplied",
            "tcp",
            "10.0.1.1",
            "10.0.1.2",
            sport=3100,
            dport=443,
            state="ESTABLISHED",
            status=("ASSURED",),
        ),
        _ins(
            "tcp6-established",
            "tcp",
            "2001:db8::1",
            "2001:db8::2",
            sport=3200,
            dport=443,
            state="ESTABLISHED",
            status=REPLIED_ASSURED,
        ),
        _ins(
            "sctp-established",
            "sctp",
            "10.0.2.1",
            "10.0.2.2",
            sport=3868,
            dport=3868,
            state="ESTABLISHED",
            status=REPLIED_ASSURED,
            extra=("--orig-vtag", "0x1234", "--reply-vtag", "0x5678"),
        ),
        _ins(
            "sctp6-cookie-wait",
            "sctp",
            "2001:db8::1",
            "2001:db8::2",
            sport=3869,
            dport=3868,
            state="COOKIE_WAIT",
            extra=("--orig-vtag", "0x0", "--reply-vtag", "0x9abc"),
        ),
        _ins("gre", "gre", "10.0.3.1", "10.0.3.2", sport=0x5, dport=0xFFFF),
        _ins("udplite", "udplite", "10.0.4.1", "10.0.4.2", sport=5000, dport=5001),
        _ins("proto-99", "99", "10.0.5.1", "10.0.5.2"),
        # DCCP: conntrack -I wants --state and --role. Kernels >= 6.16 have no DCCP tracker:
        # the entry is then generic (no state, no ports; conntrack prints sport=0 dport=0).
        _ins(
            "dccp",
            "dccp",
            "10.0.6.1",
            "10.0.6.2",
            sport=5000,
            dport=5001,
            state="OPEN",
            extra=("--role", "client"),
            state_printed=dccp_tracked,
            printed_ports=None if dccp_tracked else (0, 0),
        ),
        _ins(
            "icmp-timestamp",
            "icmp",
            "10.0.7.1",
            "10.0.7.2",
            extra=("--icmp-type", "13", "--icmp-code", "0", "--icmp-id", "77"),
        ),
        # DNAT-looking: reply tuple given explicitly (no NAT status bits).
        _ins(
            "dnat-reply-tuple",
            "tcp",
            "10.0.8.1",
            "203.0.113.10",
            sport=40000,
            dport=443,
            state="ESTABLISHED",
            status=REPLIED_ASSURED,
            reply=("10.0.8.80", "10.0.8.1", 8443, 40000),
        ),
        # Kernel-made NAT: conntrack sends CTA_NAT_DST / CTA_NAT_SRC (status DST_NAT / SRC_NAT).
        _ins(
            "dnat-kernel",
            "tcp",
            "10.0.8.1",
            "203.0.113.10",
            sport=40001,
            dport=443,
            state="ESTABLISHED",
            status=REPLIED_ASSURED,
            dst_nat="10.0.8.80:8443",
            nat_reply=("10.0.8.80", "10.0.8.1", 8443, 40001),
        ),
        _ins(
            "snat-kernel",
            "udp",
            "10.0.8.1",
            "198.51.100.53",
            sport=40002,
            dport=53,
            status=REPLIED,
            src_nat="192.0.2.1",
            nat_reply=("198.51.100.53", "192.0.2.1", 53, 40002),
        ),
        _ins("mark", "udp", "10.0.9.1", "10.0.9.2", sport=6000, dport=6001, mark=42),
        _ins("mark-max", "udp", "10.0.9.1", "10.0.9.2", sport=6002, dport=6001, mark=0xFFFFFFFF),
        _ins(
            "zone",
            "tcp",
            "10.0.10.1",
            "10.0.10.2",
            sport=7000,
            dport=22,
            state="ESTABLISHED",
            status=REPLIED_ASSURED,
            zone=3,
            mark=7,
        ),
        _ins("zone-max", "udp", "10.0.10.1", "10.0.10.2", sport=7001, dport=53, zone=65535),
        _ins("zone-orig", "udp", "10.0.10.1", "10.0.10.2", sport=7002, dport=53, zone_orig=4),
        _ins("zone-reply", "udp", "10.0.10.1", "10.0.10.2", sport=7003, dport=53, zone_reply=5),
    ]
    return entries


# --- real traffic ---------------------------------------------------------------------------


def _real_entries() -> list[MixEntry]:
    def flow(kind: str, proto: str, fam: str, ports: tuple[int, ...], **kw: Any) -> MixEntry:
        host = LO4 if fam == "ipv4" else LO6
        return MixEntry(
            kind=kind,
            family=fam,
            proto=proto,
            src=host,
            dst=host,
            sport=ports[0],
            dport=ports[1],
            real=True,
            **kw,
        )

    established = {"state": "ESTABLISHED", "unreplied": False, "flag": "assured"}
    return [
        flow("real-tcp4-established", "tcp", "ipv4", TCP4_HELD, **established),
        flow("real-tcp6-established", "tcp", "ipv6", TCP6_HELD, **established),
        flow(
            "real-tcp4-ftp-time-wait",
            "tcp",
            "ipv4",
            TCP4_FTP,
            state="TIME_WAIT",
            unreplied=False,
            flag="assured",
            helper="ftp",
        ),
        flow("real-udp4-replied", "udp", "ipv4", UDP4_REPLIED, unreplied=False),
        flow("real-udp4-unreplied", "udp", "ipv4", UDP4_UNREPLIED, unreplied=True),
        flow("real-udp6-replied", "udp", "ipv6", UDP6_REPLIED, unreplied=False),
        flow(
            "real-udp4-dnat",
            "udp",
            "ipv4",
            UDP4_DNAT[:2],
            unreplied=False,
            reply=(LO4, LO4, UDP4_DNAT[2], UDP4_DNAT[0]),
        ),
        MixEntry(
            kind="real-icmp4-echo",
            family="ipv4",
            proto="icmp",
            src=LO4,
            dst=LO4,
            icmp_type=8,
            icmp_id=ICMP4_ID,
            real=True,
            unreplied=False,
        ),
        MixEntry(
            kind="real-icmp6-echo",
            family="ipv6",
            proto="icmpv6",
            src=LO6,
            dst=LO6,
            icmp_type=128,
            icmp_id=ICMP6_ID,
            real=True,
            unreplied=False,
        ),
    ]


def _noacct_real_entries() -> list[MixEntry]:
    return [
        MixEntry(
            kind="noacct-real-udp4",
            family="ipv4",
            proto="udp",
            src=LO4,
            dst=LO4,
            sport=NOACCT_UDP[0],
            dport=NOACCT_UDP[1],
            counters=False,
            real=True,
            unreplied=False,
        )
    ]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _tcp_pair(
    family: int, host: str, ports: tuple[int, int]
) -> tuple[socket.socket, socket.socket]:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, ports[1]))
    srv.listen(1)
    cli = socket.socket(family, socket.SOCK_STREAM)
    cli.bind((host, ports[0]))
    cli.connect((host, ports[1]))
    acc, _ = srv.accept()
    srv.close()
    return cli, acc


def _tcp_exchange(cli: socket.socket, acc: socket.socket, rounds: int = 3) -> None:
    for _ in range(rounds):
        cli.sendall(b"q" * 100)
        _recv_exact(acc, 100)
        acc.sendall(b"r" * 1000)
        _recv_exact(cli, 1000)


def _udp(family: int, host: str, cport: int, sport: int, *, reply: bool, to: int | None) -> None:
    with (
        socket.socket(family, socket.SOCK_DGRAM) as srv,
        socket.socket(family, socket.SOCK_DGRAM) as cli,
    ):
        srv.bind((host, sport))
        cli.bind((host, cport))
        cli.sendto(b"ping", (host, to if to is not None else sport))
        _, addr = srv.recvfrom(100)
        if reply:
            srv.sendto(b"pong!", addr)
            cli.recvfrom(100)


def _ping(family: int, proto: int, host: str, ident: int, echo_type: int) -> None:
    # A "ping socket": the kernel sets the ICMP id to the bound port and fills the checksum.
    with socket.socket(family, socket.SOCK_DGRAM, proto) as sock:
        sock.bind((host, ident))
        sock.sendto(bytes([echo_type, 0, 0, 0, 0, 0, 0, 1]) + b"cttop", (host, 0))
        sock.recvfrom(100)


def _traffic_noacct() -> None:
    _udp(socket.AF_INET, LO4, *NOACCT_UDP, reply=True, to=None)


def _traffic_acct_and_hold() -> None:
    """Make the real acct-on flows, print "ready", keep two TCP connections open until EOF."""
    held = [*_tcp_pair(socket.AF_INET, LO4, TCP4_HELD), *_tcp_pair(socket.AF_INET6, LO6, TCP6_HELD)]
    _tcp_exchange(held[0], held[1])
    _tcp_exchange(held[2], held[3])

    # FTP-looking exchange through the ftp helper, closed cleanly: TIME_WAIT.
    cli, acc = _tcp_pair(socket.AF_INET, LO4, TCP4_FTP)
    acc.sendall(b"220 cttop lab\r\n")
    _recv_exact(cli, 15)
    cli.sendall(b"QUIT\r\n")
    _recv_exact(acc, 6)
    acc.sendall(b"221 bye\r\n")
    _recv_exact(cli, 9)
    cli.close()
    if acc.recv(10) != b"":
        raise RuntimeError("expected EOF from the FTP client")
    acc.close()

    _udp(socket.AF_INET, LO4, *UDP4_REPLIED, reply=True, to=None)
    _udp(socket.AF_INET, LO4, *UDP4_UNREPLIED, reply=False, to=None)
    _udp(socket.AF_INET6, LO6, *UDP6_REPLIED, reply=True, to=None)
    _udp(socket.AF_INET, LO4, UDP4_DNAT[0], UDP4_DNAT[2], reply=True, to=UDP4_DNAT[1])
    _ping(socket.AF_INET, socket.IPPROTO_ICMP, LO4, ICMP4_ID, 8)
    _ping(socket.AF_INET6, socket.IPPROTO_ICMPV6, LO6, ICMP6_ID, 128)

    time.sleep(0.5)  # let delayed ACKs go out: afterwards nothing moves
    print("ready", flush=True)
    sys.stdin.read()  # hold until the parent closes our stdin or kills us
    for sock in held:
        sock.close()


def expected_entries(dccp_tracked: bool = False) -> list[MixEntry]:
    """Every entry populate_mix makes, in creation order (dccp_tracked: see Mix)."""
    return (
        _noacct_inserted() + _noacct_real_entries() + _acct_inserted(dccp_tracked) + _real_entries()
    )


def check_entry(entry: MixEntry, ref: dict[str, Any]) -> list[str]:
    """How a parsed `conntrack -L` flow (tests.ctref) differs from what `entry` promises."""
    problems: list[str] = []

    def expect(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{entry.kind}: {what} is {got!r}, expected {want!r}")

    flag = next((k for k in ("hw_offload", "offload", "assured") if ref[k]), None)
    expect("state", ref["state"], entry.state)
    expect("unreplied", ref["unreplied"], entry.unreplied)
    expect("printed flag", flag, entry.flag)
    expect("mark", ref["mark"], entry.mark)
    expect("zone", ref["zone"], entry.zone)
    expect("zone_orig", ref["zone_orig"], entry.zone_orig)
    expect("zone_reply", ref["zone_reply"], entry.zone_reply)
    expect("helper", ref["helper"], entry.helper)
    timeout = ref["timeout"]
    if timeout is None or timeout <= 0 or (not entry.real and timeout > TIMEOUT):
        problems.append(f"{entry.kind}: timeout {timeout!r}")
    orig, reply = ref["orig"], ref["reply"]
    for direction, tup in (("orig", orig), ("reply", reply)):
        expect(f"{direction} counters present", tup["packets"] is not None, entry.counters)
        expect(f"{direction} bytes present", tup["bytes"] is not None, entry.counters)
    if entry.counters and not entry.real:
        expect("counters of an inserted entry", (orig["packets"], reply["packets"]), (0, 0))
    if entry.counters and entry.real:
        expect("orig packets > 0", orig["packets"] > 0, True)
        expect("reply packets > 0", reply["packets"] > 0, not entry.unreplied)
    if entry.reply is not None:
        got = (reply["src"], reply["dst"], reply["sport"], reply["dport"])
        expect("reply tuple", got, entry.reply)
    else:
        inverted = (orig["dst"], orig["src"], orig["dport"], orig["sport"])
        expect(
            "reply tuple", (reply["src"], reply["dst"], reply["sport"], reply["dport"]), inverted
        )
    return problems


def _bootstrap(func: str) -> list[str]:
    """argv that runs tests.lab.<func>() in a fresh interpreter (inside the namespace)."""
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); import tests.lab as m; m.{func}()"
    return [sys.executable, "-c", code]


# --- the mix --------------------------------------------------------------------------------


def populate_mix(ns: NetNS, *, ready_timeout: float = 30) -> Mix:
    """Fill `ns` (fresh, tracking on) with the known mix; return what was made.

    The table then holds exactly ``len(mix) == MIX_SIZE`` (40) entries — checked here with
    ``conntrack -C`` and ``conntrack -L`` before returning:

    * acct off (no counters), 3: inserted TCP ESTABLISHED, inserted UDP unreplied, real UDP.
    * acct on, inserted, 28: TCP in each of the 10 states (NONE, SYN_SENT, SYN_SENT2,
      SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE); TCP ASSURED but
      unreplied; TCP over IPv6; SCTP ESTABLISHED (IPv4) and COOKIE_WAIT (IPv6) with vtags; GRE;
      UDPLITE; protocol 99; DCCP; ICMP timestamp request; DNAT-looking (explicit reply tuple);
      kernel DNAT (--dst-nat); kernel SNAT (--src-nat); mark 42; mark 0xffffffff; zone 3 (with
      mark 7); zone 65535; orig-direction zone 4; reply-direction zone 5.
    * acct on, real loopback traffic, 9: TCP ESTABLISHED over IPv4 and IPv6 (held open by
      `Mix.holder`); TCP TIME_WAIT with the ftp helper; UDP replied (IPv4, IPv6), UDP
      unreplied; UDP DNATed 7777 -> 7778; ICMP echo; ICMPv6 echo.

    Per protocol: tcp 19, udp 12, icmp 2, sctp 2, icmpv6 1, gre 1, udplite 1, dccp 1, "99" 1
    (`Mix.counts`). `expected_entries()` lists them; `check_entry()` checks one against
    `conntrack -L`.
    """
    if ns.conntrack_count() != 0:
        raise RuntimeError(f"{ns.name} is not empty:\n{ns.conntrack_list()}")
    for name, value in LAB_SYSCTLS.items():
        ns.sysctl(name, value)
    ns.nft(LAB_RULES)
    probe = ns.run(["test", "-e", "/proc/sys/net/netfilter/nf_conntrack_dccp_timeout_open"], False)
    dccp_tracked = probe.returncode == 0

    # Phase 1: acct off.
    ns.sysctl("net.netfilter.nf_conntrack_acct", 0)
    entries = _noacct_inserted()
    for entry in entries:
        ns.conntrack(*entry.insert)
    ns.run(_bootstrap("_traffic_noacct"))
    entries += _noacct_real_entries()

    # Phase 2: acct on.
    ns.sysctl("net.netfilter.nf_conntrack_acct", 1)
    inserted = _acct_inserted(dccp_tracked)
    for entry in inserted:
        ns.conntrack(*entry.insert)
    entries += inserted

    holder = ns.spawn(_bootstrap("_traffic_acct_and_hold"))
    _wait_ready(holder, ready_timeout)
    entries += _real_entries()

    mix = Mix(entries=entries, holder=holder, dccp_tracked=dccp_tracked)
    for entry in entries:
        mix.counts[entry.proto] = mix.counts.get(entry.proto, 0) + 1
    if len(mix) != MIX_SIZE:
        raise RuntimeError(f"the mix has {len(mix)} entries, MIX_SIZE says {MIX_SIZE}")
    listing = ns.conntrack_list()
    shown = len([line for line in listing.splitlines() if line.strip()])
    count = ns.conntrack_count()
    if count != len(mix) or shown != len(mix):
        raise RuntimeError(
            f"expected {len(mix)} entries, conntrack -C says {count}, -L shows {shown}:\n{listing}"
        )
    return mix


def _wait_ready(holder: subprocess.Popen[str], timeout: float) -> None:
    assert holder.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(holder.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = holder.stdout.readline()
                if line.strip() == "ready":
                    return
                if line == "":
                    break
            if holder.poll() is not None:
                break
    err = holder.stderr.read() if holder.stderr is not None and holder.poll() is not None else ""
    raise RuntimeError(f"traffic holder did not get ready (rc={holder.poll()}): {err}")


def capture(output: str = "extended,id", timestamp: bool = True) -> str:
    """`conntrack -L -o OUTPUT` of the known mix in a throw-away namespace (needs root)."""
    with NetNS(acct=True, timestamp=timestamp) as ns:
        populate_mix(ns)
        return ns.conntrack_list(output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="print `conntrack -L` of the known mix")
    cap.add_argument("-o", "--output", default="extended,id", help="conntrack -o value")
    cap.add_argument("--no-timestamp", action="store_true", help="nf_conntrack_timestamp=0")
    sub.add_parser("describe", help="print the expected entries as JSON lines")
    args = parser.parse_args(argv)
    if args.cmd == "capture":
        sys.stdout.write(capture(args.output, timestamp=not args.no_timestamp))
    else:
        for entry in expected_entries():
            print(json.dumps(asdict(entry)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
