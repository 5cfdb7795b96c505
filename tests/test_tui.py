"""Pilot tests of the TUI: every key, against the bundled demo replay or a fake source fed with
the demo's real flows. They assert on state (rows, settings, screens, header text), not pixels;
tests/test_tui_snapshots.py covers how it looks.
"""

from __future__ import annotations

import inspect
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from textual.widgets import Input, OptionList

from cttop.conntrack.const import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from cttop.sampler import FlowRows, Rate, Sample
from cttop.tui import app as app_module
from cttop.tui.app import GROUP_CYCLE, INTERVALS, STATE_CYCLE, CttopApp, ViewSettings
from cttop.tui.keys import KEYS
from cttop.tui.screens import ConfirmScreen, DetailScreen, HelpScreen, SortScreen
from cttop.tui.table import ColumnHeader
from cttop.view import SORT_KEYS, GroupRow, apply
from tests.tuikit import (
    DeletingSource,
    FakeSource,
    RecordingSource,
    clock_text,
    demo_snapshots,
    flows,
    groups,
    header,
    make_app,
    poll,
    press,
    ready,
    replay,
    selected,
    settle,
    table,
    utc,
)

SIZE = (120, 36)


@pytest.fixture(autouse=True)
def _utc() -> Iterator[None]:
    with utc():
        yield


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every notification the app raises (they still show)."""
    seen: list[str] = []
    real = CttopApp.notify

    def notify(self: CttopApp, message: str, *args: Any, **kwargs: Any) -> None:
        seen.append(str(message))
        real(self, message, *args, **kwargs)

    monkeypatch.setattr(CttopApp, "notify", notify)
    return seen


def rates(app: CttopApp) -> list[Rate | None]:
    rows = table(app).rows
    assert isinstance(rows, FlowRows)
    return list(rows.rates)


def rates_known(app: CttopApp) -> int:
    return sum(r is not None for r in rates(app))


# --- the first screen -------------------------------------------------------------------------


async def test_demo_polls_show_flows_rates_and_header() -> None:
    source = replay()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.polls == 1
        assert all(r is None for r in rates(app))
        assert header(app)[1].count("new -")  # nothing to compare with yet
        await poll(pilot)
        rows = flows(app)
        assert len(rows) == len(demo_snapshots()[1].flows) == 307
        assert rates_known(app) > 250
        top = rates(app)[0]
        assert top is not None and top.total_bytes_per_s > 100_000  # sorted by rate, busiest first
        l1, l2, l3, l4 = header(app)
        assert l1.startswith("cttop demo")
        assert "307/262,144 (0.1%)" in l1
        assert "replay ×1, poll 0 ms" in l1
        assert clock_text(source.poll_time(1)) in l1  # the recording's own time
        assert l2.startswith("↑ 259.6KB/s  ↓ 2.0MB/s  │  new 6.0/s  gone 8.0/s  │  tcp 215")
        assert "tcp 215 (ESTABLISHED 158, TIME_WAIT 40, SYN_SENT 12)" in l2
        assert "↑ 259.6KB/s  ↓ 2.0MB/s" in l2
        assert "new 6.0/s  gone 8.0/s" in l2
        assert l3 == "filter none  │  sort rate ▼  │  group none  │  307 flows"
        assert l4 == ""


async def test_quit() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_help_scrolls_at_80x24() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await press(pilot, "question_mark")
        body = app.screen.query_one("#help-body")
        assert body.has_focus and body.max_scroll_y > 0
        await press(pilot, "end")
        assert body.scroll_y == body.max_scroll_y


@pytest.mark.parametrize("key", ["question_mark", "f1"])
async def test_help_opens_and_closes(key: str) -> None:
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = app.export_screenshot()
        for bid, *_ in KEYS:  # every key, with the id a --keymap uses
            assert f">{bid}<" in text or f">{bid}&#160;" in text, bid
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press(key)
        await pilot.press(key)  # the same key closes it
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


# --- filtering ----------------------------------------------------------------------------


async def test_filter_bar_applies_as_you_type_and_esc_clears() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        everything = len(flows(app))
        bar = app.query_one("#filter-bar", Input)
        assert not bar.display
        await press(pilot, "slash")
        assert bar.display and bar.has_focus
        await press(pilot, *"dport:44")
        assert app.settings.expr == "dport:44"
        assert flows(app) == []
        await press(pilot, "3")  # one more key, no Enter: applied as typed
        assert app.settings.expr == "dport:443"
        shown = flows(app)
        assert len(shown) == 111 and all(f.orig.dport == 443 for f in shown)
        assert header(app)[2].startswith("filter dport:443  │")
        assert "111 flows (111 of 307 flows)" in header(app)[2]

        await press(pilot, "space", *"not", "space", *"src:")  # half typed: invalid, kept
        assert bar.has_class("bad-filter")
        assert app.settings.expr == "dport:443"
        await press(pilot, *"::1")
        assert not bar.has_class("bad-filter")
        assert app.settings.expr == "dport:443 not src:::1"
        assert all(f.orig.dport == 443 and f.orig.src != "::1" for f in flows(app))

        await press(pilot, "escape")
        assert not bar.display and table(app).has_focus
        assert bar.value == "" and app.settings.expr == ""
        assert len(flows(app)) == everything


async def test_filter_bar_enter_keeps_the_filter() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "slash", *"udp", "enter")
        bar = app.query_one("#filter-bar", Input)
        assert not bar.display and table(app).has_focus
        assert app.settings.expr == "udp"
        assert flows(app) and all(f.protonum == IPPROTO_UDP for f in flows(app))


async def test_enter_on_a_bad_filter_keeps_the_bar_open() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "slash", *"udp dport:")
        bar = app.query_one("#filter-bar", Input)
        assert bar.has_class("bad-filter")
        # the last good prefix stays applied
        assert app.settings.expr.startswith("udp") and app.settings.expr != "udp dport:"
        await press(pilot, "enter")
        assert bar.display and bar.has_class("bad-filter")


PROTO_MATCH = {
    "tcp": lambda p: p == IPPROTO_TCP,
    "udp": lambda p: p == IPPROTO_UDP,
    "icmp": lambda p: p in (IPPROTO_ICMP, IPPROTO_ICMPV6),
    "other": lambda p: p not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6),
}


async def test_p_cycles_protocols() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        everything = flows(app)
        counts = {}
        for proto in ("tcp", "udp", "icmp", "other"):
            await press(pilot, "p")
            assert app.settings.proto == proto
            shown = flows(app)
            assert all(PROTO_MATCH[proto](f.protonum) for f in shown)
            counts[proto] = len(shown)
            assert header(app)[2].startswith(
                "filter " + ("other protocols" if proto == "other" else proto)
            )
        # the demo: tcp 215, udp 82, icmp 9 + icmpv6 1, nothing else
        assert counts == {"tcp": 215, "udp": 82, "icmp": 10, "other": 0}
        await press(pilot, "p")
        assert app.settings.proto is None
        assert flows(app) == everything


async def test_s_cycles_states() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        seen = {}
        for state in STATE_CYCLE[1:]:
            await press(pilot, "s")
            assert app.settings.state == state
            shown = flows(app)
            assert all(f.state_name == state for f in shown)
            seen[state] = len(shown)
            assert f"state {state}" in header(app)[2]
        assert seen["ESTABLISHED"] == 158 and seen["SYN_SENT"] == 12 and seen["TIME_WAIT"] == 40
        await press(pilot, "s")
        assert app.settings.state is None
        assert len(flows(app)) == 307


async def test_protocol_and_state_filters_combine() -> None:
    app = make_app(settings=ViewSettings(expr="dport:443"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "t", "s", "s", "s")  # tcp, ESTABLISHED, on top of the expression
        assert app.settings == ViewSettings(proto="tcp", state="ESTABLISHED", expr="dport:443")
        shown = flows(app)
        assert shown
        assert all(
            f.protonum == IPPROTO_TCP and f.state_name == "ESTABLISHED" and f.orig.dport == 443
            for f in shown
        )
        assert header(app)[2].startswith("filter tcp · state ESTABLISHED · dport:443  │")


@pytest.mark.parametrize(("key", "proto"), [("t", "tcp"), ("u", "udp"), ("i", "icmp")])
async def test_quick_protocol_toggles(key: str, proto: str) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, key)
        assert app.settings.proto == proto
        assert flows(app) and all(PROTO_MATCH[proto](f.protonum) for f in flows(app))
        await press(pilot, key)
        assert app.settings.proto is None
        assert len(flows(app)) == 307
        other = "u" if key != "u" else "t"
        await press(pilot, other, key)  # from another protocol straight to this one
        assert app.settings.proto == proto


# --- sorting ------------------------------------------------------------------------------


def ordered(app: CttopApp, sort: str, reverse: bool = False) -> list[Any]:
    """The rows the view would give for the current sample, sorted so."""
    assert app.shown is not None
    result = apply(
        app.shown.sample.rows,
        filter=app.settings.predicate(),
        sort=sort,
        reverse=reverse,
        group=app.settings.group,
    )
    rows = result.rows
    return list(rows.flows) if isinstance(rows, FlowRows) else rows


async def test_sort_keys_step_columns_and_reverse() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        by_rate = flows(app)
        assert by_rate == ordered(app, "rate")
        await press(pilot, "greater_than_sign")  # rate is shown as the two rate columns
        assert app.settings.sort == "reply_rate"
        assert flows(app) == ordered(app, "reply_rate") != by_rate
        reply = [r.reply_bytes_per_s for r in rates(app) if r is not None]
        assert reply == sorted(reply, reverse=True)
        await press(pilot, "greater_than_sign")
        assert app.settings.sort == "packets"
        await press(pilot, "less_than_sign", "less_than_sign")
        assert app.settings.sort == "orig_rate"
        assert flows(app) == ordered(app, "orig_rate")
        await press(pilot, "less_than_sign")
        assert app.settings.sort == "dst"
        dsts = flows(app)
        assert dsts == ordered(app, "dst")
        addresses = [ipaddress.ip_address(f.orig.dst) for f in dsts]
        assert addresses == sorted(addresses, key=lambda a: (a.version, int(a)))
        await press(pilot, "r")
        assert app.settings.reverse
        assert flows(app) == ordered(app, "dst", reverse=True) != dsts
        assert "sort dst ▼" in header(app)[2]
        await press(pilot, "r")
        assert not app.settings.reverse
        assert "sort dst ▲" in header(app)[2]


async def test_sort_step_wraps_over_the_visible_columns() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        visible = [c.sort for c, _w in table(app).cols if c.sort]
        assert visible == ["proto", "src", "dst", "orig_rate", "reply_rate"]
        await press(pilot, *["greater_than_sign"] * 2)
        assert app.settings.sort == "proto"  # reply_rate → wraps to the first
        assert [f.proto for f in flows(app)] == sorted(f.proto for f in flows(app))


async def test_f6_chooses_the_sort_key() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "f6")
        assert isinstance(app.screen, SortScreen)
        options = app.screen.query_one(OptionList)
        assert options.highlighted == list(SORT_KEYS).index("rate")
        await press(pilot, "escape")
        assert not isinstance(app.screen, SortScreen)
        assert app.settings.sort == "rate"
        await press(pilot, "f6", "down", "down", "down", "enter")
        assert app.settings.sort == "bytes"
        assert flows(app) == ordered(app, "bytes")
        totals = [(f.orig_bytes or 0) + (f.reply_bytes or 0) for f in flows(app)]
        assert totals == sorted(totals, reverse=True)


async def test_clicking_a_column_title_sorts_and_again_reverses() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        cols = app.query_one(ColumnHeader).cols
        x = 0
        for col, width in cols:
            if col.id == "bytes":
                break
            x += width + 1
        else:
            raise AssertionError("no BYTES column at this width")
        assert await pilot.click(ColumnHeader, offset=(x + 2, 0))
        await settle(pilot)
        assert app.settings.sort == "bytes" and not app.settings.reverse
        assert flows(app) == ordered(app, "bytes")
        assert await pilot.click(ColumnHeader, offset=(x + 2, 0))
        await settle(pilot)
        assert app.settings.sort == "bytes" and app.settings.reverse
        assert flows(app) == ordered(app, "bytes", reverse=True)


# --- grouping and detail ------------------------------------------------------------------


async def test_g_cycles_group_by() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for mode in GROUP_CYCLE[1:]:
            await press(pilot, "g")
            assert app.settings.group == mode
            rows = groups(app)
            assert rows and all(isinstance(g, GroupRow) and g.group == mode for g in rows)
            assert sum(g.flows for g in rows) == 307
            assert f"group {mode}  │  {len(rows)} groups" in header(app)[2]
        await press(pilot, "g")
        assert app.settings.group == "none"
        assert len(flows(app)) == 307


async def test_group_by_dport_is_sorted_by_rate() -> None:
    app = make_app(settings=ViewSettings(group="dport"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        rows = groups(app)
        labels = {g.label: g.flows for g in rows}
        assert labels["tcp/443 (https)"] == 111
        assert labels["udp/53 (domain)"] == 68
        totals = [g.rate.total_bytes_per_s if g.rate else -1 for g in rows]
        assert totals == sorted(totals, reverse=True)


async def test_enter_shows_the_selected_flow() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "down", "down")
        flow = selected(app)
        assert flow == flows(app)[2]
        await press(pilot, "enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        assert screen.flow == flow
        assert screen.rate == rates(app)[2]
        assert len(screen.history) >= 2
        await poll(pilot)  # refreshed while open, same flow
        assert screen.flow.key == flow.key and not screen.gone
        await press(pilot, "escape")
        assert not isinstance(app.screen, DetailScreen)
        assert app.detail is None


async def test_enter_opens_one_detail_screen() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "enter")
        assert [type(s) for s in app.screen_stack].count(DetailScreen) == 1
        await press(pilot, "escape")
        assert not isinstance(app.screen, DetailScreen)


async def test_enter_on_a_group_adds_its_terms_once() -> None:
    app = make_app(settings=ViewSettings(group="proto"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "enter")
        assert app.settings.expr == "proto:6"


async def test_detail_shows_everything_at_80x24() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await press(pilot, "enter")
        body = app.screen.query_one("#detail-body")
        await press(pilot, "end")  # scrolled to the end, if it can scroll
        assert body.max_scroll_y == 0 or body.scroll_y == body.max_scroll_y


async def test_detail_says_when_the_flow_is_gone() -> None:
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        flow = selected(app)
        await press(pilot, "enter")
        source.deleted.append(flow)  # deleted behind cttop's back
        await poll(pilot)
        screen = app.screen
        assert isinstance(screen, DetailScreen) and screen.gone
        assert screen.flow == flow


async def test_enter_on_a_group_drills_down() -> None:
    app = make_app(settings=ViewSettings(group="src"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        rows = groups(app)
        index = next(i for i, g in enumerate(rows) if g.key == "::1")
        for _ in range(index):
            await press(pilot, "down")
        assert selected(app).key == "::1"
        await press(pilot, "enter")
        assert app.settings.group == "none"
        assert app.settings.expr == "src:::1"  # once: Enter is handled once
        assert app.query_one("#filter-bar", Input).value == app.settings.expr
        shown = flows(app)
        assert len(shown) == rows[index].flows == 16
        assert all(f.orig.src == "::1" for f in shown)


async def test_drill_down_by_service_keeps_the_filter() -> None:
    app = make_app(settings=ViewSettings(group="dport", expr="not src:::1"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        https = next(i for i, g in enumerate(groups(app)) if g.label == "tcp/443 (https)")
        want = groups(app)[https].flows
        await press(pilot, *["down"] * https, "enter")
        assert app.settings.expr == "not src:::1 proto:6 dport:443"
        assert len(flows(app)) == want
        assert all(f.orig.dport == 443 and f.orig.src != "::1" for f in flows(app))


# --- pause, interval, units, names --------------------------------------------------------


async def test_space_pauses_data_but_not_the_clock() -> None:
    source = FakeSource()
    app = make_app(source, interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):  # polling by itself
            if app.polls >= 2:
                break
            await pilot.pause(0.02)
        await press(pilot, "space")
        assert app.paused
        assert "PAUSED" in header(app)[0]
        calls, rows = source.calls, table(app).rows
        source.now = 1_000_000.0
        await pilot.pause(1.3)  # > the 1 s clock tick, many intervals
        await settle(pilot)
        assert source.calls == calls  # no poll while paused
        assert table(app).rows is rows
        assert clock_text(1_000_000.0) in header(app)[0]  # the clock kept running
        await press(pilot, "space")
        assert not app.paused
        assert "PAUSED" not in header(app)[0]
        await pilot.pause(0.3)
        await settle(pilot)
        assert source.calls > calls


async def test_plus_minus_change_the_interval() -> None:
    app = make_app(FakeSource(), interval=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press(pilot, "plus")
        assert app.interval == 0.5
        assert "every 0.5s" in header(app)[0]
        await press(pilot, "equals_sign")
        assert app.interval == 0.25
        await press(pilot, "plus")
        assert app.interval == 0.25  # the shortest
        await press(pilot, *["minus"] * 4)
        assert app.interval == 3.0
        assert "every 3s" in header(app)[0]
        await press(pilot, *["minus"] * 10)
        assert app.interval == INTERVALS[-1]


async def test_minus_never_shortens_and_plus_never_lengthens() -> None:
    app = make_app(FakeSource(), interval=60.0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press(pilot, "minus")
        assert app.interval >= 60.0
        app.interval = 0.1
        await press(pilot, "plus")
        assert app.interval <= 0.1


async def test_b_switches_bits_and_bytes() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "↑ 259.6KB/s  ↓ 2.0MB/s" in header(app)[1]
        rate = rates(app)[0]
        assert rate is not None
        col = next(c for c, _w in table(app).cols if c.id == "reply_rate")
        assert col.cell(flows(app)[0], rate, table(app).options)[0].endswith("B/s")
        await press(pilot, "b")
        assert app.bits
        assert "↑ 2.1Mb/s" in header(app)[1]
        assert col.cell(flows(app)[0], rate, table(app).options)[0].endswith("b/s")
        await press(pilot, "b")
        assert not app.bits
        assert "↑ 259.6KB/s" in header(app)[1]


def cell(app: CttopApp, column: str, index: int) -> str:
    row = table(app).row_at(index)
    assert row is not None
    item, rate = row
    col = next(c for c, _w in table(app).cols if c.id == column)
    return col.cell(item, rate, table(app).options)[0]


async def test_n_resolves_names_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    asked: list[str] = []

    def gethostbyaddr(addr: str) -> tuple[str, list[str], list[str]]:
        asked.append(addr)
        if addr == "127.0.0.1":
            raise socket.herror(1, "Unknown host")
        release.wait(5)  # a slow DNS server
        return (f"h{addr.replace('.', '-').replace(':', '_')}.lab", [], [addr])

    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        src = flows(app)[0].orig.src
        assert src is not None
        name = f"h{src.replace('.', '-').replace(':', '_')}.lab"
        started = time.perf_counter()
        await press(pilot, "n")
        assert app.resolver is not None
        await press(pilot, "b")  # the UI answers while lookups hang
        assert app.bits
        assert time.perf_counter() - started < 2
        assert cell(app, "src", 0).startswith(src)  # not resolved yet
        release.set()
        for _ in range(100):
            await pilot.pause(0.02)
            if cell(app, "src", 0).startswith(name):
                break
        assert cell(app, "src", 0).startswith(name)
        assert asked.count(src) == 1  # each address asked once
        await press(pilot, "n")
        assert app.resolver is None
        assert cell(app, "src", 0).startswith(src)


# --- deleting -----------------------------------------------------------------------------


async def test_d_deletes_the_selected_flow_after_yes(notes: list[str]) -> None:
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "down", "down")
        flow = selected(app)
        for no in ("n", "escape"):
            await press(pilot, "d")
            assert isinstance(app.screen, ConfirmScreen)
            assert app.screen.question.startswith("Delete 1 flow?")
            assert f"{flow.proto} {flow.orig.src}" in app.screen.question
            await press(pilot, no)
            assert not isinstance(app.screen, ConfirmScreen)
            assert source.deleted == []
        await press(pilot, "d", "y")
        assert source.deleted == [flow]
        assert "deleted 1 flow" in notes
        await poll(pilot)
        assert flow.key not in {f.key for f in flows(app)}


async def test_d_cancel_button_has_the_focus() -> None:
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "d", "enter")  # Enter presses the focused button: Cancel
        assert not isinstance(app.screen, ConfirmScreen)
        assert source.deleted == []


async def test_shift_d_deletes_every_matching_flow_after_yes(notes: list[str]) -> None:
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "u")
        udp = flows(app)
        assert len(udp) == 82
        for no in ("n", "escape"):
            await press(pilot, "D")
            assert isinstance(app.screen, ConfirmScreen)
            assert app.screen.question == "Delete all 82 flows matching “udp”?"
            await press(pilot, no)
            assert source.deleted == []
        await press(pilot, "D", "y")
        assert source.deleted == udp
        assert "deleted 82 flows" in notes
        await poll(pilot)
        assert not {f.key for f in udp} & {f.key for f in flows(app)}


async def test_shift_d_without_a_filter_says_all(notes: list[str]) -> None:
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "D")
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.question == "No filter is set: delete ALL 307 flows in the table?"
        await press(pilot, "n")
        assert source.deleted == []
        await press(pilot, "g", "D")  # grouped: refused
        assert not isinstance(app.screen, ConfirmScreen)
        assert "leave the grouped view to delete flows" in notes
        await press(pilot, "d")
        assert "select a flow first (not a group)" in notes
        assert source.deleted == []


async def test_a_clock_tick_while_the_app_is_taken_down_does_nothing() -> None:
    """The header's clock is a timer: at exit it can fire after the screen's widgets are
    gone (seen in CI on a loaded machine), and must not fail the app then."""
    app = make_app(DeletingSource())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for child in list(app.screen.children):
            await child.remove()
        app._tick_clock()


async def test_shift_d_right_after_a_filter_key_deletes_only_the_matching_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)

        def slow_apply(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)  # the view of a 250k-flow table takes about that long
            return apply(*args, **kwargs)

        monkeypatch.setattr(app_module, "apply", slow_apply)
        await pilot.press("u", "D")  # a fast typist: D before the udp view is on screen
        await pilot.pause()
        # The dialog waits for the view, computed off the UI thread (free meanwhile).
        assert not isinstance(app.screen, ConfirmScreen)
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert source.deleted
        assert all(f.protonum == IPPROTO_UDP for f in source.deleted), (
            f"deleted {len(source.deleted)} flows, "
            f"{sum(f.protonum != IPPROTO_UDP for f in source.deleted)} of them not udp"
        )


async def test_shift_d_twice_while_its_flows_are_found_opens_one_dialog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second D while the first one's flows are still being computed off the UI thread is
    the same request, not a second dialog (which a y each would delete every flow twice)."""
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)

        def slow_apply(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)
            return apply(*args, **kwargs)

        monkeypatch.setattr(app_module, "apply", slow_apply)
        await pilot.press("u", "D", "D")
        await settle(pilot)
        assert sum(isinstance(s, ConfirmScreen) for s in app.screen_stack) == 1
        await pilot.press("y")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert source.deleted
        assert len(source.deleted) == len(set(source.deleted))
        assert all(f.protonum == IPPROTO_UDP for f in source.deleted)


