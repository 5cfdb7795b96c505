"""Properties of the engine (hypothesis): rates never negative, totals are the sum of their
rows, a filter and its negation partition the flows, sorting is stable and total."""

from __future__ import annotations

import contextlib
import ipaddress
import math
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttop import view as view_module
from cttop.conntrack.const import (
    AF_INET,
    AF_INET6,
    IPPROTO_DCCP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    STATE_TABLES,
    proto_name,
    state_name,
)
from cttop.conntrack.model import Flow, FlowKey, Snapshot, Tuple
from cttop.sampler import ZERO_RATE, FlowRows, Rate, Sample, Sampler
from cttop.view import (
    GROUP_KEYS,
    SORT_KEYS,
    FilterError,
    GroupRows,
    apply,
    group_rows,
    matches,
    parse_filter,
    proto_is,
    proto_not,
    sort_flows,
    state_named,
)

settings.register_profile(
    "engine", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150
)
settings.load_profile("engine")

V4 = ["10.0.0.1", "10.0.0.2", "10.0.0.10", "192.168.1.1", "1.1.1.1", "0.0.0.0", "255.255.255.255"]
V6 = ["::1", "2001:db8::1", "2001:db8::a", "fe80::1", "::ffff:10.0.0.1", "ff02::2"]
PROTOS = [6, 17, 1, 58, 132, 33, 47, 136, 50]

counters = st.one_of(
    st.none(), st.tuples(*[st.integers(0, 10**6)] * 4)
)  # accounting is on or off for a whole flow: all four counters or none


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    v6 = draw(st.booleans())
    addrs = V6 if v6 else V4
    address = (
        st.one_of(st.sampled_from(addrs), st.none())
        if draw(st.booleans())
        else st.sampled_from(addrs)
    )
    port = st.one_of(st.none(), st.sampled_from([22, 53, 80, 443, 8080]), st.integers(0, 65535))
    src, dst = draw(address), draw(address)
    sport, dport = draw(port), draw(port)
    orig = Tuple(src, dst, sport, dport)
    if draw(st.booleans()):
        reply = Tuple(dst, src, dport, sport)
    else:  # NATed somewhere
        reply = Tuple(draw(address), draw(address), draw(port), draw(port))
    c = draw(counters)
    ob, rb, op, rp = c if c is not None else (None, None, None, None)
    protonum = draw(st.sampled_from(PROTOS))
    return Flow(
        family=AF_INET6 if v6 else AF_INET,
        protonum=protonum,
        orig=orig,
        reply=reply,
        id=draw(st.integers(0, 3)),  # few ids: CTA_ID repeats
        status=draw(st.one_of(st.none(), st.integers(0, 0xFFFF))),
        state=draw(st.one_of(st.none(), st.integers(0, 10))),
        expires=draw(st.one_of(st.none(), st.integers(0, 432000))),
        mark=draw(st.one_of(st.none(), st.sampled_from([0, 1, 0x10, 0xFFFFFFFF]))),
        zone=draw(st.sampled_from([0, 0, 1])),
        orig_bytes=ob,
        reply_bytes=rb,
        orig_packets=op,
        reply_packets=rp,
        start=draw(st.one_of(st.none(), st.integers(0, 10**18))),
    )


rates = st.one_of(
    st.none(),
    st.just(ZERO_RATE),
    st.builds(Rate, *[st.floats(0, 1e9, allow_nan=False)] * 4),
    # Equal totals, other parts (ties within a run), a zero rate that is not ZERO_RATE, and a
    # negative one (the Sampler never makes it, but `apply` takes any rows).
    st.sampled_from(
        [
            Rate(1.0, 2.0, 3.0, 4.0),
            Rate(2.0, 1.0, 0.0, 0.0),
            Rate(0.0, 0.0, 1.0, 0.0),
            Rate(-1.0, 0.0, 0.0, 0.0),
        ]
    ),
)


@st.composite
def flow_rows(draw: st.DrawFn, max_size: int = 30) -> FlowRows:
    """Rows with each flow's `use` set to its position, so a result can be traced back."""
    fs = draw(st.lists(flows(), max_size=max_size))
    fs = [f._replace(use=i) for i, f in enumerate(fs)]
    return FlowRows(fs, [draw(rates) for _ in fs])


