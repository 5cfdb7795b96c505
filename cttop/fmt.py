"""Presentation without a screen: units, addresses, durations, and the batch renderers
(`-o text`, `-o json`, `-o csv`).

Absent values render as "-" (text) or null/empty (json/csv), never as 0.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cttop.conntrack.const import IPPROTO_ICMP, IPPROTO_ICMPV6
from cttop.conntrack.model import Flow, Tuple
from cttop.sampler import FlowRow, Rate, Sample
from cttop.view import GroupRow

ABSENT = "-"

_UNITS = ("", "K", "M", "G", "T", "P", "E")


def human(n: float | None, suffix: str = "B", base: float = 1024.0) -> str:
    """1536 -> '1.5KB'. Absent stays absent."""
    if n is None:
        return ABSENT
    value = float(n)
    for unit in _UNITS:
        if abs(value) < base or unit == _UNITS[-1]:
            if unit == "":
                return f"{value:.0f}{suffix}"
            return f"{value:.1f}{unit}{suffix}"
        value /= base
    raise AssertionError("unreachable")


def human_rate(n: float | None, bits: bool = False) -> str:
    """Bytes per second as text: '12.3KB/s', or bits ('98.4Kb/s', base 1000) when asked."""
    if n is None:
        return ABSENT
    if bits:
        return human(n * 8, "b/s", 1000.0)
    return human(n, "B/s")


def human_count(n: float | None) -> str:
    """Packets and other counts: '950', '12.3k', '4.1M' (base 1000)."""
    if n is None:
        return ABSENT
    value = float(n)
    for unit in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """Compact duration: '45s', '12m03s', '5h02m', '3d04h'."""
    if seconds is None:
        return ABSENT
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def endpoint(addr: str | None, port: int | None) -> str:
    """'10.0.0.1:443', '[2001:db8::1]:443', or the bare address when there is no port."""
    a = addr if addr is not None else ABSENT
    if port is None:
        return a
    if ":" in a:
        return f"[{a}]:{port}"
    return f"{a}:{port}"


def tuple_ends(flow: Flow, t: Tuple) -> tuple[str, str]:
    """The two ends of a tuple as text; ICMP shows type/code instead of ports."""
    if flow.protonum in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        src = t.src or ABSENT
        dst = t.dst or ABSENT
        if t.icmp_type is not None:
            dst += f" type {t.icmp_type}/{t.icmp_code if t.icmp_code is not None else ABSENT}"
        return src, dst
    return endpoint(t.src, t.sport), endpoint(t.dst, t.dport)


def nat_destination(flow: Flow) -> str | None:
    """Where the original direction really went, when NAT rewrote the destination."""
    if not flow.dnat:
        return None
    return tuple_ends(flow, flow.reply)[0]


def nat_source(flow: Flow) -> str | None:
    """What the source was rewritten to, when NAT rewrote it."""
    if not flow.snat:
        return None
    r = flow.reply
    if flow.protonum in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return r.dst or ABSENT
    return endpoint(r.dst, r.dport)


# --- JSON ------------------------------------------------------------------------------


def _tuple_json(t: Tuple, packets: int | None, nbytes: int | None) -> dict[str, Any]:
    return {
        "src": t.src,
        "dst": t.dst,
        "sport": t.sport,
        "dport": t.dport,
        "icmp_type": t.icmp_type,
        "icmp_code": t.icmp_code,
        "icmp_id": t.icmp_id,
        "packets": packets,
        "bytes": nbytes,
    }


def rate_json(rate: Rate | None) -> dict[str, float] | None:
    if rate is None:
        return None
    return {
        "orig_bytes_per_s": rate.orig_bytes_per_s,
        "reply_bytes_per_s": rate.reply_bytes_per_s,
        "orig_packets_per_s": rate.orig_packets_per_s,
        "reply_packets_per_s": rate.reply_packets_per_s,
    }


def flow_json(flow: Flow, rate: Rate | None, now: float) -> dict[str, Any]:
    """One FLOW object of the JSON-lines schema in design.md: every key, null when absent.
    `now`: the sample's time (unix seconds), which the timeout's seconds left count to."""
    return {
        "id": flow.id,
        "family": flow.family_name,
        "proto": flow.proto,
        "protonum": flow.protonum,
        "state": flow.state_name,
        "status": flow.status_names,
        "timeout": flow.timeout_at(now),
        "mark": flow.mark,
        "zone": flow.zone,
        "use": flow.use,
        "start": None if flow.start is None else flow.start / 1e9,
        "orig": _tuple_json(flow.orig, flow.orig_packets, flow.orig_bytes),
        "reply": _tuple_json(flow.reply, flow.reply_packets, flow.reply_bytes),
        "rate": rate_json(rate),
    }


def sample_json(sample: Sample, rows: Iterable[FlowRow] | None = None) -> str:
    """One line of `-o json`: the sample's header and its (possibly filtered) flows."""
    snap = sample.snapshot
    shown = sample.rows if rows is None else rows
    obj = {
        "time": snap.time_wall,
        "interval": sample.interval,
        "count": snap.table_count if snap.table_count is not None else len(snap.flows),
        "max": snap.table_max,
        "flows": [flow_json(f, r, snap.time_wall) for f, r in shown],
    }
    return json.dumps(obj, separators=(",", ":"))


