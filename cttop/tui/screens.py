"""Screens over the main view: help, flow detail, confirmation, sort chooser."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, OptionList, Sparkline, Static

from cttop.conntrack.model import Flow, Tuple
from cttop.fmt import ABSENT, duration, human, human_rate
from cttop.sampler import Rate
from cttop.tui.keys import KEYS, NAVIGATION, display
from cttop.view import SORT_KEYS


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        table.add_column(style="dim")
        for bid, keys, _action, desc, _footer in KEYS:
            table.add_row(display(keys), desc, bid)
        for keys, desc in NAVIGATION:
            table.add_row(keys, desc, "")
        with VerticalScroll(id="help-body"):
            yield Static(Text("cttop — keys", style="bold"), classes="title")
            yield Static(table)
            yield Static(
                Text(
                    "Filter: terms separated by spaces, all must match; not/! negates. "
                    "tcp udp icmp … proto:N state:est src: dst: host: (address or CIDR) "
                    "port: sport: dport: (number, range, service) mark: zone: family:ipv6 "
                    "nat snat dnat assured unreplied offload; a bare word matches addresses "
                    "and ports. The third column is the key's id for --keymap.",
                    style="dim",
                )
            )

    def action_dismiss(self, result: Any = None) -> Any:
        return self.dismiss(result)


def _tuple_table(title: str, t: Tuple, packets: int | None, nbytes: int | None) -> Table:
    table = Table(title=title, box=None, show_header=False, title_justify="left", padding=(0, 1))
    table.add_column(style="dim")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("src", t.src),
        ("dst", t.dst),
        ("sport", t.sport),
        ("dport", t.dport),
        ("icmp type", t.icmp_type),
        ("icmp code", t.icmp_code),
        ("icmp id", t.icmp_id),
        ("zone", t.zone),
        ("packets", packets),
        ("bytes", None if nbytes is None else f"{nbytes:,} ({human(nbytes)})"),
    ]
    for name, value in rows:
        if name in ("icmp type", "icmp code", "icmp id", "zone") and value is None:
            continue
        table.add_row(name, ABSENT if value is None else str(value))
    return table


def describe_flow(flow: Flow, rate: Rate | None, now: float, bits: bool) -> Table:
    """Every attribute of a flow, as a two-column table."""
    table = Table(box=None, show_header=False, padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()

    def row(name: str, value: Any) -> None:
        table.add_row(name, ABSENT if value is None else str(value))

    row("protocol", f"{flow.proto} ({flow.protonum}), {flow.family_name}")
    row("state", flow.state_name)
    row("status", " ".join(flow.status_names) or None)
    nat = []
    if flow.dnat:
        nat.append(
            f"DNAT to {flow.reply.src}" + (f":{flow.reply.sport}" if flow.reply.sport else "")
        )
    if flow.snat:
        nat.append(
            f"SNAT to {flow.reply.dst}" + (f":{flow.reply.dport}" if flow.reply.dport else "")
        )
    row("nat", ", ".join(nat) or "none")
    row("id", flow.id)
    left = flow.timeout_at(now)
    row("timeout", None if left is None else f"{left}s ({duration(left)})")
    row("mark", flow.mark)
    row("zone", flow.zone)
    row("use", flow.use)
    if flow.start is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(flow.start / 1e9))
        row("started", f"{started} ({duration(now - flow.start / 1e9)} ago)")
    else:
        row("started", None)
    if flow.helper:
        row("helper", flow.helper)
    if flow.labels:
        row("labels", f"{flow.labels:#x}")
    if flow.secctx:
        row("secctx", flow.secctx)
    if rate is None:
        row("rate", None)
    else:
        row(
            "rate",
            f"orig {human_rate(rate.orig_bytes_per_s, bits)} {rate.orig_packets_per_s:.1f} pkt/s"
            f" · reply {human_rate(rate.reply_bytes_per_s, bits)}"
            f" {rate.reply_packets_per_s:.1f} pkt/s",
        )
    return table


class DetailScreen(ModalScreen[None]):
    """The selected flow, refreshed with every sample while open."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close", id="detail.close")]

    def __init__(
        self, flow: Flow, rate: Rate | None, history: list[float | None], now: float, bits: bool
    ) -> None:
        super().__init__()
        self.flow, self.rate, self.history, self.now, self.bits = flow, rate, history, now, bits
        self.gone = False

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-body"):
            yield Static(id="detail-title", classes="title")
            yield Static(id="detail-main")
            with Horizontal(id="detail-tuples"):
                yield Static(id="detail-orig")
                yield Static(id="detail-reply")
            yield Label("rate history (bytes/s, both directions)", classes="dim")
            yield Sparkline([], id="detail-spark")

    def on_mount(self) -> None:
        self._fill()

    def update_flow(
        self, flow: Flow | None, rate: Rate | None, history: list[float | None], now: float
    ) -> None:
        if flow is None:
            self.gone = True
        else:
            self.flow, self.rate = flow, rate
        self.history, self.now = history, now
        if self.is_mounted:
            self._fill()

    def _fill(self) -> None:
        f = self.flow
        title = Text(f"{f.proto} {f.orig.src} → {f.orig.dst}", style="bold")
        if self.gone:
            title.append("  (gone from the table)", style="bold red")
        self.query_one("#detail-title", Static).update(title)
        self.query_one("#detail-main", Static).update(
            describe_flow(f, self.rate, self.now, self.bits)
        )
        self.query_one("#detail-orig", Static).update(
            _tuple_table("original", f.orig, f.orig_packets, f.orig_bytes)
        )
        self.query_one("#detail-reply", Static).update(
            _tuple_table("reply", f.reply, f.reply_packets, f.reply_bytes)
        )
        # Absent rates (first sight, counters reset) are left out, not drawn as zero.
        self.query_one("#detail-spark", Sparkline).data = [v for v in self.history if v is not None]

    def action_dismiss(self, result: Any = None) -> Any:
        return self.dismiss(result)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; nothing happens without an explicit yes."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-body"):
            yield Static(self.question, id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Delete (y)", variant="error", id="yes")
                yield Button("Cancel (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class SortScreen(ModalScreen[str | None]):
    """Pick a sort key from the list (F6)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="sort.cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="sort-body"):
            yield Static("Sort by", classes="title")
            options = OptionList(
                *(f"{k.name:<11} {k.help}" for k in SORT_KEYS.values()), id="sort-list"
            )
            yield options

    def on_mount(self) -> None:
        ol = self.query_one(OptionList)
        names = list(SORT_KEYS)
        if self.current in names:
            ol.highlighted = names.index(self.current)
        ol.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(list(SORT_KEYS)[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
