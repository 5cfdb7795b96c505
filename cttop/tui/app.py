"""The live TUI. Polls run in a thread worker and the next poll is armed only after the last one
is on screen, so polls never overlap and a slow dump stretches the interval instead of piling
up. The UI thread renders; it never parses netlink and never walks the whole table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import compress, count, repeat
from operator import attrgetter, eq
from typing import Any, ClassVar, NamedTuple, Protocol

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.css.query import NoMatches
from textual.timer import Timer
from textual.widgets import Footer, Input

from cttop.conntrack.const import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_STATES
from cttop.conntrack.model import Flow, Snapshot
from cttop.heap import HeapPolicy, release
from cttop.record import EndOfRecording
from cttop.sampler import FlowRows, Sample, Sampler
from cttop.source import take
from cttop.tui.columns import FLOW_COLUMNS, GROUP_COLUMNS, Options
from cttop.tui.header import Header, HeaderState, notices_for
from cttop.tui.keys import bindings
from cttop.tui.screens import ConfirmScreen, DetailScreen, HelpScreen, SortScreen
from cttop.tui.table import ColumnHeader, FlowTable, SortRequested
from cttop.view import (
    GROUP_KEYS,
    SORT_KEYS,
    FilterError,
    GroupRow,
    GroupRows,
    Predicate,
    ViewAbandoned,
    ViewResult,
    all_of,
    apply,
    memo_parts,
    parse_filter,
    proto_is,
    proto_not,
    state_named,
)


class Source(Protocol):
    """Where snapshots come from: the live table or a recording."""

    def snapshot(self) -> Snapshot: ...


INTERVALS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# Seconds without input after which the operator is taken not to be watching a key's effect.
QUIET_AFTER = 5.0
_INPUT = (events.Key, events.MouseDown, events.MouseScrollDown, events.MouseScrollUp)
# The poll's view, given up when a key changes the settings, starts again at most this often
# minus one (a typist who does not stop) before it runs to its end whatever comes.
_POLL_VIEW_TRIES = 4
# The longest the poll worker waits for keys' views at one place (a slow view, or keys that do
# not stop, cannot hold polling up).
_YIELD_MAX = 0.5
PROTO_CYCLE: tuple[str | None, ...] = (None, "tcp", "udp", "icmp", "other")
STATE_CYCLE: tuple[str | None, ...] = (None, *(s for s in TCP_STATES if s != "NONE"), "NONE")
GROUP_CYCLE = tuple(GROUP_KEYS)

_PROTO_PREDICATES: dict[str, Predicate] = {
    "tcp": proto_is(IPPROTO_TCP),
    "udp": proto_is(IPPROTO_UDP),
    "icmp": proto_is(IPPROTO_ICMP, IPPROTO_ICMPV6),
    "other": proto_not(IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6),
}


@dataclass(frozen=True)
class ViewSettings:
    """What the operator asked to see. Replaced whole, never mutated: workers read it safely."""

    proto: str | None = None
    state: str | None = None
    expr: str = ""
    sort: str = "rate"
    reverse: bool = False
    group: str = "none"

    def describe(self) -> str:
        parts = []
        if self.proto:
            parts.append(self.proto if self.proto != "other" else "other protocols")
        if self.state:
            parts.append(f"state {self.state}")
        if self.expr:
            parts.append(self.expr)
        return " · ".join(parts)

    def predicate(self) -> Predicate | None:
        preds: list[Predicate] = []
        if self.proto:
            preds.append(_PROTO_PREDICATES[self.proto])
        if self.state:
            preds.append(state_named(self.state))
        if self.expr:
            preds.append(parse_filter(self.expr))
        if not preds:
            return None
        return all_of(preds)


class Followed(NamedTuple):
    """The row the cursor follows: its key, the row itself and the sample it was shown from."""

    key: Any
    row: Any
    sample: Sample | None


@dataclass
class Shown:
    """A sample through the view, as computed in a worker."""

    sample: Sample
    settings: ViewSettings
    result: ViewResult
    cursor: int | None  # index of the selected key in result.rows, if found
    followed: Followed | None = None  # the selection looked for


def _row_key(row: Any) -> Any:
    if isinstance(row, Flow):
        return row.key
    if isinstance(row, GroupRow):
        return (row.group, row.key)
    return None


def _containers(
    shown: Shown, with_sample: bool, with_snapshot: bool = True
) -> list[list[Any] | dict[Any, Any]]:
    """The big lists and dicts a Shown holds: its view's, its sample's if asked, and the
    snapshot's flows if asked too (the source's: see Source.disposable)."""
    found: list[Any] = shown.result.totals.rows.parts() + shown.result.rows.parts()
    if with_sample:
        sample = shown.sample
        found += [sample.rows.flows, sample.rows.rates]
        if with_snapshot:
            found.append(sample.snapshot.flows)
        found += memo_parts(sample.views)
    return [part for part in found if isinstance(part, list | dict)]


_flow_id = attrgetter("id")


def _find(result: ViewResult, key: Any, row: Any = None, same: bool = False) -> int | None:
    """The index in `result` of the row with this key. `row`: the row as last shown (a Flow
    of it is found by identity at C speed without reading any flow: 250k flows read by id are
    15-40 ms, as many cache misses); `same`: `result` is a view of the sample `row` came from,
    where that very object is the only row with its key."""
    if key is None:
        return None
    rows = result.rows
    if isinstance(rows, FlowRows):
        if not isinstance(key, tuple) or len(key) != 3:
            return None  # a group's key: not a flow
        if isinstance(row, Flow):
            at = rows.index_of(row)
            if at is not None or same:
                return at
        # By id first, at C speed (a big table: 250k Flow.key calls are 75 ms), and lazily, in
        # row order: the selected flow is mostly near the top, and the search stops there.
        # The id is a 32-bit hash, so the rest of the key is checked before it counts.
        zone, orig, flow_id = key
        for i in compress(count(), map(eq, map(_flow_id, rows.each_flow()), repeat(flow_id))):
            flow = rows.at(i)[0]
            if flow.orig == orig and flow.zone == zone:
                return i
        return None
    if not isinstance(key, tuple) or len(key) != 2 or key[0] != rows.groups.mode:
        return None  # a flow's key, or another grouping's
    return rows.find(key[1])


class Resolver:
    """Reverse DNS in the background: never blocks a frame, each address asked once."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self.cache: dict[str, str | None] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cttop-dns")
        self.on_done = on_done

    def name(self, addr: str | None) -> str | None:
        if addr is None:
            return None
        if addr in self.cache:
            return self.cache[addr]
        self.cache[addr] = None
        self.pool.submit(self._lookup, addr)
        return None

    def _lookup(self, addr: str) -> None:
        try:
            name = socket.gethostbyaddr(addr)[0]
        except (OSError, UnicodeError):
            return
        self.cache[addr] = name
        self.on_done()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class CttopCommands(Provider):
    """Command palette entries for the view: sort, group, protocol, modes."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], Any], str]]:
        app = self.app
        assert isinstance(app, CttopApp)
        for key in SORT_KEYS.values():
            yield (f"Sort by {key.name}", partial(app.set_sort, key.name), key.help)
        for mode, help_text in GROUP_KEYS.items():
            yield (f"Group by {mode}", partial(app.set_group, mode), help_text)
        for proto in PROTO_CYCLE:
            yield (
                f"Protocol: {proto or 'all'}",
                partial(app.set_proto, proto),
                "show only this protocol",
            )
        yield ("Reverse sort", app.action_reverse, "flip the sort direction")
        yield ("Pause / resume", app.action_pause, "freeze the data")
        yield ("Bits / bytes", app.action_bits, "show rates in bits or bytes per second")
        yield ("Resolve names", app.action_names, "reverse DNS for addresses")
        yield ("Clear filters", app.clear_filters, "show every flow")

    async def discover(self) -> Hits:
        for name, cb, help_text in self._commands():
            yield DiscoveryHit(name, cb, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, cb, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_text)


class CttopApp(App[int]):
    CSS_PATH = "cttop.tcss"
    TITLE = "cttop"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [*bindings()]
    COMMANDS = App.COMMANDS | {CttopCommands}

    def __init__(
        self,
        source: Source,
        *,
        interval: float = 1.0,
        settings: ViewSettings | None = None,
        label: str = "",
        read_only: bool = False,
        keymap: dict[str, str] | None = None,
        timer: Callable[[], float] = time.monotonic,
        autopoll: bool = True,
    ) -> None:
        # NO_COLOR (no-color.org): the terminal's own colours only, no colour sequences.
        super().__init__(ansi_color=bool(os.environ.get("NO_COLOR")))
        self.source = source
        self.interval = interval
        self.settings = settings or ViewSettings()
        self.label = label or f"{socket.gethostname()} · kernel {os.uname().release}"
        self.read_only = read_only
        self.sampler = Sampler()
        # The occasional full collection (half a second at 250k flows) waits until the
        # operator has not pressed a key or clicked for a few seconds.
        self._last_input = float("-inf")
        self.heap = HeapPolicy(quiet=self._quiet)
        self._retired: list[Shown] = []  # samples off screen, left for a worker to free
        self._pinned: Sample | None = None  # a sample D is reading off the UI thread
        # Clear while a key's view is computed: the poll worker waits between datagrams (and
        # before its own view) so that the key's result comes first (see _poll_worker).
        self._view_idle = threading.Event()
        self._view_idle.set()
        self._view_running = False  # a key's view is being computed (UI thread's)
        self._view_again = False  # settings changed while a view was computed
        self._switch_interval: float | None = None
        self.shown: Shown | None = None
        self.selected_key: Any = None
        self._selected: Followed | None = None  # the selected row, and its sample
        self.paused = False
        self.bits = False
        self.resolver: Resolver | None = None
        self.poll_ms: float | None = None
        self.effective_interval = interval
        self.stretched = False
        self.error: str | None = None
        self.errors = 0
        self.polls = 0
        self._poll_timer: Timer | None = None
        self._polling = False
        self.detail: DetailScreen | None = None
        self.following = False  # the cursor follows its flow once the operator moved it
        self._keymap = keymap or {}
        self._timer = timer  # measures how long polls take (tests pass a fixed clock)
        self._poll_started = 0.0  # self._timer() when the last poll was started
        self._waited = 0.0  # how long the running poll waited for views of keys
        self.autopoll = autopoll  # False: polls only when asked (tests, screenshots)

    # --- layout -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(id="header")
        yield Input(
            placeholder="filter: tcp state:est dport:443 not src:10.0.0.0/8 …", id="filter-bar"
        )
        yield ColumnHeader(id="columns")
        yield FlowTable(id="flows")
        yield Footer()

    def on_mount(self) -> None:
        # The poll worker holds the GIL for most of a big poll; the default 5 ms turns make
        # the event loop wait that long at every hand-off. 1 ms keeps keys and redraws prompt.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, 0.001))
        self._exit_on_signals()
        if self._keymap:
            self.set_keymap(self._keymap)
        self.query_one(FlowTable).focus()
        bar = self.query_one("#filter-bar", Input)
        bar.display = False
        bar.value = self.settings.expr
        self.set_interval(1.0, self._tick_clock)
        self._render_header()
        self.poll()

    def _exit_on_signals(self) -> None:
        """A dead SSH session (SIGHUP) or a plain kill (SIGTERM) ends cttop as q does, so the
        terminal is put back the way it was."""
        if self.is_headless:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.exit)

    def on_unmount(self) -> None:
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
        if self.resolver is not None:
            self.resolver.close()

    # --- polling ----------------------------------------------------------------------

    def poll(self) -> None:
        """Start one poll unless one is running (the guard that keeps polls from overlapping)."""
        if self._polling:
            return
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        self._polling = True
        self._poll_started = self._timer()
        self._poll_worker()

    @work(thread=True, group="poll", exit_on_error=False)
    def _poll_worker(self) -> None:
        started = self._timer()
        self._waited = 0.0  # for views of keys (see _yield_to_view): not the poll's own time
        # Drop the samples the screen no longer shows here, not on the UI thread: freeing a
        # big table takes tens of milliseconds.
        self._free_retired()
        self.heap.before_poll()
        try:
            sample = take(self.source, self.sampler, self._yield_to_view)
            shown = self._poll_view(sample)
            self.heap.after_poll()
        except Exception as e:  # shown in the header; polling goes on
            self.heap.after_poll()
            self.call_from_thread(self._poll_failed, e, self._timer() - started - self._waited)
            return
        self.call_from_thread(self._poll_done, shown, self._timer() - started - self._waited)

    def _poll_view(self, sample: Sample) -> Shown:
        """In the poll worker: the new sample's view for the settings as they are now, not as
        they were when the poll started (a key pressed during the dump is not undone by the
        poll's view). A key pressed while it is computed gives it up at its next pass — the
        key's own view, of the sample on screen, is not kept waiting for a view no longer
        wanted (a bare word typed on the way to a filter costs 0.3 s at 250k flows) — and it
        starts again for the new settings, a few times at most: then it runs to its end."""
        for attempt in range(_POLL_VIEW_TRIES):
            self._yield_to_view()
            settings = self.settings
            stop = None if attempt == _POLL_VIEW_TRIES - 1 else self._superseded(settings)
            try:
                return self._compute(sample, settings, self._followed(), stop)
            except ViewAbandoned:
                continue
            finally:
                # Its columns are in the memo now: the last sample's memo is no longer needed.
                sample.carry = None
        raise AssertionError("the last try has no stop")  # pragma: no cover

    def _superseded(self, settings: ViewSettings) -> Callable[[], bool]:
        """A view's stop: have the settings changed since `settings` (a key)?"""
        return lambda: self.settings is not settings

    def _compute(
        self,
        sample: Sample,
        settings: ViewSettings,
        followed: Followed | None,
        stop: Callable[[], bool] | None = None,
    ) -> Shown:
        try:
            pred = settings.predicate()
        except FilterError:
            pred = None
        result = apply(
            sample.rows,
            filter=pred,
            sort=settings.sort,
            reverse=settings.reverse,
            group=settings.group,
            memo=sample.views,
            stop=stop,
            carry=sample.carry,
        )
        cursor = None
        if followed is not None:
            same = followed.sample is sample
            # A flow of this very sample that the filter leaves out is not among the rows: no
            # need to look through them (a pass over 50k flows is ~10 ms of cache misses).
            if not (same and isinstance(followed.row, Flow) and pred and not pred(followed.row)):
                cursor = _find(result, *followed[:2], same=same)
        if cursor is not None and isinstance(result.rows, GroupRows):
            result.rows[cursor]  # (its block's counters summed here, not on the UI thread)
        return Shown(sample, settings, result, cursor, followed)

    def _poll_done(self, shown: Shown, took: float) -> None:
        self._polling = False
        self.polls += 1
        self.poll_ms = took * 1000
        self._stretch(took)
        self.error = None
        self._show(shown)
        if shown.settings != self.settings or (shown.cursor is None and self._followed()):
            self._reapply()
        self._arm()

    def _poll_failed(self, error: Exception, took: float) -> None:
        self._polling = False
        if isinstance(error, EndOfRecording):
            self.paused = True
            self.notify("end of the recording: [ ] step, { } jump to start/end", timeout=6)
            self._render_header()
            return
        self.errors += 1
        self.error = str(error) or type(error).__name__
        self.poll_ms = took * 1000
        self._stretch(took)
        self._render_header()
        self._arm()

    def _stretch(self, took: float) -> None:
        """A poll that takes more than half the interval stretches it: the kernel's and our own
        work stay under half of the machine's time (the header says so). To whole seconds
        (whole intervals below one second): polls in step with the ticks of the kernel's
        timeouts find the idle entries as they left them, and the decoder reuses their flows
        (a poll 0.5 s out of step with the ticks decodes every flow anew)."""
        self.stretched = 2 * took > self.interval
        unit = min(self.interval, 1.0)
        self.effective_interval = (
            math.ceil(2 * took / unit) * unit if self.stretched else self.interval
        )

    def _arm(self) -> None:
        if self.paused or not self.autopoll:
            return
        delay = getattr(self.source, "delay", None)
        if callable(delay):
            wait = float(delay())  # a replay keeps the recording's own spacing
        else:
            # Counted from the poll's start: the time it took to show does not shift the next.
            wait = self.effective_interval - (self._timer() - self._poll_started)
        self._poll_timer = self.set_timer(max(0.05, wait), self.poll)

    # --- the view ---------------------------------------------------------------------

    def _reapply(self, **changes: Any) -> None:
        """Recompute the view of the current sample, for the settings with `changes` made (a
        key), or as they are."""
        start = self.shown is not None and not self._view_running
        if start:
            # Busy before the settings change: a poll's view, given up when it sees them
            # change, waits for this one (see _poll_view) instead of running alongside it.
            self._view_idle.clear()
            self._view_running = True
        if changes:
            self.settings = replace(self.settings, **changes)
        if self.shown is None:
            self._render_header()
            return
        if not start:
            # One computation at a time (two would share the CPU and both be late): the
            # one running is followed by one for the settings as they are by then.
            self._view_again = True
            return
        self._view_worker(self.shown.sample, self.settings, self._followed())

    @work(thread=True, group="view", exit_on_error=False)
    def _view_worker(
        self, sample: Sample, settings: ViewSettings, followed: Followed | None
    ) -> None:
        shown: Shown | None = None
        try:
            # Given up as soon as the settings change again (a filter typed key by key): the
            # view for the newer settings starts then, instead of after this one.
            shown = self._compute(sample, settings, followed, self._superseded(settings))
        except ViewAbandoned:
            pass
        finally:
            # Still "busy" until it is on screen (see _view_done): the poll worker waits.
            self.call_from_thread(self._view_done, shown)

    def _free_retired(self) -> None:
        """Free the samples and views no longer shown, gradually (see heap.release): never a
        container the screen, the sampler or the shown sample's memo still reads (views of
        one sample share lists)."""
        retired, self._retired = self._retired, []
        pinned = self._pinned
        if pinned is not None:  # read by the D worker: freed by a later poll
            self._retired += [old for old in retired if old.sample is pinned]
            retired = [old for old in retired if old.sample is not pinned]
        shown = self.shown
        keep = {id(self.sampler.last_flows), id(self.sampler.last_listed)}
        if shown is not None:
            keep.update(map(id, _containers(shown, with_sample=True)))
        parts: dict[int, list[Any] | dict[Any, Any]] = {}
        disposable = getattr(self.source, "disposable", False)
        for old in retired:
            live = shown is not None and old.sample is shown.sample
            for part in _containers(old, with_sample=not live, with_snapshot=disposable):
                if id(part) not in keep:
                    parts[id(part)] = part
        del retired, shown
        # A key's view first, between chunks, but not for longer than one wait in all.
        deadline = self._timer() + _YIELD_MAX

        def pause() -> None:
            if self._timer() < deadline:
                self._yield_to_view()

        release(parts.values(), pause=pause)

    def _yield_to_view(self) -> None:
        """In the poll worker: wait while a key's view is being computed (bounded, so that a
        slow view cannot hold polling up)."""
        if not self._view_idle.is_set():
            waiting = self._timer()
            self._view_idle.wait(_YIELD_MAX)
            self._waited += self._timer() - waiting

    def _view_done(self, shown: Shown | None) -> None:
        self._view_running = False
        if (
            shown is None  # given up or failed (a failure: the next poll computes it again)
            # Of a sample no longer shown: a later one came (steps restart after a replay's
            # jump, so not by step).
            or (self.shown is not None and shown.sample is not self.shown.sample)
            or shown.settings != self.settings  # changed again: the next view is wanted
        ):
            self._view_settled()
            return
        self._show(shown)
        # The poll worker stays paused until the screen shows it: drawing it then does not
        # share the GIL with decoding. A key's view need not wait (`_view_running`): one that
        # comes before the refresh starts at once (the wait was up to 60 ms at 250k flows).
        self.call_after_refresh(self._view_settled)

    def _view_settled(self) -> None:
        if self._view_running:
            return  # the next key's view: the poll worker waits for that one
        self._view_idle.set()
        if self._view_again:
            self._view_again = False
            self._reapply()

    def _options(self, sample: Sample) -> Options:
        names = self.resolver.name if self.resolver is not None else None
        return Options(bits=self.bits, names=names, now=sample.time_wall)

    def _show(self, shown: Shown) -> None:
        if self.shown is not None:
            self._retired.append(self.shown)  # freed by the next poll worker
        self.shown = shown
        table = self.query_one(FlowTable)
        columns = GROUP_COLUMNS if shown.settings.group != "none" else FLOW_COLUMNS
        cursor = shown.cursor if self.following else 0
        selected = self._selected
        if cursor is None and selected is not None and selected is not shown.followed:
            # (Not found by the worker, which looked for the same row: not there.)
            cursor = _find(shown.result, *selected[:2], same=selected.sample is shown.sample)
        shown.followed = None  # (used: it may name the sample before, not to be kept alive)
        table.set_rows(shown.result.rows, columns, self._options(shown.sample), cursor)
        self._update_selected(table.cursor)
        self._render_header()
        if self.detail is not None:
            self._refresh_detail()

    def _render_header(self) -> None:
        s = self.settings
        shown = self.shown
        sample = shown.sample if shown else None
        state = HeaderState(
            label=self.label,
            interval=self.interval,
            poll_ms=self.poll_ms,
            paused=self.paused,
            recording=self._recording_label(),
            error=self.error,
            errors=self.errors,
            filter_text=s.describe(),
            sort=s.sort,
            descending=SORT_KEYS[s.sort].descending != s.reverse,
            group=s.group,
            shown=shown.result.matched if shown else None,
            matched_flows=shown.result.totals.flows if shown else None,
            bits=self.bits,
            notices=notices_for(sample) if sample else [],
            clock=self._clock(),
            stretched=self.stretched,
            effective_interval=None if self._replaying() else self.effective_interval,
            speed=self._speed(),
        )
        self.query_one(Header).update(sample, state)
        table = self.query_one(FlowTable)
        self.query_one(ColumnHeader).set_columns(table.cols, s.sort, state.descending)

    def _speed(self) -> float | None:
        speed = getattr(self.source, "speed", None)
        return float(speed) if self._replaying() and isinstance(speed, (int, float)) else None

    def _replaying(self) -> bool:
        return callable(getattr(self.source, "delay", None))

    def _clock(self) -> float | None:
        clock = getattr(self.source, "clock", None)
        return clock() if callable(clock) else None

    def _recording_label(self) -> str | None:
        rec = getattr(self.source, "recording", None)
        return str(rec) if rec else None

    def _tick_clock(self) -> None:
        # At exit this timer can fire after the widgets are gone: nothing to draw then.
        with contextlib.suppress(NoMatches):
            self._render_header()

    def _followed(self) -> Followed | None:
        """The row the cursor follows; None while it stays on the top row (a view then need
        not look for the selection)."""
        return self._selected if self.following else None

    def _update_selected(self, index: int) -> None:
        row = self.query_one(FlowTable).row_at(index)
        self.selected_key = _row_key(row[0]) if row else None
        sample = self.shown.sample if self.shown is not None else None
        self._selected = Followed(self.selected_key, row[0], sample) if row else None

    def on_flow_table_highlighted(self, event: FlowTable.Highlighted) -> None:
        # Until the operator moves the cursor, it stays on the top row (the busiest flow);
        # after that it follows the flow they picked.
        self.following = True
        self._update_selected(event.index)

    def on_sort_requested(self, event: SortRequested) -> None:
        self.set_sort(event.sort)

    # --- settings changes -------------------------------------------------------------

    def _change(self, **changes: Any) -> None:
        self._reapply(**changes)
        self._render_header()

    def set_sort(self, sort: str) -> None:
        if sort == self.settings.sort:
            self._change(reverse=not self.settings.reverse)
        else:
            self._change(sort=sort, reverse=False)

    def set_group(self, group: str) -> None:
        self._change(group=group)

    def set_proto(self, proto: str | None) -> None:
        self._change(proto=proto)

    def clear_filters(self) -> None:
        self.query_one("#filter-bar", Input).value = ""
        self._change(proto=None, state=None, expr="")

    def action_cycle_proto(self) -> None:
        i = PROTO_CYCLE.index(self.settings.proto)
        self._change(proto=PROTO_CYCLE[(i + 1) % len(PROTO_CYCLE)])

    def action_toggle_proto(self, proto: str) -> None:
        self._change(proto=None if self.settings.proto == proto else proto)

    def action_cycle_state(self) -> None:
        i = STATE_CYCLE.index(self.settings.state)
        self._change(state=STATE_CYCLE[(i + 1) % len(STATE_CYCLE)])

    def action_cycle_group(self) -> None:
        i = GROUP_CYCLE.index(self.settings.group)
        self._change(group=GROUP_CYCLE[(i + 1) % len(GROUP_CYCLE)])

    def action_reverse(self) -> None:
        self._change(reverse=not self.settings.reverse)

    def action_sort_step(self, step: int) -> None:
        keys = [c.sort for c, _w in self.query_one(FlowTable).cols if c.sort]
        if not keys:
            return
        current = self.settings.sort if self.settings.sort in keys else keys[0]
        if self.settings.sort == "rate" and "orig_rate" in keys:
            current = "orig_rate"
        nxt = keys[(keys.index(current) + step) % len(keys)]
        self._change(sort=nxt, reverse=False)

    def action_choose_sort(self) -> None:
        def chosen(sort: str | None) -> None:
            if sort:
                self._change(sort=sort, reverse=False)

        self.push_screen(SortScreen(self.settings.sort), chosen)

    def action_filter(self) -> None:
        bar = self.query_one("#filter-bar", Input)
        bar.display = True
        bar.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "filter-bar":
            return
        text = event.value.strip()
        try:
            parse_filter(text)
        except FilterError as e:
            event.input.border_subtitle = str(e)
            event.input.add_class("bad-filter")
            return
        event.input.border_subtitle = ""
        event.input.remove_class("bad-filter")
        if text != self.settings.expr:
            self._change(expr=text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter-bar":
            if not event.input.has_class("bad-filter"):
                event.input.display = False
            self.query_one(FlowTable).focus()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, _INPUT):
            self._last_input = time.monotonic()
        await super().on_event(event)

    def _quiet(self) -> bool:
        """No key, click or scroll for a while (read by the poll worker: one float)."""
        return time.monotonic() - self._last_input > QUIET_AFTER

    def on_key(self, event: Any) -> None:
        bar = self.query_one("#filter-bar", Input)
        if event.key == "escape" and bar.has_focus:
            bar.value = ""
            bar.display = False
            self.query_one(FlowTable).focus()
            event.stop()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            if self._poll_timer is not None:
                self._poll_timer.stop()
                self._poll_timer = None
        else:
            self.poll()
        self._render_header()

    def action_interval(self, step: int) -> None:
        speed = getattr(self.source, "speed", None)
        if isinstance(speed, (int, float)) and self._replaying():
            # A replay keeps the recording's spacing: + and - change how fast it plays.
            faster = [x for x in SPEEDS if x > speed]
            slower = [x for x in SPEEDS if x < speed]
            new_speed = (
                (faster[0] if faster else speed) if step < 0 else (slower[-1] if slower else speed)
            )
            self.source.speed = new_speed  # type: ignore[attr-defined]
            self._render_header()
            return
        if step > 0:  # longer
            self.interval = next((x for x in INTERVALS if x > self.interval), self.interval)
        else:
            self.interval = next(
                (x for x in reversed(INTERVALS) if x < self.interval), self.interval
            )
        self._render_header()
        if self._poll_timer is not None and not self._polling:
            self._poll_timer.stop()
            self._poll_timer = self.set_timer(self.interval, self.poll)

    def action_bits(self) -> None:
        self.bits = not self.bits
        self._redraw()

    def action_names(self) -> None:
        if self.resolver is None:
            self.resolver = Resolver(lambda: self.call_from_thread(self._redraw))
        else:
            self.resolver.close()
            self.resolver = None
        self._redraw()

    def _redraw(self) -> None:
        if self.shown is not None:
            table = self.query_one(FlowTable)
            table.set_rows(table.rows, table.columns, self._options(self.shown.sample))
        self._render_header()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # --- detail -----------------------------------------------------------------------

    def on_flow_table_chosen(self, event: FlowTable.Chosen) -> None:
        self._open(event.index)

    def action_detail(self) -> None:
        self._open(self.query_one(FlowTable).cursor)

    def _open(self, index: int) -> None:
        row = self.query_one(FlowTable).row_at(index)
        if row is None or self.shown is None:
            return
        item, rate = row
        if isinstance(item, GroupRow):
            self._drill_down(item)
            return
        screen = DetailScreen(
            item, rate, self.sampler.history(item.key), self.shown.sample.time_wall, self.bits
        )
        self.detail = screen

        def closed(_: None) -> None:
            self.detail = None

        self.push_screen(screen, closed)

    def _refresh_detail(self) -> None:
        if self.detail is None or self.shown is None:
            return
        key = self.detail.flow.key
        row = self.shown.sample.row(key)
        self.detail.update_flow(
            row.flow if row else None,
            row.rate if row else None,
            self.sampler.history(key),
            self.shown.sample.time_wall,
        )

    def _drill_down(self, g: GroupRow) -> None:
        """Enter on a group: show its flows."""
        terms = {
            "src": lambda: [f"src:{g.src}"],
            "dst": lambda: [f"dst:{g.dst}"],
            "pair": lambda: [f"src:{g.src}", f"dst:{g.dst}"],
            "dport": lambda: (
                [f"proto:{g.protonum}"] + ([f"dport:{g.dport}"] if g.dport is not None else [])
            ),
            "proto": lambda: [f"proto:{g.protonum}"],
            "state": lambda: [f"state:{g.state}"] if g.state else [],
            "mark": lambda: [f"mark:{g.mark}"] if g.mark is not None else [],
            "zone": lambda: [f"zone:{g.zone}"] if g.zone is not None else [],
        }[g.group]()
        expr = " ".join([self.settings.expr, *terms]).strip()
        self.query_one("#filter-bar", Input).value = expr
        self._change(group="none", expr=expr)

    # --- delete -----------------------------------------------------------------------

    def _deleter(self) -> Callable[[Flow], bool] | None:
        if self.read_only:
            self.notify("read-only: deleting is disabled (--read-only)", severity="warning")
            return None
        delete = getattr(self.source, "delete", None)
        if delete is None:
            self.notify("this source cannot delete flows (a recording?)", severity="warning")
            return None
        return delete  # type: ignore[no-any-return]

    def action_delete(self) -> None:
        row = self.query_one(FlowTable).row_at(self.query_one(FlowTable).cursor)
        if row is None or not isinstance(row[0], Flow):
            self.notify("select a flow first (not a group)", severity="warning")
            return
        delete = self._deleter()
        if delete is None:
            return
        flow: Flow = row[0]
        from cttop.fmt import tuple_ends

        src, dst = tuple_ends(flow, flow.orig)
        question = f"Delete 1 flow?\n\n{flow.proto} {src} → {dst}"

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete_worker([flow], delete)

        self.push_screen(ConfirmScreen(question), answered)

    def action_delete_matching(self) -> None:
        if self.shown is None:
            return
        delete = self._deleter()
        if delete is None:
            return
        if self.settings.group != "none":
            self.notify("leave the grouped view to delete flows", severity="warning")
            return
        # The flows the dialog names must be the ones deleted: take them from the current
        # settings, not from a view on screen that a worker may be about to replace. That
        # view is computed off the UI thread (up to a few hundred ms at 250k flows).
        shown = self.shown
        if self._pinned is not None:
            return  # the flows of an earlier D are still being found: its dialog comes next
        if shown.settings != self.settings:
            # The sample stays whole until the dialog has the flows (see _free_retired).
            self._pinned = shown.sample
            self._matching_worker(shown.sample, self.settings, delete)
        else:
            self._confirm_delete_matching(shown, delete)

    @work(thread=True, group="delete", exit_on_error=False)
    def _matching_worker(
        self, sample: Sample, settings: ViewSettings, delete: Callable[[Flow], bool]
    ) -> None:
        try:
            shown = self._compute(sample, settings, None)
        except Exception as e:
            self.call_from_thread(self._matching_failed, e)
            return
        self.call_from_thread(self._confirm_delete_matching, shown, delete)

    def _matching_failed(self, error: Exception) -> None:
        self._pinned = None
        self.notify(f"delete failed: {error}", severity="error")

    def _confirm_delete_matching(self, shown: Shown, delete: Callable[[Flow], bool]) -> None:
        rows = shown.result.rows
        assert isinstance(rows, FlowRows)
        flows = list(rows.each_flow())  # the dialog's own copy: then the sample may be freed
        self._pinned = None
        what = shown.settings.describe()
        if what:
            question = f"Delete all {len(flows):,} flows matching “{what}”?"
        else:
            question = f"No filter is set: delete ALL {len(flows):,} flows in the table?"

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete_worker(flows, delete)

        self.push_screen(ConfirmScreen(question), answered)

    @work(thread=True, group="delete", exit_on_error=False)
    def _delete_worker(self, flows: list[Flow], delete: Callable[[Flow], bool]) -> None:
        deleted = gone = 0
        try:
            for f in flows:
                if delete(f):
                    deleted += 1
                else:
                    gone += 1
        except Exception as e:
            self.call_from_thread(self.notify, f"delete failed: {e}", severity="error")
            return
        msg = f"deleted {deleted:,} flow{'s' if deleted != 1 else ''}"
        if gone:
            msg += f" ({gone:,} already gone)"
        self.call_from_thread(self.notify, msg)

    # --- recording and replay (when the source supports them) ---------------------------

    def action_record(self) -> None:
        toggle = getattr(self.source, "toggle_recording", None)
        if toggle is None:
            self.notify("this source cannot record", severity="warning")
            return
        try:
            message = toggle()
        except Exception as e:
            self.notify(f"recording failed: {e}", severity="error")
            return
        if message:
            self.notify(str(message))
        self._render_header()

    def _replay_move(self, move: Callable[[], list[Snapshot]] | None) -> None:
        if move is None:
            self.notify("stepping works on a replay (--replay/--demo)", severity="warning")
            return
        if self._polling:
            return  # one thing at a time: the poll in flight is shown first
        if not self.paused:
            self.action_pause()
        try:
            warm = move()
        except Exception as e:
            self.notify(f"cannot move in the recording: {e}", severity="error")
            return
        # Rates need the poll before the target: feed it to a fresh sampler, then show it.
        self.sampler.reset()
        for snapshot in warm:
            self.sampler.step(snapshot)
        self.poll()

    def action_replay_step(self, step: int) -> None:
        mover = getattr(self.source, "step", None)
        self._replay_move(partial(mover, step) if mover else None)

    def action_replay_jump(self, where: int) -> None:
        mover = getattr(self.source, "jump", None)
        self._replay_move(partial(mover, where) if mover else None)
