"""Helpers for the TUI tests: a deterministic app on the bundled demo, a fake source fed with the
demo's real flows (that can fail, delete and record on demand), and waiting for the workers.

Determinism: `timer=lambda: 0.0` pins the measured poll time at 0 ms, `label` replaces the host
and kernel, a replay's `clock()` puts the recording's time in the header, and a long interval
(for a replay, which keeps the recording's own pace: a pace a million times slower) means a poll
happens only when a test asks for one (`await poll(pilot)`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from textual.app import App
from textual.pilot import Pilot

from cttop.conntrack.model import Flow, Snapshot
from cttop.record import ReplaySource, demo_source
from cttop.sampler import FlowRows
from cttop.tui.app import CttopApp, ViewSettings
from cttop.tui.header import Header
from cttop.tui.table import FlowTable
from cttop.view import GroupRow, GroupRows

SLOW = 3600.0  # an interval that never fires during a test: polls happen when asked for


@functools.cache
def demo_snapshots(n: int = 6) -> tuple[Snapshot, ...]:
    """The first `n` polls of the bundled demo (real lab traffic), decoded once per session."""
    source = demo_source(loop=False)
    try:
        return tuple(source.snapshot() for _ in range(n))
    finally:
        source.close()


class FakeSource:
    """Plays recorded snapshots one per poll; past the last it repeats it, a second later each
    time (so rates stay defined: all zero). Deleted flows vanish from later polls, as they would
    from the kernel's table. `fail` holds exceptions the next polls raise, in order.
    """

    def __init__(self, snapshots: Iterable[Snapshot] | None = None) -> None:
        self.snapshots = list(snapshots if snapshots is not None else demo_snapshots())
        self.calls = 0  # snapshot() calls, failed ones included
        self.served = 0  # snapshots returned
        self.fail: list[Exception] = []
        self.now: float | None = None  # what clock() says; None: the current poll's wall time
        self._last: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        i = self.served
        self.served += 1
        snap = self.snapshots[min(i, len(self.snapshots) - 1)]
        extra = max(0, i - len(self.snapshots) + 1)
        snap = snap._replace(
            time_monotonic=snap.time_monotonic + extra, time_wall=snap.time_wall + extra
        )
        snap = self._without_deleted(snap)
        self._last = snap
        return snap

    def _without_deleted(self, snap: Snapshot) -> Snapshot:
        return snap

    def clock(self) -> float | None:
        if self.now is not None:
            return self.now
        return None if self._last is None else self._last.time_wall


class DeletingSource(FakeSource):
    """A FakeSource that can delete: every call is recorded, the flow is gone from then on."""

    def __init__(self, snapshots: Iterable[Snapshot] | None = None) -> None:
        super().__init__(snapshots)
        self.deleted: list[Flow] = []

    def delete(self, flow: Flow) -> bool:
        gone = any(f.key == flow.key for f in self.deleted)
        self.deleted.append(flow)
        return not gone

    def _without_deleted(self, snap: Snapshot) -> Snapshot:
        if not self.deleted:
            return snap
        keys = {f.key for f in self.deleted}
        flows = {k: f for k, f in snap.flows.items() if k not in keys}
        count = None if snap.table_count is None else len(flows)
        return snap._replace(flows=flows, table_count=count)


class RecordingSource(FakeSource):
    """A FakeSource with the LiveSource recording interface (nothing is written)."""

    def __init__(self, snapshots: Iterable[Snapshot] | None = None) -> None:
        super().__init__(snapshots)
        self.recording: str | None = None

    def toggle_recording(self) -> str:
        if self.recording is None:
            self.recording = "lab.pcap"
            return "recording to lab.pcap"
        self.recording = None
        return "recorded 2 polls to lab.pcap"


def make_app(
    source: Any = None,
    *,
    interval: float = SLOW,
    settings: ViewSettings | None = None,
    **kwargs: Any,
) -> CttopApp:
    """The app, deterministic: label "demo", poll time 0 ms, the demo replay by default."""
    if source is None:
        source = replay()
    kwargs.setdefault("autopoll", False)  # polls happen when the test asks for them
    return CttopApp(
        source, interval=interval, settings=settings, label="demo", timer=lambda: 0.0, **kwargs
    )


def busy(app: App[Any]) -> bool:
    return any(w.is_running or w.state.name == "PENDING" for w in app.workers)


async def settle(pilot: Pilot[Any], rounds: int = 200) -> None:
    """Wait until no worker runs and what they handed back is on screen. (A thread worker's
    call_from_thread returns only once the callback ran; that callback may start another.)"""
    app = pilot.app
    for _ in range(rounds):
        if not busy(app):
            return
        await app.workers.wait_for_complete()
        await pilot.pause()
    raise AssertionError("the app's workers did not settle")


async def poll(pilot: Pilot[Any], times: int = 1) -> None:
    """Poll the source `times` times, each poll finished and on screen."""
    app = pilot.app
    assert isinstance(app, CttopApp)
    for _ in range(times):
        await settle(pilot)
        before = app.polls + app.errors
        app.poll()
        await settle(pilot)
        assert app.polls + app.errors == before + 1, "the poll did not run"


async def ready(pilot: Pilot[Any]) -> None:
    """The first poll (on mount) and one more, so that rates exist."""
    await settle(pilot)
    await poll(pilot)


async def press(pilot: Pilot[Any], *keys: str) -> None:
    """Press keys one by one, letting the view recompute after each."""
    for key in keys:
        await pilot.press(key)  # returns once the app is idle
        await settle(pilot)


def table(app: CttopApp) -> FlowTable:
    return app.query_one(FlowTable)


def flows(app: CttopApp) -> list[Flow]:
    rows = table(app).rows
    assert isinstance(rows, FlowRows), f"expected flow rows, got {type(rows).__name__}"
    return list(rows.flows)


def groups(app: CttopApp) -> list[GroupRow]:
    rows = table(app).rows
    assert isinstance(rows, GroupRows), f"expected group rows, got {type(rows).__name__}"
    return list(rows)


def header(app: CttopApp) -> list[str]:
    return [line.plain for line in app.query_one(Header).lines()]


def selected(app: CttopApp) -> Any:
    row = table(app).row_at(table(app).cursor)
    assert row is not None
    return row[0]


def clock_text(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


@contextmanager
def utc() -> Iterator[None]:
    """Local time is UTC inside (header clock, detail's start time): snapshots don't depend on
    the machine's time zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def replay(loop: bool = False) -> ReplaySource:
    """The bundled demo, at a pace that leaves every poll to the test."""
    return demo_source(loop=loop)
