"""Sampler: sequences of synthetic snapshots → exact rates, totals and history.

Every expected number is worked out by hand from the counters and times written in the case.
"""

from __future__ import annotations

import math
import time

import pytest

from cttop.conntrack.const import (
    AF_INET,
    AF_INET6,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPS_ASSURED,
    IPS_SEEN_REPLY,
)
from cttop.conntrack.model import Flow, FlowKey, Snapshot, Tuple
from cttop.heap import release
from cttop.sampler import ZERO_RATE, FlowRow, FlowRows, Rate, Sampler, rates_sum

# --- building flows and snapshots ------------------------------------------------------------


def flow(
    counters: tuple[int, int, int, int] | None = (0, 0, 0, 0),
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 40000,
    dport: int = 443,
    id: int = 1,  # the kernel's name for it
    zone: int = 0,
    protonum: int = IPPROTO_TCP,
    state: int | None = 3,
) -> Flow:
    """A flow; counters are (orig_bytes, reply_bytes, orig_packets, reply_packets)."""
    ob, rb, op, rp = counters if counters is not None else (None, None, None, None)
    return Flow(
        family=AF_INET6 if ":" in src else AF_INET,
        protonum=protonum,
        orig=Tuple(src, dst, sport, dport),
        reply=Tuple(dst, src, dport, sport),
        id=id,
        status=IPS_SEEN_REPLY | IPS_ASSURED,
        state=state,
        zone=zone,
        orig_bytes=ob,
        reply_bytes=rb,
        orig_packets=op,
        reply_packets=rp,
    )


def snapshot(t: float, *flows: Flow, count: int | None = None, maximum: int | None = None):
    """As a Source makes it: deduplicated by key, the last copy in the dump wins."""
    return Snapshot(t, 1_700_000_000.0 + t, {f.key: f for f in flows}, count, maximum)


def rate_of(sample, key: FlowKey) -> Rate | None:
    row = sample.row(key)
    assert row is not None, "flow missing from the sample"
    return row.rate


A = flow().key  # the default flow's identity: zone 0, 10.0.0.1:40000 → 10.0.0.2:443, id 1


# --- parametrized sequences: (time, flows) per step → expected rate of flow A per step -------