@pytest.mark.parametrize(
    ("interval", "dump", "stretched"), [(1.0, 0.7, 2.0), (2.0, 1.7, 4.0), (0.25, 0.2, 0.5)]
)
async def test_a_slow_dump_stretches_the_interval_to_whole_seconds_from_the_polls_start(
    monkeypatch: pytest.MonkeyPatch, interval: float, dump: float, stretched: float
) -> None:
    """A poll taking more than half the interval stretches it (the header says so), to whole
    seconds (whole intervals below one second) — polls in step with the ticks of the kernel's
    timeouts find idle entries as they left them — counted from the poll's start, not from
    when its view was on screen."""
    clock = [100.0]

    class SlowDump(FakeSource):
        def snapshot(self) -> Any:
            clock[0] += dump
            return super().snapshot()

    app = CttopApp(
        SlowDump(), interval=interval, label="demo", timer=lambda: clock[0], autopoll=True
    )
    waits: list[float] = []
    monkeypatch.setattr(app, "set_timer", lambda delay, callback: waits.append(delay))
    show = app._show

    def slow_show(shown: Any) -> None:
        show(shown)
        clock[0] += 0.2  # drawing it

    monkeypatch.setattr(app, "_show", slow_show)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.polls == 1 and app.stretched
        assert app.effective_interval == stretched  # twice the dump, rounded up
        assert waits == [pytest.approx(stretched - dump - 0.2)]  # after the poll started
        if interval == 1.0:
            assert "every 1s → 2.0s" in header(app)[0]


