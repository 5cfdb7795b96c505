"""Keeping Python's cycle collector away from the flow tables, and freed memory going back
to the system (`trim_heap`).

A poll of a big table makes ~3 GC-tracked objects per flow (Flow and Tuple are tuple subclasses,
which CPython never untracks), and a full collection walks all of them: at 250k flows that is
half a second, every poll. None of them can form a cycle, so after each poll everything alive
is moved to the permanent generation (`gc.freeze`) — they are still freed by reference counting
when the next poll replaces them — and a real full collection runs only now and then, to reclaim
whatever cyclic garbage the rest of the program made in between.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable, Iterable
from typing import Any


class HeapPolicy:
    """`before_poll()` and `after_poll()` around each poll (see the module's docstring).

    The full collection every `full_every` seconds holds the GIL for about half a second at
    250k flows: the screen stops for that long. `quiet()`, when given, says whether now is a
    good moment (the operator is not typing); a due collection waits for one, but never past
    twice `full_every`.

    It also sets up the C allocator (`tune_allocator`), and `after_poll()` hands the C heap's
    free pages back to the system (`trim_heap`) every `trim_every` seconds. Not after every
    poll: a steady poll needs again what the last one freed, and faulting those pages back in
    costs more than it saves. 250k flows, TUI at -d 1, four runs each: trimmed every poll
    0.53-0.56 CPU-s/s, 246 MiB between polls, peak 273; every 60 s 0.51-0.54, 275 MiB, peak
    276; never 0.51, 276 MiB, peak 281. What stays free for good (a table that shrank) goes
    back within `trim_every`.
    """

    def __init__(
        self,
        full_every: float = 600.0,
        quiet: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        trim_every: float = 60.0,
    ) -> None:
        self.full_every = full_every
        self.quiet = quiet
        self.clock = clock
        self.last_full = clock()
        self.full_collections = 0
        self.trim_every = trim_every
        self.last_trim = self.last_full
        tune_allocator()

    def before_poll(self) -> None:
        """No collection while a poll builds its objects: a pass would walk them all."""
        gc.disable()

    def after_poll(self) -> None:
        now = self.clock()
        since = now - self.last_full
        if since >= self.full_every and (
            self.quiet is None or since >= 2 * self.full_every or self.quiet()
        ):
            gc.unfreeze()
            gc.collect()
            self.last_full = now
            self.full_collections += 1
        # Freeze before collections resume, or the first one walks the whole new table.
        gc.freeze()
        gc.enable()
        if now - self.last_trim >= self.trim_every:
            trim_heap()
            self.last_trim = now


def _libc_function(name: str, *argtypes: type[Any]) -> Callable[..., int] | None:
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # not glibc (musl has neither): nothing to do
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _libc_function("malloc_trim", ctypes.c_size_t)
_mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
_M_MMAP_THRESHOLD = -3
# Blocks from this size up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 16 << 20


def tune_allocator() -> None:
    """Fix glibc's thresholds instead of letting it raise them as the program runs.

    By default, once glibc frees a mapped block it serves blocks up to that size (32 MiB at
    most) from its heap, and gives the heap's top back only when 2x that is free: what a poll
    frees (the previous table's dict and lists, a dump's datagrams) stays resident. Set, the
    thresholds stay put (blocks from 16 MiB up mapped on their own, the top given back from
    128 KiB): ~12 MiB less at 250k flows, with `trim_heap` after each poll (A/B in a poll
    loop; see `HeapPolicy` for how often it runs). Lower thresholds
    give back a little more but cost each poll the page faults of fresh mappings (1 MiB:
    ~8 MiB less, ~30 ms a poll at 250k). Idempotent; nothing where libc has no mallopt."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_heap() -> None:
    """Give the free pages inside the C heap back to the system (glibc's malloc_trim(0)):
    at 250k flows, ~30 MiB freed by a poll under blocks still in use. ~3 ms, outside the
    GIL; the pages a later poll needs again fault back in (see `HeapPolicy`)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def release(
    containers: Iterable[list[Any] | dict[Any, Any]],
    chunk: int = 2048,
    pause: Callable[[], object] | None = None,
) -> None:
    """Empty lists and dicts a chunk at a time.

    Dropping the last reference to a 250k-flow table frees it in one C-level cascade that
    holds the GIL for 30-40 ms: the event loop stalls. Emptied from Python, whatever each chunk
    held last is freed with it, and other threads get their turns in between. Only pass
    containers nothing else still reads. `pause` is called between chunks (a front end may
    hold the freeing there while something more urgent runs).
    """
    for c in containers:
        if isinstance(c, list):
            lists = [c]
        else:
            # A dict's keys and values go into lists (in C), and the dict is emptied at once,
            # which frees nothing they hold; then the lists a chunk at a time. (Popped an item
            # at a time, a 250k dict cost the poll ~40 ms of Python; emptied, ~2 ms.)
            lists = [list(c), list(c.values())]
            c.clear()
        for items in lists:
            while items:
                if pause is not None:
                    pause()
                del items[-chunk:]
