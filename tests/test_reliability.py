"""Reliability: bad kernels, bad input, odd operators — cttop keeps running and never lies.

* Fuzz: a seeded mutation fuzzer (tests/mutfuzz.py) feeds the decoders and the datagram framing
  100,000 inputs in CI and 1,000,000 in the `slow` run.
* Counters zeroed by another process (`conntrack -L -z`): rates start over, no spike.
* Accounting off, then on: `-`/null and the notice for flows without counters, rates for the new.
* Permissions: root of its own user+network namespace reads that namespace's table. (Without
  CAP_NET_ADMIN — as user nobody, or as root with the capability dropped — the one-line message
  and exit code 1 are tests/test_cli_errors.py: test_without_cap_net_admin_as_nobody,
  test_without_cap_net_admin_as_root; the empty table of `unshare -rn`:
  test_own_user_and_network_namespace.)
* Socket trouble: abandoned dumps, a tiny receive buffer, ENOBUFS, kernel events on the dump
  socket, EINTR storms: every snapshot that returns is the whole table; a failed poll is retried
  on a fresh socket and the header counts it.
* Safety: nothing is written anywhere (files, or the kernel's table) unless the operator asks.

Root tests run in fresh network namespaces (tests/netns.py) and are marked `root`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cttop import netlink
from cttop.conntrack import const as c
from cttop.conntrack.client import ConntrackClient, ConntrackError
from cttop.conntrack.model import Flow
from cttop.netlink import NLMSG_ERROR, DumpStats, NetlinkSocket
from cttop.sampler import Sampler
from cttop.source import LiveSource
from cttop.tui.app import CttopApp
from cttop.tui.header import Header, notices_for
from cttop.tui.screens import ConfirmScreen
from cttop.tui.table import FlowTable
from tests import mutfuzz
from tests.ctload import CtWriter, filled, inside, synth, wait_ready
from tests.netns import TRACK_RULES, NetNS
from tests.pilotkit import NEVER, poll, settle
from tests.ptykit import PtyRun
from tests.test_fuzz import SEQ, control_message, done, entry, fake_client, fake_netlink

REPO = Path(__file__).resolve().parent.parent
CTLOAD = str(REPO / "tests" / "ctload.py")
CTTOP = [sys.executable, "-m", "cttop"]
CT_GET = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET
CT_DELETE = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_DELETE
CT_GET_STATS = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET_STATS
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_CONNTRACK = (1, 2, 3)  # NEW, UPDATE, DESTROY events


# === fuzz ======================================================================================

# Failure kinds of the fuzzer that are known bugs, with the test that pins each one down. Remove
# an entry when its bug is fixed (its xfail test then passes and must lose its mark too).
KNOWN: dict[str, str] = {}


def _unexpected(report: mutfuzz.Report) -> list[str]:
    return [k for k in report.kinds if k.split(":")[0] not in KNOWN]


def test_mutation_fuzz_ci_share(record_property: Any) -> None:
    """100,000 mutated inputs (about 10 s): no exception but DecodeError from the decoders, the
    fast decoder always agrees with the reference, the framing agrees with its oracle, no hang."""
    report = mutfuzz.fuzz(100_000, seed=20240607)
    print(report.describe().splitlines()[0])
    record_property("fuzz", report.describe().splitlines()[0])
    assert report.inputs == 100_000
    assert not _unexpected(report), report.describe()
    # the inputs reach every outcome: decoded, rejected, decoded by a learned shape
    assert report.decoded > 20_000 and report.rejected > 20_000 and report.fast_path > 20_000
    assert report.datagrams > 30_000
    # every mutation (32-bit counters, NLA_F_NESTED removed, unknown types, splices, ...) ran
    assert len(report.mutations) == 20 and min(report.mutations.values()) > 1000, report.mutations


@pytest.mark.slow
def test_mutation_fuzz_one_million(record_property: Any) -> None:
    report = mutfuzz.fuzz(1_000_000, seed=1)
    print(report.describe().splitlines()[0])
    record_property("fuzz", report.describe().splitlines()[0])
    assert report.inputs == 1_000_000
    assert not _unexpected(report), report.describe()


def test_mutation_fuzz_has_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzer's checks do catch a decoder that raises the wrong thing, a fast path that
    disagrees, a framing that drops a message, and a decoder that never returns."""
    real_decode = mutfuzz.decode_message
    real_frame = mutfuzz.frame_answer

    def crashing(buf: bytes, off: int, end: int) -> Flow:
        if (end - off) % 7 == 0:
            raise IndexError("boom")
        return real_decode(buf, off, end)

    def dropping(data: bytes, seq: int, stats: DumpStats, start: int = 0) -> Any:
        out, ending = real_frame(data, seq, stats, start)
        return out[:-1], ending

    monkeypatch.setattr(mutfuzz, "decode_message", crashing)
    monkeypatch.setattr(mutfuzz, "frame_answer", dropping)
    report = mutfuzz.fuzz(3000, seed=5)
    assert any(k.startswith("decode_message: IndexError") for k in report.kinds), report.kinds
    assert any(k.startswith("frame_answer: framed") for k in report.kinds), report.kinds
    monkeypatch.undo()

    real_fused = mutfuzz.decode_data_messages

    def skipping(data: bytes, *args: Any) -> Any:
        flows, at = real_fused(data, *args)
        return flows[1:], at  # the first message taken, never decoded

    monkeypatch.setattr(mutfuzz, "decode_data_messages", skipping)
    report = mutfuzz.fuzz(3000, seed=5)
    assert any(k.startswith("decode_data_messages: took") for k in report.kinds), report.kinds
    monkeypatch.undo()

    class Lying(mutfuzz.FastDecoder):
        def decode(self, buf: bytes, off: int, end: int, family: int) -> Flow:
            flow = super().decode(buf, off, end, family)
            return flow._replace(mark=12345) if end - off == 200 else flow

    monkeypatch.setattr(mutfuzz, "FastDecoder", Lying)
    report = mutfuzz.fuzz(5000, seed=6)
    assert any(k.startswith("FastDecoder.decode: differs") for k in report.kinds), report.kinds
    monkeypatch.undo()

    def hanging(buf: bytes, off: int, end: int) -> Flow:
        if end - off == 160:
            while True:
                time.sleep(0.01)
        return real_decode(buf, off, end)

    monkeypatch.setattr(mutfuzz, "decode_message", hanging)
    report = mutfuzz.fuzz(5000, seed=7, block_seconds=1.0)
    hangs = [f for f in report.failures if f.check == "hang"]
    assert len(hangs) == 1 and len(hangs[0].data) == 160, report.describe()
    assert report.inputs < 5000  # the run stopped there