async def test_a_key_gives_up_the_polls_view_of_the_settings_it_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key pressed while a poll computes its view (0.3 s for a bare word at 250k flows) is
    not kept waiting for a view no longer wanted: the poll gives it up at its next pass and
    computes the view of the new settings; no poll view of stale settings runs to its end."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        entered = threading.Event()
        finished: list[bool] = []  # per poll view computed: were its settings still current?
        compute = app._compute

        def slow_compute(*args: Any) -> Any:
            in_poll = any(f.function == "_poll_worker" for f in inspect.stack())
            if in_poll:
                entered.set()
                time.sleep(0.3)
            shown = compute(*args)
            if in_poll:
                finished.append(args[1] is app.settings)
            return shown

        while app._polling or not app._view_idle.is_set():
            await pilot.pause(0.01)
        monkeypatch.setattr(app, "_compute", slow_compute)
        polls = app.polls
        app.poll()
        while not entered.is_set():
            await pilot.pause(0.01)
        await pilot.press("u")
        while app.polls == polls:
            await pilot.pause(0.01)
        await settle(pilot)
        assert finished and all(finished), finished
        assert app.settings.proto == "udp" and app.shown.settings == app.settings


async def test_a_key_right_after_a_view_is_shown_starts_its_own_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys typed faster than the screen refreshes (a filter typed): a key that comes after
    the last key's view was handed to the screen, before the screen has drawn it, starts its
    own view at once, not after the refresh (up to 60 ms a key at 250k flows); the poll
    worker stays paused until the last view is drawn; the screen ends with the settings as
    they are."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        while app._polling or not app._view_idle.is_set():
            await pilot.pause(0.01)
        app.autopoll = False
        started: list[Any] = []
        view_worker = app._view_worker

        def spy_worker(sample: Any, settings: Any, key: Any) -> Any:
            started.append(settings)
            return view_worker(sample, settings, key)

        after: list[tuple[int, bool]] = []
        view_done = app._view_done

        def spy_done(shown: Any) -> None:
            view_done(shown)
            if not after:  # r's view is shown, not drawn yet: the next key comes now
                app._change(proto="tcp")
            after.append((len(started), app._view_idle.is_set()))

        monkeypatch.setattr(app, "_view_worker", spy_worker)
        monkeypatch.setattr(app, "_view_done", spy_done)
        await pilot.press("r")
        while len(after) < 2:
            await pilot.pause(0.01)
        await settle(pilot)
        assert after[0] == (2, False)  # t's view started; the poll still waits
        assert [s.proto for s in started] == [None, "tcp"]
        assert app._view_idle.is_set()
        assert app.settings.reverse and app.settings.proto == "tcp"
        assert app.shown.settings == app.settings


