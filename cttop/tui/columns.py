"""The flow table's columns: what each shows, how wide it is, which sort key it maps to, and
which go first when the terminal is narrow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.style import Style

from cttop.conntrack.model import Flow
from cttop.fmt import (
    ABSENT,
    duration,
    human,
    human_count,
    human_rate,
    nat_destination,
    nat_source,
    tuple_ends,
)
from cttop.sampler import Rate
from cttop.view import GroupRow

STATE_STYLES: dict[str, Style] = {
    "ESTABLISHED": Style(color="green"),
    "SYN_SENT": Style(color="yellow"),
    "SYN_RECV": Style(color="yellow"),
    "SYN_SENT2": Style(color="yellow"),
    "FIN_WAIT": Style(color="magenta"),
    "CLOSE_WAIT": Style(color="magenta"),
    "LAST_ACK": Style(color="magenta"),
    "TIME_WAIT": Style(color="bright_black"),
    "CLOSE": Style(color="bright_black"),
    "NONE": Style(color="bright_black"),
    "OPEN": Style(color="green"),
    "COOKIE_WAIT": Style(color="yellow"),
    "COOKIE_ECHOED": Style(color="yellow"),
    "SHUTDOWN_SENT": Style(color="magenta"),
    "SHUTDOWN_RECD": Style(color="magenta"),
    "SHUTDOWN_ACK_SENT": Style(color="magenta"),
    "CLOSED": Style(color="bright_black"),
}
PROTO_STYLES: dict[str, Style] = {
    "tcp": Style(color="cyan"),
    "udp": Style(color="blue"),
    "icmp": Style(color="magenta"),
    "icmpv6": Style(color="magenta"),
}
DIM = Style(dim=True)
NAT = Style(color="yellow")
PLAIN = Style()

Cell = tuple[str, Style]


@dataclass(frozen=True)
class Options:
    """Display choices that change how cells read."""

    bits: bool = False
    names: Callable[[str | None], str | None] | None = None  # reverse DNS, when on
    now: float = 0.0  # wall time of the sample, for ages and seconds left


@dataclass(frozen=True)
class Column:
    id: str
    title: str
    sort: str | None  # the view's SORT_KEYS name, when the column sorts
    width: int  # preferred width (flex columns take what is left)
    priority: int  # lower survives longer when space is short
    right: bool = False
    flex: int = 0  # share of the leftover width
    max_width: int = 0  # a flex column grows no wider (0: no limit)
    cell: Callable[[Any, Rate | None, Options], Cell] = lambda r, rate, o: ("", PLAIN)


def _name(addr_port: str, o: Options, addr: str | None) -> str:
    if o.names is None or addr is None:
        return addr_port
    name = o.names(addr)
    return addr_port if not name else addr_port.replace(addr, name, 1)


def _src(f: Flow, rate: Rate | None, o: Options) -> Cell:
    src, _ = tuple_ends(f, f.orig)
    src = _name(src, o, f.orig.src)
    snat = nat_source(f)
    return (f"{src} → {snat}", NAT) if snat else (src, PLAIN)


def _dst(f: Flow, rate: Rate | None, o: Options) -> Cell:
    _, dst = tuple_ends(f, f.orig)
    dst = _name(dst, o, f.orig.dst)
    real = nat_destination(f)
    return (f"{dst} → {real}", NAT) if real else (dst, PLAIN)


def _state(f: Flow, rate: Rate | None, o: Options) -> Cell:
    name = f.state_name
    if name is None:
        return (ABSENT, DIM)
    return (name, STATE_STYLES.get(name, PLAIN))


def _proto(f: Flow, rate: Rate | None, o: Options) -> Cell:
    return (f.proto, PROTO_STYLES.get(f.proto, PLAIN))


def _rate_cell(value: float | None, o: Options) -> Cell:
    if value is None:
        return (ABSENT, DIM)
    return (human_rate(value, o.bits), DIM if value == 0 else PLAIN)


def _orig_rate(f: Any, rate: Rate | None, o: Options) -> Cell:
    return _rate_cell(None if rate is None else rate.orig_bytes_per_s, o)


def _reply_rate(f: Any, rate: Rate | None, o: Options) -> Cell:
    return _rate_cell(None if rate is None else rate.reply_bytes_per_s, o)


def _pps(f: Any, rate: Rate | None, o: Options) -> Cell:
    if rate is None:
        return (ABSENT, DIM)
    value = rate.orig_packets_per_s + rate.reply_packets_per_s
    return (f"{value:.1f}" if value < 100 else human_count(value), DIM if value == 0 else PLAIN)


def _bytes(f: Any, rate: Rate | None, o: Options) -> Cell:
    if f.orig_bytes is None and f.reply_bytes is None:
        return (ABSENT, DIM)
    return (human((f.orig_bytes or 0) + (f.reply_bytes or 0)), PLAIN)


def _age(f: Flow, rate: Rate | None, o: Options) -> Cell:
    if f.start is None or not o.now:
        return (ABSENT, DIM)
    return (duration(o.now - f.start / 1e9), PLAIN)


def _timeout(f: Flow, rate: Rate | None, o: Options) -> Cell:
    left = f.timeout_at(o.now)
    return (duration(left), PLAIN) if left is not None else (ABSENT, DIM)


def _mark(f: Flow, rate: Rate | None, o: Options) -> Cell:
    if f.mark is None:
        return (ABSENT, DIM)
    return (str(f.mark), DIM if f.mark == 0 else PLAIN)


def _zone(f: Flow, rate: Rate | None, o: Options) -> Cell:
    return (str(f.zone), DIM if f.zone == 0 else PLAIN)


FLOW_COLUMNS: tuple[Column, ...] = (
    Column("proto", "PROTO", "proto", 6, 1, cell=_proto),
    Column("state", "STATE", "state", 11, 3, cell=_state),
    Column("src", "SOURCE", "src", 22, 0, flex=1, cell=_src),
    Column("dst", "DESTINATION", "dst", 22, 0, flex=1, cell=_dst),
    Column("orig_rate", "ORIG/s", "orig_rate", 9, 0, right=True, cell=_orig_rate),
    Column("reply_rate", "REPLY/s", "reply_rate", 9, 0, right=True, cell=_reply_rate),
    Column("pps", "PKT/s", "packets", 7, 4, right=True, cell=_pps),
    Column("bytes", "BYTES", "bytes", 8, 2, right=True, cell=_bytes),
    Column("age", "AGE", "age", 7, 6, right=True, cell=_age),
    Column("timeout", "TIMEOUT", "timeout", 8, 5, right=True, cell=_timeout),
    Column("mark", "MARK", "mark", 6, 7, right=True, cell=_mark),
    Column("zone", "ZONE", "zone", 5, 8, right=True, cell=_zone),
)


def _group_key(g: GroupRow, rate: Rate | None, o: Options) -> Cell:
    label = g.label
    if o.names is not None and g.group in ("src", "dst") and isinstance(g.key, str):
        label = _name(label, o, g.key)
    return (label, PLAIN)


def _group_flows(g: GroupRow, rate: Rate | None, o: Options) -> Cell:
    return (str(g.flows), PLAIN)


GROUP_COLUMNS: tuple[Column, ...] = (
    Column("key", "GROUP", None, 30, 0, flex=1, max_width=56, cell=_group_key),
    Column("flows", "FLOWS", "flows", 7, 0, right=True, cell=_group_flows),
    Column("orig_rate", "ORIG/s", "orig_rate", 9, 0, right=True, cell=_orig_rate),
    Column("reply_rate", "REPLY/s", "reply_rate", 9, 0, right=True, cell=_reply_rate),
    Column("pps", "PKT/s", "packets", 7, 2, right=True, cell=_pps),
    Column("bytes", "BYTES", "bytes", 8, 1, right=True, cell=_bytes),
)


def layout(
    columns: tuple[Column, ...], width: int, hide: frozenset[str] = frozenset()
) -> list[tuple[Column, int]]:
    """Columns that fit in `width` with their widths. Columns with the highest priority
    number go first; flex columns share what is left and never shrink below 12.
    """
    shown = [c for c in columns if c.id not in hide]
    gap = 1

    def need(cols: list[Column], flex_min: int | None = None) -> int:
        # Flex columns ask for their preferred width before optional columns may stay.
        widths = (c.width if not c.flex or flex_min is None else flex_min for c in cols)
        return sum(widths) + gap * (len(cols) - 1)

    while len(shown) > 1 and need(shown) > width:
        victim = max(shown, key=lambda c: c.priority)
        if victim.priority == 0:
            break
        shown.remove(victim)
    # Only essentials left and still too wide: the addresses shrink to 12, and the rightmost
    # fixed columns go until they fit.
    while need(shown, flex_min=12) > width:
        fixed_cols = [c for c in shown if not c.flex]
        if not fixed_cols or len(shown) == 1:
            break
        shown.remove(fixed_cols[-1])
    fixed = sum(c.width for c in shown if not c.flex) + gap * (len(shown) - 1)
    flex_total = sum(c.flex for c in shown)
    spare = max(0, width - fixed)
    out: list[tuple[Column, int]] = []
    given = 0
    flex_seen = 0
    for c in shown:
        if c.flex:
            flex_seen += c.flex
            w = spare * flex_seen // flex_total - given
            given += w
            if c.max_width:
                w = min(w, c.max_width)
            out.append((c, max(w, 12)))
        else:
            out.append((c, c.width))
    return out


def fit(text: str, width: int, right: bool = False) -> str:
    """Pad or cut to exactly `width` cells (cut with an ellipsis)."""
    if len(text) > width:
        return text[: max(0, width - 1)] + "…" if width > 0 else ""
    return text.rjust(width) if right else text.ljust(width)