@st.composite
def snapshot_sequences(draw: st.DrawFn, max_polls: int = 6) -> list[Snapshot]:
    """Successive polls of a small table: flows come and go, counters stay, go up, or go
    anywhere (a reset), and the time between polls varies (sometimes zero or backwards)."""
    pool = {f.key: f for f in draw(st.lists(flows(), min_size=1, max_size=12))}
    t = 0.0
    out = []
    for _ in range(draw(st.integers(1, max_polls))):
        table: dict[FlowKey, Flow] = {}
        for key, f in pool.items():
            c = _counters(f)
            how = draw(st.sampled_from(["same", "up", "up", "anywhere"]))
            if c is not None and how == "up":
                more = draw(st.tuples(*[st.integers(0, 10**5)] * 4))
                c = tuple(a + b for a, b in zip(c, more, strict=True))  # type: ignore[assignment]
            elif c is not None and how == "anywhere":
                c = draw(st.tuples(*[st.integers(0, 10**6)] * 4))
            if c is not None:
                f = pool[key] = f._replace(
                    orig_bytes=c[0], reply_bytes=c[1], orig_packets=c[2], reply_packets=c[3]
                )
            if draw(st.integers(0, 3)):  # present in this dump three times in four
                table[key] = f
        t += draw(st.sampled_from([0.0, -0.5, 0.25, 1.0, 1.5, 3.0]))
        out.append(Snapshot(t, 1e9 + t, table, len(table), draw(st.sampled_from([None, 0, 64]))))
    return out


def _counters(f: Flow) -> tuple[int, int, int, int] | None:
    c = (f.orig_bytes, f.reply_bytes, f.orig_packets, f.reply_packets)
    return None if None in c else c  # type: ignore[return-value]


# --- sampler ----------------------------------------------------------------------------------


@given(snapshot_sequences())
def test_rates_are_never_negative_and_totals_are_the_sum_of_rows(snapshots):
    sampler = Sampler(history=4, keep_vanished=1)
    prev: Snapshot | None = None
    seen: set[FlowKey] = set()
    for snap in snapshots:
        sample = sampler.step(snap)
        rows = list(sample.rows)
        t = sample.totals
        assert [r.flow for r in rows] == list(snap.flows.values())
        assert t.flows == len(rows)

        for row in rows:
            if row.rate is not None:
                assert all(v >= 0 and math.isfinite(v) for v in row.rate)
                assert row.flow.key in seen  # never a rate on a first sight
                assert _counters(row.flow) is not None
            # the reference: a flow present in the last poll, metered both times, counters not
            # gone down, a positive interval → exactly delta / interval
            if prev is not None and row.flow.key in prev.flows:
                before, now = _counters(prev.flows[row.flow.key]), _counters(row.flow)
                if before and now and sample.interval:
                    deltas = [a - b for a, b in zip(now, before, strict=True)]
                    if min(deltas) < 0:
                        assert row.rate is None
                    else:
                        assert row.rate == Rate(*(d / sample.interval for d in deltas))

        if sample.interval is None:
            assert t.rate is None
        else:
            assert t.rate is not None
            for i in range(4):
                want = sum(r.rate[i] for r in rows if r.rate is not None)
                assert math.isclose(t.rate[i], want, rel_tol=1e-9, abs_tol=1e-9)

        assert sum(t.by_proto.values()) == t.flows
        assert sum(t.by_tcp_state.values()) == t.by_proto.get("tcp", 0)
        assert t.no_counters == sum(1 for r in rows if _counters(r.flow) is None)
        if prev is None:
            assert t.new is None and t.vanished is None
        else:
            assert t.new is not None and t.returned is not None and t.vanished is not None
            assert min(t.new, t.returned, t.vanished) >= 0
            assert t.new + t.returned - t.vanished == len(snap.flows) - len(prev.flows)
            assert t.vanished == len(prev.flows.keys() - snap.flows.keys())
        for key in snap.flows:
            history = sampler.history(key)
            assert 1 <= len(history) <= 4
            assert all(v is None or v >= 0 for v in history)
        seen.update(snap.flows)
        prev = snap


@settings(max_examples=150)
@given(snapshot_sequences(max_polls=10), st.data())
def test_a_fed_step_is_the_plain_step(snapshots, data):
    """The sampler fed the dump's flows batch by batch while they arrive (the live path) makes
    exactly the samples it makes from the whole snapshot: rows, rates, totals and histories.
    Batches of any size, none at all for an empty dump, and a flow sent twice in one dump."""
    plain = Sampler(history=4, keep_vanished=1)
    fed_sampler = Sampler(history=4, keep_vanished=1)
    for snap in snapshots:
        want = plain.step(snap)
        dumped = list(snap.flows.values())
        if dumped and data.draw(st.booleans()):
            dumped.insert(data.draw(st.integers(0, len(dumped))), dumped[0])  # sent twice
        fed = fed_sampler.feed()
        flows: dict[FlowKey, Flow] = {}
        at = 0
        while at < len(dumped):
            size = data.draw(st.integers(1, 5))
            fed.add(flows, dumped[at : at + size])
            at += size
        fed.end(flows)
        got = fed_sampler.step(snap._replace(flows=flows), fed)
        assert flows == snap.flows
        assert got.rows == want.rows
        assert got.totals == want.totals
        for key in snap.flows:
            assert fed_sampler.history(key) == plain.history(key)