async def test_a_keys_view_of_a_sample_no_longer_shown_is_not_shown() -> None:
    """A key's view that ends after a later sample was shown is dropped, even when that
    sample's step is lower (a replay's jump starts the sampler over): the view on screen stays,
    and the poll worker may go on."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.autopoll = False
        await settle(pilot)
        current = app.shown
        assert current is not None
        before = current.sample
        jumped_from = Sample(before.snapshot, before.rows, None, before.totals, before.step + 5)
        stale = app_module.Shown(jumped_from, app.settings, current.result, None)
        app._view_running = True  # as while a key's view is computed
        app._view_idle.clear()
        app._view_done(stale)
        assert app.shown is current
        assert app._view_idle.is_set()


async def test_polls_do_not_free_the_sample_d_is_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls go on while D finds its flows off the UI thread; the sample it reads is not freed
    under it (two polls retire and free a sample), so the dialog names every flow."""
    source = DeletingSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        gate = threading.Event()
        held: list[bool] = []
        compute = app._compute

        def compute_then_hold(*args: Any, **kwargs: Any) -> Any:
            result = compute(*args, **kwargs)
            if any(f.function == "_matching_worker" for f in inspect.stack()):
                held.append(True)
                gate.wait(10)  # computed, not yet handed to the dialog
            return result

        def slow_apply(*args: Any, **kwargs: Any) -> Any:
            if any(f.function == "_view_worker" for f in inspect.stack()):
                time.sleep(0.3)  # the r view is not on screen when D comes
            return apply(*args, **kwargs)

        sample = app.shown.sample
        everything = len(sample.rows)
        monkeypatch.setattr(app, "_compute", compute_then_hold)
        monkeypatch.setattr(app_module, "apply", slow_apply)
        await pilot.press("r", "D")  # reversed: the view on screen is not the one D needs yet
        for _ in range(2):  # two polls: the first retires D's sample, the second frees it
            while app._polling or not app._view_idle.is_set():
                await pilot.pause(0.01)
            polls = app.polls
            app.poll()
            while app.polls == polls:
                await pilot.pause(0.01)
        assert app.shown.sample is not sample and held
        gate.set()
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert f"ALL {everything:,} flows" in app.screen.question
        await pilot.press("y")
        await settle(pilot)
        assert len(source.deleted) == everything