CASES = {
    "first sight has no rate, then bytes/s and packets/s each way": (
        [
            (0.0, [flow((1000, 2000, 10, 20))]),
            (1.5, [flow((4000, 8000, 16, 29))]),
        ],
        [None, Rate(2000.0, 4000.0, 4.0, 6.0)],  # (3000, 6000, 6, 9) over 1.5 s
    ),
    "interval not exactly the poll period": (
        [
            (10.0, [flow((0, 0, 0, 0))]),
            (11.25, [flow((2500, 500, 5, 1))]),  # 1.25 s
            (13.25, [flow((3500, 500, 7, 1))]),  # 2.0 s
        ],
        [None, Rate(2000.0, 400.0, 4.0, 0.8), Rate(500.0, 0.0, 1.0, 0.0)],
    ),
    "idle flow has a zero rate, not None": (
        [(0.0, [flow((500, 500, 5, 5))]), (1.0, [flow((500, 500, 5, 5))])],
        [None, Rate(0.0, 0.0, 0.0, 0.0)],
    ),
    "reply-only traffic": (
        [(0.0, [flow((100, 100, 1, 1))]), (2.0, [flow((100, 900, 1, 5))])],
        [None, Rate(0.0, 400.0, 0.0, 2.0)],
    ),
    "counter reset restarts the rate: never negative": (
        [
            (0.0, [flow((5000, 9000, 50, 90))]),
            (1.0, [flow((6000, 9500, 60, 95))]),
            (2.0, [flow((100, 200, 1, 2))]),  # zeroed by `conntrack -L -z` in between
            (4.0, [flow((1100, 600, 3, 6))]),
        ],
        [None, Rate(1000.0, 500.0, 10.0, 5.0), None, Rate(500.0, 200.0, 1.0, 2.0)],
    ),
    "one counter going down is enough to restart": (
        [(0.0, [flow((5000, 9000, 50, 90))]), (1.0, [flow((6000, 8999, 60, 95))])],
        [None, None],
    ),
    "missing counters (accounting off) never get a rate": (
        [(0.0, [flow(None)]), (1.0, [flow(None)]), (2.0, [flow(None)])],
        [None, None, None],
    ),
    "counters appearing start metering from there": (
        [(0.0, [flow(None)]), (1.0, [flow((100, 100, 1, 1))]), (2.0, [flow((300, 100, 2, 1))])],
        [None, None, Rate(200.0, 0.0, 1.0, 0.0)],
    ),
    "duplicate flow in one dump: the last copy counts": (
        [
            (0.0, [flow((1000, 0, 1, 0))]),
            (1.0, [flow((1500, 0, 2, 0)), flow((3000, 0, 4, 0))]),  # updated while dumping
        ],
        [None, Rate(2000.0, 0.0, 3.0, 0.0)],
    ),
    "flow vanishing for one poll and returning continues from its last counters": (
        [
            (0.0, [flow((1000, 0, 1, 0))]),
            (1.0, []),  # a dump that missed it
            (3.0, [flow((7000, 3000, 7, 3))]),  # 6000 and 3000 bytes over 3.0 s
        ],
        [None, "absent", Rate(2000.0, 1000.0, 2.0, 1.0)],
    ),
    "flow missing for longer than keep_vanished comes back as new": (
        [
            (0.0, [flow((1000, 0, 1, 0))]),
            (1.0, []),
            (2.0, []),
            (3.0, []),  # missing 3 polls, keep_vanished is 2
            (4.0, [flow((7000, 0, 7, 0))]),
        ],
        [None, "absent", "absent", "absent", None],
    ),
    "snapshot not later than the previous one gives no rate": (
        [(5.0, [flow((0, 0, 0, 0))]), (5.0, [flow((100, 0, 1, 0))]), (6.0, [flow((300, 0, 2, 0))])],
        [None, None, Rate(200.0, 0.0, 1.0, 0.0)],
    ),
    "clock going backwards gives no rate, then continues from there": (
        [(5.0, [flow((0, 0, 0, 0))]), (4.0, [flow((100, 0, 1, 0))]), (4.5, [flow((300, 0, 2, 0))])],
        [None, None, Rate(400.0, 0.0, 2.0, 0.0)],
    ),
}


@pytest.mark.parametrize("steps, expected", CASES.values(), ids=CASES.keys())
def test_rate_sequences(steps, expected):
    sampler = Sampler()
    for (t, flows), want in zip(steps, expected, strict=True):
        sample = sampler.step(snapshot(t, *flows))
        if want == "absent":
            assert sample.row(A) is None
        else:
            assert rate_of(sample, A) == want


def test_id_reuse_with_a_new_tuple_is_a_new_flow():
    old = flow((5000, 5000, 5, 5), src="10.0.0.1", id=7)
    sampler = Sampler()
    sampler.step(snapshot(0.0, old))
    # CTA_ID 7 again, for another connection: smaller counters must not make a negative rate,
    # and the new one is not mistaken for the old one.
    reused = flow((100, 100, 1, 1), src="10.0.0.99", id=7)
    sample = sampler.step(snapshot(1.0, reused))
    assert rate_of(sample, reused.key) is None
    assert sample.row(old.key) is None
    assert sample.totals.new == 1
    assert sample.totals.vanished == 1
    assert sample.totals.restarted == 0


def test_same_tuple_and_id_in_another_zone_is_another_flow():
    zone0 = flow((100, 0, 1, 0), zone=0)
    zone7 = flow((900, 0, 9, 0), zone=7)
    sampler = Sampler()
    sampler.step(snapshot(0.0, zone0, zone7))
    sample = sampler.step(
        snapshot(1.0, flow((300, 0, 2, 0), zone=0), flow((1000, 0, 10, 0), zone=7))
    )
    assert rate_of(sample, zone0.key) == Rate(200.0, 0.0, 1.0, 0.0)
    assert rate_of(sample, zone7.key) == Rate(100.0, 0.0, 1.0, 0.0)


def test_idle_flows_share_one_zero_rate():
    sampler = Sampler()
    sampler.step(snapshot(0.0, flow((1, 1, 1, 1)), flow((1, 1, 1, 1), id=2)))
    sample = sampler.step(snapshot(1.0, flow((1, 1, 1, 1)), flow((1, 1, 1, 1), id=2)))
    assert sample.rows.rates == [ZERO_RATE, ZERO_RATE]
    assert sample.rows.rates[0] is sample.rows.rates[1]


