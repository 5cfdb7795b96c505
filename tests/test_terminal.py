"""The terminal: resize storms, a 40×12 screen, NO_COLOR, and a dead SSH session (SIGHUP) — cttop
keeps drawing sensibly, and leaves the terminal as it found it.

In-process tests drive the app with Textual's `run_test` on the bundled demo recording; the
others run `cttop --demo` on a real pseudo-terminal (tests/ptykit.py), since SIGHUP, the alternate
screen and the terminal modes only exist there. No root needed.
"""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import sys
import time
from collections.abc import Iterator

import pytest
from textual.widgets import Footer

from cttop.record import demo_source
from cttop.tui.app import CttopApp
from cttop.tui.columns import fit
from cttop.tui.table import FlowTable
from tests.pilotkit import NEVER, poll, screen_text, settle
from tests.ptykit import PtyRun

SMCUP = b"\x1b[?1049h"  # enter the alternate screen
RMCUP = b"\x1b[?1049l"  # leave it
ANY_COLOUR = re.compile(rb"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|4[0-7]|9[0-7]|10[0-7]|[34]8;[25];)[0-9;]*m")


def make_app() -> CttopApp:
    # The recording loops: a storm can outlast it. Polls only when the test asks (NEVER).
    return CttopApp(demo_source(loop=True), interval=NEVER, label="demo", timer=lambda: 0.0)


def flow_lines(app: CttopApp, lines: list[str]) -> list[str]:
    """The screen lines that belong to the flow table."""
    table = app.query_one(FlowTable)
    top = table.region.y
    return lines[top : top + table.region.height]


def expected_row(table: FlowTable, index: int) -> str:
    """The text of row `index` as the table lays it out: its cells, cut or padded to their
    columns' widths, one space apart, cut to the table's width."""
    item, rate = table.row_at(index) or (None, None)
    cells = [fit(c.cell(item, rate, table.options)[0], w, c.right) for c, w in table.cols]
    return " ".join(cells)[: table.scrollable_content_region.width]


def check_screen(app: CttopApp) -> list[str]:
    """What must hold at any size: exactly one screen line per terminal row, none longer than
    the terminal (nothing wraps), and each table line holds exactly its own flow (a row never
    spills onto the next)."""
    width, height = app.size
    lines = screen_text(app)
    assert len(lines) == height, (len(lines), height)
    for line in lines:
        assert len(line) <= width, f"line of {len(line)} cells on a {width}-cell screen: {line!r}"
    table = app.query_one(FlowTable)
    x, top = table.region.x, table.region.y
    first = int(table.scroll_offset.y)
    footer = app.query_one(Footer).region
    bottom = min(top + table.region.height, height, footer.y if footer.height else height)
    for y in range(max(0, bottom - top)):  # the part on screen, not under the footer
        got = lines[top + y][x : x + table.scrollable_content_region.width].rstrip()
        if first + y < len(table.rows):
            assert got == expected_row(table, first + y).rstrip(), (y, lines)
        else:
            assert got == "", (y, lines)
    return lines


async def test_resize_storm() -> None:
    """60 resizes back to back, from 1×1 to 300×100, with polls landing in between: no
    exception; every sixth, once the app has caught up, the screen obeys check_screen; back at
    a normal size it polls and draws as before."""
    rng = random.Random(7)
    sizes = [(10, 4), (40, 12), (300, 100), (20, 6), (80, 24), (1, 1), (250, 5), (12, 90)]
    sizes += [(rng.randint(10, 300), rng.randint(4, 100)) for _ in range(52)]
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await poll(pilot)
        started = time.monotonic()
        checked = 0
        for i, size in enumerate(sizes):
            await pilot.resize_terminal(*size)
            if i % 5 == 0:
                app.poll()  # a poll in flight while the storm goes on
            await pilot.pause()
            if i % 6 == 5 and size[0] >= 10 and size[1] >= 4:  # now and then, between gusts
                await settle(pilot)
                assert app.size == size
                check_screen(app)
                checked += 1
        storm = time.monotonic() - started
        await pilot.resize_terminal(120, 36)
        await settle(pilot)
        before = app.polls
        await poll(pilot)
        assert app.polls == before + 1 and app.errors == 0
        lines = check_screen(app)
        assert len(flow_lines(app, lines)) == app.query_one(FlowTable).region.height
    assert app.return_code in (None, 0)
    assert checked >= 8
    print(f"{len(sizes)} resizes in {storm:.1f} s")


