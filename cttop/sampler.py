"""Snapshot diff → rates: per-flow bytes/s and packets/s each way, new/vanished/returned flows,
counter resets, table fill, and short history rings for sparklines.

Pure: no I/O and no clock reads — both times come in the `Snapshot`, so tests feed synthetic ones.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, repeat
from operator import is_, is_not, itemgetter
from typing import Any, NamedTuple, overload

from cttop.conntrack.const import IPPROTO_TCP, proto_name, state_name
from cttop.conntrack.model import Flow, FlowKey, Snapshot

__all__ = [
    "ZERO_RATE",
    "FlowRow",
    "FlowRows",
    "Rate",
    "Sample",
    "Sampler",
    "StepFeed",
    "Totals",
    "index_of",
    "rates_sum",
]


class Rate(NamedTuple):
    """Per-second change of a flow's counters between two snapshots, each direction."""

    orig_bytes_per_s: float
    reply_bytes_per_s: float
    orig_packets_per_s: float
    reply_packets_per_s: float

    @property
    def total_bytes_per_s(self) -> float:
        return self.orig_bytes_per_s + self.reply_bytes_per_s

    @property
    def total_packets_per_s(self) -> float:
        return self.orig_packets_per_s + self.reply_packets_per_s


# Most flows of a big table are idle between two polls: they all share this one object.
ZERO_RATE = Rate(0.0, 0.0, 0.0, 0.0)


class FlowRow(NamedTuple):
    """A flow of one sample and its rate; `rate` is None when it cannot be known (first sight,
    counters reset, accounting off, no usable interval) — never a made-up 0."""

    flow: Flow
    rate: Rate | None


class Totals(NamedTuple):
    """The whole table at one sample."""

    flows: int
    by_proto: dict[str, int]  # protocol name -> flows
    by_tcp_state: dict[str | None, int]  # TCP state name -> TCP flows (None: no state sent)
    rate: Rate | None  # sum of the rows' rates; None when the sample has no interval
    new: int | None  # keys not seen before (None on the first sample: nothing to compare)
    vanished: int | None  # keys of the previous snapshot missing from this one
    returned: int | None  # keys missing from recent snapshots that came back (not new)
    new_per_s: float | None
    vanished_per_s: float | None
    restarted: int  # flows whose counters went down: their rate starts over
    no_counters: int  # flows without byte/packet counters ("accounting off for N flows")
    table_count: int | None
    table_max: int | None
    fill: float | None  # table_count / table_max

    @property
    def unchanged(self) -> int | None:
        """Flows present in both this snapshot and the previous one."""
        if self.new is None or self.returned is None:
            return None
        return self.flows - self.new - self.returned


