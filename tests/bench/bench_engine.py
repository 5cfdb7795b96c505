"""Times the pure engine at a big table: one Sampler.step, one view step (filter + sort), group-by.

A script, not a test: `python tests/bench/bench_engine.py [FLOWS]` (default 250000). Builds
synthetic snapshots, runs each operation several times, and prints the median.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable

from cttop.conntrack.const import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, IPS_ASSURED
from cttop.conntrack.model import Flow, FlowKey, Snapshot, Tuple
from cttop.sampler import Sample, Sampler
from cttop.view import apply, parse_filter

RUNS = 7


def build_table(n: int, rng: random.Random) -> dict[FlowKey, Flow]:
    """n flows: 85% TCP, the rest UDP; 10% IPv6; clients and servers drawn from pools."""
    clients = [f"10.{i >> 8 & 255}.{i & 255}.{rng.randrange(1, 255)}" for i in range(20000)]
    servers = [f"192.0.2.{i}" for i in range(1, 200)] + [f"198.51.100.{i}" for i in range(1, 50)]
    clients6 = [f"2001:db8::{i:x}" for i in range(1, 2000)]
    servers6 = [f"2001:db8:ffff::{i:x}" for i in range(1, 50)]
    flows: dict[FlowKey, Flow] = {}
    for i in range(n):
        v6 = i % 10 == 0
        tcp = i % 7 != 0
        src = rng.choice(clients6 if v6 else clients)
        dst = rng.choice(servers6 if v6 else servers)
        sport = 1024 + i % 60000
        dport = rng.choice((443, 80, 53, 22, 8080))
        orig = Tuple(src, dst, sport, dport)
        reply = Tuple(dst, src, dport, sport)
        ob = rng.randrange(100, 10**7)
        f = Flow(
            family=AF_INET6 if v6 else AF_INET,
            protonum=IPPROTO_TCP if tcp else IPPROTO_UDP,
            orig=orig,
            reply=reply,
            id=i * 2654435761 & 0xFFFFFFFF,
            status=IPS_ASSURED | 0b1010,
            state=3 if tcp else None,
            expires=1_700_000_000.0 + rng.randrange(1, 432000),
            mark=i % 4,
            zone=0,
            use=1,
            orig_packets=ob // 500 + 1,
            orig_bytes=ob,
            reply_packets=ob // 300 + 1,
            reply_bytes=ob * 3,
            start=1_700_000_000_000_000_000 + i * 1000,
        )
        flows[f.key] = f
    return flows


def next_table(
    flows: dict[FlowKey, Flow], rng: random.Random, moved: float, churn: float
) -> dict[FlowKey, Flow]:
    """The next poll: a `moved` share of flows carried traffic, `churn` left and as many came."""
    out: dict[FlowKey, Flow] = {}
    for key, f in flows.items():
        r = rng.random()
        if r < churn:
            continue
        if r < churn + moved:
            assert f.orig_bytes is not None and f.orig_packets is not None
            assert f.reply_bytes is not None and f.reply_packets is not None
            f = f._replace(
                orig_bytes=f.orig_bytes + 1500,
                orig_packets=f.orig_packets + 1,
                reply_bytes=f.reply_bytes + 60000,
                reply_packets=f.reply_packets + 40,
            )
        out[key] = f
    for i in range(len(flows) - len(out)):
        orig = Tuple("10.255.0.1", "192.0.2.1", 1 + i % 65000, 10000 + i // 65000)
        f = Flow(
            AF_INET,
            IPPROTO_UDP,
            orig,
            Tuple("192.0.2.1", "10.255.0.1", orig.dport, orig.sport),
            id=i,
            orig_packets=1,
            orig_bytes=80,
            reply_packets=0,
            reply_bytes=0,
        )
        out[f.key] = f
    return out


def median_time(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 250_000
    rng = random.Random(1)
    t0 = time.perf_counter()
    first = build_table(n, rng)
    quiet = next_table(first, rng, moved=0.10, churn=0.01)
    busy = next_table(first, rng, moved=1.0, churn=0.0)
    print(f"built {n} flows x 3 snapshots in {time.perf_counter() - t0:.1f} s")
    for frozen in (False, True):
        if frozen:
            # What the app should do after each dump: the flows just decoded are long-lived and
            # acyclic, and a full collection over millions of them costs more than the step.
            gc.collect()
            gc.freeze()
        print(
            f"\n{n} flows, median of {RUNS} runs, "
            + ("after gc.freeze()" if frozen else "GC as is")
        )
        for label, seconds in measure(n, first, quiet, busy):
            print(f"  {label:<40} {seconds * 1000:8.1f} ms")
        gc.unfreeze()


def measure(
    n: int, first: dict[FlowKey, Flow], quiet: dict[FlowKey, Flow], busy: dict[FlowKey, Flow]
) -> list[tuple[str, float]]:
    snap1 = Snapshot(100.0, 1_700_000_100.0, first, n, 262144)
    snap_quiet = Snapshot(101.5, 1_700_000_101.5, quiet, n, 262144)
    snap_busy = Snapshot(101.5, 1_700_000_101.5, busy, n, 262144)

    def second_step(snap: Snapshot) -> float:
        sampler = Sampler()
        sampler.step(snap1)
        t = time.perf_counter()
        sampler.step(snap)
        return time.perf_counter() - t

    report: list[tuple[str, float]] = []
    for label, snap in (("10% moved, 1% churn", snap_quiet), ("all moved", snap_busy)):
        seconds = statistics.median(second_step(snap) for _ in range(RUNS))
        report.append((f"Sampler.step ({label})", seconds))
    report.append(("Sampler.step (first snapshot)", median_time(lambda: Sampler().step(snap1))))

    sampler = Sampler()
    sampler.step(snap1)
    sample: Sample = sampler.step(snap_quiet)
    rows = sample.rows
    pred = parse_filter("tcp state:est dport:443 !src:10.0.0.0/16")
    for label, run in (
        ("view: sort rate (no filter)", lambda: apply(rows)),
        ("view: sort rate, limit 50", lambda: apply(rows, limit=50)),
        ("view: filter 'tcp' + sort rate", lambda: apply(rows, filter="tcp")),
        ("view: 4-term filter + sort rate", lambda: apply(rows, filter=pred)),
        ("view: filter '10.1' (text)", lambda: apply(rows, filter="10.1")),
        ("view: sort src (addresses)", lambda: apply(rows, sort="src")),
        ("view: sort age", lambda: apply(rows, sort="age")),
        ("view: group src, sort rate", lambda: apply(rows, group="src")),
        ("view: group dport, sort rate", lambda: apply(rows, group="dport")),
        ("view: group state, sort rate", lambda: apply(rows, group="state")),
        ("view: group pair, sort rate, limit 50", lambda: apply(rows, group="pair", limit=50)),
        ("view: group pair, sort rate, all rows", lambda: apply(rows, group="pair")),
    ):
        report.append((label, median_time(run)))
    return report


if __name__ == "__main__":
    main()