class _KeepsEveryFirstStep(Sampler):
    """The sampler as it was when it stored the first step of every flow: of the first
    snapshot's too, and never dropped by `_sweep`."""

    def step(self, snapshot: Snapshot, fed: Any = None) -> Any:
        sample = super().step(snapshot, fed)
        if sample.step == 1:
            for key in snapshot.flows:
                self._since.setdefault(key, 1)
        return sample

    def _sweep(self, step: int) -> None:
        since = self._since
        super()._sweep(step)
        self._since = since


@settings(max_examples=150)
@given(
    snapshot_sequences(max_polls=24),
    st.integers(1, 4),
    st.integers(0, 3),
    st.sampled_from([0, 1, 100]),
)
def test_dropping_old_first_steps_changes_no_history(snapshots, history, keep, budget):
    """The first snapshot's flows get no first step stored, and the sweep forgets when
    long-known flows were first seen (a key and an entry per flow of a quiet table otherwise):
    every history stays what it was with them all kept."""
    sampler = Sampler(history=history, keep_vanished=keep, max_flow_histories=budget)
    reference = _KeepsEveryFirstStep(history=history, keep_vanished=keep, max_flow_histories=budget)
    seen: set[FlowKey] = set()
    for snap in snapshots:
        sampler.step(snap)
        reference.step(snap)
        seen.update(snap.flows)
        for key in seen:
            assert sampler.history(key) == reference.history(key)
    assert len(sampler._since) <= len(reference._since)


def _walk_flow(i: int, rnd: Any) -> Flow:
    """Flow number i of a table: its own key (the source port), TCP/UDP/ICMP, some without
    counters, the zone and a repeating id in its key."""
    protonum = rnd.choice([6, 17, 1])
    c = None if rnd.random() < 0.15 else tuple(rnd.randint(0, 1000) for _ in range(4))
    ob, rb, op, rp = c if c is not None else (None, None, None, None)
    return Flow(
        family=AF_INET,
        protonum=protonum,
        orig=Tuple("10.0.0.1", "10.0.0.2", 1024 + i, 53),
        reply=Tuple("10.0.0.2", "10.0.0.1", 53, 1024 + i),
        id=i % 7,
        state=rnd.choice([1, 3, 7]) if protonum == 6 else None,
        expires=1000.0 + i,
        zone=i % 2,
        orig_bytes=ob,
        reply_bytes=rb,
        orig_packets=op,
        reply_packets=rp,
    )


def _walk_next(f: Flow, rnd: Any) -> Flow | None:
    """What the next dump brings of flow f: mostly the very same object (the decoder reused
    it), else a new one — the same but for the expiry, counters up or reset, another state —
    or nothing (vanished)."""
    how = rnd.choices(["same", "expiry", "up", "reset", "state", "gone"], [60, 8, 12, 3, 5, 12])[0]
    if how == "same":
        return f
    if how == "gone":
        return None
    if how == "expiry":
        return f._replace(expires=(f.expires or 0.0) + 1.0)
    if how == "state":
        return f._replace(state=rnd.choice([1, 3, 7]) if f.protonum == 6 else None)
    if f.orig_bytes is None:
        return f._replace(status=rnd.randint(0, 3))
    if how == "up":
        return f._replace(orig_bytes=f.orig_bytes + rnd.randint(0, 5000))
    return f._replace(orig_bytes=0, reply_bytes=0, orig_packets=0, reply_packets=0)


