"""Differential test: `cttop -b -o json` against `conntrack -L -o extended,id`, live, in a fresh
network namespace holding the known mix (tests/lab.py). Root only.

cttop runs first, conntrack right after: the two dumps are at most about a second apart, so the
timeout may differ by one; everything else (counters included: the lab's traffic is idle) must be
equal for every flow. The expected values all come from conntrack and the kernel.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from cttop.conntrack import const as c
from cttop.conntrack.client import ConntrackClient
from cttop.conntrack.decode import FLOW_MESSAGE_TYPES, decode_message
from cttop.conntrack.model import Flow as CtFlow
from cttop.conntrack.model import FlowKey
from cttop.fmt import flow_json
from tests.ctload import filled, inside
from tests.ctref import compare_flow, match_flows, parse_conntrack_list
from tests.lab import MIX_SIZE, populate_mix
from tests.netns import NetNS

pytestmark = pytest.mark.root

Flow = dict[str, Any]

COMMANDS = {
    "cttop": lambda: [shutil.which("cttop") or "cttop"],
    "python-m-cttop": lambda: [sys.executable, "-m", "cttop"],
}

# The -o json schema of design.md ("Interfaces other tools depend on").
TOP_KEYS = {"time", "interval", "count", "max", "flows"}
FLOW_KEYS = {
    "id",
    "family",
    "proto",
    "protonum",
    "state",
    "status",
    "timeout",
    "mark",
    "zone",
    "use",
    "start",
    "orig",
    "reply",
    "rate",
}
TUPLE_KEYS = {
    "src",
    "dst",
    "sport",
    "dport",
    "icmp_type",
    "icmp_code",
    "icmp_id",
    "packets",
    "bytes",
}
RATE_KEYS = {"orig_bytes_per_s", "reply_bytes_per_s", "orig_packets_per_s", "reply_packets_per_s"}
PROTO_NAMES = {"tcp", "udp", "icmp", "icmpv6", "sctp", "dccp", "gre", "udplite"}


def run_cttop(ns: NetNS, *args: str, command: str = "cttop") -> list[dict[str, Any]]:
    """`cttop -b -o json --netns NAME ARGS` (run from the host): its JSON lines."""
    argv = [*COMMANDS[command](), "-b", "-o", "json", "--netns", ns.name, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stderr}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{argv} printed nothing (stderr: {proc.stderr!r})"
    return lines


def conntrack_now(ns: NetNS) -> tuple[list[dict[str, Any]], float]:
    """Parsed `conntrack -L -o extended,id` and the wall clock just before it ran."""
    t = time.time()
    return parse_conntrack_list(ns.conntrack_list()), t


def differences(
    refs: list[dict[str, Any]], flows: list[Flow], ref_time: float, timeout_slack: int = 1
) -> list[str]:
    pairs, only_ref, only_ours = match_flows(refs, flows)
    problems = [f"only in conntrack: {r}" for r in only_ref]
    problems += [f"only in cttop: {f}" for f in only_ours]
    for ref, ours in pairs:
        diffs = compare_flow(ref, ours, timeout_slack, ref_time=ref_time, start_slack=1)
        problems += [f"id={ref['id']} {ref['proto']} {ref['orig']}: {d}" for d in diffs]
    return problems


def flow_key(flow: Flow) -> tuple[Any, ...]:
    """The flow identity of design.md: (zone, original tuple, id)."""
    orig = flow["orig"]
    tup = tuple(orig[k] for k in ("src", "dst", "sport", "dport", "icmp_type", "icmp_code"))
    return (flow["zone"], flow["family"], flow["protonum"], *tup, orig["icmp_id"], flow["id"])


# --- every field of every flow ------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", [False, True], ids=["no-timestamp", "timestamp"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cttop_json_equals_conntrack(
    netns_factory: Callable[..., NetNS], command: str, timestamp: bool
) -> None:
    ns = netns_factory(timestamp=timestamp)
    populate_mix(ns)
    [sample] = run_cttop(ns, "-n", "1", command=command)
    refs, ref_time = conntrack_now(ns)

    assert len(refs) == MIX_SIZE
    assert differences(refs, sample["flows"], ref_time) == []
    assert len(sample["flows"]) == len(refs)
    assert sample["count"] == ns.conntrack_count() == len(refs)
    assert sample["max"] == int(ns.sysctl_get("net.netfilter.nf_conntrack_max"))
    # What the comparison leans on is really there: starts iff timestamps, counters iff acct.
    assert all((f["start"] is not None) == timestamp for f in sample["flows"])
    with_counters = [r for r in refs if r["orig"]["packets"] is not None]
    assert 0 < len(with_counters) < len(refs)


def test_every_iteration_equals_conntrack(netns_factory: Callable[..., NetNS]) -> None:
    """Later iterations go through the decoder's learned shapes: they must agree as well."""
    ns = netns_factory(timestamp=True)
    populate_mix(ns)
    samples = run_cttop(ns, "-n", "3", "-d", "0.2")
    refs, ref_time = conntrack_now(ns)
    assert len(samples) == 3 and len(refs) == MIX_SIZE
    for sample in samples:  # all within a second of conntrack: timeouts within 1
        assert differences(refs, sample["flows"], ref_time) == []


