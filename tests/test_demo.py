"""The demo recording that ships inside the package (cttop/data/demo.pcap.gz, made by
scripts/make_demo.py from a namespace lab with real traffic).

`cttop --demo` must work for anyone: no root, no capabilities, no netlink socket. And the
recording must hold what the README and the screenshots promise: a few hundred flows with rates
that change, TCP in several states, NAT, IPv6, ICMP, minutes of it. The bounds below are those
promises, checked against what the recording itself holds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cttop.cli import run
from cttop.conntrack.model import Flow
from cttop.record import ReplaySource, demo_source
from cttop.sampler import Sampler

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "cttop" / "data" / "demo.pcap.gz"
NOBODY = 65534


def _unprivileged(argv: list[str]) -> list[str]:
    """argv run as nobody (no capabilities at all) when we are root; as is otherwise."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root for this test")
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return argv


def _cttop_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        _unprivileged([sys.executable, "-m", "cttop", *args]),
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _dnat(f: dict[str, Any]) -> bool:
    o, r = f["orig"], f["reply"]
    return bool(r["src"] != o["dst"] or (o["dport"] is not None and r["sport"] != o["dport"]))


def _snat(f: dict[str, Any]) -> bool:
    o, r = f["orig"], f["reply"]
    return bool(r["dst"] != o["src"] or (o["sport"] is not None and r["dport"] != o["sport"]))


def test_demo_replays_in_batch_mode_without_root() -> None:
    proc = _cttop_unprivileged("--demo", "-b", "-n", "5", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 5
    assert lines[0]["interval"] is None
    assert all(f["rate"] is None for f in lines[0]["flows"])
    for line in lines[1:]:
        assert line["interval"] > 0
        flows = line["flows"]
        assert 200 <= len(flows) <= 1000  # a few hundred
        assert abs(line["count"] - len(flows)) <= 10  # the kernel's count, as recorded
        moving = [f for f in flows if f["rate"] and f["rate"]["reply_bytes_per_s"] > 0]
        assert len(moving) >= 10
        assert {f["family"] for f in moving} == {"ipv4", "ipv6"}
        assert any(_dnat(f) for f in moving) and any(_snat(f) for f in moving)
        protos = {f["proto"] for f in flows}
        assert {"tcp", "udp", "icmp", "icmpv6"} <= protos
        states = {f["state"] for f in flows if f["proto"] == "tcp"}
        assert {"ESTABLISHED", "TIME_WAIT"} <= states and len(states) >= 4


def test_the_unprivileged_run_really_had_no_privileges() -> None:
    """The same user reading the live table is refused: the demo passing above used none."""
    proc = _cttop_unprivileged("-b", "-n", "1")
    assert proc.returncode == 1
    assert "needs root or CAP_NET_ADMIN" in proc.stderr


def test_batch_demo_plays_once_and_loops_only_when_n_asks_for_more() -> None:
    polls = len(demo_source(loop=False))
    once = io.StringIO()
    assert run(["--demo", "-b", "-o", "json"], once) == 0
    lines = once.getvalue().splitlines()
    assert len(lines) == polls
    more = io.StringIO()
    assert run(["--demo", "-b", "-o", "json", "-n", str(polls + 2)], more) == 0
    looped = [json.loads(line) for line in more.getvalue().splitlines()]
    assert len(looped) == polls + 2
    first = json.loads(lines[0])
    assert looped[polls]["time"] == first["time"]  # the recording's own clock starts over
    assert all(line["interval"] > 0 for line in looped[1:])  # while rates keep working


def test_demo_holds_what_the_readme_promises() -> None:
    assert DEMO.stat().st_size < 2_000_000
    source = demo_source(loop=False)
    assert isinstance(source, ReplaySource) and source.warning is None
    assert source.duration >= 120 and len(source) >= 100

    sampler = Sampler()
    sizes: list[int] = []
    states: set[str | None] = set()
    new_per_poll: list[int] = []
    rates: dict[Any, list[float]] = {}
    moved: list[Flow] = []
    flows_seen: dict[Any, Flow] = {}
    while not source.at_end:
        snap = source.snapshot()
        assert snap.skipped == 0
        sample = sampler.step(snap)
        sizes.append(len(sample.rows))
        if sample.totals.new is not None:
            new_per_poll.append(sample.totals.new)
        for flow, rate in sample.rows:
            flows_seen[flow.key] = flow
            if flow.proto == "tcp":
                states.add(flow.state_name)
            if rate is not None:
                rates.setdefault(flow.key, []).append(rate.total_bytes_per_s)
                if rate.total_bytes_per_s > 0:
                    moved.append(flow)

    assert min(sizes) >= 200 and max(sizes) <= 1000
    assert max(sizes) <= 1.5 * min(sizes)  # steady: the loop's seam does not jump
    assert {"ESTABLISHED", "TIME_WAIT", "SYN_SENT", "CLOSE_WAIT"} <= states and len(states) >= 5
    assert statistics.median(new_per_poll) >= 1  # flows come and go all along

    # Rates that change: flows that speed up, slow down and pause, not a flat line.
    swinging = [
        series
        for series in rates.values()
        if sum(1 for v in series if v > 0) >= 20
        and max(series) > 3 * statistics.median([v for v in series if v > 0])
    ]
    pausing = [s for s in rates.values() if max(s) > 1000 and s.count(0.0) >= 5]
    assert len(swinging) >= 3 and len(pausing) >= 2

    # Real traffic through real NAT, both families, ICMP of both kinds.
    assert any(f.dnat for f in moved) and any(f.snat for f in moved)
    assert {f.family_name for f in moved} == {"ipv4", "ipv6"}
    assert {f.proto for f in moved} >= {"tcp", "udp", "icmp", "icmpv6"}

    flows = list(flows_seen.values())
    assert any(f.unreplied for f in flows if f.proto == "udp")
    assert any(f.mark for f in flows) and any(f.zone for f in flows)
    # Accounting and timestamps were on.
    assert all(f.has_counters and f.start is not None for f in flows)
