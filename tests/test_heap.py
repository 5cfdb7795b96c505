"""HeapPolicy: the cyclic collector kept away from the flow tables, and its occasional full
collection kept away from the moments the operator is waiting for a key's effect; memory a poll
freed given back to the system."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from cttop import heap as heap_module
from cttop.heap import HeapPolicy


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    gc.unfreeze()
    if was:
        gc.enable()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_polls_freeze_what_they_built_and_leave_the_collector_on() -> None:
    clock = Clock()
    heap = HeapPolicy(full_every=600, clock=clock)
    heap.before_poll()
    assert not gc.isenabled()
    kept = [[i] for i in range(1000)]  # tracked containers, alive after the poll
    heap.after_poll()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    assert heap.full_collections == 0


def test_a_due_full_collection_waits_for_a_quiet_moment_but_not_forever() -> None:
    clock = Clock()
    quiet = [False]
    heap = HeapPolicy(full_every=600, quiet=lambda: quiet[0], clock=clock)
    clock.now += 599
    heap.after_poll()
    assert heap.full_collections == 0  # not due yet
    clock.now += 2
    heap.after_poll()
    assert heap.full_collections == 0  # due, but the operator is busy
    quiet[0] = True
    heap.after_poll()
    assert heap.full_collections == 1 and heap.last_full == clock.now
    quiet[0] = False
    clock.now += 1199
    heap.after_poll()
    assert heap.full_collections == 1  # overdue, still busy, not yet twice the period
    clock.now += 1
    heap.after_poll()
    assert heap.full_collections == 2  # twice the period: it runs however busy


def test_the_full_collection_frees_cycles_frozen_with_a_poll() -> None:
    """Garbage cycles alive (or not yet collected) when a poll froze everything are freed by
    the next full collection, not before: that is what it is for."""
    import weakref

    class Node:
        pass

    clock = Clock()
    heap = HeapPolicy(full_every=600, clock=clock)
    heap.before_poll()
    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    gone = weakref.ref(a)
    heap.after_poll()  # frozen with the poll
    del a, b
    gc.collect()
    assert gone() is not None  # a frozen cycle: no ordinary collection sees it
    clock.now += 600
    heap.after_poll()
    assert gone() is None and heap.full_collections == 1


def test_the_policy_sets_up_the_allocator_and_trims_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not after every poll: a steady poll needs again what the last one freed."""
    calls: list[str] = []
    monkeypatch.setattr(heap_module, "tune_allocator", lambda: calls.append("tune"))
    monkeypatch.setattr(heap_module, "trim_heap", lambda: calls.append("trim"))
    clock = Clock()
    heap = HeapPolicy(clock=clock, trim_every=60)
    assert calls == ["tune"]
    for _ in range(3):
        clock.now += 20
        heap.before_poll()
        heap.after_poll()
    assert calls == ["tune", "trim"]  # at 60 s
    clock.now += 59
    heap.after_poll()
    assert calls == ["tune", "trim"]
    clock.now += 1
    heap.after_poll()
    assert calls == ["tune", "trim", "trim"]


# In a process of its own (the allocator's state is process-wide): a big block freed, then a
# table (a 1M-flow dict's is 40 MiB) freed under a small block still in use — as a poll frees
# the previous table under what it keeps. Prints resident MiB held by the freed table, then
# what is still held after trim_heap().
_FREED_UNDER_A_LIVE_BLOCK = """
import json, os, sys
from cttop.heap import tune_allocator, trim_heap

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

if sys.argv[1] == "tuned":
    tune_allocator()
x = b"\\1" * (24 << 20)  # mapped, and freed: by default glibc raises its threshold past it
del x
before = resident()
table = b"\\1" * (20 << 20)
pin = b"\\1" * 300_000
del table
held = resident() - before
trim_heap()
print(json.dumps([held, resident() - before]))
"""


def _freed_block_held(mode: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", _FREED_UNDER_A_LIVE_BLOCK, mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    held: list[float] = json.loads(out)
    return held


@pytest.mark.skipif(heap_module._mallopt is None, reason="libc has no mallopt (not glibc)")
def test_a_big_block_a_poll_frees_goes_back_to_the_system() -> None:
    """By default glibc keeps a freed 20 MiB table resident (having freed a bigger mapped block
    before, it served this one from its heap, under a block still in use); trim_heap() gives
    it back. Tuned, blocks from 16 MiB up are mapped on their own whatever was freed before,
    and given back as they are freed."""
    default_held, default_trimmed = _freed_block_held("default")
    assert default_held > 12, "glibc kept nothing: the premise of tune_allocator is gone"
    assert default_trimmed < 4
    tuned_held, _ = _freed_block_held("tuned")
    assert tuned_held < 4


def test_release_empties_a_chunk_at_a_time_and_pauses_between_chunks() -> None:
    """`release` empties the lists and dicts it is given, a chunk at a time, and asks `pause`
    before each chunk (the TUI's freeing waits there while a key's view is computed). A dict
    is emptied at once, its keys and values held on to and then let go of by chunks: what
    only the dict held is freed a chunk at a time, not all at once with it."""

    class Held:
        pass

    lst = list(range(10))
    objects = [Held() for _ in range(7)]
    alive = weakref.WeakSet(objects)
    dct = {(i,): obj for i, obj in enumerate(objects)}
    del objects
    seen: list[tuple[int, int, int]] = []
    heap_module.release(
        [lst, dct], chunk=4, pause=lambda: seen.append((len(lst), len(dct), len(alive)))
    )
    assert lst == [] and dct == {} and len(alive) == 0
    assert seen == [
        *[(10, 7, 7), (6, 7, 7), (2, 7, 7)],  # the list
        *[(0, 0, 7), (0, 0, 7)],  # the dict's keys
        *[(0, 0, 7), (0, 0, 3)],  # its values
    ]
    heap_module.release([[1, 2], {1: 2}])  # no pause: the same, at once