# --- CSV -------------------------------------------------------------------------------

CSV_COLUMNS: tuple[str, ...] = (
    "time",
    "id",
    "family",
    "proto",
    "protonum",
    "state",
    "status",
    "timeout",
    "mark",
    "zone",
    "use",
    "start",
    *(
        f"{d}_{k}"
        for d in ("orig", "reply")
        for k in (
            "src",
            "dst",
            "sport",
            "dport",
            "icmp_type",
            "icmp_code",
            "icmp_id",
            "packets",
            "bytes",
        )
    ),
    "orig_bytes_per_s",
    "reply_bytes_per_s",
    "orig_packets_per_s",
    "reply_packets_per_s",
)


def _cell(v: Any) -> Any:
    return "" if v is None else v


def csv_rows(sample: Sample, rows: Iterable[FlowRow] | None = None) -> list[list[Any]]:
    out = []
    shown = sample.rows if rows is None else rows
    now = sample.snapshot.time_wall
    t = f"{now:.3f}"
    for flow, rate in shown:
        j = flow_json(flow, rate, now)
        row: list[Any] = [t, *(j[k] for k in CSV_COLUMNS[1:6])]
        row.append("|".join(j["status"]))
        row += [j[k] for k in CSV_COLUMNS[7:12]]
        for d in ("orig", "reply"):
            row += list(j[d].values())
        r = j["rate"] or {}
        row += [r.get(k) for k in CSV_COLUMNS[-4:]]
        out.append([_cell(v) for v in row])
    return out


def csv_text(
    rows: Sequence[Sequence[Any]], header: bool, columns: Sequence[str] = CSV_COLUMNS
) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


# --- text (like top -b) ----------------------------------------------------------------

TEXT_COLUMNS = ("PROTO", "STATE", "SOURCE", "DESTINATION", "ORIG/s", "REPLY/s", "PKT/s")
TEXT_COLUMNS_TAIL = ("BYTES", "TIMEOUT", "MARK", "ZONE")


def summary_line(sample: Sample, bits: bool = False) -> str:
    """The top-of-iteration header: time, table fill, protocol mix, total rates."""
    snap = sample.snapshot
    totals = sample.totals
    clock = time.strftime("%H:%M:%S", time.localtime(snap.time_wall))
    count = snap.table_count if snap.table_count is not None else len(snap.flows)
    parts = [f"cttop - {clock}"]
    if snap.table_max:
        parts.append(f"flows {count}/{snap.table_max} ({100.0 * count / snap.table_max:.1f}%)")
    else:
        parts.append(f"flows {count}")
    mix = sorted(totals.by_proto.items(), key=lambda kv: (-kv[1], kv[0]))
    if mix:
        parts.append(" ".join(f"{name} {n}" for name, n in mix))
    rate = totals.rate
    parts.append(
        "orig "
        + human_rate(rate.orig_bytes_per_s if rate else None, bits)
        + " reply "
        + human_rate(rate.reply_bytes_per_s if rate else None, bits)
    )
    if totals.new is not None:
        parts.append(f"new {totals.new} gone {totals.vanished}")
    if totals.no_counters:
        parts.append(f"accounting off for {totals.no_counters} flows")
    if snap.skipped:
        parts.append(f"{snap.skipped} malformed messages skipped")
    if snap.resized:
        parts.append("hash table resized during the dump: flows may be missing")
    return "  ".join(parts)