async def test_read_only_refuses_to_delete(notes: list[str]) -> None:
    source = DeletingSource()
    app = make_app(source, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "d")
        assert not isinstance(app.screen, ConfirmScreen)
        await press(pilot, "D")
        assert not isinstance(app.screen, ConfirmScreen)
        await press(pilot, "y")
        assert source.deleted == []
        assert notes.count("read-only: deleting is disabled (--read-only)") == 2


async def test_a_replay_cannot_delete(notes: list[str]) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "d")
        assert not isinstance(app.screen, ConfirmScreen)
        assert "this source cannot delete flows (a recording?)" in notes


# --- replay and recording -----------------------------------------------------------------


async def test_replay_step_keys_pause_and_move_one_poll() -> None:
    source = replay()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert source.position == 1
        await press(pilot, "right_square_bracket")
        assert app.paused and source.position == 2
        assert clock_text(source.poll_time(2)) in header(app)[0]
        await press(pilot, "right_square_bracket", "right_square_bracket")
        assert source.position == 4
        await press(pilot, "left_square_bracket")
        assert source.position == 3
        assert app.paused
        assert len(flows(app)) == len(source[3].flows)
        assert clock_text(source.poll_time(3)) in header(app)[0]


async def test_replay_step_back_keeps_rates() -> None:
    app = make_app(replay())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "right_square_bracket", "left_square_bracket")
        assert rates_known(app) > 250