def _check_carry(sample: Sample, last: Sample | None) -> None:
    """What a sample says of its rows that are the last sample's flows again (`Carry`) is
    true: runs in order, apart, within both lists, each row the same family, protocol, tuple
    objects, zone and id as the last row it names."""
    if last is None:
        assert sample.carry is None
        return
    carry = sample.carry
    assert carry is not None
    assert carry.prev == id(last.rows.flows) and carry.prev_length == len(last.rows.flows)
    assert carry.views is last.views
    rows, runs = sample.rows.flows, carry.runs
    assert len(runs) % 3 == 0
    end = 0
    for start, prev_start, length in zip(runs[::3], runs[1::3], runs[2::3], strict=True):
        assert length > 0 and start >= end and prev_start >= 0
        end = start + length
        assert end <= len(rows) and prev_start + length <= carry.prev_length
        for f, p in zip(
            rows[start:end], last.rows.flows[prev_start : end - start + prev_start], strict=True
        ):
            assert f.orig is p.orig and f[3] is p[3]  # (the replies as kept)
            assert (f.family, f.protonum, f.zone, f.id) == (p.family, p.protonum, p.zone, p.id)


@settings(max_examples=200)
@given(st.randoms(use_true_random=False), st.integers(1, 7), st.integers(0, 2))
def test_the_feeds_walk_over_the_last_dump_is_the_diff_by_key(rnd, polls, keep):
    """A feed walks the last dump's flows alongside the new ones and looks up by key only what
    is not the next one (`StepFeed`). Whatever the new dump's order — the same, a few flows
    moved, runs of vanished flows longer than the look-ahead, shuffled as after a resize —
    and with keys sent twice, the fed sampler makes exactly the samples that a sampler makes
    from copies of the same flows (no flow the same object twice: every one looked up by
    key); what vanished and the counts by protocol and state are the table's."""
    fed_sampler = Sampler(history=3, keep_vanished=keep)
    plain = Sampler(history=3, keep_vanished=keep)
    n = rnd.randint(0, 160)
    made = n
    order = [_walk_flow(i, rnd) for i in range(n)]
    away: list[Flow] = []
    t = 0.0
    prev: dict[FlowKey, Flow] | None = None
    last: Sample | None = None
    for _ in range(polls):
        if order and rnd.random() < 0.3:  # a run of vanished longer than the look-ahead
            at = rnd.randrange(len(order))
            away += order[at : at + 40]
            del order[at : at + 40]
        nxt: list[Flow] = []
        for f in order:
            g = _walk_next(f, rnd)
            if g is None:
                away.append(f)
            else:
                nxt.append(g)
        for _ in range(rnd.randint(0, 12)):  # new flows, and vanished ones back
            if away and rnd.random() < 0.3:
                g = away.pop(rnd.randrange(len(away)))
            else:
                g = _walk_flow(made, rnd)
                made += 1
            nxt.insert(rnd.randint(0, len(nxt)), g)
        how = rnd.choice(["in step", "in step", "moved", "shuffled"])
        if how == "moved":
            for _ in range(rnd.randint(1, 5)):
                if nxt:
                    nxt.insert(rnd.randint(0, len(nxt)), nxt.pop(rnd.randrange(len(nxt))))
        elif how == "shuffled":
            rnd.shuffle(nxt)
        order = nxt
        dumped = list(order)
        if dumped and rnd.random() < 0.2:  # the kernel sent an entry twice
            f = rnd.choice(dumped)
            dumped.insert(rnd.randint(0, len(dumped)), rnd.choice([f, f._replace(use=9)]))
        t += rnd.choice([1.0, 1.0, 0.5, 0.0])

        fed = fed_sampler.feed()
        flows: dict[FlowKey, Flow] = {}
        at = 0
        while at < len(dumped):
            size = rnd.randint(1, 40)
            fed.add(flows, dumped[at : at + size])
            at += size
        fed.end(flows)
        got = fed_sampler.step(Snapshot(t, 1e9 + t, flows, None, None), fed)
        copies: dict[FlowKey, Flow] = {}
        for f in dumped:
            copies[f.key] = Flow(*f)
        want = plain.step(Snapshot(t, 1e9 + t, copies, None, None))

        assert flows == copies
        assert got.rows == want.rows and got.totals == want.totals
        assert got.totals.vanished == (None if prev is None else len(prev.keys() - flows.keys()))
        by_proto: dict[str, int] = {}
        for f in flows.values():
            by_proto[proto_name(f.protonum)] = by_proto.get(proto_name(f.protonum), 0) + 1
        assert got.totals.by_proto == by_proto
        tcp = [state_name(6, f.state) for f in flows.values() if f.protonum == 6]
        assert got.totals.by_tcp_state == {s: tcp.count(s) for s in set(tcp)}
        for key in flows:
            assert fed_sampler.history(key) == plain.history(key)
        # What the next walk goes over is the table, each flow once.
        listed = fed_sampler.last_listed
        assert sorted(map(id, listed)) == sorted(map(id, flows.values()))
        _check_carry(got, last)
        prev = flows
        last = got


