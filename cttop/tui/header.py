"""The header: table fill against nf_conntrack_max, the protocol and state mix, total rates,
churn, poll timing, and plain-spoken notices (accounting off, timestamps off, errors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice

from rich.text import Text
from textual.widget import Widget

from cttop.fmt import human_rate
from cttop.sampler import Sample

FILL_BAR = 12


@dataclass
class HeaderState:
    """Everything the header shows that is not in the sample itself."""

    label: str = ""  # "host · kernel 6.18" or "replay FILE"
    interval: float = 1.0
    poll_ms: float | None = None
    paused: bool = False
    recording: str | None = None
    error: str | None = None
    errors: int = 0
    filter_text: str = ""
    sort: str = "rate"
    descending: bool = True
    group: str = "none"
    shown: int | None = None  # rows shown after the filter (flows or groups)
    matched_flows: int | None = None
    bits: bool = False
    notices: list[str] = field(default_factory=list)
    clock: float | None = None  # wall time to show (the recording's own in a replay)
    stretched: bool = False  # the poll took more than half the interval
    effective_interval: float | None = None  # the interval actually used, when stretched
    speed: float | None = None  # a replay's pace (replaces the interval in the header)


def fill_bar(count: int, maximum: int) -> Text:
    frac = min(1.0, count / maximum) if maximum else 0.0
    style = "green"
    if frac > 0.90:
        style = "bold red"
    elif frac > 0.75:
        style = "bold yellow"
    cells = frac * FILL_BAR
    full = int(cells)
    partial = (
        "▏▎▍▌▋▊▉"[int((cells - full) * 7)] if full < FILL_BAR and cells - full > 1 / 14 else ""
    )
    bar = "█" * full + partial
    text = Text()
    text.append("▕", style="dim")
    text.append(bar.ljust(FILL_BAR), style=style)
    text.append("▏", style="dim")
    text.append(f" {count:,}/{maximum:,} ({100 * frac:.1f}%)", style=style)
    return text


def _sep() -> Text:
    return Text("  │  ", style="dim")


class Header(Widget):
    """Four lines at the top of the screen."""

    DEFAULT_CSS = """
    Header { height: 4; background: $panel; padding: 0 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sample: Sample | None = None
        self.state = HeaderState()

    def update(self, sample: Sample | None, state: HeaderState) -> None:
        self.sample = sample
        self.state = state
        self.refresh()

    def lines(self) -> list[Text]:
        st = self.state
        s = self.sample
        # line 1, most important first (a narrow terminal cuts the end): who, when, modes,
        # table fill, timing
        l1 = Text()
        l1.append("cttop", style="bold cyan")
        if st.label:
            l1.append(f" {st.label}", style="bold")
        clock = st.clock if st.clock is not None else time.time()
        l1.append("  " + time.strftime("%H:%M:%S", time.localtime(clock)))
        if st.paused:
            l1.append("  PAUSED", style="bold black on yellow")
        if st.recording:
            l1.append(f"  ● REC {st.recording}", style="bold red")
        l1.append_text(_sep())
        if s is not None:
            snap = s.snapshot
            count = snap.table_count if snap.table_count is not None else len(snap.flows)
            if snap.table_max:
                l1.append("table ")
                l1.append_text(fill_bar(count, snap.table_max))
            else:
                l1.append(f"table {count:,} flows")
        else:
            l1.append("waiting for the first poll…", style="dim")
        l1.append_text(_sep())
        if st.speed is not None:
            l1.append(f"replay ×{st.speed:g}")
        else:
            l1.append(f"every {st.interval:g}s")
        if st.effective_interval and st.effective_interval > st.interval + 0.01:
            l1.append(f" → {st.effective_interval:.1f}s", style="bold yellow")
        if st.poll_ms is not None:
            l1.append(f", poll {st.poll_ms:.0f} ms", style="bold yellow" if st.stretched else "")
        if st.stretched:
            l1.append(" (dump slower than half the interval)", style="yellow")

        # line 2: total rates and churn first (they must survive a narrow terminal), then the mix
        l2 = Text()
        if s is not None:
            t = s.totals
            rate = t.rate
            l2.append("↑ ")
            l2.append(human_rate(rate.orig_bytes_per_s if rate else None, st.bits), style="bold")
            l2.append("  ↓ ")
            l2.append(human_rate(rate.reply_bytes_per_s if rate else None, st.bits), style="bold")
            l2.append_text(_sep())
            if t.new_per_s is not None and t.vanished_per_s is not None:
                l2.append(f"new {t.new_per_s:.1f}/s  gone {t.vanished_per_s:.1f}/s")
            else:
                l2.append("new -  gone -", style="dim")
            l2.append_text(_sep())
            by_proto = sorted(t.by_proto.items(), key=lambda kv: (-kv[1], kv[0]))
            for i, (name, n) in enumerate(by_proto[:5]):
                if i:
                    l2.append(" · ", style="dim")
                l2.append(name, style="bold")
                l2.append(f" {n:,}")
                if name == "tcp" and t.by_tcp_state:
                    states = sorted(
                        ((k, v) for k, v in t.by_tcp_state.items() if k),
                        key=lambda kv: (-kv[1], kv[0] or ""),
                    )[:3]
                    if states:
                        l2.append(
                            " (" + ", ".join(f"{k} {v:,}" for k, v in states) + ")", style="dim"
                        )

        # line 3: what is shown
        l3 = Text()
        l3.append("filter ", style="dim")
        l3.append(st.filter_text or "none", style="bold" if st.filter_text else "dim")
        l3.append_text(_sep())
        l3.append("sort ", style="dim")
        l3.append(f"{st.sort} {'▼' if st.descending else '▲'}")
        l3.append_text(_sep())
        l3.append("group ", style="dim")
        l3.append(st.group)
        if s is not None and st.shown is not None:
            l3.append_text(_sep())
            what = "flow" if st.group == "none" else "group"
            l3.append(f"{st.shown:,} {what}{'' if st.shown == 1 else 's'}")
            if st.matched_flows is not None and st.filter_text:
                l3.append(
                    f" ({st.matched_flows:,} of {len(s.snapshot.flows):,} flows)", style="dim"
                )

        # line 4: notices, errors first
        l4 = Text()
        if st.error:
            l4.append(f"error: {st.error}", style="bold red")
            if st.errors > 1:
                l4.append(f" ({st.errors} so far)", style="red")
            l4.append(" — still polling", style="dim")
        else:
            for i, notice in enumerate(st.notices):
                if i:
                    l4.append("  ·  ", style="dim")
                l4.append(notice, style="yellow")
        return [l1, l2, l3, l4]

    def render(self) -> Text:
        width = max(10, self.size.width)
        out = Text()
        for i, line in enumerate(self.lines()):
            if i:
                out.append("\n")
            line.truncate(width, overflow="ellipsis")
            out.append_text(line)
        out.no_wrap = True
        return out


def notices_for(sample: Sample) -> list[str]:
    """What the operator should know about what cttop cannot see, with the fix."""
    out = []
    t = sample.totals
    if t.no_counters:
        out.append(
            f"accounting off for {t.no_counters:,} flows: "
            "sysctl -w net.netfilter.nf_conntrack_acct=1"
        )
    flows = sample.snapshot.flows
    if flows and all(f.start is None for f in islice(flows.values(), 200)):
        out.append("timestamps off (no ages): sysctl -w net.netfilter.nf_conntrack_timestamp=1")
    if sample.snapshot.resized:
        out.append("the hash table was resized during this poll's dump: flows may be missing")
    if sample.snapshot.skipped:
        out.append(f"{sample.snapshot.skipped} malformed kernel messages skipped")
    return out