def test_a_short_nlmsg_error_does_not_end_the_threaded_dump() -> None:
    short_error = control_message(NLMSG_ERROR)  # header only: no errno
    datagrams = [entry(1) + short_error, entry(2) + done()]
    nl = fake_netlink(list(datagrams))
    stats = DumpStats()
    assert len(list(nl.responses(SEQ, stats))) == 2 and stats.malformed == 1  # unthreaded
    client, _ = fake_client(list(datagrams))
    stats = DumpStats()
    got = list(client.dump(stats))
    assert [f.id for f in got] == [1001, 1002]
    assert stats.malformed == 1


# === live tests: helpers =========================================================================


def run_cttop(ns: NetNS, *args: str) -> subprocess.Popen[str]:
    """`cttop --netns NS ARGS`, started (from the host)."""
    return subprocess.Popen(
        [*CTTOP, "--netns", ns.name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == "", err
    return out


def steady(ns: NetNS, ports: list[int], seconds: float, pps: int = 40, size: int = 500) -> Any:
    argv = [sys.executable, CTLOAD, "steady", "--ports", ",".join(map(str, ports))]
    proc = ns.spawn([*argv, "--seconds", str(seconds), "--pps", str(pps), "--size", str(size)])
    wait_ready(proc)
    return proc


def by_port(sample: dict[str, Any], port: int) -> dict[str, Any] | None:
    """The steady flow to `port` (its client port is port + 10000) in a JSON sample."""
    for f in sample["flows"]:
        o = f["orig"]
        if o["dport"] == port and o["sport"] == port + 10000 and f["proto"] == "udp":
            return f
    return None


def wire_bytes(size: int) -> int:
    return size + 28  # IPv4 + UDP headers: conntrack counts layer 3


# === counters zeroed by another process ==========================================================


@pytest.mark.root
def test_counters_zeroed_by_conntrack_z_restart_rates(netns: NetNS) -> None:
    """`conntrack -L -z` in the middle of a session: each steady flow's rate is null exactly once
    (the first sample that saw its counters go down), then resumes; never negative, no spike."""
    ports, pps, size = [7001, 7002, 7003], 40, 500
    steady(netns, ports, seconds=20, pps=pps, size=size)
    proc = run_cttop(netns, "-b", "-o", "json", "-d", "0.5", "-n", "13")
    time.sleep(2.8)
    zero_start = time.time()
    zeroed = netns.conntrack("-L", "-z").stdout
    zero_end = time.time()
    assert zeroed.count("dport=7001") == 1
    samples = [json.loads(line) for line in finish(proc).splitlines()]
    assert len(samples) == 13

    expected = pps * wire_bytes(size)  # orig bytes/s of each flow
    bound = {  # far above what is sent, far below any wrapped or cumulative value
        "orig_bytes_per_s": 2.5 * expected,
        "reply_bytes_per_s": 2.5 * pps * wire_bytes(size // 2),
        "orig_packets_per_s": 2.5 * pps,
        "reply_packets_per_s": 2.5 * pps,
    }
    for port in ports:
        flows = [by_port(s, port) for s in samples]
        assert all(f is not None for f in flows), f"flow to {port} missing from a sample"
        rates = [f["rate"] for f in flows if f is not None]
        nulls = [i for i, r in enumerate(rates) if r is None]
        assert nulls[0] == 0 and len(nulls) == 2, (port, nulls)
        k = nulls[1]
        assert k >= 2  # rates were measured before the zeroing
        # the null is where the counters went down, right after the zeroing
        before, after = flows[k - 1], flows[k]
        assert before is not None and after is not None
        assert after["orig"]["bytes"] < before["orig"]["bytes"]
        assert samples[k]["time"] > zero_start and samples[k - 1]["time"] < zero_end + 0.1
        # every rate is sane: never negative, never far above what was sent
        for r in rates:
            if r is not None:
                assert all(0 <= r[name] < bound[name] for name in bound), (port, r, bound)
        # and resumes: the samples after the restart measure the steady rate again
        resumed = [r["orig_bytes_per_s"] for r in rates[k + 1 :] if r is not None]
        assert len(resumed) == len(rates) - k - 1 >= 3
        assert all(0.3 * expected < v < 2.5 * expected for v in resumed), (resumed, expected)


# === accounting off, then on =====================================================================


def _text_blocks(text: str) -> list[tuple[str, list[list[str]]]]:
    """`-o text` output -> [(summary line, rows split in fields)]."""
    blocks = []
    for chunk in text.strip("\n").split("\n\n"):
        lines = chunk.splitlines()
        if lines and lines[0].startswith("cttop - "):
            blocks.append((lines[0], []))
        elif lines and lines[0].lstrip().startswith("PROTO"):
            blocks[-1][1].extend(line.split() for line in lines[1:])
    return blocks


@pytest.mark.root
def test_accounting_off_then_on(netns_factory: Any) -> None:
    """Flows made while nf_conntrack_acct=0 have no counters: `-` in text, null in JSON, counted
    in the summary/header notice — never 0, never a rate. Flows made after it is switched on get
    counters and, from their second sample, rates."""
    ns = netns_factory(acct=False)
    for sport in ("1111", "1112"):
        ns.conntrack("-I", "-p", "udp", "-s", "10.1.1.1", "-d", "10.1.1.2", "--sport", sport,
                     "--dport", "2222", "-t", "600")  # fmt: skip
    old_ports, new_ports = [7101, 7102], [7201, 7202]
    steady(ns, old_ports, seconds=20, pps=20)
    as_json = run_cttop(ns, "-b", "-o", "json", "-d", "0.5", "-n", "12")
    as_text = run_cttop(ns, "-b", "-o", "text", "-d", "0.5", "-n", "12")
    time.sleep(2.2)
    ns.sysctl("net.netfilter.nf_conntrack_acct", 1)
    steady(ns, new_ports, seconds=20, pps=20)
    samples = [json.loads(line) for line in finish(as_json).splitlines()]
    blocks = _text_blocks(finish(as_text))
    assert len(samples) == 12 and len(blocks) == 12

    def uncounted(f: dict[str, Any]) -> bool:
        return all(f[d][k] is None for d in ("orig", "reply") for k in ("packets", "bytes"))

    seen_new = 0
    for s in samples:
        for f in s["flows"]:
            port = f["orig"]["dport"]
            if port in old_ports or f["orig"]["src"] == "10.1.1.1":
                assert uncounted(f) and f["rate"] is None, f
            elif port in new_ports:
                assert not uncounted(f), f
        news = [by_port(s, p) for p in new_ports]
        seen_new += all(n is not None for n in news)
    assert seen_new >= 4  # the new flows were there for the second half
    for p in new_ports:
        rates = [f["rate"] for s in samples if (f := by_port(s, p)) is not None]
        assert rates[0] is None and all(r is not None for r in rates[1:]), (p, rates)
        assert all(r["orig_bytes_per_s"] > 0 for r in rates[1:] if r is not None)

    for summary, rows in blocks:
        dashes = [r for r in rows if r[-7:-3] == ["-", "-", "-", "-"]]  # rates, pkt/s, bytes
        assert len(dashes) == 4, rows  # two steady flows and two inserted entries
        assert f"accounting off for {len(dashes)} flows" in summary, summary
        assert all("0B" not in r[-7:-3] for r in dashes)
    last_rows = blocks[-1][1]
    moving = [r for r in last_rows if r[3].endswith(tuple(f":{p}" for p in new_ports))]
    assert len(moving) == 2 and all(r[-7] != "-" and r[-4] != "-" for r in moving), last_rows

    # the interactive header says the same, with the fix, and the table shows "-"
    with inside(ns.path):
        client = ConntrackClient()
        sampler = Sampler()
        sampler.step(client.snapshot())
        time.sleep(0.3)
        sample = sampler.step(client.snapshot())
        client.close()
    assert sample.totals.no_counters == 4
    assert notices_for(sample)[0] == (
        "accounting off for 4 flows: sysctl -w net.netfilter.nf_conntrack_acct=1"
    )


# === permissions =================================================================================


@pytest.mark.root
def test_own_user_and_network_namespace_reads_its_own_table(tmp_path: Path) -> None:
    """`unshare -rn`: root of a fresh user+network namespace has CAP_NET_ADMIN over that
    namespace only. It fills its own table (conntrack -I and real loopback traffic), and cttop
    run there shows exactly that table — what `conntrack -L` in there lists."""
    script = f"""
set -e
ip link set lo up
nft -f - <<'EOF'
{TRACK_RULES}
EOF
conntrack -I -p tcp -s 10.3.3.1 -d 10.3.3.2 --sport 3333 --dport 443 --state ESTABLISHED \
    -t 600 2>/dev/null
conntrack -I -p udp -s fd00:3::1 -d fd00:3::2 --sport 5353 --dport 53 -t 600 2>/dev/null
{sys.executable} -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 9000))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 19000))
u.sendto(b"x", ("127.0.0.1", 9000)); d, a = s.recvfrom(9); s.sendto(b"y", a); u.recvfrom(9)'
conntrack -L -o id 2>/dev/null | sort > "$1"
{" ".join(CTTOP)} -b -n 1 -o json
"""
    listing = tmp_path / "conntrack-L.txt"
    proc = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script, "sh", str(listing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "unshare" in proc.stderr and "Operation not permitted" in proc.stderr:
        pytest.skip(f"user namespaces are not allowed here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    sample = json.loads(line)
    ids = sorted(int(x.split("id=")[1].split()[0]) for x in listing.read_text().splitlines())
    assert sample["count"] == 3 == len(ids)
    assert sorted(f["id"] for f in sample["flows"]) == ids
    ends = {(f["orig"]["src"], f["orig"]["dport"]) for f in sample["flows"]}
    assert ends == {("10.3.3.1", 443), ("fd00:3::1", 53), ("127.0.0.1", 9000)}


# === socket trouble ==============================================================================

N_TABLE = 4000


@pytest.fixture
def big_table(netns_factory: Any) -> Iterator[tuple[NetNS, ConntrackClient]]:
    """A namespace holding N_TABLE inserted entries, and a client whose socket reads it."""
    ns = netns_factory(track=False)
    client = filled(ns.path, N_TABLE, 0x55)
    try:
        yield ns, client
    finally:
        client.close()


def complete(client: ConntrackClient, n: int = N_TABLE) -> None:
    """One dump that is exactly the table: n flows, no duplicate, nothing stale or malformed."""
    stats = DumpStats()
    flows = [f for batch in client.dump_batches(stats) for f in batch]
    assert (len(flows), len({f.key for f in flows})) == (n, n)
    assert (stats.stale, stats.malformed) == (0, 0)
    snap = client.snapshot()
    assert len(snap.flows) == n and snap.skipped == 0 and snap.table_count == n


def receivers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cttop-netlink-recv" and t.is_alive()]


@pytest.mark.root
def test_abandoned_dumps_leave_no_trace(big_table: tuple[NetNS, ConntrackClient]) -> None:
    """A dump dropped midway (the operator quits, a view is recomputed, an exception): the next
    poll gets the whole table — no EBUSY, no stale message from the dropped dump — and the
    receiving threads of the dropped dumps end."""
    ns, client = big_table
    with inside(ns.path):  # a dropped dump's socket is replaced: in the poller's namespace
        for taken in (1, 10, 700, 2000, N_TABLE - 1, 0):
            dump = client.dump()
            got = [f for f, _ in zip(dump, range(taken), strict=False)]
            assert len(got) == taken
            dump.close()
            complete(client)
        batches = client.dump_batches()
        next(batches)
        del batches  # dropped without close(): the garbage collector finishes it
        complete(client)
    deadline = time.monotonic() + 5
    while receivers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receivers() == []


@pytest.mark.root
def test_batched_receive_batches_and_equals_one_by_one(
    big_table: tuple[NetNS, ConntrackClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """recvmmsg collects the datagrams the kernel builds back to back in one call; the table it
    gives is exactly the one datagram-per-call receive gives (the fallback where libc lacks
    recvmmsg)."""
    _, client = big_table
    sizes: list[int] = []
    real = NetlinkSocket.recv_batch

    def counting(self: NetlinkSocket) -> list[bytes]:
        got = real(self)
        sizes.append(len(got))
        return got

    monkeypatch.setattr(NetlinkSocket, "recv_batch", counting)
    batched = client.snapshot().flows
    assert sum(sizes) > 10 and max(sizes) > 1, sizes  # 4000 flows: dozens of datagrams
    assert max(sizes) <= netlink.RECV_BATCH
    monkeypatch.setattr(netlink, "_recvmmsg", None)
    sizes.clear()
    single = client.snapshot().flows
    assert set(sizes) == {1}
    assert {k: f._replace(expires=None) for k, f in batched.items()} == {
        k: f._replace(expires=None) for k, f in single.items()
    }
    assert len(single) == N_TABLE


@pytest.mark.root
def test_a_tiny_receive_buffer(big_table: tuple[NetNS, ConntrackClient]) -> None:
    _, client = big_table
    sock = client._sock
    assert sock is not None
    sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    assert sock.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 4096
    for _ in range(3):
        complete(client)


@pytest.mark.root
def test_enobufs_and_kernel_events_on_the_dump_socket(
    big_table: tuple[NetNS, ConntrackClient],
) -> None:
    """Conntrack events queued on the poll's socket: with room, they are skipped as stale and
    never shown as flows (not even the DESTROY events of deleted entries); overflowing a tiny
    buffer, the kernel says ENOBUFS: that poll fails with a ConntrackError, and the next one,
    on a fresh socket, is whole."""
    ns, client = big_table
    sock = client._sock
    assert sock is not None
    for group in NFNLGRP_CONNTRACK:
        sock.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    extra = [synth(i, 0x66, base=1 << 20) for i in range(300)]
    with inside(ns.path), CtWriter() as w:
        w.insert(extra)
        w.delete(extra)
    stats = DumpStats()
    flows = [f for batch in client.dump_batches(stats) for f in batch]
    assert len(flows) == N_TABLE and stats.stale >= 600 and stats.malformed == 0
    assert all(f.mark == 0x55 for f in flows)

    sock = client._sock
    assert sock is not None
    for group in NFNLGRP_CONNTRACK:
        sock.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    with inside(ns.path), CtWriter() as w:
        w.insert(extra)
        w.delete(extra)
    with pytest.raises(ConntrackError) as info:
        client.snapshot()
    assert "ENOBUFS" in str(info.value)
    assert client._sock is None  # the broken socket is gone...
    with inside(ns.path):
        complete(client)  # ...and the next poll opens a fresh one (in its namespace)


@pytest.mark.root
def test_signals_during_dumps(big_table: tuple[NetNS, ConntrackClient]) -> None:
    """An interval timer fires every 0.3 ms through 12 dumps (EINTR in recv and in the waits):
    every snapshot is whole."""
    _, client = big_table
    fired = 0

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal fired
        fired += 1

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    try:
        for _ in range(12):
            snap = client.snapshot()
            assert len(snap.flows) == N_TABLE and snap.table_count == N_TABLE
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired > 100, fired


@pytest.mark.root
async def test_a_failed_poll_is_retried_on_a_fresh_socket_and_counted(
    big_table: tuple[NetNS, ConntrackClient],
) -> None:
    """In the interactive view, over the live table: a poll that fails (ENOBUFS) shows the error
    in the header and counts it; the next poll, on a fresh socket, shows the whole table again."""
    ns, client = big_table
    with inside(ns.path):  # the app's threads inherit the namespace, as with --netns
        source = LiveSource(client)
        app = CttopApp(source, interval=NEVER, label="lab", timer=lambda: 0.0)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            assert app.errors == 0 and len(app.query_one(FlowTable).rows) == N_TABLE
            sock = client._sock
            assert sock is not None
            for group in NFNLGRP_CONNTRACK:
                sock.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            extra = [synth(i, 0x66, base=1 << 20) for i in range(300)]
            with CtWriter() as w:
                w.insert(extra)
                w.delete(extra)
            await poll(pilot)
            line = app.query_one(Header).lines()[3].plain
            assert app.errors == 1 and "ENOBUFS" in line and "still polling" in line, line
            await poll(pilot)
            assert app.errors == 1 and app.error is None
            assert len(app.query_one(FlowTable).rows) == N_TABLE
            assert "error" not in app.query_one(Header).lines()[3].plain


# === safety ======================================================================================

AUDIT = """
import json, os, sys
out = os.environ.pop("CTTOP_AUDIT_OUT")
seen = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate",
           "os.chmod", "os.chown", "os.link", "os.symlink", "os.utime", "shutil.rmtree",
           "shutil.copyfile", "shutil.move", "tempfile.mkstemp", "tempfile.mkdtemp"}
def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = mode and any(ch in mode for ch in "wax+")
        if writing or (isinstance(flags, int) and flags & WRITE):
            seen.append([event, os.fsdecode(path)])
    elif event in CHANGES:
        seen.append([event, str(args[0]) if args else ""])
sys.addaudithook(hook)
import atexit
@atexit.register
def report():
    with open(out, "w") as f:
        json.dump(seen, f)
from cttop.cli import main
sys.exit(main(sys.argv[1:]))
"""
ALLOWED = ("/dev/null", "/dev/tty", "/dev/pts/")


def audited_env(home: Path, report: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_RUNTIME_DIR=str(home / "run"),
        TMPDIR=str(home / "tmp"),
        PYTHONDONTWRITEBYTECODE="1",
        CTTOP_AUDIT_OUT=str(report),
        TERM="xterm-256color",
    )
    return env


def writes(report: Path, *allowed: str) -> list[list[str]]:
    """What the audited run opened for writing or changed, beyond /dev/null, the terminal, its
    own report and `allowed`."""
    seen = json.loads(report.read_text())
    ok = (*ALLOWED, str(report), *allowed)
    return [w for w in seen if not w[1].startswith(ok)]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(cwd, home, report file): an empty working directory and home, and where the audit hook
    reports (outside both)."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    for d in (cwd, home, home / "tmp", home / "run"):
        d.mkdir()
    return cwd, home, tmp_path / "audit.json"


@pytest.mark.parametrize("fmt", ["text", "json", "csv"])
def test_demo_batch_writes_nothing(sandbox: tuple[Path, Path, Path], fmt: str) -> None:
    cwd, home, report = sandbox
    before = tree(home)
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT, "--demo", "-b", "-n", "3", "-o", fmt],
        cwd=cwd,
        env=audited_env(home, report),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout  # it did print
    assert writes(report) == []
    assert tree(cwd) == [] and tree(home) == before


def test_interactive_demo_writes_nothing(sandbox: tuple[Path, Path, Path]) -> None:
    """The interactive view, keys and all (filter, group, help, pause, sort, delete refused on a
    recording, record refused): nothing written, not even a config or cache file."""
    cwd, home, report = sandbox
    before = tree(home)
    run = PtyRun([sys.executable, "-c", AUDIT, "--demo"], audited_env(home, report), cwd=str(cwd))
    try:
        assert run.wait_for(b"tcp", 30), run.text[-2000:]
        for key in [b"g", b"g", b"p", b"/", b"udp", b"\r", b" ", b">", b"d", b"R", b"?"]:
            run.write(key)
            run.wait_for(b"\0never", 0.3)
        run.write(b"\x1b")
        run.wait_for(b"\0never", 0.3)
        run.write(b"q")
        assert run.finish(10) and run.status == 0, run.text[-2000:]
    finally:
        run.close()
    assert "Traceback" not in run.text
    assert writes(report) == []
    assert tree(cwd) == [] and tree(home) == before


@pytest.mark.root
def test_live_batch_writes_nothing_and_records_only_what_it_was_asked(
    netns: NetNS, sandbox: tuple[Path, Path, Path]
) -> None:
    cwd, home, report = sandbox
    netns.conntrack("-I", "-p", "udp", "-s", "10.4.4.1", "-d", "10.4.4.2", "--sport", "1",
                    "--dport", "2", "-t", "600")  # fmt: skip
    before = tree(home)
    base = [sys.executable, "-c", AUDIT, "--netns", netns.name, "-b", "-n", "2", "-d", "0.2"]
    for extra in ([], ["--record", "incident.pcap"]):
        proc = subprocess.run(
            [*base, *extra],
            cwd=cwd,
            env=audited_env(home, report),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "10.4.4.1" in proc.stdout
        if not extra:
            assert writes(report) == [] and tree(cwd) == []
        else:
            assert writes(report) == [["open", "incident.pcap"]]
            assert tree(cwd) == ["incident.pcap"]
    assert tree(home) == before


class SendLog:
    """Wraps NetlinkSocket.send: every request cttop sends, as (message type, flags)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[int, int]] = []
        real = NetlinkSocket.send
        log = self.sent

        def send(nl: NetlinkSocket, msg_type: int, flags: int, payload: bytes) -> int:
            log.append((msg_type, flags))
            return real(nl, msg_type, flags, payload)

        monkeypatch.setattr(NetlinkSocket, "send", send)

    @property
    def types(self) -> set[int]:
        return {t for t, _ in self.sent}


@pytest.mark.root
def test_batch_only_reads_the_kernel_table(
    netns: NetNS, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every request a batch run sends is a read: the dump and the table size. No delete, no
    create, no counter zeroing (IPCTNL_MSG_CT_GET_CTRZERO)."""
    from cttop.cli import main

    netns.conntrack("-I", "-p", "udp", "-s", "10.5.5.1", "-d", "10.5.5.2", "--sport", "1",
                    "--dport", "2", "-t", "600")  # fmt: skip
    log = SendLog(monkeypatch)
    with inside(netns.path):
        assert main(["-b", "-n", "3", "-d", "0.1", "-o", "json"]) == 0
    assert log.types == {CT_GET, CT_GET_STATS}, log.sent
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert netns.conntrack_count() == 1


@pytest.mark.root
async def test_the_view_deletes_only_after_a_yes(
    netns: NetNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the live table: d and D asked and refused (n, Escape), then --read-only (d, D, y):
    not one delete request, the table untouched. Then d, y: one delete, of that flow."""
    for i in range(5):
        netns.conntrack("-I", "-p", "udp", "-s", f"10.6.6.{i + 1}", "-d", "10.6.6.100",
                        "--sport", "1000", "--dport", "53", "-t", "600")  # fmt: skip
    log = SendLog(monkeypatch)
    with inside(netns.path):
        for read_only in (False, True):
            source = LiveSource(ConntrackClient())
            app = CttopApp(source, interval=NEVER, label="lab", read_only=read_only)
            async with app.run_test(size=(120, 36)) as pilot:
                await settle(pilot)
                for keys in (["d", "n"], ["d", "escape"], ["D", "n"], ["D", "escape"], ["y"]):
                    for key in keys:
                        await pilot.press(key)
                        await settle(pilot)
                    assert not isinstance(app.screen, ConfirmScreen)
                await poll(pilot)
                assert len(app.query_one(FlowTable).rows) == 5
            source.close()
        assert CT_DELETE not in log.types
        assert netns.conntrack_count() == 5

        source = LiveSource(ConntrackClient())
        app = CttopApp(source, interval=NEVER, label="lab")
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            table = app.query_one(FlowTable)
            row = table.row_at(table.cursor)
            assert row is not None
            victim: Flow = row[0]
            await pilot.press("d")
            await settle(pilot)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await settle(pilot)
            await poll(pilot)
            shown = [f.orig for f in app.query_one(FlowTable).rows.flows]  # type: ignore[attr-defined]
            assert victim.orig not in shown and len(shown) == 4
        source.close()
    assert [t for t, _ in log.sent].count(CT_DELETE) == 1
    assert netns.conntrack_count() == 4
    assert f"src={victim.orig.src} " not in netns.conntrack_list()