# --- totals -----------------------------------------------------------------------------------


def test_totals_of_a_step():
    tcp_est = flow((1000, 1000, 10, 10), id=1)
    tcp_syn = flow((0, 0, 1, 0), id=2, state=1)
    udp = flow((200, 0, 2, 0), id=3, protonum=IPPROTO_UDP, state=None, dport=53)
    icmp = flow(None, id=4, protonum=IPPROTO_ICMP, state=None)
    gone = flow((5, 5, 1, 1), id=5)
    sampler = Sampler()
    first = sampler.step(snapshot(0.0, tcp_est, tcp_syn, udp, icmp, gone, count=5, maximum=100))
    t = first.totals
    assert (t.new, t.vanished, t.returned, t.rate, t.new_per_s) == (None, None, None, None, None)
    assert t.flows == 5
    assert t.no_counters == 1
    assert first.interval is None

    fresh = flow((40, 0, 1, 0), id=6, protonum=IPPROTO_UDP, state=None)
    fresh2 = flow((40, 0, 1, 0), id=7, protonum=IPPROTO_UDP, state=None)
    sample = sampler.step(
        snapshot(
            2.0,
            flow((3000, 5000, 14, 30), id=1),  # +2000 +4000 +4 +20 over 2 s
            flow((0, 0, 2, 0), id=2, state=1),  # +1 packet
            flow((600, 0, 6, 0), id=3, protonum=IPPROTO_UDP, state=None, dport=53),  # +400 +4
            icmp,
            fresh,
            fresh2,
            count=6,
            maximum=8,
        )
    )
    t = sample.totals
    assert sample.interval == 2.0
    assert t.flows == 6
    assert t.by_proto == {"tcp": 2, "udp": 3, "icmp": 1}
    assert t.by_tcp_state == {"ESTABLISHED": 1, "SYN_SENT": 1}
    # (2000 + 0 + 400)/2, (4000)/2, (4 + 1 + 4)/2, (20)/2
    assert t.rate == Rate(1200.0, 2000.0, 4.5, 10.0)
    assert t.rate.total_bytes_per_s == 3200.0
    assert (t.new, t.vanished, t.returned, t.unchanged) == (2, 1, 0, 4)
    assert (t.new_per_s, t.vanished_per_s) == (1.0, 0.5)
    assert t.no_counters == 1
    assert (t.table_count, t.table_max, t.fill) == (6, 8, 0.75)


@pytest.mark.parametrize(
    "count, maximum, fill", [(None, 100, None), (5, None, None), (5, 0, None), (0, 10, 0.0)]
)
def test_fill_is_none_when_unknown(count, maximum, fill):
    sample = Sampler().step(snapshot(0.0, flow(), count=count, maximum=maximum))
    assert sample.totals.fill == fill


def test_tcp_flows_without_a_state_are_counted_under_none():
    offloaded = flow((0, 0, 0, 0), id=2, state=None)
    t = Sampler().step(snapshot(0.0, flow(), offloaded)).totals
    assert t.by_tcp_state == {"ESTABLISHED": 1, None: 1}


def test_returned_flow_counts_as_returned_not_new():
    sampler = Sampler()
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0)), flow((0, 0, 0, 0), id=2)))
    assert sampler.step(snapshot(1.0, flow((0, 0, 0, 0), id=2))).totals.vanished == 1
    t = sampler.step(snapshot(2.0, flow((10, 0, 1, 0)), flow((0, 0, 0, 0), id=2))).totals
    assert (t.new, t.returned, t.vanished) == (0, 1, 0)
    # 10 bytes over the 2 s since it was last read
    assert t.rate == Rate(5.0, 0.0, 0.5, 0.0)


def test_counter_reset_is_counted_and_excluded_from_totals():
    sampler = Sampler()
    sampler.step(snapshot(0.0, flow((500, 0, 5, 0)), flow((0, 0, 0, 0), id=2)))
    t = sampler.step(snapshot(1.0, flow((100, 0, 1, 0)), flow((50, 0, 1, 0), id=2))).totals
    assert t.restarted == 1
    assert t.rate == Rate(50.0, 0.0, 1.0, 0.0)