# --- filter -----------------------------------------------------------------------------------

STATE_NAMES = sorted({s for table in STATE_TABLES.values() for s in table})


@st.composite
def terms(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "sctp", "gre", "dccp"]))
    if kind == 1:
        name = draw(st.sampled_from(STATE_NAMES))
        return "state:" + name[: draw(st.integers(1, len(name)))].lower()
    if kind == 2:
        addr = ipaddress.ip_address(draw(st.sampled_from(V4 + V6)))
        bits = draw(st.integers(0, addr.max_prefixlen))
        field = draw(st.sampled_from(["src", "dst", "host"]))
        return f"{field}:{addr}/{bits}"
    if kind == 3:
        lo = draw(st.integers(0, 65535))
        hi = draw(st.integers(lo, 65535))
        return f"{draw(st.sampled_from(['port', 'sport', 'dport']))}:{lo}-{hi}"
    if kind == 4:
        return draw(st.sampled_from(["port:https", "dport:domain", "sport:ssh", "port:80"]))
    if kind == 5:
        return draw(st.sampled_from(["mark:0", "mark:1", "mark:0x10/0x10", "zone:0", "zone:1"]))
    if kind == 6:
        return draw(st.sampled_from(["nat", "snat", "dnat", "assured", "unreplied", "offload"]))
    if kind == 7:
        return draw(st.sampled_from(["family:ipv4", "family:ipv6", "proto:6", "proto:50"]))
    text = draw(st.sampled_from(V4 + V6))
    start = draw(st.integers(0, len(text) - 1))
    return text[start : draw(st.integers(start + 1, len(text)))]  # bare text


@given(st.lists(flows(), max_size=25), terms())
def test_a_filter_and_its_negation_partition_the_flows(fs, term):
    pred = parse_filter(term)
    for negation in (f"!{term}", f"not {term}", f"! {term}"):
        neg = parse_filter(negation)
        for f in fs:
            assert pred(f) != neg(f)


@given(
    st.lists(flows(), max_size=25),
    st.lists(st.tuples(st.booleans(), terms()), min_size=1, max_size=3),
)
def test_a_filter_mask_is_the_predicate_over_a_list(fs, ts):
    """The C-level mask a filter carries (view.matches) says what the predicate says of each
    flow: terms, negations and conjunctions alike."""
    expr = " ".join(("!" if negate else "") + term for negate, term in ts)
    pred = parse_filter(expr)
    assert matches(pred, fs) == [bool(pred(f)) for f in fs]
    for name in ("ESTABLISHED", "NONE", "SYN_SENT"):
        state = state_named(name)
        assert matches(state, fs) == [bool(state(f)) for f in fs]
    for protos in ((6,), (1, 58), (17, 6)):
        for p in (proto_is(*protos), proto_not(*protos)):
            assert matches(p, fs) == [bool(p(f)) for f in fs]


_RATE_OF = {
    "rate": lambda r: r[0] + r[1],
    "orig_rate": lambda r: r[0],
    "reply_rate": lambda r: r[1],
}


@given(
    flow_rows(),
    st.sampled_from(sorted(_RATE_OF)),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 30)),
)
def test_a_rate_sort_is_a_stable_sort_with_the_absent_last(rows, key, reverse, limit):
    """Sorting by a rate (which skips an index per idle flow) orders the rows exactly as a
    stable sort of the values does, the rows without a rate last in their order: zeros that
    are ZERO_RATE and zeros that are not, ties, negative rates alike."""
    value = _RATE_OF[key]
    descending = SORT_KEYS[key].descending != reverse
    present = [i for i, r in enumerate(rows.rates) if r is not None]
    present.sort(key=lambda i: value(rows.rates[i]), reverse=descending)
    order = (present + [i for i, r in enumerate(rows.rates) if r is None])[:limit]
    assert sort_flows(rows, key, reverse, limit) == FlowRows(
        [rows.flows[i] for i in order], [rows.rates[i] for i in order]
    )


def test_a_rate_sort_with_a_nan_sorts_as_before() -> None:
    """NaN is no rate the Sampler makes, and has no order: such rows get the full sort."""
    nan = math.nan
    one = Flow(
        AF_INET, 17, Tuple("10.0.0.1", "10.0.0.2", 1, 53), Tuple("10.0.0.2", "10.0.0.1", 53, 1)
    )
    flows = [one._replace(use=i) for i in range(5)]
    rates = [Rate(1.0, 0, 0, 0), Rate(nan, 0, 0, 0), ZERO_RATE, Rate(-1.0, 0, 0, 0), None]
    rows = FlowRows(flows, rates)
    order = view_module._order([None if r is None else r[0] + r[1] for r in rates], True)
    assert sort_flows(rows, "rate") == FlowRows(
        [flows[i] for i in order], [rates[i] for i in order]
    )