async def test_replay_jump_keys_go_to_start_and_end() -> None:
    source = replay()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "right_curly_bracket")
        assert app.paused
        assert source.position == len(source) - 1
        assert clock_text(source.end_time) in header(app)[0]
        await press(pilot, "left_curly_bracket")
        assert source.position == 0
        assert clock_text(source.start_time) in header(app)[0]
        assert len(flows(app)) == len(source[0].flows)


async def test_replay_jump_keeps_rates() -> None:
    app = make_app(replay())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "right_curly_bracket")
        assert rates_known(app) > 250
        await press(pilot, "left_curly_bracket")
        assert rates_known(app) == 0  # the first poll has nothing before it
        await press(pilot, "right_square_bracket")
        assert rates_known(app) > 250


async def test_replay_keys_on_a_live_source_say_so(notes: list[str]) -> None:
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "right_square_bracket", "left_curly_bracket")
        assert not app.paused
        assert notes == ["stepping works on a replay (--replay/--demo)"] * 2


async def test_replay_pauses_at_the_end(notes: list[str]) -> None:
    source = replay()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "right_curly_bracket", "space")  # jump to the end, play on
        assert app.paused
        assert notes[-1] == "end of the recording: [ ] step, { } jump to start/end"
        assert source.position == len(source) - 1 and rates_known(app) > 250
        assert app.error is None and header(app)[3] == ""