def test_keep_vanished_zero_forgets_at_once():
    sampler = Sampler(keep_vanished=0)
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0))))
    sampler.step(snapshot(1.0))
    sample = sampler.step(snapshot(2.0, flow((100, 0, 1, 0))))
    assert rate_of(sample, A) is None
    assert sample.totals.new == 1
    assert sampler.tracked == 1


def test_reset_forgets_everything():
    sampler = Sampler()
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0))))
    sampler.reset()
    sample = sampler.step(snapshot(1.0, flow((100, 0, 1, 0))))
    assert rate_of(sample, A) is None
    assert sample.step == 1
    assert sampler.history(A) == [None]


@pytest.mark.parametrize("history, keep, budget", [(0, 1, 1), (1, -1, 1), (1, 1, -1)])
def test_bad_arguments(history, keep, budget):
    with pytest.raises(ValueError):
        Sampler(history=history, keep_vanished=keep, max_flow_histories=budget)


# --- history ----------------------------------------------------------------------------------


def test_a_quiet_table_holds_no_per_flow_history_state():
    """Idle flows need no ring, and a first step only while it is inside the window: a big
    quiet table costs the sampler nothing per flow but the previous snapshot."""
    sampler = Sampler(history=5, keep_vanished=1)
    old = [flow(id=i) for i in range(100)]
    sampler.step(snapshot(0.0, *old))
    assert not sampler._since and not sampler._rings
    late = flow(id=1000)
    for t in range(1, 20):
        sampler.step(snapshot(float(t), *old, late))
        assert len(sampler._since) <= 1
    assert not sampler._since  # long known by now: dropped by the sweep
    assert sampler.history(old[0].key) == sampler.history(late.key) == [0.0] * 5


def test_history_of_a_flow():
    sampler = Sampler(history=60)
    steps = [
        (0.0, (0, 0, 0, 0)),  # first sight: None
        (1.0, (100, 100, 1, 1)),  # 200 B/s
        (2.0, (100, 100, 1, 1)),  # idle: 0.0 (not stored, rebuilt)
        (3.0, (100, 100, 1, 1)),  # idle
        (4.0, (400, 100, 2, 1)),  # 300 B/s
        (5.0, (0, 0, 0, 0)),  # reset: None
        (5.5, (50, 0, 1, 0)),  # 100 B/s
    ]
    for t, counters in steps:
        sampler.step(snapshot(t, flow(counters)))
    assert sampler.history(A) == [None, 200.0, 0.0, 0.0, 300.0, None, 100.0]


def test_history_is_bounded_and_keeps_the_latest():
    sampler = Sampler(history=3)
    for i in range(10):
        sampler.step(snapshot(float(i), flow((i * 10, 0, i, 0))))
    assert sampler.history(A) == [10.0, 10.0, 10.0]
    assert len(sampler.totals_history) == 3
    assert sampler.totals_rate_history() == [10.0, 10.0, 10.0]


def test_history_shows_missed_polls_as_none():
    sampler = Sampler()
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0))))
    sampler.step(snapshot(1.0, flow((100, 0, 1, 0))))
    sampler.step(snapshot(2.0))
    sampler.step(snapshot(3.0))
    assert sampler.history(A) == [None, 100.0]  # vanished: its history ends where it was seen
    sampler.step(snapshot(4.0, flow((400, 0, 2, 0))))  # 300 bytes over 3 s
    assert sampler.history(A) == [None, 100.0, None, None, 100.0]


def test_history_of_an_idle_flow_is_rebuilt_without_storage():
    sampler = Sampler(history=4)
    for i in range(6):
        sampler.step(snapshot(float(i), flow((7, 7, 1, 1))))
    assert sampler.history(A) == [0.0, 0.0, 0.0, 0.0]
    assert sampler._rings == {}  # bounded memory: idle flows cost no ring


def test_rings_of_flows_idle_for_a_whole_window_are_dropped():
    sampler = Sampler(history=4)
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0))))
    sampler.step(snapshot(1.0, flow((10, 0, 1, 0))))
    assert A in sampler._rings
    for i in range(2, 9):
        sampler.step(snapshot(float(i), flow((10, 0, 1, 0))))
    assert A not in sampler._rings
    assert sampler.history(A) == [0.0, 0.0, 0.0, 0.0]