async def test_40_by_12() -> None:
    """The smallest screen an operator plausibly has: header, column titles, flows, footer —
    columns dropped, never wrapped."""
    app = make_app()
    async with app.run_test(size=(40, 12)) as pilot:
        await settle(pilot)
        await poll(pilot)
        lines = check_screen(app)
        table = app.query_one(FlowTable)
        rows = flow_lines(app, lines)
        assert table.region.height >= 3, lines  # flows are still visible
        assert all(line.split() for line in rows), lines  # and fill the table
        total = sum(w for _, w in table.cols) + len(table.cols) - 1
        assert total <= 40, [(c.title, w) for c, w in table.cols]
        titles = [c.title for c, _ in table.cols]
        assert titles[:2] == ["SOURCE", "DESTINATION"] and len(titles) >= 3, titles
        assert lines[0].strip().startswith("cttop demo"), lines[0]
        # a key still works at that size: group by, then back
        await pilot.press("g")
        await settle(pilot)
        assert app.settings.group != "none"
        check_screen(app)


# --- on a real terminal ---------------------------------------------------------------------


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TEXTUAL", "COLUMNS")}
    env.update(TERM="xterm-256color", COLORTERM="truecolor", **extra)
    return env


@pytest.fixture
def demo_pty() -> Iterator[PtyRun]:
    """`cttop --demo` on a pty, its first frame on screen."""
    run = PtyRun([sys.executable, "-m", "cttop", "--demo"], demo_env())
    try:
        assert run.wait_for(SMCUP, 30), run.text[-2000:]
        assert run.wait_for(b"tcp", 30), run.text[-2000:]
        yield run
    finally:
        run.close()


def assert_restored(run: PtyRun) -> None:
    out = bytes(run.output)
    assert "Traceback" not in run.text, run.text[-3000:]
    assert out.rfind(RMCUP) > out.rfind(SMCUP), "the alternate screen was not left"
    assert run.modes() == run.modes_before, "the terminal modes were not restored"


def test_quit_restores_the_terminal(demo_pty: PtyRun) -> None:
    """The baseline the SIGHUP test compares with: q leaves the screen and modes as found."""
    time.sleep(0.5)
    assert demo_pty.modes() != demo_pty.modes_before  # the app did change them (raw mode)
    demo_pty.write(b"q")
    assert demo_pty.finish(5)
    assert demo_pty.status == 0
    assert_restored(demo_pty)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_signal_exits_cleanly_and_restores_the_terminal(demo_pty: PtyRun, sig: int) -> None:
    time.sleep(0.5)
    sent = demo_pty.kill(sig)
    assert demo_pty.finish(3), "still running 3 s after the signal"
    assert demo_pty.exited_at is not None and demo_pty.exited_at - sent < 3
    assert_restored(demo_pty)


def test_hangup_ends_the_process(demo_pty: PtyRun) -> None:
    """The SSH connection itself dies: the terminal goes away (master closed, SIGHUP, EIO on
    every read and write). cttop must not linger — no orphan spinning on a dead terminal."""
    time.sleep(0.5)
    gone = demo_pty.hang_up()
    assert demo_pty.finish(3), "still running 3 s after the hangup"
    assert demo_pty.exited_at is not None and demo_pty.exited_at - gone < 3
    with pytest.raises(ProcessLookupError):
        os.kill(demo_pty.pid, 0)


@functools.cache
def _no_color_output(value: str = "1") -> bytes:
    """What `NO_COLOR=value cttop --demo` writes to its terminal over ~3 s (run once)."""
    run = PtyRun([sys.executable, "-m", "cttop", "--demo"], demo_env(NO_COLOR=value))
    try:
        assert run.wait_for(b"tcp", 30), run.text[-2000:]
        run.wait_for(b"\0never", 1.5)  # a few frames
        run.write(b"g")  # another view: grouped
        run.wait_for(b"\0never", 1.0)
        run.write(b"q")
        assert run.finish(5) and run.status == 0
        return bytes(run.output)
    finally:
        run.close()


def test_no_color_writes_no_colour_sequences() -> None:
    """NO_COLOR (no-color.org): not one colour sequence on the terminal — neither 24-bit nor
    256-colour nor the basic 16 — in the flow view and the grouped view; the text is all there
    (state names, the fill percentage), so nothing is lost but colour."""
    out = _no_color_output()
    found = ANY_COLOUR.findall(out)
    assert not found, f"{len(found)} colour sequences, e.g. {found[:3]}"
    assert b"tcp" in out and b"ESTABLISHED" in out and b"%)" in out  # it did draw