class FlowRows(Sequence[FlowRow]):
    """Flows and their rates as two aligned lists, read as `FlowRow`s made on access.

    Why not a list of FlowRow: 250k long-lived row objects cost more in garbage-collector passes
    than computing the rates does. Idle flows share `ZERO_RATE`, so a sample of a quiet table
    allocates almost nothing that outlives the step.

    Rows may also be another FlowRows' rows by index (`in_order`: a view's order, or what a
    filter kept of it), whose lists are made only when `flows` or `rates` is read: a screen
    reads a few rows by index (`at`), and a new list of 250k flows in a new order is ~50 ms of
    cache misses (every flow's reference count is touched).
    """

    __slots__ = ("_base", "_flows", "_order", "_rates")

    def __init__(self, flows: list[Flow], rates: list[Rate | None]) -> None:
        if len(flows) != len(rates):
            raise ValueError("flows and rates must be the same length")
        self._flows: list[Flow] | None = flows
        self._rates: list[Rate | None] | None = rates
        self._base: FlowRows | None = None
        self._order: list[int] | None = None

    @classmethod
    def in_order(cls, base: FlowRows, order: list[int]) -> FlowRows:
        """Rows i of `base`, for i in `order` (held, not copied: not to be changed). Of rows
        that are themselves rows by index, the rows of theirs, in the composed order."""
        inner = base._order
        if inner is not None:  # (rows of rows by index: of the first rows, composed)
            assert base._base is not None
            base, order = base._base, permuted(inner, order)
        rows = cls.__new__(cls)
        rows._flows = rows._rates = None
        rows._base, rows._order = base, order
        return rows

    @classmethod
    def of(cls, rows: Iterable[FlowRow]) -> FlowRows:
        """From any iterable of FlowRow (returned as is when it already is a FlowRows)."""
        if isinstance(rows, FlowRows):
            return rows
        rows = list(rows)
        return cls([r[0] for r in rows], [r[1] for r in rows])

    @property
    def flows(self) -> list[Flow]:
        flows = self._flows
        if flows is None:
            assert self._base is not None and self._order is not None
            flows = self._flows = permuted(self._base.flows, self._order)
        return flows

    @property
    def rates(self) -> list[Rate | None]:
        rates = self._rates
        if rates is None:
            assert self._base is not None and self._order is not None
            rates = self._rates = permuted(self._base.rates, self._order)
        return rates

    @property
    def order(self) -> list[int] | None:
        """For rows of other rows by index (`in_order`), the indices; else None."""
        return self._order

    def at(self, index: int) -> tuple[Flow, Rate | None]:
        """Row `index`'s flow and rate (no list made)."""
        order = self._order
        if order is None:
            return self.flows[index], self.rates[index]
        assert self._base is not None
        i = order[index]
        return self._base.flows[i], self._base.rates[i]

    def index_of(self, flow: Flow) -> int | None:
        """The row of this very Flow object, or None (see `index_of`): for rows by index,
        found among the rows they are rows of (no flow read), then in the order."""
        order = self._order
        if order is None:
            return index_of(self.flows, flow)
        assert self._base is not None
        at = index_of(self._base.flows, flow)
        if at is None:
            return None
        try:
            return order.index(at)
        except ValueError:  # not among these rows
            return None

    def each_flow(self) -> Iterator[Flow]:
        """The flows in row order, read as the iterator goes (no list made or kept)."""
        if self._order is None:
            return iter(self.flows)
        assert self._base is not None
        return map(self._base.flows.__getitem__, self._order)

    def parts(self) -> list[list[Any]]:
        """The lists it holds of its own (for a front end that frees them gradually). Of rows
        by index, the order alone: lists made later from it (`flows`, `rates`) may be made
        on another thread while the parts are being collected, and hold nothing that the
        rows they are rows of do not."""
        if self._order is not None:
            return [self._order]
        assert self._flows is not None and self._rates is not None
        return [self._flows, self._rates]

    def __len__(self) -> int:
        return len(self.flows if self._order is None else self._order)

    @overload
    def __getitem__(self, index: int) -> FlowRow: ...

    @overload
    def __getitem__(self, index: slice) -> FlowRows: ...

    def __getitem__(self, index: int | slice) -> FlowRow | FlowRows:
        if isinstance(index, slice):
            if self._order is not None and self._flows is None:
                assert self._base is not None
                return FlowRows.in_order(self._base, self._order[index])
            return FlowRows(self.flows[index], self.rates[index])
        return FlowRow(*self.at(index))

    def __iter__(self) -> Iterator[FlowRow]:
        return map(FlowRow, self.flows, self.rates)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FlowRows):
            return self.flows == other.flows and self.rates == other.rates
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the lists it holds

    def __repr__(self) -> str:
        return f"<FlowRows of {len(self)} flows>"


def permuted(values: Sequence[Any], order: list[int]) -> list[Any]:
    """[values[i] for i in order], at C speed: one itemgetter of the whole order (which makes
    no call per index, as map(values.__getitem__, order) does)."""
    if len(order) < 2:  # (itemgetter of one index gives the item, not a tuple)
        return [values[i] for i in order]
    return list(itemgetter(*order)(values))


class Carry(NamedTuple):
    """Which of a sample's rows are the last sample's flows again with the same identity —
    family, protocol, both tuples, zone and id — so that what a front end derived from those
    alone (a column of ports, say) can be copied over instead of read from every flow again.

    `runs` holds flat triples (start, prev_start, length): rows start..start+length-1 are the
    last rows prev_start..prev_start+length-1, of the list whose `id()` is `prev` and whose
    length was `prev_length` (the last sample's rows: not held here, which would keep the
    last dump's flows alive). `views` is the last sample's `Sample.views`, where a front end
    kept what it derived (and whatever holds the rows it derived them from).
    """

    prev: int
    prev_length: int
    runs: list[int]
    views: dict[Any, Any]


