"""The test lab itself: NetNS life cycle and the known mix (root only)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.ctref import parse_conntrack_list
from tests.lab import MIX_SIZE, REPO_ROOT, TCP_STATE_STATUS, check_entry, populate_mix
from tests.netns import NAME_PREFIX, NETNS_DIR, NetNS, cleanup_stale, list_netns

pytestmark = pytest.mark.root

ALL_PROTOS = {"tcp", "udp", "icmp", "icmpv6", "sctp", "gre", "udplite", "dccp", "99"}

TCP_CLIENT = """
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); acc, _ = srv.accept()
cli.sendall(b"x" * 100); acc.recv(100); acc.sendall(b"y" * 50); cli.recv(50)
"""


@pytest.mark.parametrize("timestamp", [False, True], ids=["no-timestamp", "timestamp"])
def test_populate_mix_makes_the_known_mix(
    netns_factory: Callable[..., NetNS], timestamp: bool
) -> None:
    ns = netns_factory(timestamp=timestamp)
    mix = populate_mix(ns)
    refs = parse_conntrack_list(ns.conntrack_list())

    assert len(mix) == len(refs) == ns.conntrack_count() == MIX_SIZE
    assert set(mix.counts) == ALL_PROTOS
    assert {r["proto"] for r in refs} == ALL_PROTOS
    assert {r["family"] for r in refs} == {"ipv4", "ipv6"}
    tcp_states = {r["state"] for r in refs if r["proto"] == "tcp"}
    assert tcp_states == set(TCP_STATE_STATUS)
    assert all((r["delta_time"] is not None) == timestamp for r in refs)

    problems = []
    for entry in mix.entries:
        found = [ref for ref in refs if entry.matches(ref)]
        if len(found) != 1:
            problems.append(f"{entry.kind}: {len(found)} matching entries")
            continue
        problems += check_entry(entry, found[0])
    assert problems == []

    no_counters = [r for r in refs if r["orig"]["packets"] is None]
    assert len(no_counters) == sum(not e.counters for e in mix.entries) == 3
    real = [e for e in mix.entries if e.real and e.counters]
    assert len(real) == 9


def test_real_flows_are_idle_when_populate_mix_returns(netns: NetNS) -> None:
    mix = populate_mix(netns)
    assert mix.holder is not None and mix.holder.poll() is None  # still holding
    first = parse_conntrack_list(netns.conntrack_list())
    time.sleep(1.0)
    second = parse_conntrack_list(netns.conntrack_list())

    def counters(refs: list[dict[str, object]]) -> dict[object, object]:
        return {r["id"]: (r["orig"], r["reply"], r["state"]) for r in refs}

    assert counters(first) == counters(second)
    established = [r for r in first if r["state"] == "ESTABLISHED" and r["orig"]["packets"]]
    assert len(established) == 2  # the held IPv4 and IPv6 connections


def test_netns_basics(netns: NetNS) -> None:
    assert netns.name.startswith(f"{NAME_PREFIX}-") and netns.name in list_netns()
    assert netns.path == str(NETNS_DIR / netns.name) and netns.exists
    assert netns.sysctl_get("net.netfilter.nf_conntrack_acct") == "1"
    assert netns.sysctl_get("net.netfilter.nf_conntrack_timestamp") == "0"
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout", 77)
    assert netns.sysctl_get("net.netfilter.nf_conntrack_udp_timeout") == "77"
    assert netns.run(["ip", "-br", "link", "show", "lo"]).stdout.split()[1] == "UNKNOWN"
    assert netns.run(["false"], check=False).returncode == 1
    with pytest.raises(subprocess.CalledProcessError, match="stderr"):
        netns.run(["sh", "-c", "echo oops >&2; exit 3"])


@pytest.mark.parametrize("acct", [True, False])
def test_loopback_traffic_is_tracked_both_ways(
    netns_factory: Callable[..., NetNS], acct: bool
) -> None:
    ns = netns_factory(acct=acct)
    ns.run([sys.executable, "-c", TCP_CLIENT])
    (flow,) = parse_conntrack_list(ns.conntrack_list())
    assert flow["proto"] == "tcp" and flow["orig"]["src"] == "127.0.0.1"
    assert not flow["unreplied"] and flow["assured"]
    if acct:
        assert flow["orig"]["bytes"] > 100 and flow["reply"]["bytes"] > 50
    else:
        assert flow["orig"]["packets"] is None and flow["reply"]["bytes"] is None


def test_without_the_track_rule_nothing_is_tracked(netns_factory: Callable[..., NetNS]) -> None:
    ns = netns_factory(track=False)
    ns.run([sys.executable, "-c", TCP_CLIENT])
    assert ns.conntrack_count() == 0


def test_namespace_is_deleted_even_if_the_body_raises() -> None:
    ns = NetNS()
    with pytest.raises(RuntimeError, match="boom"), ns:
        mix = populate_mix(ns)
        assert ns.name in list_netns()
        raise RuntimeError("boom")
    assert ns.name not in list_netns() and not ns.exists
    assert mix.holder is not None and mix.holder.poll() is not None
    ns.close()  # idempotent


def test_atexit_deletes_a_namespace_left_open() -> None:
    code = (
        "from tests.netns import NetNS; ns = NetNS().create(); "
        "print(ns.name, flush=True); import os; assert os.path.exists(ns.path)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    name = proc.stdout.strip()
    assert name.startswith(f"{NAME_PREFIX}-") and name not in list_netns()


def test_cleanup_stale_removes_namespaces_of_dead_processes() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{NAME_PREFIX}-{dead.pid}-stale"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        cleanup_stale()  # (a concurrent test run may have got there first: fine too)
        assert name not in list_netns()
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