def test_history_of_flows_without_counters_is_all_none():
    sampler = Sampler()
    for i in range(3):
        sampler.step(snapshot(float(i), flow(None)))
    assert sampler.history(A) == [None, None, None]


def test_history_of_an_unknown_or_forgotten_flow_is_empty():
    sampler = Sampler(keep_vanished=1)
    assert sampler.history(A) == []
    sampler.step(snapshot(0.0, flow()))
    sampler.step(snapshot(1.0))
    sampler.step(snapshot(2.0))
    sampler.step(snapshot(3.0))
    assert sampler.history(A) == []


def test_totals_history_keeps_whole_totals():
    sampler = Sampler(history=2)
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0)), count=1, maximum=4))
    sampler.step(snapshot(1.0, flow((30, 0, 1, 0)), count=1, maximum=4))
    sampler.step(snapshot(3.0, flow((30, 0, 1, 0)), flow(id=2), count=2, maximum=4))
    fills = [t.fill for t in sampler.totals_history]
    assert fills == [0.25, 0.5]
    assert sampler.totals_rate_history() == [30.0, 0.0]


# --- rows -------------------------------------------------------------------------------------


def test_flow_rows_read_as_flow_rows():
    a, b = flow((1, 1, 1, 1)), flow((2, 2, 2, 2), id=2)
    rate = Rate(1.0, 2.0, 3.0, 4.0)
    rows = FlowRows([a, b], [None, rate])
    assert len(rows) == 2
    assert rows[1] == FlowRow(b, rate)
    assert rows[-1].rate is rate
    assert list(rows) == [FlowRow(a, None), FlowRow(b, rate)]
    assert rows[1:] == FlowRows([b], [rate])
    assert FlowRows.of([FlowRow(a, None), FlowRow(b, rate)]) == rows
    assert FlowRows.of(rows) is rows
    with pytest.raises(ValueError):
        FlowRows([a], [])


def test_sample_row_by_key():
    sampler = Sampler()
    sample = sampler.step(snapshot(0.0, flow(), flow(id=2)))
    assert sample.row(flow(id=2).key) == FlowRow(flow(id=2), None)
    assert sample.row(flow(id=3).key) is None
    assert sample.time_wall == 1_700_000_000.0


def test_rates_sum():
    assert rates_sum([None, None]) is None
    assert rates_sum([Rate(1.0, 2.0, 3.0, 4.0), None, Rate(0.5, 0.5, 0.5, 0.5)]) == Rate(
        1.5, 2.5, 3.5, 4.5
    )


def test_rate_totals():
    r = Rate(1.5, 2.0, 3.0, 0.25)
    assert r.total_bytes_per_s == 3.5
    assert r.total_packets_per_s == 3.25


def test_a_busy_step_is_linear_not_quadratic():
    """20k flows, all moved, with 1% churn: must finish in well under a second."""
    n = 20_000
    first = [flow((i, i, 1, 1), id=i, sport=1024 + i % 60000) for i in range(n)]
    moved = [f._replace(orig_bytes=f.orig_bytes + 1000, orig_packets=2) for f in first[200:]]
    fresh = [flow((0, 0, 0, 0), id=n + i) for i in range(200)]
    sampler = Sampler()
    sampler.step(snapshot(0.0, *first))
    t0 = time.perf_counter()
    sample = sampler.step(snapshot(2.0, *moved, *fresh))
    elapsed = time.perf_counter() - t0
    assert sample.totals.new == 200
    assert sample.totals.vanished == 200
    assert sample.totals.rate is not None
    assert math.isclose(sample.totals.rate.orig_bytes_per_s, (n - 200) * 500.0)
    assert elapsed < 1.0


def test_history_shows_polls_without_an_interval_as_none():
    sampler = Sampler()
    for t, counters in [(0.0, (0, 0, 0, 0)), (1.0, (10, 0, 1, 0)), (1.0, (10, 0, 1, 0))]:
        sampler.step(snapshot(t, flow(counters)))
    sampler.step(snapshot(2.0, flow((30, 0, 2, 0))))
    assert sampler.history(A) == [None, 10.0, None, 20.0]