class Sample:
    """What the Sampler makes of one snapshot: every flow with its rate, plus the totals."""

    __slots__ = ("carry", "interval", "rows", "snapshot", "step", "totals", "views")

    def __init__(
        self,
        snapshot: Snapshot,
        rows: FlowRows,
        interval: float | None,
        totals: Totals,
        step: int,
        carry: Carry | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.rows = rows  # in the dump's order
        self.interval = interval  # monotonic seconds since the previous snapshot, if usable
        self.totals = totals
        self.step = step  # 1 for the first snapshot a Sampler saw
        # Front ends keep what they derive from these rows here (view.apply's memo).
        self.views: dict[Any, Any] = {}
        # The rows that are the last sample's again (None: none known); a front end that has
        # used it may drop it, and with it the last sample's views.
        self.carry = carry

    @property
    def time_wall(self) -> float:
        return self.snapshot.time_wall

    def row(self, key: FlowKey) -> FlowRow | None:
        """The row of one flow (the TUI keeps its selection by key across samples). Its flow
        is found by key, its place among the rows by identity: one C-level pass (~4 ms at
        250k flows), not an index of the whole table built for one lookup."""
        flow = self.snapshot.flows.get(key)
        if flow is None:
            return None
        i = index_of(self.rows.flows, flow)
        return None if i is None else self.rows[i]

    def __repr__(self) -> str:
        return f"<Sample step={self.step} flows={len(self.rows)} interval={self.interval}>"


def index_of(items: list[Any], item: object) -> int | None:
    """The place of this very object in `items` (by identity, at C speed: no item's own
    comparison runs), or None."""
    return next(compress(itertools.count(), map(is_, items, repeat(item))), None)


_NAN = math.nan


# A flow's history ring: array('d') of [first step, last step written, n values], the value of
# step s at 2 + s % n and NaN standing for None. A bare array rather than an object: arrays hold
# no references, so thousands of them add nothing to the garbage collector's passes. Only flows
# that moved (or had a None to record) get one: an idle flow's history is zeros, which
# `Sampler.history` rebuilds without storing them.
_FIRST = 0
_LAST = 1


def _new_ring(n: int, first: int) -> array[float]:
    ring = array("d", bytes(8 * (n + 2)))  # 0.0: steps before `first` were idle
    ring[_FIRST] = first
    ring[_LAST] = first - 1
    return ring


def _ring_fill(ring: array[float], upto: int, value: float) -> None:
    # Only the last n steps are still in the window: older ones need no writing.
    n = len(ring) - 2
    last = int(ring[_LAST])
    for s in range(max(last + 1, upto - n + 1), upto + 1):
        ring[2 + s % n] = value
    if upto > last:
        ring[_LAST] = upto


def _ring_absent(ring: array[float], first: int, last: int) -> None:
    """The flow was missing from the dumps of steps first..last (NaN: nothing to show)."""
    _ring_fill(ring, first - 1, 0.0)
    _ring_fill(ring, last, _NAN)


# How far ahead of its place in the last dump a flow is looked for by identity (what lies
# between vanished) before the walk turns to an index of the whole last dump.
_LOOK_AHEAD = 32
_new_tuple = tuple.__new__


class StepFeed:
    """The per-flow half of `Sampler.step`, which can run while a dump arrives.

    Reads the sampler's state and writes only its own: a feed that is dropped (a dump taken
    again, a failed poll) leaves the sampler as it was. What needs the snapshot's time (rates,
    history, returned flows) is left to `Sampler.step`, for the few flows that moved.

    The kernel dumps its hash table in the same order poll after poll, and the decoder gives
    back the very Flow of the last poll for an entry nothing happened to (most of a big
    table). So the feed walks the last dump's flows alongside the new ones: a flow that *is*
    the next one of the last dump costs one identity test — no key, no lookup — and only the
    rest (new, moved, out of step) are looked up by key. What the walk skipped and nothing
    found later vanished.
    """

    __slots__ = (
        "_found",
        "_keep",
        "_listed_prev",
        "_metered_prev",
        "_next",
        "_pairs_prev",
        "_places",
        "_prev",
        "_run",
        "_skipped",
        "_step",
        "_vanished",
        "count",
        "dirty",
        "ended",
        "flows",
        "gone",
        "idle",
        "listed",
        "metering",
        "moved",
        "new",
        "no_counters",
        "pairs",
        "pause",
        "rates",
        "restarted",
        "returned",
        "runs",
    )

    def __init__(self, sampler: Sampler) -> None:
        self._prev = sampler._prev_flows
        listed = sampler._prev_listed
        if len(listed) != len(self._prev):  # (never, unless someone emptied the rows)
            listed = list(self._prev.values())
        self._listed_prev = listed
        # Every flow of the last table had counters: the unchanged ones have them too.
        last = sampler._totals[-1] if sampler._totals else None
        self._metered_prev = last is not None and last.no_counters == 0
        self._pairs_prev = sampler._prev_pairs
        self._step = sampler._step
        self._vanished = sampler._vanished
        self._keep = sampler.keep_vanished
        # Called before each batch: whoever runs the poll may hold it there for a moment.
        self.pause: Callable[[], object] | None = None
        self.begin()

    def begin(self) -> None:
        """Start over (the dump is taken again)."""
        self.gone: dict[FlowKey, Flow] | None = None  # what vanished, once ended
        self.rates: list[Rate | None] = []
        self.new: list[FlowKey] = []
        self.metering: list[FlowKey] = []
        self.returned: list[tuple[int, FlowKey, Flow]] = []
        self.moved: list[tuple[int, FlowKey, int, int, int, int]] = []
        self.count = 0
        self.flows: dict[FlowKey, Flow] | None = None
        self.ended = False
        self.no_counters = 0
        self.restarted = 0
        self.idle = False  # some rate is ZERO_RATE (to be undone if the step has no interval)
        self.dirty = False
        # The flows in the order added (the dump's: the rows' order) and their (protocol,
        # state) counted: the last table's counts, kept up to date flow by flow.
        self.listed: list[Flow] = []
        self.pairs: Counter[tuple[int, int | None]] = Counter()
        # The walk over the last dump: the place of its next flow, the flows passed over, the
        # keys of the last table found out of step, and (made when first needed) each last
        # flow's place by identity.
        self._next = 0
        self._skipped: list[Flow] = []
        self._found: set[FlowKey] = set()
        self._places: dict[int, int] | None = None
        # The rows that are the last dump's flows with the same identity (see `Carry`): the
        # runs ended, as flat triples, and where the one going on started (row, last row).
        # Between the places where the walk breaks step, rows and the walk go on together:
        # only those places are written down.
        self.runs: list[int] = []
        self._run = (0, 0)

    def add(self, flows: dict[FlowKey, Flow], batch: list[Flow]) -> None:
        """Put the next flows of a dump into the snapshot's dict `flows` (by key; a key that
        comes again replaces its earlier copy, which the step then redoes from the snapshot)
        and diff them. Building the dict here saves a second pass over every flow. `end`
        must follow the last batch."""
        if self.pause is not None:
            self.pause()
        if self.flows is None:
            # The snapshot's dict starts as the last table: a flow found again is stored
            # under the key it already had (a dict keeps its key when the value is replaced),
            # and a key made here to look it up is dropped at once. Consecutive samples share
            # their keys (a steady 250k table otherwise makes 250k key tuples a poll, 15 MiB,
            # while the shown sample's are alive), and the dict is never resized on the way.
            # What vanished is taken out by `end`.
            if flows:
                raise ValueError("a feed fills an empty dict")
            flows.update(self._prev)
            self.pairs.update(self._pairs_prev)
            self.flows = flows
        elif self.flows is not flows:
            raise ValueError("a feed fills one dict")
        prev = self._listed_prev
        n = len(prev)
        j = self._next
        get = self._prev.get
        vanished = self._vanished
        pairs = self.pairs
        rates = self.rates
        append = rates.append
        idle = False
        # A flow missing for longer than keep_vanished polls is forgotten by the step: new.
        oldest = self._step + 1 - self._keep
        metered = self._metered_prev
        size = len(batch)
        at = 0
        base = len(self.listed)  # the row of batch[0]
        runs = self.runs
        rn, ro = self._run
        while True:
            if j < n and at < size and batch[at] is prev[j]:
                # Most of a big table: the decoder gave back the last poll's Flow (nothing
                # moved), in the last dump's order, which the dict already holds under its key.
                # A run of those is found by identity in C, and costs no key and no lookup; in
                # windows that grow, so that it costs its own length, not the rest of the
                # batch's (a step without a feed takes the whole table as one batch).
                last = at + min(size - at, n - j)
                stop = at + 1
                width = 16
                while stop < last:
                    hi = min(last, stop + width)
                    ahead = map(is_not, batch[stop:hi], prev[j + stop - at : j + hi - at])
                    stop = next(compress(itertools.count(stop), ahead), hi)
                    if stop < hi:
                        break
                    width *= 4
                if metered:  # (all of the last table had counters: these too)
                    rates += repeat(ZERO_RATE, stop - at)
                    idle = True
                else:
                    for f in batch[at:stop]:
                        if _metered(f):
                            append(ZERO_RATE)
                            idle = True
                        else:
                            self.no_counters += 1
                            append(None)
                j += stop - at
                at = stop
            if at >= size:
                break
            f = batch[at]
            if j + 1 < n and f is prev[j + 1]:
                # The last dump's flow before it vanished (or comes later): the run goes on.
                self._skipped.append(prev[j])
                if base + at > rn:
                    runs += (rn, ro, base + at - rn)
                rn, ro = base + at, j + 1
                j += 1
                continue
            at += 1
            key = (f.zone, f.orig, f.id)
            flows[key] = f
            p = prev[j] if j < n else None
            if p is not None and f.orig is p.orig and f.id == p.id and f.zone == p.zone:
                # The last dump's flow at this place, decoded again from its cached tuples
                # (its counters or its expiry moved): in step, and no lookup.
                if (
                    f.kept_reply is not p.kept_reply
                    or f.protonum != p.protonum
                    or f.family != p.family
                ):
                    if base + at - 1 > rn:  # (never from the decoder: see `Carry`)
                        runs += (rn, ro, base + at - 1 - rn)
                    rn, ro = base + at, j + 1
                j += 1
                if f.state != p.state or f.protonum != p.protonum:
                    pairs[f.protonum, f.state] += 1
                    pairs[p.protonum, p.state] -= 1
            else:
                # Not the next flow of the last dump: the run of those ends before it.
                if base + at - 1 > rn:
                    runs += (rn, ro, base + at - 1 - rn)
                pairs[f.protonum, f.state] += 1
                p = get(key)
                if p is None:
                    # New (a key that comes twice in one dump shows in `end`'s count).
                    back = vanished.get(key) if vanished else None
                    if back is not None and back[2] >= oldest:
                        self.returned.append((len(rates), key, f))
                    else:
                        self.new.append(key)
                        if not _metered(f):
                            self.no_counters += 1
                    append(None)
                    rn, ro = base + at, j
                    continue
                pairs[p.protonum, p.state] -= 1
                j = self._follow(p, key, j)
                rn, ro = base + at, j
            ob = f.orig_bytes
            rb = f.reply_bytes
            op = f.orig_packets
            rp = f.reply_packets
            if ob is None or rb is None or op is None or rp is None:
                self.no_counters += 1
                append(None)
                continue
            pob = p.orig_bytes
            prb = p.reply_bytes
            pop = p.orig_packets
            prp = p.reply_packets
            if ob == pob and rb == prb and op == pop and rp == prp:
                # The common case in a big table: nothing moved since the last poll.
                append(ZERO_RATE)
                idle = True
                continue
            if pob is None or prb is None or pop is None or prp is None:
                self.metering.append(key)
            else:
                self.moved.append((len(rates), key, ob - pob, rb - prb, op - pop, rp - prp))
            append(None)
        self._next = j
        self._run = (rn, ro)
        if idle:
            self.idle = True
        self.listed += batch

    def _follow(self, p: Flow, key: FlowKey, j: int) -> int:
        """The last table's flow `p` was found for a flow not where the walk is (`j`): the
        walk's next place. Ahead (what lies between vanished, or comes later), the walk goes on
        after it; behind (passed over), it was found out of step."""
        prev = self._listed_prev
        if j < len(prev) and prev[j] is p:  # the same entry, changed: in step
            return j + 1
        places = self._places
        if places is None:
            for at in range(j + 1, min(j + _LOOK_AHEAD, len(prev))):
                if prev[at] is p:
                    self._skipped += prev[j:at]
                    return at + 1
            # Far out of step (a resized table walks in another order): from here on, each
            # flow's place in the last dump by identity.
            places = self._places = {id(q): i for i, q in enumerate(prev)}
        at = places.get(id(p), -1)  # (-1: not in the last dump's list; `end` will not agree)
        if at < j:
            self._found.add(key)
            return j
        self._skipped += prev[j:at]
        return at + 1

    def end(self, flows: dict[FlowKey, Flow]) -> None:
        """The dump is complete: the last table's flows it did not bring are taken out of
        `flows` (they vanished: `gone` holds them for the step)."""
        if self.ended or self.flows is not flows:
            return
        rn, ro = self._run
        end = min(len(self.listed), rn + len(self._listed_prev) - ro)  # (the last dump's end)
        if end > rn:
            self.runs += (rn, ro, end - rn)
        self._run = (len(self.listed), len(self._listed_prev))
        gone: dict[FlowKey, Flow] = {}
        found = self._found
        pairs = self.pairs
        for q in itertools.chain(self._skipped, self._listed_prev[self._next :]):
            key = (q.zone, q.orig, q.id)
            if key not in found:
                gone[key] = q
                flows.pop(key, None)  # (there: the dict began as the last table)
                pairs[q.protonum, q.state] -= 1
        self.gone = gone
        self.pairs = +pairs  # (counts that went to 0 dropped)
        self.count = len(flows)
        # Each key once in the dump: as many flows as it listed. Otherwise a key came twice
        # (the kernel's dump is not a snapshot), and the step redoes the diff.
        if self.count != len(self.listed):
            self.dirty = True
        self.ended = True

    def fits(self, sampler: Sampler, flows: dict[FlowKey, Flow]) -> bool:
        """Was this feed given exactly `flows`, against `sampler` as it is now?"""
        return (
            not self.dirty
            and self.ended
            and self._step == sampler._step
            and self._prev is sampler._prev_flows
            and self.flows is flows
            and self.count == len(flows)
        )


class Sampler:
    """Turns successive snapshots into samples (flows + rates + totals) and keeps history.

    A flow's identity is its `Flow.key`, (zone, original tuple, CTA_ID): the id alone is a 32-bit
    hash that repeats, so the same id with another tuple is another flow.
    """

    def __init__(
        self, history: int = 60, keep_vanished: int = 2, max_flow_histories: int = 20_000
    ) -> None:
        """`history`: polls kept per flow and for the totals (sparkline length).
        `keep_vanished`: for how many polls a flow missing from the dump is remembered; a dump is
        not atomic and may miss a live entry, and if it comes back within that many polls its
        rate continues from its last counters instead of starting over as a new flow.
        `max_flow_histories`: at most this many flows that moved in the last `history` polls
        have a history ring (about 8 bytes a poll each). Idle flows need none. Past the budget,
        a flow that moves has no history until a ring frees up (its owner idles a whole window or
        goes away): `history()` then starts where its ring does.
        """
        if history < 1:
            raise ValueError("history must be at least 1")
        if keep_vanished < 0:
            raise ValueError("keep_vanished must not be negative")
        if max_flow_histories < 0:
            raise ValueError("max_flow_histories must not be negative")
        self.history_length = history
        self.keep_vanished = keep_vanished
        self.max_flow_histories = max_flow_histories
        self.reset()

    def reset(self) -> None:
        """Forget everything (e.g. after switching to another network namespace)."""
        self._step = 0
        self._prev_flows: dict[FlowKey, Flow] = {}
        # The same flows in the last dump's order (the last sample's rows) and their
        # (protocol, state) counted: what a feed walks and updates (see `StepFeed`).
        self._prev_listed: list[Flow] = []
        self._prev_pairs: Counter[tuple[int, int | None]] = Counter()
        self._prev_time: float | None = None
        self._last_views: dict[Any, Any] | None = None  # the last sample's (see `Carry`)
        # key -> (last Flow seen, monotonic time of that snapshot, first step it was missing)
        self._vanished: dict[FlowKey, tuple[Flow, float, int]] = {}
        # key -> first step of the flow's known history (its first sight, or when metering
        # began), while that is recent (see `_sweep`)
        self._since: dict[FlowKey, int] = {}
        self._rings: dict[FlowKey, array[float]] = {}
        self._ring_template = _new_ring(self.history_length, 0)
        self._totals: deque[Totals] = deque(maxlen=self.history_length)
        # Steps without a usable interval: every flow's history shows None there.
        self._untimed: deque[int] = deque(maxlen=self.history_length)

    # -- the step -------------------------------------------------------------------------------

    def feed(self) -> StepFeed:
        """A feed for the next step: give it the next snapshot's flows as a dump delivers them
        (`ConntrackClient.snapshot(feed=...)`), then pass it to `step` with that snapshot. The
        per-flow half of the step then runs while the kernel is still dumping."""
        return StepFeed(self)

    def step(self, snapshot: Snapshot, fed: StepFeed | None = None) -> Sample:
        """Diff `snapshot` against the previous one. O(flows): one dict lookup per flow.

        `fed`: a `feed()` that filled `snapshot.flows` as the dump arrived, since this
        sampler's last step; anything else (or None) and the flows are diffed here.
        """
        flows = snapshot.flows
        if fed is not None and fed.flows is flows and not fed.ended:
            fed.end(flows)  # (its dump's owner did not: the dict still holds what vanished)
        if fed is None or not fed.fits(self, flows):
            dumped = list(flows.values())
            if fed is not None and fed.flows is flows:
                # A key came twice, or the sampler moved on meanwhile: the rows stay in the
                # dump's order (each flow where its key came first, as its last copy), which
                # the dict does not keep.
                dumped = list({(f.zone, f.orig, f.id): f for f in fed.listed}.values())
            fed = StepFeed(self)  # (its dict is thrown away)
            redone: dict[FlowKey, Flow] = {}
            fed.add(redone, dumped)
            fed.end(redone)
        self._step += 1
        step = self._step
        now = snapshot.time_monotonic
        prev_time = self._prev_time
        first = prev_time is None
        interval = None if prev_time is None else now - prev_time
        # A snapshot not later than the previous one (a replay fed twice, a clock that went
        # backwards) gives no rates at all rather than infinite or negative ones.
        timed = interval is not None and interval > 0
        if not timed:
            interval = None
            self._untimed.append(step)
        dt = interval or 0.0

        self._forget_vanished(step)
        vanished_store = self._vanished
        since = self._since
        rings = self._rings
        rings_get = rings.get
        n_hist = self.history_length
        template = self._ring_template
        max_rings = self.max_flow_histories

        rates = fed.rates
        if not timed and fed.idle:
            rates = [None] * len(rates)  # no interval: not even "idle" is known
        restarted = fed.restarted
        no_counters = fed.no_counters
        sum_ob = sum_rb = sum_op = sum_rp = 0.0
        if not first:
            # (The first snapshot's flows need no entry: see `history`.)
            for key in fed.new:
                since[key] = step
        for key in fed.metering:
            # Counters appeared on a flow that had none: metering (and history) start now.
            since[key] = step
            rings.pop(key, None)
        rate: Rate | None
        for i, key, f in fed.returned:
            rate, was_reset = self._resume(key, f, vanished_store.pop(key), now, step)
            restarted += was_reset
            if rate is not None:
                sum_ob += rate[0]
                sum_rb += rate[1]
                sum_op += rate[2]
                sum_rp += rate[3]
            elif not _metered(f):
                no_counters += 1
            rates[i] = rate
        for i, key, dob, drb, dop, drp in fed.moved:
            if dob < 0 or drb < 0 or dop < 0 or drp < 0:
                # Zeroed by another tool (conntrack -L -z) or an entry reused under the same
                # key: the rate starts over from these counters, never negative or wrapped.
                restarted += 1
                value = _NAN
            elif not timed:
                value = _NAN
            else:
                # tuple.__new__ skips NamedTuple's Python-level __new__: this runs per moved flow.
                rate = rates[i] = _new_tuple(Rate, (dob / dt, drb / dt, dop / dt, drp / dt))
                sum_ob += rate[0]
                sum_rb += rate[1]
                sum_op += rate[2]
                sum_rp += rate[3]
                value = rate[0] + rate[1]
            # Record the value in the flow's history ring (inline: this runs per moved flow).
            ring = rings_get(key)
            if ring is None:
                if len(rings) >= max_rings:
                    # Over budget: this poll's value goes unrecorded, so the flow's history
                    # honestly starts again later (see `history`) rather than showing a 0 here.
                    since[key] = step + 1
                    continue
                ring = rings[key] = template[:]
                ring[_FIRST] = step
                ring[_LAST] = step - 1
            elif ring[_LAST] < step - 1:
                _ring_fill(ring, step - 1, 0.0)
            ring[2 + step % n_hist] = value
            ring[_LAST] = step

        gone = fed.gone
        assert gone is not None  # add() ran: the feed fits, or it was redone above
        vanished = len(gone)
        if self.keep_vanished:
            seen_at = now if prev_time is None else prev_time
            for key, f in gone.items():
                vanished_store[key] = (f, seen_at, step)
        else:
            for key in gone:
                self._forget(key)

        if step % n_hist == 0:
            self._sweep(step)  # (replaces self._since: the local `since` is stale from here)

        by_proto: dict[str, int] = {}
        by_tcp_state: dict[str | None, int] = {}
        for (protonum, state), count in fed.pairs.items():
            name = proto_name(protonum)
            by_proto[name] = by_proto.get(name, 0) + count
            if protonum == IPPROTO_TCP:
                sname = state_name(protonum, state)
                by_tcp_state[sname] = by_tcp_state.get(sname, 0) + count

        new = len(fed.new)
        returned = len(fed.returned)
        table_count, table_max = snapshot.table_count, snapshot.table_max
        totals = Totals(
            flows=len(flows),
            by_proto=by_proto,
            by_tcp_state=by_tcp_state,
            rate=Rate(sum_ob, sum_rb, sum_op, sum_rp) if timed else None,
            new=None if first else new,
            vanished=None if first else vanished,
            returned=None if first else returned,
            new_per_s=new / dt if timed else None,
            vanished_per_s=vanished / dt if timed else None,
            restarted=restarted,
            no_counters=no_counters,
            table_count=table_count,
            table_max=table_max,
            fill=table_count / table_max if table_count is not None and table_max else None,
        )
        self._totals.append(totals)
        self._prev_flows = flows
        self._prev_listed = fed.listed
        self._prev_pairs = fed.pairs
        self._prev_time = now
        last_views = self._last_views
        carry = None
        if last_views is not None:
            walked = fed._listed_prev
            carry = Carry(id(walked), len(walked), fed.runs, last_views)
        sample = Sample(snapshot, FlowRows(fed.listed, rates), interval, totals, step, carry)
        self._last_views = sample.views
        return sample

    def _resume(
        self, key: FlowKey, f: Flow, back: tuple[Flow, float, int], now: float, step: int
    ) -> tuple[Rate | None, bool]:
        """A flow missed by a dump or two and back: its rate continues from its last counters,
        over the time since they were read; its history shows the polls it missed as None.
        Returns the rate and whether its counters went down (a restart)."""
        p, seen_at, gone_since = back
        dt = now - seen_at
        ring = self._rings.get(key)
        if ring is None and len(self._rings) < self.max_flow_histories:
            ring = self._rings[key] = _new_ring(self.history_length, gone_since)
        if ring is not None:
            _ring_absent(ring, gone_since, step - 1)
        else:
            self._since[key] = step + 1  # over budget: see the step loop
        rate: Rate | None = None
        restarted = False
        now_counters, then_counters = _counters(f), _counters(p)
        if now_counters is not None and then_counters is not None and dt > 0:
            deltas = [a - b for a, b in zip(now_counters, then_counters, strict=True)]
            if min(deltas) < 0:
                restarted = True
            else:
                rate = Rate(deltas[0] / dt, deltas[1] / dt, deltas[2] / dt, deltas[3] / dt)
        if ring is not None:
            _ring_fill(ring, step, _NAN if rate is None else rate.total_bytes_per_s)
        return rate, restarted

    def _forget_vanished(self, step: int) -> None:
        # Entries are stored in the order they vanished: the expired ones are at the front.
        store = self._vanished
        while store:
            key = next(iter(store))
            if step - store[key][2] <= self.keep_vanished:
                break
            del store[key]
            self._forget(key)

    def _forget(self, key: FlowKey) -> None:
        self._since.pop(key, None)
        self._rings.pop(key, None)

    def _sweep(self, step: int) -> None:
        # A ring last written a whole window ago holds nothing in the window any more.
        horizon = step - self.history_length
        stale = [key for key, ring in self._rings.items() if ring[_LAST] <= horizon]
        for key in stale:
            del self._rings[key]
        # A flow's first step matters to `history` only while it is in the window of any flow
        # still known (vanished ones are forgotten keep_vanished steps on): older ones are
        # dropped, and a known flow without one has been known longer than the window. A big
        # quiet table would otherwise keep a key and an entry per flow here for nothing.
        horizon -= self.keep_vanished + 1
        self._since = {key: first for key, first in self._since.items() if first > horizon}

    # -- history --------------------------------------------------------------------------------

    def history(self, key: FlowKey) -> list[float | None]:
        """Total bytes/s of one flow at each of its last polls (at most `history`), oldest first.

        None where it had no rate (first sight, counters reset, accounting off) or was missing
        from the dump; [] for a flow this sampler does not know (or has forgotten).
        """
        flow = self._prev_flows.get(key)
        if flow is not None:
            last = self._step
        else:
            gone = self._vanished.get(key)
            if gone is None:
                return []
            flow, last = gone[0], gone[2] - 1
        since = self._since.get(key)
        if since is None:
            # Seen first in the first snapshot (none are stored), or longer ago than the
            # window (see `_sweep`): whichever is later.
            since = max(1, last - self.history_length)
        start = max(since, last - self.history_length + 1)
        if not _metered(flow):
            return [None] * (last - start + 1)
        if start > last:
            return []  # over the ring budget the last time it moved: nothing known yet
        out: list[float | None] = [0.0] * (last - start + 1)
        ring = self._rings.get(key)
        ring_first = last + 1
        if ring is not None:
            n = len(ring) - 2
            ring_first, ring_last = int(ring[_FIRST]), int(ring[_LAST])
            for s in range(max(start, ring_first, ring_last - n + 1), min(ring_last, last) + 1):
                v = ring[2 + s % n]
                out[s - start] = None if v != v else v  # NaN: nothing to show
        for s in self._untimed:
            if start <= s <= last:
                out[s - start] = None
        if start <= since < ring_first:
            # First sight (or first metered sight): no rate yet. Unless its ring starts right
            # there, which happens when history restarted after the ring budget ran out.
            out[since - start] = None
        return out

    @property
    def totals_history(self) -> list[Totals]:
        """The totals of the last polls (at most `history`), oldest first."""
        return list(self._totals)

    def totals_rate_history(self) -> list[float | None]:
        """Total bytes/s of the whole table at each of the last polls, oldest first."""
        return [None if t.rate is None else t.rate.total_bytes_per_s for t in self._totals]

    @property
    def last_flows(self) -> dict[FlowKey, Flow]:
        """The flows of the last snapshot stepped (what the next step diffs against)."""
        return self._prev_flows

    @property
    def last_listed(self) -> list[Flow]:
        """The same flows in the order the last dump brought them (the last sample's rows),
        which the next step walks: not to be emptied while this sampler goes on."""
        return self._prev_listed

    @property
    def tracked(self) -> int:
        """Flows with state held: the last snapshot's plus the recently vanished."""
        return len(self._prev_flows) + len(self._vanished)


def _counters(f: Flow) -> tuple[int, int, int, int] | None:
    ob, rb, op, rp = f.orig_bytes, f.reply_bytes, f.orig_packets, f.reply_packets
    if ob is None or rb is None or op is None or rp is None:
        return None
    return ob, rb, op, rp


def _metered(f: Flow) -> bool:
    """A rate needs all four counters; the kernel sends both directions or neither."""
    return not (
        f.orig_bytes is None
        or f.reply_bytes is None
        or f.orig_packets is None
        or f.reply_packets is None
    )


def rates_sum(rates: Iterable[Rate | None]) -> Rate | None:
    """Sum of the rates that are not None, in order; None when there is none."""
    present = [r for r in rates if r is not None]
    if not present:
        return None
    return Rate(
        sum(r[0] for r in present),
        sum(r[1] for r in present),
        sum(r[2] for r in present),
        sum(r[3] for r in present),
    )