# --- duplicates ------------------------------------------------------------------------------

CHURN = """
import socket, sys, time
print("ready", flush=True)
while True:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for i, s in enumerate(socks):
        s.bind(("127.0.0.1", 0))
        for port in range(20000 + 250 * i, 20250 + 250 * i):
            s.sendto(b"x", ("127.0.0.1", port))
    for s in socks:
        s.close()
    time.sleep(0.05)
"""


def test_no_duplicate_flows_even_while_the_table_churns(
    netns_factory: Callable[..., NetNS],
) -> None:
    """Every iteration lists each (zone, orig tuple, id) once, though the dump is large and the
    table changes under it (new UDP flows every few ms, expiring after a second)."""
    ns = netns_factory()
    populate_mix(ns)
    mix_refs, _ = conntrack_now(ns)
    ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", 1)  # only new flows: the mix is idle
    churn = ns.spawn([sys.executable, "-c", CHURN])
    assert churn.stdout is not None and churn.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # let the table fill up to its churning size

    samples = run_cttop(ns, "-n", "4", "-d", "0.5")
    assert churn.poll() is None  # still churning at the end
    assert len(samples) == 4

    assert len(mix_refs) == MIX_SIZE
    for sample in samples:
        keys = [flow_key(f) for f in sample["flows"]]
        assert len(keys) == len(set(keys)), "duplicate flow in one iteration"
        # Far more than one 32 KiB datagram of entries: the dump was resumed many times.
        assert len(keys) > 2000
        # The idle mix is in every iteration, once (match_flows pairs each copy once).
        _pairs, missing, _others = match_flows(mix_refs, sample["flows"])
        assert missing == []


# --- accounting off ------------------------------------------------------------------------------

TRAFFIC = """
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 5601)); srv.listen(1)
cli = socket.create_connection(("127.0.0.1", 5601)); acc, _ = srv.accept()
cli.sendall(b"x" * 100); acc.recv(100); acc.sendall(b"y" * 50); cli.recv(50)
a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); a.bind(("::1", 5602))
b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); b.bind(("::1", 5603))
b.sendto(b"ping", ("::1", 5602)); _, peer = a.recvfrom(10); a.sendto(b"pong", peer); b.recv(10)
"""


def test_acct_off_counters_are_null_not_zero(netns_factory: Callable[..., NetNS]) -> None:
    ns = netns_factory(acct=False)
    ns.run([sys.executable, "-c", TRAFFIC])
    ns.conntrack(
        "-I", "-p", "udp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "1", "--dport", "2",
        "-t", "600",
    )  # fmt: skip
    [sample] = run_cttop(ns, "-n", "1")
    refs, ref_time = conntrack_now(ns)

    assert differences(refs, sample["flows"], ref_time) == []
    # conntrack prints no counters at all, and real packets did flow (replies were seen).
    assert refs and all(r[d]["packets"] is None for r in refs for d in ("orig", "reply"))
    assert any(not r["unreplied"] for r in refs)
    assert len(sample["flows"]) == len(refs)
    for flow in sample["flows"]:
        for d in ("orig", "reply"):
            assert flow[d]["packets"] is None and flow[d]["bytes"] is None


