"""Where snapshots come from: `Source` (anything with `snapshot()`), `LiveSource` (the kernel's
table, optionally recorded while it is polled) and, from cttop.record, `ReplaySource`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cttop.conntrack.client import ConntrackClient
from cttop.conntrack.model import Flow, FlowFeed, Snapshot
from cttop.record import Recorder, RecordingError, ReplaySource, demo_source
from cttop.sampler import Sample, Sampler

__all__ = ["LiveSource", "RecordingError", "ReplaySource", "Source", "demo_source", "take"]


class Source(Protocol):
    """Yields one `Snapshot` per poll."""

    def snapshot(self) -> Snapshot: ...


def take(source: Source, sampler: Sampler, pause: Callable[[], object] | None = None) -> Sample:
    """One poll of `source`, stepped through `sampler`. A source that can (the live table)
    hands the flows to the sampler while the dump arrives, so the diff overlaps the kernel's
    work; `pause` is then called between datagrams (a front end waits there while it has
    something more urgent to compute)."""
    if getattr(source, "feeds", False):
        fed = sampler.feed()
        fed.pause = pause
        return sampler.step(source.snapshot(feed=fed), fed)  # type: ignore[call-arg]
    return sampler.step(source.snapshot())


class LiveSource:
    """Polls the kernel's conntrack table; while `recorder` is set, every poll is also written
    to it — the raw messages exactly as the kernel sent them.

    `recorder` may be set and cleared at any time, from any thread (`start_recording`,
    `stop_recording`, `toggle_recording` do that and open/close the file). A recording that fails
    (disk full) is stopped and closed, the poll itself still succeeds, and the error is kept in
    `recording_error` for the front end to show.
    """

    def __init__(
        self,
        client: ConntrackClient | None = None,
        *,
        with_stats: bool = False,
        recorder: Recorder | None = None,
        record_dir: str = ".",
    ) -> None:
        self.client = client if client is not None else ConntrackClient()
        self.with_stats = with_stats
        self.recorder = recorder
        self.record_dir = record_dir
        self.recording_error: RecordingError | None = None
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()  # a ConntrackClient does one request at a time

    # The flows can be handed to a FlowFeed while the dump arrives (see `take`).
    feeds = True
    # Each snapshot is new and kept by nothing here: a front end may take it apart when done.
    disposable = True

    def snapshot(self, feed: FlowFeed | None = None) -> Snapshot:
        recorder = self.recorder  # read once: another thread may detach it meanwhile
        if recorder is None:
            with self._client_lock:
                return self.client.snapshot(with_stats=self.with_stats, feed=feed)
        messages: list[bytes] = []
        with self._client_lock:
            snap = self.client.snapshot(
                with_stats=self.with_stats, raw_sink=messages.append, feed=feed
            )
        try:
            recorder.write_snapshot(snap, messages)
        except RecordingError as e:
            self.recording_error = e
            self._detach(recorder)
        return snap

    def delete(self, flow: Flow) -> bool:
        """Delete one entry (False when it was already gone); waits for a running poll."""
        with self._client_lock:
            return self.client.delete(flow)

    # -- recording ------------------------------------------------------------------------------

    @property
    def recording(self) -> Recorder | None:
        """The recorder attached, if any (str() of it is a short label: file name, polls)."""
        return self.recorder

    def start_recording(self, path: str | os.PathLike[str] | None = None) -> Recorder:
        """Attach a new Recorder writing to `path` (default: cttop-YYYYmmdd-HHMMSS.pcap in
        `record_dir`); a recording already running is stopped first."""
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = os.path.join(self.record_dir, f"cttop-{stamp}.pcap")
        recorder = Recorder(path)
        with self._lock:
            old, self.recorder = self.recorder, recorder
            self.recording_error = None
        if old is not None:
            old.close()
        return recorder

    def stop_recording(self) -> Recorder | None:
        """Detach and close the recorder; returns it (None when nothing was recording)."""
        with self._lock:
            recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()
        return recorder

    def toggle_recording(self) -> str:
        """Start or stop recording; returns a one-line message for the operator."""
        if self.recorder is None:
            rec = self.start_recording()
            return f"recording to {rec.path}"
        done = self.stop_recording()
        assert done is not None
        return f"recorded {done.polls} polls to {done.path}"

    def _detach(self, recorder: Recorder) -> None:
        with self._lock:
            if self.recorder is recorder:
                self.recorder = None
        with contextlib.suppress(RecordingError):  # the error that got us here is kept
            recorder.close()

    def close(self) -> None:
        """Stop recording (finishing the file) and close the netlink socket."""
        try:
            self.stop_recording()
        finally:
            self.client.close()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