def test_flow_histories_beyond_the_budget_start_when_a_ring_frees_up():
    b = flow(id=2).key
    sampler = Sampler(history=3, keep_vanished=0, max_flow_histories=1)
    sampler.step(snapshot(0.0, flow((0, 0, 0, 0)), flow((0, 0, 0, 0), id=2)))
    sampler.step(snapshot(1.0, flow((10, 0, 1, 0)), flow((20, 0, 1, 0), id=2)))
    assert sampler.history(A) == [None, 10.0]  # A took the only ring
    assert sampler.history(b) == []  # B moved with no ring to hold its value: nothing known
    # A is gone, but its ring is only freed at the end of this step: B still has none.
    sampler.step(snapshot(2.0, flow((30, 0, 2, 0), id=2)))
    assert sampler.history(b) == []
    sampler.step(snapshot(3.0, flow((60, 0, 3, 0), id=2)))  # +30 B/s, and now a ring
    assert sampler.history(b) == [30.0]
    sampler.step(snapshot(4.0, flow((60, 0, 3, 0), id=2)))
    assert sampler.history(b) == [30.0, 0.0]
    assert len(sampler._rings) == 1


# --- the fed step's dict ----------------------------------------------------------------------


def _fed_poll(sampler: Sampler, t: float, *batches: list[Flow]):
    """One poll as a live source takes it: the flows fed batch by batch into the dict the
    snapshot carries."""
    fed = sampler.feed()
    flows: dict[FlowKey, Flow] = {}
    for batch in batches:
        fed.add(flows, batch)
    fed.end(flows)
    return sampler.step(Snapshot(t, 1_700_000_000.0 + t, flows, None, None), fed)


def test_a_flow_found_again_keeps_its_key_object() -> None:
    """Consecutive samples share the keys of the flows they share (a 250k table makes no
    250k new key tuples a poll); what vanished is out of the dict, what is new is in, and the
    rows keep the dump's order."""
    a, b, c = flow(id=1), flow(id=2, sport=40001), flow(id=3, sport=40002)
    sampler = Sampler()
    first = _fed_poll(sampler, 0.0, [a, b])
    # The same entries dumped again are new objects with equal keys.
    a2, b2 = flow((10, 0, 1, 0), id=1), flow(id=2, sport=40001)
    second = _fed_poll(sampler, 1.0, [c], [b2, a2])
    keys = {k: k for k in first.snapshot.flows}
    assert set(second.snapshot.flows) == {a.key, b.key, c.key}
    assert [keys[k] is k for k in second.snapshot.flows if k in keys] == [True, True]
    assert second.rows.flows == [c, b2, a2]
    assert second.row(a.key) == FlowRow(a2, Rate(10.0, 0.0, 1.0, 0.0))
    assert second.row(c.key) == FlowRow(c, None) and second.row(flow(id=9).key) is None
    third = _fed_poll(sampler, 2.0, [a2])  # b and c vanished
    assert list(third.snapshot.flows) == [a.key]
    assert third.totals.vanished == 2


def test_a_feed_nobody_ended_is_ended_by_the_step() -> None:
    """A FlowFeed's owner calls end() after the dump; if it did not, the step does, and what
    vanished still leaves the snapshot's dict."""
    a, b = flow(id=1), flow(id=2, sport=40001)
    sampler = Sampler()
    _fed_poll(sampler, 0.0, [a, b])
    fed = sampler.feed()
    flows: dict[FlowKey, Flow] = {}
    fed.add(flows, [a])
    sample = sampler.step(Snapshot(1.0, 1_700_000_001.0, flows, None, None), fed)
    assert flows == {a.key: a} and sample.rows.flows == [a]
    assert sample.totals.vanished == 1 and sample.row(a.key) == FlowRow(a, ZERO_RATE)


def test_a_feed_fills_an_empty_dict() -> None:
    fed = Sampler().feed()
    with pytest.raises(ValueError, match="empty dict"):
        fed.add({A: flow()}, [flow()])


class _CountingDict(dict):  # type: ignore[type-arg]
    """A table that counts the lookups made in it."""

    lookups = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().get(key, default)