@given(
    flow_rows(),
    st.lists(
        st.tuples(
            st.one_of(st.none(), terms()),
            st.sampled_from(sorted(SORT_KEYS)),
            st.booleans(),
            st.one_of(st.none(), st.integers(0, 30)),
            st.sampled_from(sorted(GROUP_KEYS)),
        ),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_views_through_a_memo_are_the_views(rows, views, by_index):
    """A memo kept with the rows (the TUI keeps one per sample) changes no view: same rows,
    same order, same totals, whatever was asked before; also of rows that are other rows by
    index (a view's)."""
    if by_index:
        rows = sort_flows(rows, "id", reverse=True)
    memo: dict[Any, Any] = {}
    for expr, key, reverse, limit, group in views:
        kw = {"filter": expr, "sort": key, "reverse": reverse, "limit": limit, "group": group}
        with _small_blocks():
            want, got = apply(rows, **kw), apply(rows, memo=memo, **kw)
            assert _read(got.rows) == list(want.rows)
        assert (got.matched, got.all_flows) == (want.matched, want.all_flows)
        assert (got.totals.flows, got.totals.no_rate) == (want.totals.flows, want.totals.no_rate)
        assert got.totals.rate == want.totals.rate
        assert got.totals.bytes == want.totals.bytes


@given(flow_rows(), st.sampled_from(sorted(SORT_KEYS)), st.booleans())
def test_the_other_direction_through_a_memo_is_a_fresh_sort(rows, key, first):
    """A memo turns a sort over from the order it has the other way (sorting that order,
    which is nearly in order already): the rows a fresh stable sort gives, ties in the
    table's order and the absent last either way."""
    memo: dict[Any, Any] = {}
    apply(rows, sort=key, reverse=first, memo=memo)
    got = apply(rows, sort=key, reverse=not first, memo=memo)
    assert _read(got.rows) == list(sort_flows(rows, key, not first))


@settings(max_examples=150)
@given(
    snapshot_sequences(),
    st.lists(st.one_of(st.none(), terms()), min_size=1, max_size=4),
    st.sampled_from(sorted(SORT_KEYS)),
    st.booleans(),
    st.sampled_from(sorted(GROUP_KEYS)),
)
def test_views_through_the_last_samples_columns_are_the_views(
    snapshots, exprs, key, reverse, group
):
    """Each sample's memo takes the columns of the last sample's for the flows both share
    (`Sample.carry`): the views are the views of the rows alone, poll after poll."""
    sampler = Sampler()
    for snap in snapshots:
        sample = sampler.step(snap)
        for i, expr in enumerate(exprs):
            kw = {"filter": expr, "sort": key, "reverse": reverse, "group": group}
            carry = sample.carry if i == 0 else None
            with _small_blocks():
                got = apply(sample.rows, memo=sample.views, carry=carry, **kw)
                want = apply(sample.rows, **kw)
                assert _read(got.rows) == list(want.rows)
            assert (got.matched, got.totals.flows) == (want.matched, want.totals.flows)
            assert got.totals.rate == want.totals.rate


@given(flow_rows(), st.lists(terms(), min_size=1, max_size=4))
def test_terms_all_must_match(rows, ts):
    shown = apply(rows, filter=" ".join(ts), sort="id").rows
    singles = [parse_filter(t) for t in ts]
    want = [f.use for f in rows.flows if all(p(f) for p in singles)]
    assert sorted(f.use for f in shown.flows) == want


@given(st.text(max_size=40))
def test_any_text_parses_or_says_which_term(text):
    try:
        pred = parse_filter(text)
    except FilterError as err:
        assert err.term in text.split() or err.term.lstrip("!") in text
    else:
        assert callable(pred)


# --- sort -------------------------------------------------------------------------------------


def _address(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    a = ipaddress.ip_address(text)
    return (a.version, int(a))  # IPv4 (4) before IPv6 (6), numerically within each


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


# An independent statement of each sort key: (value of a row, smallest first?)
REFERENCE: dict[str, tuple[Any, bool]] = {
    "rate": (lambda f, r: None if r is None else r.orig_bytes_per_s + r.reply_bytes_per_s, False),
    "orig_rate": (lambda f, r: None if r is None else r.orig_bytes_per_s, False),
    "reply_rate": (lambda f, r: None if r is None else r.reply_bytes_per_s, False),
    "bytes": (lambda f, r: _sum(f.orig_bytes, f.reply_bytes), False),
    "packets": (lambda f, r: _sum(f.orig_packets, f.reply_packets), False),
    "flows": (lambda f, r: 1, False),
    "age": (lambda f, r: f.start, True),  # oldest (earliest start) first
    "timeout": (lambda f, r: f.expires, True),
    "proto": (lambda f, r: proto_name(f.protonum), True),
    "state": (lambda f, r: state_name(f.protonum, f.state), True),
    "src": (lambda f, r: _address(f.orig.src), True),
    "dst": (lambda f, r: _address(f.orig.dst), True),
    "sport": (lambda f, r: f.orig.sport, True),
    "dport": (lambda f, r: f.orig.dport, True),
    "mark": (lambda f, r: f.mark, True),
    "zone": (lambda f, r: f.zone, True),
    "id": (lambda f, r: f.id, True),
}


def test_reference_covers_every_sort_key():
    assert set(REFERENCE) == set(SORT_KEYS)


@given(flow_rows(), st.sampled_from(sorted(SORT_KEYS)), st.booleans())
def test_sort_is_stable_and_total(rows, key, reverse):
    value, ascending = REFERENCE[key]
    if reverse:
        ascending = not ascending
    out = sort_flows(rows, key, reverse)
    positions = [f.use for f in out.flows]
    assert sorted(positions) == list(range(len(rows)))  # a permutation: nothing lost or doubled
    values = [value(f, rates) for f, rates in zip(out.flows, out.rates, strict=True)]
    present = [v for v in values if v is not None]
    assert values[: len(present)] == present  # absent values last, in either direction
    for i in range(len(values) - 1):
        a, b = values[i], values[i + 1]
        if a is None or b is None or a == b:
            if a == b:  # equal keys (or both absent) keep their input order
                assert positions[i] < positions[i + 1]
            continue
        assert (a < b) if ascending else (a > b)


@given(flow_rows(), st.sampled_from(sorted(SORT_KEYS)), st.booleans())
def test_sort_twice_is_the_same(rows, key, reverse):
    once = sort_flows(rows, key, reverse)
    assert sort_flows(once, key, reverse) == once


@given(st.integers(0, 30), st.data())
def test_rows_by_index_are_the_rows_they_stand_for(n, data):
    """FlowRows.in_order(base, order) reads as the lists it stands for through every
    accessor, also when it is itself taken in an order (composed), and makes no list of its
    own until `flows` or `rates` is read (and then none among its parts)."""
    flows = [object() for _ in range(n)]  # distinct: identity searches tell them apart
    rates = [Rate(float(i), 0.0, 0.0, 0.0) if i % 3 else None for i in range(n)]
    base = FlowRows(flows, rates)  # type: ignore[arg-type]

    def some(k: int) -> Any:
        return st.lists(st.integers(0, k - 1), unique=True, max_size=k) if k else st.just([])

    order = data.draw(some(n))
    rows = FlowRows.in_order(base, order)
    want = FlowRows([flows[i] for i in order], [rates[i] for i in order])  # type: ignore[misc]
    assert len(rows) == len(want)
    assert [rows.at(i) for i in range(len(rows))] == list(zip(want.flows, want.rates, strict=True))
    assert [rows[i] for i in range(-len(rows), len(rows))] == list(want) + list(want)
    for i, f in enumerate(flows):
        assert rows.index_of(f) == (want.flows.index(f) if i in order else None)  # type: ignore[arg-type]
    assert list(rows.each_flow()) == want.flows
    start, stop = data.draw(st.integers(-3, n + 3)), data.draw(st.integers(-3, n + 3))
    assert rows[start:stop] == want[start:stop]
    inner = data.draw(some(len(order)))
    nested = FlowRows.in_order(rows, inner)
    assert nested.order == [order[i] for i in inner]
    assert nested == FlowRows.in_order(want, inner) == FlowRows.of([want[i] for i in inner])
    assert rows.parts() == [order]
    assert rows == want
    assert rows.parts() == [order] and rows.flows == want.flows
    assert FlowRows.in_order(rows, list(range(len(rows)))) == want


# --- view totals and group-by -----------------------------------------------------------------


@contextlib.contextmanager
def _small_blocks() -> Any:
    """Group rows whose counters are summed two groups at a time (256 in use: a small table's
    would all be summed at once), and carried from the last sample's whatever the share of
    the rows that changed (an eighth in use: a small table's is mostly more)."""
    with (
        mock.patch.object(view_module, "_GROUP_BLOCK", 2),
        mock.patch.object(view_module, "_CARRIED_SUMS_SHARE", 2.0),
    ):
        yield


def _read(rows: Any) -> list[Any]:
    """The rows as a list; group rows read back to front first (a screen reads a block of
    rows where it is, not from the top)."""
    if isinstance(rows, GroupRows):
        backwards = [rows[i] for i in reversed(range(len(rows)))]
        assert list(rows) == backwards[::-1]
    return list(rows)


PORT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_UDPLITE)

# An independent statement of each group-by mode's key.
GROUP_REFERENCE: dict[str, Any] = {
    "src": lambda f: f.orig.src,
    "dst": lambda f: f.orig.dst,
    "pair": lambda f: (f.orig.src, f.orig.dst),
    "dport": lambda f: (f.protonum, f.orig.dport if f.protonum in PORT_PROTOS else None),
    "proto": lambda f: f.protonum,
    "state": lambda f: state_name(f.protonum, f.state),
    "mark": lambda f: f.mark,
    "zone": lambda f: f.zone,
}


@given(flow_rows(), st.sampled_from(sorted(GROUP_REFERENCE)), st.booleans())
def test_groups_are_their_flows(rows, group, backwards):
    """Each group holds the flows of one key, in the order of their first flows: their
    count, their rates summed (None when none has one), each counter summed over the flows
    that have it (None when none has)."""
    members: dict[Any, list[Any]] = {}
    for row in rows:
        members.setdefault(GROUP_REFERENCE[group](row.flow), []).append(row)
    with _small_blocks():
        got = apply(rows, group=group, sort="flows", memo={}).rows
        rows_read = _read(got) if backwards else list(got)
    assert len(rows_read) == len(members) and {g.key for g in rows_read} == set(members)
    assert [g.key for g in group_rows(rows, group)] == list(members)
    for g in rows_read:
        mine = members[g.key]
        assert g.flows == len(mine)
        rates = [r.rate for r in mine if r.rate is not None]
        want_rate = Rate(*(sum((r[i] for r in rates), 0.0) for i in range(4)))
        assert g.rate == (want_rate if rates else None)
        for name in ("orig_bytes", "reply_bytes", "orig_packets", "reply_packets"):
            values = [getattr(r.flow, name) for r in mine if getattr(r.flow, name) is not None]
            assert getattr(g, name) == (sum(values) if values else None)


@given(flow_rows(), st.sampled_from(sorted(GROUP_KEYS)), st.sampled_from(sorted(SORT_KEYS)))
def test_groups_sum_to_the_totals(rows, group, sort):
    result = apply(rows, group=group, sort=sort)
    t = result.totals
    assert t.flows == len(rows)
    if group == "none":
        shown = list(result.rows)
        assert len(shown) == len(rows)
        counted = [(r.rate, r.flow.orig_bytes, r.flow.reply_packets, 1) for r in shown]
    else:
        keys = [g.key for g in result.rows]
        assert len(keys) == len(set(keys)) == result.matched
        counted = [(g.rate, g.orig_bytes, g.reply_packets, g.flows) for g in result.rows]
    assert sum(c[3] for c in counted) == t.flows
    present = [c[0] for c in counted if c[0] is not None]
    if t.rate is None:
        assert present == []
    else:
        for i in range(4):
            assert math.isclose(t.rate[i], sum(r[i] for r in present), rel_tol=1e-9, abs_tol=1e-6)
    ob = [c[1] for c in counted if c[1] is not None]
    assert t.orig_bytes == (sum(ob) if ob else None)
    rp = [c[2] for c in counted if c[2] is not None]
    assert t.reply_packets == (sum(rp) if rp else None)


@given(flow_rows(), st.integers(0, 40))
def test_limit_cuts_the_rows_not_the_totals(rows, limit):
    full = apply(rows)
    cut = apply(rows, limit=limit)
    assert list(cut.rows) == list(full.rows)[:limit]
    assert cut.matched == full.matched == len(rows)
    assert cut.totals.rate == full.totals.rate
    assert cut.totals.bytes == full.totals.bytes


@pytest.mark.parametrize("group", sorted(set(GROUP_KEYS) - {"none"}))
def test_group_of_nothing_is_nothing(group):
    result = apply([], group=group)
    assert (list(result.rows), result.matched, result.totals.flows) == ([], 0, 0)
