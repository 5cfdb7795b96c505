"""Snapshots (pytest-textual-snapshot) of the main screen, a filtered view, a grouped view, the
detail and the help screens on the bundled demo, at 80×24 and 160×48.

Deterministic: the replay moves only when asked (two polls, so rates exist), the poll time is
pinned at 0 ms, the header clock is the recording's own in UTC, and the filter bar's cursor does
not blink. Update with `pytest tests/test_tui_snapshots.py --snapshot-update`, then look at the
SVGs in tests/__snapshots__/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from cttop.tui.app import ViewSettings
from tests.tuikit import make_app, press, ready, utc

SIZES = {"80x24": (80, 24), "160x48": (160, 48)}

Compare = Callable[..., bool]


@pytest.fixture(autouse=True)
def _utc() -> Iterator[None]:
    with utc():
        yield


def steps(*keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """run_before: two polls, then the keys, each one's view computed before the next."""

    async def run(pilot: Pilot[Any]) -> None:
        pilot.app.query_one("#filter-bar", Input).cursor_blink = False
        await ready(pilot)
        await press(pilot, *keys)

    return run


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def size(request: pytest.FixtureRequest) -> tuple[int, int]:
    return SIZES[request.param]


def test_main_screen(snap_compare: Compare, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=steps())


def test_filtered_view(snap_compare: Compare, size: tuple[int, int]) -> None:
    # t for TCP, then an expression in the filter bar, left open
    keys = ("t", "slash", *"dport:443 not src:::1")
    assert snap_compare(make_app(), terminal_size=size, run_before=steps(*keys))


def test_grouped_view(snap_compare: Compare, size: tuple[int, int]) -> None:
    # g three times: by source, by destination, by service (protocol and destination port)
    assert snap_compare(make_app(), terminal_size=size, run_before=steps("g", "g", "g"))


def test_detail_screen(snap_compare: Compare, size: tuple[int, int]) -> None:
    # the busiest DNATed flow: the detail shows both tuples and the NAT
    app = make_app(settings=ViewSettings(expr="dnat tcp"))
    assert snap_compare(app, terminal_size=size, run_before=steps("enter"))


def test_help_screen(snap_compare: Compare, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=steps("question_mark"))