async def test_record_on_a_source_without_recording_says_so(notes: list[str]) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "R")
        assert notes == ["this source cannot record"]


async def test_record_toggles_on_a_recording_source(notes: list[str]) -> None:
    app = make_app(RecordingSource())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "R")
        assert notes == ["recording to lab.pcap"]
        assert "● REC lab.pcap" in header(app)[0]
        await press(pilot, "R")
        assert notes[-1] == "recorded 2 polls to lab.pcap"
        assert "REC" not in header(app)[0]


# --- errors, selection, keymap ------------------------------------------------------------


async def test_snapshot_errors_show_in_the_header_and_polling_goes_on() -> None:
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        rows = table(app).rows
        source.fail = [OSError("netlink: ENOBUFS"), RuntimeError()]
        await poll(pilot)
        assert header(app)[3] == "error: netlink: ENOBUFS — still polling"
        assert table(app).rows is rows  # the last good sample stays on screen
        await poll(pilot)
        assert header(app)[3] == "error: RuntimeError (2 so far) — still polling"
        await poll(pilot)
        assert app.error is None and header(app)[3] == ""
        assert len(flows(app)) == len(source.snapshots[2].flows)


async def test_polling_goes_on_by_itself_after_an_error() -> None:
    source = FakeSource()
    source.fail = [OSError("boom")]
    app = make_app(source, interval=0.05, autopoll=True)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):
            await pilot.pause(0.02)
            if source.calls >= 3:
                break
        await settle(pilot)
        assert app.errors == 1 and app.polls >= 2
        assert app.error is None