def text_row(flow: Flow, rate: Rate | None, now: float, bits: bool = False) -> list[str]:
    src, dst = tuple_ends(flow, flow.orig)
    real = nat_destination(flow)
    if real is not None:
        dst += f" → {real}"
    snat = nat_source(flow)
    if snat is not None:
        src += f" → {snat}"
    nbytes = None
    if flow.orig_bytes is not None or flow.reply_bytes is not None:
        nbytes = (flow.orig_bytes or 0) + (flow.reply_bytes or 0)
    pkts = None if rate is None else rate.orig_packets_per_s + rate.reply_packets_per_s
    return [
        flow.proto,
        flow.state_name or ABSENT,
        src,
        dst,
        human_rate(None if rate is None else rate.orig_bytes_per_s, bits),
        human_rate(None if rate is None else rate.reply_bytes_per_s, bits),
        ABSENT if pkts is None else f"{pkts:.1f}",
        human(nbytes),
        duration(flow.timeout_at(now)),
        ABSENT if flow.mark is None else str(flow.mark),
        str(flow.zone),
    ]


_RIGHT = {4, 5, 6, 7, 8, 9, 10}


def text_table(sample: Sample, rows: Iterable[FlowRow] | None = None, bits: bool = False) -> str:
    """One iteration of `-o text`: the summary line, a blank line, then a fixed-width table."""
    header = [*TEXT_COLUMNS, *TEXT_COLUMNS_TAIL]
    shown = sample.rows if rows is None else rows
    now = sample.snapshot.time_wall
    body = [text_row(f, r, now, bits) for f, r in shown]
    widths = [len(h) for h in header]
    for row in body:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in _RIGHT else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    lines = [summary_line(sample, bits), "", line(header)]
    lines.extend(line(r) for r in body)
    return "\n".join(lines) + "\n"


# --- grouped output (--group) ------------------------------------------------------------

GROUP_FIELDS = ("src", "dst", "protonum", "dport", "state", "mark", "zone")
GROUP_COUNTERS = ("orig_bytes", "reply_bytes", "orig_packets", "reply_packets")


def group_json(g: GroupRow) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": g.label, "flows": g.flows}
    for name in GROUP_FIELDS:
        obj[name] = getattr(g, name)
    for name in GROUP_COUNTERS:
        obj[name] = getattr(g, name)
    obj["rate"] = rate_json(g.rate)
    return obj


def _sample_header(sample: Sample) -> dict[str, Any]:
    snap = sample.snapshot
    return {
        "time": snap.time_wall,
        "interval": sample.interval,
        "count": snap.table_count if snap.table_count is not None else len(snap.flows),
        "max": snap.table_max,
    }


def groups_json(sample: Sample, groups: Sequence[GroupRow], mode: str) -> str:
    obj = _sample_header(sample)
    obj["group"] = mode
    obj["groups"] = [group_json(g) for g in groups]
    return json.dumps(obj, separators=(",", ":"))


GROUP_CSV_COLUMNS = (
    "time",
    "group",
    "key",
    "flows",
    *GROUP_FIELDS,
    *GROUP_COUNTERS,
    "orig_bytes_per_s",
    "reply_bytes_per_s",
    "orig_packets_per_s",
    "reply_packets_per_s",
)


def groups_csv(sample: Sample, groups: Sequence[GroupRow], header: bool) -> str:
    t = f"{sample.snapshot.time_wall:.3f}"
    rows = []
    for g in groups:
        r = rate_json(g.rate) or {}
        row = [t, g.group, g.label, g.flows]
        row += [getattr(g, n) for n in GROUP_FIELDS]
        row += [getattr(g, n) for n in GROUP_COUNTERS]
        row += [r.get(k) for k in GROUP_CSV_COLUMNS[-4:]]
        rows.append([_cell(v) for v in row])
    return csv_text(rows, header, GROUP_CSV_COLUMNS)


def groups_text(sample: Sample, groups: Sequence[GroupRow], bits: bool = False) -> str:
    header = ["GROUP", "FLOWS", "ORIG/s", "REPLY/s", "PKT/s", "BYTES"]
    body = []
    for g in groups:
        rate = g.rate
        pkts = None if rate is None else rate.orig_packets_per_s + rate.reply_packets_per_s
        nbytes = None
        if g.orig_bytes is not None or g.reply_bytes is not None:
            nbytes = (g.orig_bytes or 0) + (g.reply_bytes or 0)
        body.append(
            [
                g.label,
                str(g.flows),
                human_rate(None if rate is None else rate.orig_bytes_per_s, bits),
                human_rate(None if rate is None else rate.reply_bytes_per_s, bits),
                ABSENT if pkts is None else f"{pkts:.1f}",
                human(nbytes),
            ]
        )
    widths = [len(h) for h in header]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    lines = [summary_line(sample, bits), "", line(header)]
    lines.extend(line(r) for r in body)
    return "\n".join(lines) + "\n"