def test_a_flow_the_decoder_gave_back_costs_the_feed_no_lookup() -> None:
    """The feed walks the last dump's flows alongside the new ones: a flow that is the very
    object of the last poll, where the walk is, is neither looked up nor given a new key;
    a changed one, a new one and one out of place are."""
    fs = [flow(id=i, sport=40000 + i) for i in range(8)]
    sampler = Sampler()
    table = _CountingDict((f.key, f) for f in fs)
    sampler.step(Snapshot(0.0, 1_700_000_000.0, table, None, None))
    changed = flow((10, 0, 1, 0), id=3, sport=40003)
    new = flow(id=9, sport=40009)
    # 0 1 2 in step; 3 changed; 4 vanished; 5 in step; 7 before 6; new
    sample = _fed_poll(sampler, 1.0, [fs[0], fs[1]], [fs[2], changed, fs[5]], [fs[7], new, fs[6]])
    assert table.lookups == 3  # the changed flow, the new one, and 6 out of place
    assert sample.totals.vanished == 1 and sample.totals.new == 1
    assert sample.row(fs[4].key) is None
    assert sample.row(changed.key) == FlowRow(changed, Rate(10.0, 0.0, 1.0, 0.0))
    assert [sample.row(f.key) for f in fs[5:]] == [FlowRow(f, ZERO_RATE) for f in fs[5:]]
    assert sample.rows.flows == [*fs[:3], changed, fs[5], fs[7], new, fs[6]]


def test_a_flow_decoded_again_from_its_tuples_in_step_costs_no_lookup() -> None:
    """A flow whose counters or expiry moved is decoded again from the cached tuples (the
    same `orig` object): where the walk is, it is the last dump's flow there, found without a
    lookup; its state may have changed. (Out of place, it is looked up: see above.) The
    sample is what a step without a feed makes of the same snapshots."""
    fs = [flow(id=i, sport=40000 + i) for i in range(8)]
    moved = fs[1]._replace(orig_bytes=100, orig_packets=2)
    ticked = fs[2]._replace(expires=1_700_000_100.0)
    closing = fs[3]._replace(state=4)  # (a state change is a new decode: a check, all the same)
    late = fs[7]._replace(reply_bytes=50, reply_packets=1)
    second = [fs[0], moved, ticked, closing, fs[4], fs[5], fs[6], late]
    samples = []
    for fed in (True, False):
        sampler = Sampler()
        table = _CountingDict((f.key, f) for f in fs)
        sampler.step(Snapshot(0.0, 1_700_000_000.0, table, None, None))
        if fed:
            sample = _fed_poll(sampler, 1.0, second[:3], second[3:])
            assert table.lookups == 0
        else:
            sample = sampler.step(snapshot(1.0, *second))
        samples.append(sample)
    fed_sample, plain = samples
    assert fed_sample.rows == plain.rows
    assert fed_sample.totals == plain.totals
    assert fed_sample.row(moved.key) == FlowRow(moved, Rate(100.0, 0.0, 2.0, 0.0))
    assert fed_sample.row(ticked.key) == FlowRow(ticked, ZERO_RATE)
    assert fed_sample.totals.by_tcp_state == {"ESTABLISHED": 7, "FIN_WAIT": 1}
    assert fed_sample.totals.vanished == 0 and fed_sample.totals.new == 0


def test_a_sample_says_which_rows_are_the_last_samples_flows_again() -> None:
    """`Sample.carry`: runs of rows that are the last sample's flows with the same identity
    (the same tuple objects, family, protocol, zone and id), whatever else moved; a new flow,
    a vanished one or new tuples end a run. The first sample has none to name."""
    fs = [flow(id=i, sport=40000 + i) for i in range(8)]
    sampler = Sampler()
    first = _fed_poll(sampler, 0.0, fs[:5], fs[5:])
    assert first.carry is None
    moved = fs[1]._replace(orig_bytes=100, orig_packets=2)
    closing = fs[3]._replace(state=4, expires=1_700_000_100.0)
    new = flow(id=9, sport=40009)
    natted = fs[6]._replace(reply=Tuple("192.0.2.1", "10.0.0.1", 443, 40006))
    # rows: 0 1 in step (1 moved) | new | 2 3 (3 closing) | 4 vanished | 5 | 6 new tuples | 7
    second = [fs[0], moved, new, fs[2], closing, fs[5], natted, fs[7]]
    sample = _fed_poll(sampler, 1.0, second[:4], second[4:])
    assert sample.rows.flows == second
    assert sample.carry is not None
    assert sample.carry.prev == id(first.rows.flows) and sample.carry.prev_length == 8
    assert sample.carry.views is first.views
    assert sample.carry.runs == [0, 0, 2, 3, 2, 2, 5, 5, 1, 7, 7, 1]
    # The same flows again, batches cut anywhere: one run of all of them.
    third = _fed_poll(sampler, 2.0, second[:1], second[1:7], second[7:])
    assert third.carry is not None and third.carry.runs == [0, 0, 8]
    assert third.carry.prev == id(sample.rows.flows)