# --- the JSON schema ------------------------------------------------------------------------------


def _int(v: Any) -> bool:
    return type(v) is int


def _opt_int(v: Any) -> bool:
    return v is None or type(v) is int


def _number(v: Any) -> bool:
    return type(v) in (int, float)


def _schema_problems(flow: Flow, first_sample: bool) -> list[str]:
    p: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            p.append(f"{what}: {flow}")

    check(set(flow) == FLOW_KEYS, f"keys {sorted(set(flow) ^ FLOW_KEYS)}")
    if p:
        return p
    check(_int(flow["id"]) and 0 <= flow["id"] < 2**32, "id")
    check(flow["family"] in ("ipv4", "ipv6"), "family")
    check(_int(flow["protonum"]) and 0 <= flow["protonum"] <= 255, "protonum")
    check(
        flow["proto"] in PROTO_NAMES or flow["proto"] == str(flow["protonum"]),
        "proto",
    )
    check(flow["state"] is None or type(flow["state"]) is str, "state")
    check(
        type(flow["status"]) is list and all(s in c.STATUS_BITS for s in flow["status"]),
        "status",
    )
    for key in ("timeout", "mark", "use"):
        check(_opt_int(flow[key]) and (flow[key] is None or flow[key] >= 0), key)
    check(_int(flow["zone"]) and 0 <= flow["zone"] <= 65535, "zone")
    check(flow["start"] is None or _number(flow["start"]), "start")
    version = 4 if flow["family"] == "ipv4" else 6
    for d in ("orig", "reply"):
        tup = flow[d]
        check(type(tup) is dict and set(tup) == TUPLE_KEYS, f"{d} keys")
        if p:
            return p
        for key in ("src", "dst"):
            check(ipaddress.ip_address(tup[key]).version == version, f"{d}.{key}")
        for key in ("sport", "dport", "icmp_id"):
            check(_opt_int(tup[key]) and (tup[key] is None or 0 <= tup[key] <= 65535), key)
        for key in ("icmp_type", "icmp_code"):
            check(_opt_int(tup[key]) and (tup[key] is None or 0 <= tup[key] <= 255), key)
        for key in ("packets", "bytes"):
            check(_opt_int(tup[key]) and (tup[key] is None or tup[key] >= 0), f"{d}.{key}")
        check((tup["packets"] is None) == (tup["bytes"] is None), f"{d} packets/bytes")
    rate = flow["rate"]
    if first_sample:
        check(rate is None, "rate on the first sample")
    elif rate is not None:
        check(type(rate) is dict and set(rate) == RATE_KEYS, "rate keys")
        check(all(_number(v) and v >= 0 for v in rate.values()), "rate values")
    return p


def test_json_schema(netns_factory: Callable[..., NetNS]) -> None:
    ns = netns_factory(timestamp=True)
    populate_mix(ns)
    samples = run_cttop(ns, "-n", "2", "-d", "0.5")
    assert len(samples) == 2
    problems: list[str] = []
    for i, sample in enumerate(samples):
        assert set(sample) == TOP_KEYS
        assert _number(sample["time"]) and abs(sample["time"] - time.time()) < 60
        if i == 0:
            assert sample["interval"] is None
        else:
            assert _number(sample["interval"]) and sample["interval"] > 0
        assert _int(sample["count"]) and _opt_int(sample["max"])
        assert type(sample["flows"]) is list and len(sample["flows"]) == MIX_SIZE
        for flow in sample["flows"]:
            problems += _schema_problems(flow, first_sample=i == 0)
    assert problems == []
    # Second sample: flows with counters have a rate (0: idle), flows without have none.
    second = samples[1]["flows"]
    assert {f["rate"] is None for f in second} == {True, False}
    for flow in second:
        assert (flow["rate"] is None) == (flow["orig"]["packets"] is None)
        if flow["rate"] is not None:
            assert set(flow["rate"].values()) == {0}


# --- idle entries: decoded once ---------------------------------------------------------------


