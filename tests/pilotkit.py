"""Small helpers for Pilot tests of the reliability suite: wait for the app's workers, poll on
demand, and read the screen as plain text.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from textual.pilot import Pilot

from cttop.tui.app import CttopApp

NEVER = 3600.0  # an interval that never fires during a test: polls happen when asked for


def _busy(app: CttopApp) -> bool:
    return any(w.is_running or w.state.name == "PENDING" for w in app.workers)


async def settle(pilot: Pilot[Any], rounds: int = 400) -> None:
    """Wait until no worker runs and what they posted is handled (bounded)."""
    app = pilot.app
    assert isinstance(app, CttopApp)
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not _busy(app):
            await pilot.pause()
            if not _busy(app):
                return
    raise AssertionError("the app's workers did not settle")


async def poll(pilot: Pilot[Any]) -> None:
    """One poll of the source, finished (done or failed) and on screen."""
    app = pilot.app
    assert isinstance(app, CttopApp)
    await settle(pilot)
    before = app.polls + app.errors
    app.poll()
    await settle(pilot)
    assert app.polls + app.errors == before + 1, "the poll did not run"


def screen_text(app: CttopApp) -> list[str]:
    """The screen as the terminal would show it, one string per line (colours dropped)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    text = console.export_text(styles=False)
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