def test_a_sampler_whose_last_rows_were_emptied_still_finds_what_vanished() -> None:
    """The feed walks the last sample's rows; emptied (`heap.release` of a sample the screen
    retired, which must not happen to the last one), it walks the table itself."""
    a, b, c = flow(id=1), flow(id=2, sport=40001), flow(id=3, sport=40002)
    sampler = Sampler()
    first = _fed_poll(sampler, 0.0, [a, b, c])
    release([first.rows.flows])
    second = _fed_poll(sampler, 1.0, [c, a])
    assert list(second.snapshot.flows) == [a.key, c.key]
    assert second.rows.flows == [c, a] and second.totals.vanished == 1
    assert second.row(a.key) == FlowRow(a, ZERO_RATE)


def test_a_feed_fills_one_dict() -> None:
    fed = Sampler().feed()
    fed.add({}, [flow()])
    with pytest.raises(ValueError, match="one dict"):
        fed.add({}, [flow(id=2)])


class _SliceCountingList(list):  # type: ignore[type-arg]
    """A batch that counts the flows its slices copy."""

    copied = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        got = super().__getitem__(index)
        if isinstance(index, slice):
            self.copied += len(got)
        return got


def test_the_walk_over_a_whole_table_in_one_batch_costs_its_length() -> None:
    """A step without a feed (a replay, the redo of a dump that sent a key twice) takes the
    whole table as one batch: finding the runs of unchanged flows copies each flow a bounded
    number of times, not the rest of the batch once per changed flow (quadratic: minutes at
    250k flows)."""
    n = 4000
    fs = [flow(id=i, sport=i % 60000) for i in range(n)]
    sampler = Sampler()
    sampler.step(snapshot(0.0, *fs))
    # Every other flow moved: a new object.
    moved = [f if i % 2 else f._replace(orig_bytes=10) for i, f in enumerate(fs)]
    batch = _SliceCountingList(moved)
    fed = sampler.feed()
    flows: dict[FlowKey, Flow] = {}
    fed.add(flows, batch)
    fed.end(flows)
    sample = sampler.step(Snapshot(1.0, 1_700_000_001.0, flows, None, None), fed)
    assert batch.copied <= 10 * n  # (16 a run at most, past its length: 8 a flow here)
    assert sample.totals.rate == Rate(10.0 * n / 2, 0.0, 0.0, 0.0)


def test_a_feed_begun_again_forgets_the_dump_it_had() -> None:
    """A dump taken again (the table was resized under it) starts the feed over: what the
    first attempt added counts for nothing."""
    a, b, c = flow(id=1), flow(id=2, sport=40001), flow(id=3, sport=40002)
    sampler = Sampler()
    _fed_poll(sampler, 0.0, [a, b, c])
    fed = sampler.feed()
    first: dict[FlowKey, Flow] = {}
    fed.add(first, [c, flow((5, 0, 1, 0), id=9)])
    fed.begin()
    flows: dict[FlowKey, Flow] = {}
    fed.add(flows, [a, flow((10, 0, 1, 0), id=2, sport=40001)])
    fed.end(flows)
    sample = sampler.step(Snapshot(1.0, 1_700_000_001.0, flows, None, None), fed)
    assert list(flows) == [a.key, b.key]
    assert sample.totals.vanished == 1 and sample.totals.new == 0
    assert sample.rows.rates == [ZERO_RATE, Rate(10.0, 0.0, 1.0, 0.0)]
