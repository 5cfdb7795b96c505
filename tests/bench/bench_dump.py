"""Times a full conntrack dump at big tables: `conntrack -L`, a raw netlink floor, and cttop.

A script, not a test (needs root):

    python tests/bench/bench_dump.py [--sizes 10000,100000,250000] [--repeat 5] [--json PATH]

For each size N it creates a fresh network namespace ``cttop-bench-<pid>-<N>``, fills its
conntrack table with N entries through ctnetlink (IPCTNL_MSG_CT_NEW, a few hundred messages per
datagram), then, inside the namespace, times (medians and minima of --repeat runs):

- ``conntrack -L > /dev/null`` (includes fork/exec of the tool);
- the raw floor: one NETLINK_NETFILTER socket with cttop's SO_RCVBUF, an AF_UNSPEC dump request,
  and ``recv_into`` a preallocated 64 KiB buffer until NLMSG_DONE -- no decoding at all;
- ``ConntrackClient().snapshot()`` (dump + decode + dedupe + the table-size request) and,
  separately, ``sum(1 for _ in client.dump())``;
- a second poll through ``Sampler().step()`` (snapshot + step), when cttop.sampler exists;
- the peak RSS (VmHWM) of a fresh process that takes one snapshot, and of one that runs the
  raw floor (the baseline).

The namespace is deleted after each size, also on errors and Ctrl-C. Nothing is changed in the
initial namespace, except net.netfilter.nf_conntrack_max when a size exceeds it (that sysctl is
read-only inside child namespaces and limits their tables too); it is restored at the end.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's cttop first

from cttop.conntrack import const as c
from cttop.conntrack.client import ConntrackClient, encode_tuple, nfgenmsg
from cttop.conntrack.model import Flow, Tuple
from cttop.netlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    RECV_BUFFER,
    SOCKET_RCVBUF,
    DumpStats,
    attr,
    message,
    nest,
)

REPO = Path(__file__).resolve().parents[2]
NAME_PREFIX = "cttop-bench"
NETNS_DIR = Path("/run/netns")
CT_MAX_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_max")

CT_NEW = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_NEW
CT_GET = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors do not echo the whole request back
TIMEOUT = 3600  # seconds: nothing expires during a run

# --------------------------------------------------------------------------------------------
# The synthetic table: mostly UDP, ~20% TCP ESTABLISHED, a few ICMP, ~10% IPv6.
# Clients come from a pool (addresses repeat across flows, as on a real gateway); the client
# and its source port (or ICMP id) make every tuple distinct for N < clients * 64000.
# --------------------------------------------------------------------------------------------

SERVERS4 = [f"192.0.2.{i}" for i in range(1, 65)] + [f"198.51.100.{i}" for i in range(1, 65)]
SERVERS6 = [f"2001:db8:ff::{i:x}" for i in range(1, 65)]
UDP_PORTS = (53, 443, 123, 4500, 51820, 5353, 3478)
TCP_PORTS = (443, 80, 22, 5432, 8080, 6443)
REPLIED = c.IPS_SEEN_REPLY | c.IPS_ASSURED
TCP_ESTABLISHED = c.TCP_STATES.index("ESTABLISHED")


def synth_flow(i: int, clients: int) -> Flow:
    """Entry number i of the table (deterministic)."""
    r = i % 100
    v6 = r < 10
    k = i % clients
    sport = 1024 + (i // clients) % 64000
    if v6:
        src = f"2001:db8:1::{k >> 16 & 0xFFFF:x}:{k & 0xFFFF:x}"
        dst = SERVERS6[(i // 7) % len(SERVERS6)]
        proto = c.IPPROTO_UDP if r < 7 else c.IPPROTO_TCP if r < 9 else c.IPPROTO_ICMPV6
        family = c.AF_INET6
    else:
        src = f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}"
        dst = SERVERS4[(i // 7) % len(SERVERS4)]
        proto = c.IPPROTO_TCP if r < 28 else c.IPPROTO_ICMP if r < 30 else c.IPPROTO_UDP
        family = c.AF_INET
    mark = (i // 5) % 8 + 1 if i % 5 == 0 else None
    if proto in (c.IPPROTO_ICMP, c.IPPROTO_ICMPV6):
        ident = (i // clients) & 0xFFFF
        req, rep = (8, 0) if proto == c.IPPROTO_ICMP else (128, 129)
        orig = Tuple(src, dst, icmp_type=req, icmp_code=0, icmp_id=ident)
        reply = Tuple(dst, src, icmp_type=rep, icmp_code=0, icmp_id=ident)
        return Flow(family, proto, orig, reply, status=c.IPS_SEEN_REPLY, mark=mark)
    if proto == c.IPPROTO_TCP:
        dport = TCP_PORTS[i % len(TCP_PORTS)]
        status, state = REPLIED, TCP_ESTABLISHED
    else:
        dport = UDP_PORTS[i % len(UDP_PORTS)]
        status, state = (0 if i % 4 == 1 else REPLIED), None
    orig = Tuple(src, dst, sport, dport)
    reply = Tuple(dst, src, dport, sport)
    return Flow(family, proto, orig, reply, status=status, state=state, mark=mark)


def encode_new(flow: Flow) -> bytes:
    """The IPCTNL_MSG_CT_NEW payload that creates `flow`."""
    p = (
        nfgenmsg(flow.family)
        + encode_tuple(c.CTA_TUPLE_ORIG, flow.orig, flow)
        + encode_tuple(c.CTA_TUPLE_REPLY, flow.reply, flow)
        + attr(c.CTA_TIMEOUT, struct.pack(">I", TIMEOUT))
    )
    if flow.status:
        # The new entry already counts as CONFIRMED; a status without that bit asks to clear
        # it, which the kernel refuses (EBUSY).
        p += attr(c.CTA_STATUS, struct.pack(">I", flow.status | c.IPS_CONFIRMED))
    if flow.mark is not None:
        p += attr(c.CTA_MARK, struct.pack(">I", flow.mark))
    if flow.state is not None:
        tcp = nest(c.CTA_PROTOINFO_TCP, attr(c.CTA_PROTOINFO_TCP_STATE, bytes([flow.state])))
        p += nest(c.CTA_PROTOINFO, tcp)
    return p


def _netlink_socket(rcvbuf: int | None, sndbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    for force, plain, size in (
        (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
        (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
    ):
        if size is None:
            continue
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)
    s.bind((0, 0))
    return s


def _drain_acks(sock: socket.socket, last_seq: int, errors: Counter[str]) -> None:
    """Read NLMSG_ERRORs until the one answering `last_seq` (sent with NLM_F_ACK)."""
    while True:
        data = sock.recv(65536)
        off = 0
        while len(data) - off >= NLMSG_HDR.size:
            length, msg_type, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, off)
            if length < NLMSG_HDR.size:
                raise RuntimeError(f"bad netlink length {length} in an ack")
            if msg_type == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + NLMSG_HDR.size)
                if err:
                    errors[os.strerror(-err)] += 1
                if seq == last_seq:
                    return
            off += (length + 3) & ~3


def build_table(n: int, clients: int, batch: int) -> dict[str, Any]:
    """Insert entries 0..n-1 into the current namespace's table; report the times and errors."""
    sock = _netlink_socket(rcvbuf=8 << 20, sndbuf=8 << 20)
    sock.settimeout(30)
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    errors: Counter[str] = Counter()
    t_encode = t_kernel = 0.0
    datagram_bytes = 0
    seq = 0
    base = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    report_every = max(batch, (n // 10) // batch * batch)
    start_all = time.perf_counter()
    try:
        for start in range(0, n, batch):
            t0 = time.perf_counter()
            end = min(n, start + batch)
            parts = []
            for i in range(start, end):
                seq += 1
                flags = base | NLM_F_ACK if i == end - 1 else base
                parts.append(message(CT_NEW, flags, seq, encode_new(synth_flow(i, clients))))
            data = b"".join(parts)
            datagram_bytes = max(datagram_bytes, len(data))
            t1 = time.perf_counter()
            sock.send(data)
            _drain_acks(sock, seq, errors)
            t2 = time.perf_counter()
            t_encode += t1 - t0
            t_kernel += t2 - t1
            if end % report_every == 0 or end == n:
                rate = end / (t2 - start_all)
                print(f"  built {end}/{n} ({rate:,.0f} entries/s)", file=sys.stderr, flush=True)
    finally:
        sock.close()
    return {
        "entries": n,
        "seconds": time.perf_counter() - start_all,
        "encode_seconds": t_encode,
        "kernel_seconds": t_kernel,
        "batch": batch,
        "max_datagram_bytes": datagram_bytes,
        "errors": dict(errors),
    }


# --------------------------------------------------------------------------------------------
# Measurements (run inside the namespace)
# --------------------------------------------------------------------------------------------


def raw_floor(rcvbuf: int | None = SOCKET_RCVBUF, bufsize: int = RECV_BUFFER) -> dict[str, Any]:
    """Dump the table and throw the bytes away: the cost of the kernel + the syscalls."""
    sock = _netlink_socket(rcvbuf)
    try:
        buf = bytearray(bufsize)
        recv_into = sock.recv_into
        trunc = socket.MSG_TRUNC
        tail = struct.Struct("=IHHI").unpack_from  # len, type, flags, seq of a trailing DONE
        seq = 4242
        req = message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, nfgenmsg(c.AF_UNSPEC))
        datagrams = total = biggest = first = 0
        smallest = 1 << 30
        t0 = time.perf_counter()
        sock.send(req)
        while True:
            n = recv_into(buf, bufsize, trunc)
            if n > bufsize:
                raise RuntimeError(f"datagram of {n} bytes truncated to {bufsize}")
            if not datagrams:
                first = n
            datagrams += 1
            total += n
            if n > biggest:
                biggest = n
            if n < smallest:
                smallest = n
            if n >= 20 and tail(buf, n - 20) == (20, NLMSG_DONE, NLM_F_MULTI, seq):
                break
            if n < 64 and tail(buf, 0)[1] == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", buf, 16)
                raise OSError(-err, f"dump: {os.strerror(-err)}")
        elapsed = time.perf_counter() - t0
    finally:
        sock.close()
    return {
        "seconds": elapsed,
        "datagrams": datagrams,
        "bytes": total,
        "max_datagram": biggest,
        "min_datagram": smallest,
        "first_datagram": first,
    }


def conntrack_list() -> tuple[float, int | None]:
    """Wall time of `conntrack -L > /dev/null` and the count it printed on stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["conntrack", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True
    )
    elapsed = time.perf_counter() - t0
    m = re.search(rb"(\d+) flow entries have been shown", proc.stderr)
    return elapsed, int(m.group(1)) if m else None


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _load_sampler() -> Any:
    try:
        from cttop.sampler import Sampler
    except ImportError:
        return None
    return Sampler


def measure(n: int, repeat: int) -> dict[str, Any]:
    """All timings for the table of this namespace, interleaved round by round."""
    sampler_cls = _load_sampler()
    client = ConntrackClient()
    series: dict[str, list[float]] = {}
    info: dict[str, Any] = {"sampler": sampler_cls is not None}

    def add(name: str, value: float) -> None:
        series.setdefault(name, []).append(value)

    # One round not counted: warms the code paths and the kernel's caches.
    raw_floor()
    client.snapshot()
    gc.collect()
    for rnd in range(repeat):
        print(f"  round {rnd + 1}/{repeat}", file=sys.stderr, flush=True)
        secs, shown = conntrack_list()
        add("conntrack_L", secs)
        info["conntrack_L_shown"] = shown

        raw = raw_floor()
        add("raw_floor", raw["seconds"])
        info["raw_datagrams"] = {k: v for k, v in raw.items() if k != "seconds"}
        add("raw_floor_default_rcvbuf", raw_floor(rcvbuf=None)["seconds"])

        gc.collect()
        secs, snap = _timed(client.snapshot)
        add("cttop_snapshot", secs)
        info["snapshot_flows"] = len(snap.flows)
        info["snapshot_count"] = snap.table_count
        info["snapshot_max"] = snap.table_max
        info["snapshot_skipped"] = snap.skipped
        del snap

        gc.collect()
        stats = DumpStats()
        secs, count = _timed(lambda: sum(1 for _ in client.dump(stats)))  # noqa: B023
        add("cttop_dump", secs)
        info["dump_flows"] = count
        info["dump_stats"] = {
            "datagrams": stats.datagrams,
            "messages": stats.messages,
            "malformed": stats.malformed,
            "stale": stats.stale,
            "interrupted": stats.interrupted,
        }

        gc.collect()
        gc.disable()
        try:
            secs, snap = _timed(client.snapshot)
        finally:
            gc.enable()
        add("cttop_snapshot_nogc", secs)
        del snap

        if sampler_cls is not None:
            gc.collect()
            try:
                sampler = sampler_cls()
                sampler.step(client.snapshot())
                t0 = time.perf_counter()
                snap = client.snapshot()
                t1 = time.perf_counter()
                sample = sampler.step(snap)
                t2 = time.perf_counter()
                add("cttop_sampler", t2 - t0)
                add("sampler_step", t2 - t1)
                del sample, snap, sampler
            except Exception as e:  # the sampler is young: report, do not abort
                info["sampler_error"] = f"{type(e).__name__}: {e}"
                sampler_cls = None
    client.close()
    summary = {
        name: {"median": statistics.median(v), "min": min(v), "runs": v}
        for name, v in series.items()
    }
    return {"n": n, "repeat": repeat, "timings": summary, "info": info}


def _proc_status_kib(field: str) -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_rss(what: str) -> dict[str, Any]:
    """Run one workload in this (fresh) process and report its memory high-water mark.

    The "snapshot" workload is also the cold poll: the first one of a process, with no decoder
    cache or learned message shapes yet (what the operator waits for before the first screen).
    """
    baseline = _proc_status_kib("VmRSS")
    seconds = None
    if what == "raw":
        raw_floor()
    elif what == "snapshot":
        with ConntrackClient() as client:
            seconds, snap = _timed(client.snapshot)
            assert snap.flows
    elif what == "sampler":
        sampler_cls = _load_sampler()
        if sampler_cls is None:
            return {"what": what, "skipped": "no cttop.sampler"}
        sampler = sampler_cls()
        with ConntrackClient() as client:
            sampler.step(client.snapshot())
            sampler.step(client.snapshot())
    else:
        raise ValueError(what)
    return {
        "what": what,
        "seconds": seconds,
        "baseline_kib": baseline,
        "vmhwm_kib": _proc_status_kib("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def worker(args: argparse.Namespace) -> int:
    if args.worker == "build":
        out = build_table(args.n, args.clients, args.batch)
    elif args.worker == "measure":
        out = measure(args.n, args.repeat)
    elif args.worker.startswith("rss-"):
        out = peak_rss(args.worker[4:])
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------------
# The driver (initial namespace): namespaces, workers, table
# --------------------------------------------------------------------------------------------

_live: set[str] = set()


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=True, **kw)


def _delete_netns(name: str) -> None:
    if name in _live:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        _live.discard(name)


def _cleanup_all() -> None:
    for name in list(_live):
        _delete_netns(name)


def _cleanup_stale() -> None:
    """Delete cttop-bench-<pid>-* namespaces whose creator is gone (a killed earlier run)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        m = re.fullmatch(rf"{NAME_PREFIX}-(\d+)-\d+", entry.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            print(f"removing stale namespace {entry.name}", file=sys.stderr)
            subprocess.run(["ip", "netns", "delete", entry.name], check=False)
        except PermissionError:
            pass


@contextlib.contextmanager
def bench_netns(n: int) -> Iterator[str]:
    name = f"{NAME_PREFIX}-{os.getpid()}-{n}"
    _run(["ip", "netns", "add", name])
    _live.add(name)
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _in_ns(name, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1"])
        yield name
    finally:
        # Flushing first makes the (asynchronous) namespace teardown cheap, so freeing a
        # big table does not overlap the next size's measurements.
        subprocess.run(
            ["ip", "netns", "exec", name, "conntrack", "-F"], capture_output=True, check=False
        )
        _delete_netns(name)


def _in_ns(name: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return _run(["ip", "netns", "exec", name, *argv])


def _run_worker(name: str, mode: str, args: argparse.Namespace, n: int) -> dict[str, Any]:
    argv = [
        "ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()),
        "--worker", mode, "--n", str(n), "--repeat", str(args.repeat),
        "--clients", str(args.clients), "--batch", str(args.batch),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {mode} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    print(f"N={n}: building the table", file=sys.stderr, flush=True)
    with bench_netns(n) as name:
        build = _run_worker(name, "build", args, n)
        counted = int(_in_ns(name, ["conntrack", "-C"]).stdout.strip())
        print(
            f"  {counted} entries after {build['seconds']:.1f} s "
            f"(encode {build['encode_seconds']:.1f} s, kernel {build['kernel_seconds']:.1f} s)"
            + (f", errors {build['errors']}" if build["errors"] else ""),
            file=sys.stderr,
            flush=True,
        )
        if counted != n:
            print(f"  WARNING: asked for {n} entries, the table holds {counted}", file=sys.stderr)
        print(f"N={n}: timing ({args.repeat} rounds)", file=sys.stderr, flush=True)
        result = _run_worker(name, "measure", args, n)
        rss = {}
        for what in ("raw", "snapshot", "sampler"):
            rss[what] = _run_worker(name, f"rss-{what}", args, n)
        # The cold poll: the first snapshot of a fresh process, --repeat processes.
        cold = [rss["snapshot"]]
        cold += [_run_worker(name, "rss-snapshot", args, n) for _ in range(args.repeat - 1)]
        rss["snapshot"]["vmhwm_kib"] = max(r["vmhwm_kib"] for r in cold)
        secs = [r["seconds"] for r in cold]
        result["timings"]["cttop_cold_snapshot"] = {
            "median": statistics.median(secs),
            "min": min(secs),
            "runs": secs,
        }
        t0 = time.perf_counter()
    teardown = time.perf_counter() - t0
    result.update(build=build, conntrack_C=counted, rss=rss, teardown_seconds=teardown)
    return result


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

COLUMNS = (
    ("N", 8),
    ("conntrack -L", 17),
    ("raw floor", 17),
    ("cttop snapshot", 17),
    ("ratio", 14),
    ("cttop dump()", 17),
    ("cttop+sampler", 17),
    ("RSS cttop", 10),
    ("RSS raw", 8),
)


def _ms(t: dict[str, Any], key: str) -> str:
    v = t.get(key)
    if v is None:
        return "-"
    return f"{v['median'] * 1e3:,.0f} ({v['min'] * 1e3:,.0f})"


def _mib(r: dict[str, Any]) -> str:
    kib = r.get("vmhwm_kib")
    return "-" if kib is None else f"{kib / 1024:.0f}"


def format_table(results: list[dict[str, Any]]) -> str:
    head = "  ".join(name.rjust(w) for name, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        t = r["timings"]
        snap, raw = t["cttop_snapshot"], t["raw_floor"]
        ratio = f"{snap['median'] / raw['median']:.2f}x ({snap['min'] / raw['min']:.2f}x)"
        cells = (
            f"{r['n']:,}",
            _ms(t, "conntrack_L"),
            _ms(t, "raw_floor"),
            _ms(t, "cttop_snapshot"),
            ratio,
            _ms(t, "cttop_dump"),
            _ms(t, "cttop_sampler"),
            _mib(r["rss"]["snapshot"]),
            _mib(r["rss"]["raw"]),
        )
        lines.append("  ".join(cell.rjust(w) for cell, (_, w) in zip(cells, COLUMNS, strict=True)))
    lines.append("times: median (min) in ms over the rounds; RSS: peak (VmHWM) in MiB")
    return "\n".join(lines)


def format_details(results: list[dict[str, Any]]) -> str:
    out = []
    for r in results:
        t, info, b = r["timings"], r["info"], r["build"]
        d = info["raw_datagrams"]
        extra = [
            f"N={r['n']:,}: built in {b['seconds']:.1f} s",
            f"first (cold) snapshot {_ms(t, 'cttop_cold_snapshot')}",
            f"snapshot without gc {_ms(t, 'cttop_snapshot_nogc')}",
            f"sampler step alone {_ms(t, 'sampler_step')}",
            f"raw floor default SO_RCVBUF {_ms(t, 'raw_floor_default_rcvbuf')}",
            f"dump: {d['datagrams']} datagrams, {d['bytes'] / 2**20:.1f} MiB, "
            f"sizes {d['min_datagram']}..{d['max_datagram']} B (first {d['first_datagram']} B)",
            f"RSS cttop+sampler {_mib(r['rss']['sampler'])} MiB",
        ]
        out.append("; ".join(extra))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    sources = hashlib.sha256()
    for path in sorted((REPO / "cttop").rglob("*.py")):
        sources.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": commit or None,  # the working tree may differ: see cttop_sources_sha256
        "cttop_sources_sha256": sources.hexdigest(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,250000", help="comma-separated table sizes")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per size (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    p.add_argument("--clients", type=int, default=8192, help="distinct client addresses")
    p.add_argument("--batch", type=int, default=256, help="CT_NEW messages per datagram")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _raise_conntrack_max(sizes: list[int]) -> int | None:
    """Raise the initial namespace's nf_conntrack_max if needed; returns the old value."""
    old = int(CT_MAX_SYSCTL.read_text())
    want = max(sizes) + 1024
    if old and old < want:
        print(f"raising nf_conntrack_max {old} -> {want} (restored at exit)", file=sys.stderr)
        CT_MAX_SYSCTL.write_text(str(want))
        return old
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if os.geteuid() != 0:
        print("bench_dump.py needs root (network namespaces, ctnetlink)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "conntrack", "sysctl") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if max(sizes) > args.clients * 64000:
        print("--clients too small for the largest size", file=sys.stderr)
        return 2

    atexit.register(_cleanup_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    _cleanup_stale()
    old_max = _raise_conntrack_max(sizes)
    results = []
    try:
        for n in sizes:
            results.append(bench_size(n, args))
            print(format_table(results[-1:]).splitlines()[-2], file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _cleanup_all()
        if old_max is not None:
            CT_MAX_SYSCTL.write_text(str(old_max))
            print(f"nf_conntrack_max restored to {old_max}", file=sys.stderr)
        if results:
            print(format_table(results))
            print(format_details(results))
            if args.json:
                doc = {"environment": environment(), "results": results}
                Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