async def test_the_top_row_is_selected_until_the_cursor_moves() -> None:
    app = make_app(FakeSource())
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for _ in range(3):
            top = flows(app)[0]
            assert table(app).cursor == 0 and selected(app) == top
            await poll(pilot)
        assert selected(app).key != top.key  # the busiest flow changed, the cursor stayed


async def test_the_selected_flow_stays_selected_across_polls() -> None:
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, *["down"] * 5)
        key = selected(app).key
        moved = False
        for _ in range(3):
            before = table(app).cursor
            await poll(pilot)
            assert selected(app).key == key
            moved |= table(app).cursor != before
        assert moved, "the test needs a flow whose rank changes"
        await press(pilot, "t")  # and across a change of the view
        assert selected(app).key == key


async def test_table_navigation_keys() -> None:
    app = make_app()
    async with app.run_test(size=(120, 24)) as pilot:
        await ready(pilot)
        t = table(app)
        await press(pilot, "j", "j", "k")
        assert t.cursor == 1
        await press(pilot, "end")
        assert t.cursor == 306 and t.scroll_offset.y > 0
        await press(pilot, "home")
        assert t.cursor == 0 and t.scroll_offset.y == 0
        await press(pilot, "pagedown")
        assert t.cursor == t.size.height - 1
        await press(pilot, "pageup", "up")
        assert t.cursor == 0


async def test_command_palette_sets_the_view() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "ctrl+p", *"group by dport")
        found = app.screen.query_one(OptionList)
        for _ in range(100):  # the palette searches in the background
            if found.option_count and "Group by dport" in str(found.get_option_at_index(0).prompt):
                break
            await pilot.pause(0.02)
        await press(pilot, "enter")
        assert app.settings.group == "dport"
        assert groups(app)


async def test_keymap_remaps_by_id() -> None:
    app = make_app(keymap={"quit": "x", "pause": "z"})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await press(pilot, "q", "space")
        assert app.return_code is None and not app.paused
        await press(pilot, "z")
        assert app.paused
        await pilot.press("x")
        await pilot.pause()
    assert app.return_code == 0


async def test_keys_and_clicks_put_off_the_full_collection() -> None:
    """The heap policy's full collection (half a second at 250k flows) waits while the
    operator presses keys or clicks: the app tells it when input last came."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.heap.quiet is not None
        app._last_input = time.monotonic() - app_module.QUIET_AFTER - 1
        assert app.heap.quiet()
        await press(pilot, "j")
        assert not app.heap.quiet()
        app._last_input = time.monotonic() - app_module.QUIET_AFTER - 1
        await pilot.mouse_down("#flows")
        assert not app.heap.quiet()


def test_the_selection_is_found_by_its_whole_key() -> None:
    """The row of the selected flow in a new view: by id first (lazily, stopping at the first
    whole match), then zone and original tuple, since ids are 32-bit hashes that repeat."""
    from cttop.tui.app import _find

    snap = demo_snapshots()[1]
    base = list(snap.flows.values())[:50]
    twin = base[7]._replace(orig=base[3].orig._replace(sport=1), id=base[3].id)  # id repeats
    unnamed = base[9]._replace(id=None)
    fs = [*base[:20], twin, *base[20:], unnamed]
    rows = apply(FlowRows(fs, [None] * len(fs)), sort="src").rows
    assert isinstance(rows, FlowRows)
    for i, f in enumerate(rows.flows):
        assert _find(apply(rows, sort="src"), f.key) == rows.flows.index(f) == i
    unknown_id = max(f.id or 0 for f in fs) + 1
    assert _find(apply(rows, sort="src"), (twin.zone, twin.orig, unknown_id)) is None
    assert _find(apply(rows, sort="src"), None) is None
    assert _find(apply(rows, sort="src", group="src"), base[0].key) is None


def test_the_selection_is_found_by_identity_in_its_own_sample() -> None:
    """The selected row as last shown is found by identity; a copy of it (the same key, decoded
    again in a later sample) by its key; and in the sample it came from, a row that is not
    there by identity is not there at all (no search by key then)."""
    from cttop.tui.app import _find

    snap = demo_snapshots()[1]
    fs = list(snap.flows.values())[:40]
    rows = apply(FlowRows(fs, [None] * len(fs)), sort="src").rows
    assert isinstance(rows, FlowRows)
    result = apply(rows, sort="dport")
    assert isinstance(result.rows, FlowRows)
    for f in fs:
        at = result.rows.flows.index(f)
        assert _find(result, f.key, f, same=True) == at
        again = f._replace(orig_bytes=(f.orig_bytes or 0) + 1)  # a later sample's copy
        assert again is not f
        assert _find(result, f.key, again, same=False) == at
        assert _find(result, f.key, again, same=True) is None
    tcp_only = apply(rows, filter="tcp")
    udp = next(f for f in fs if f.protonum == IPPROTO_UDP)
    assert _find(tcp_only, udp.key, udp, same=True) is None
    assert _find(tcp_only, udp.key, udp, same=False) is None