def test_an_idle_entry_is_the_same_flow_from_poll_to_poll(netns: NetNS) -> None:
    """An entry nothing happened to is not decoded again: the next poll, a whole second later
    (in step with the ticks of its timeout), gives the same Flow object, whose seconds left at
    that moment are exactly what the kernel just sent, and agree with conntrack's. An entry
    that changed (its mark) is decoded anew."""
    entries = [
        f"-p udp -s 192.0.2.{i} -d 198.51.100.1 --sport {40000 + i} --dport 53 -u SEEN_REPLY"
        for i in range(1, 21)
    ]
    netns.insert(entries)
    sent: list[bytes] = []
    with inside(netns.path):
        client = ConntrackClient()
        try:
            before = client.snapshot()
            time.sleep(max(0.0, before.time_wall + 1.0 - time.time()))
            netns.conntrack("-U", "-s", "192.0.2.1", "-m", "9")
            after = client.snapshot(raw_sink=sent.append)
            dump_time = client.decoder.clock[0]  # what the dump's expiries count from
        finally:
            client.close()
    refs, ref_time = conntrack_now(netns)
    assert list(after.flows) == list(before.flows) and len(after.flows) == len(entries)
    changed = [k for k, f in after.flows.items() if f.mark == 9]
    assert len(changed) == 1 and after.flows[changed[0]] is not before.flows[changed[0]]
    same = [k for k in after.flows if after.flows[k] is before.flows[k]]
    # Each idle entry's stamp is a few ms off the second: rarely, a tick falls in between.
    assert len(same) >= len(entries) - 3
    # Reused or not, each flow shows the seconds left the kernel sent in this very dump.
    kernel = {}
    for msg in sent:
        if struct.unpack_from("=IH", msg)[1] in FLOW_MESSAGE_TYPES:  # not DONE, not stats
            flow = decode_message(msg, 0, len(msg))  # at time 0: its expiry is its timeout
            kernel[flow.key] = flow.expires
    assert {k: f.timeout_at(dump_time) for k, f in after.flows.items()} == kernel
    # ...and at the snapshot's time, which JSON, text and the screen count to.
    assert {k: f.timeout_at(after.time_wall) for k, f in after.flows.items()} == kernel
    ours = [flow_json(f, None, after.time_wall) for f in after.flows.values()]
    assert differences(refs, ours, ref_time) == []


class _SlowFeed:
    """A FlowFeed as slow as a cold decoder is at scale: 5 ms a datagram."""

    def begin(self) -> None:
        pass

    def add(self, flows: dict[FlowKey, CtFlow], batch: list[CtFlow]) -> None:
        time.sleep(0.005)
        for f in batch:
            flows[f.key] = f

    def end(self, flows: dict[FlowKey, CtFlow]) -> None:
        pass


def test_the_first_dump_is_read_whole_so_the_second_reuses_its_flows(
    netns_factory: Callable[..., NetNS],
) -> None:
    """A fresh client's first dump decodes every message in full. Were it decoded while it
    arrives, the kernel would wait for it and read the table over seconds (here ~1.5 s: 300
    datagrams behind a 5 ms consumer), far from the one time its expiries count from, and the
    next poll, in step, would decode every entry again. Received whole first, the dump takes
    the kernel's own time and the next poll reuses the idle entries' Flows."""
    n = 40_000
    client = filled(netns_factory(track=False).path, n, 0x55)
    try:
        started = time.time()
        first = client.snapshot(feed=_SlowFeed())
        stamp = client.decoder.clock[0]  # what its expiries count from
        time.sleep(max(0.0, started + 3.0 - time.time()))  # whole seconds: in step
        second = client.snapshot()
    finally:
        client.close()
    assert len(first.flows) == len(second.flows) == n
    same = sum(1 for k, f in second.flows.items() if first.flows.get(k) is f)
    # Each idle entry's stamp is a few ms off the second: rarely, a tick falls in between.
    assert same >= 0.95 * n, f"{same} of {n} reused"
    # The snapshot's time (what rates count from) is when the kernel read the table, not
    # the middle of the receiving and the slow decoding after it.
    assert abs(first.time_wall - stamp) < 0.05
    assert first.time_wall < started + 0.5
