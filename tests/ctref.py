"""Reference parser for `conntrack -L -o extended,id` (conntrack-tools 1.4.7), and comparison.

The text comes from libnetfilter_conntrack's ``__snprintf_conntrack_default``, whose fixed order is:

    [l3name l3num]  proto protonum  [timeout]  [STATE]
    src= dst= <l4>  [zone-orig=N]  [packets= bytes=]  [UNREPLIED]
    src= dst= <l4>  [zone-reply=N] [packets= bytes=]
    [HW_OFFLOAD] | [OFFLOAD] | [ASSURED]          (at most one, in that precedence)
    [mark=] [secmark=] [secctx=] [zone=] [delta-time=] [[start=...]] [[stop=...]]
    [helper=] [use=] [id=] [labels=a,b]

where <l4> is ``sport= dport=`` (tcp, udp, udplite, sctp, dccp — printed even when the kernel
sent no ports: then 0), ``srckey=0x.. dstkey=0x..`` (gre) or ``type= code= id=`` (icmp, icmpv6),
and nothing for other protocols. Anything else raises `ConntrackParseError`, so that a new token
in conntrack's output shows up as a failure rather than as a silently missing field.

Timestamps: ``delta-time=N`` (seconds since the entry started, computed by conntrack at print time)
is printed whenever the kernel sent CTA_TIMESTAMP (net.netfilter.nf_conntrack_timestamp=1 when the
entry was created); ``[start=<ctime>]`` / ``[stop=<ctime>]`` only with ``-o ktimestamp``. ctime is
local time with one-second resolution; we convert it with the local time zone of this process.

The parsed dict has the shape of cttop's JSON FLOW object restricted to what conntrack prints (see
/work/shared/design.md), plus what only conntrack prints (flags, zones per direction, helper...).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Collection, Iterable
from typing import Any

from cttop.conntrack.const import DCCP_STATES, SCTP_STATES, TCP_STATES

RefFlow = dict[str, Any]
JsonFlow = dict[str, Any]

TUPLE_KEYS = (
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

# libnetfilter_conntrack's names for the layer-4 protocols it knows ("unknown" otherwise).
LIB_PROTO_NAMES = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    33: "dccp",
    47: "gre",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}
LIB_L3_NAMES = {"ipv4": 2, "ipv6": 10}
PORT_PROTOS = frozenset({6, 17, 33, 132, 136})
ICMP_PROTOS = frozenset({1, 58})
GRE = 47
DCCP = 33
# Which state names may follow the timeout. libnetfilter_conntrack prints the DCCP state from
# its *SCTP* name table (a bug), so a DCCP entry shows SCTP names.
LIB_STATE_NAMES = {6: TCP_STATES, 132: SCTP_STATES, 33: SCTP_STATES}

# The trailer, in the order libnetfilter_conntrack prints it.
TRAILER_ORDER = (
    "mark",
    "secmark",
    "secctx",
    "zone",
    "delta-time",
    "start",
    "stop",
    "helper",
    "use",
    "id",
    "labels",
)
FLAG_TAGS = {"[HW_OFFLOAD]": "hw_offload", "[OFFLOAD]": "offload", "[ASSURED]": "assured"}

_TOKEN_RE = re.compile(r"\[[^\]]*\]|\S+")
_STATE_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_SUMMARY_RE = re.compile(r"^conntrack v\S+ \(conntrack-tools\): \d+ flow entries have been \w+\.$")
_CTIME_FORMAT = "%a %b %d %H:%M:%S %Y"


class ConntrackParseError(ValueError):
    """A line of `conntrack -L` output that the reference parser does not understand."""


def _empty_tuple() -> dict[str, Any]:
    return dict.fromkeys(TUPLE_KEYS)


def _parse_ctime(text: str) -> int:
    return int(time.mktime(time.strptime(text, _CTIME_FORMAT)))


class _Cursor:
    def __init__(self, line: str) -> None:
        self.line = line
        self.toks = _TOKEN_RE.findall(line)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def error(self, what: str) -> ConntrackParseError:
        tok = self.peek()
        where = f"token {self.i} ({tok!r})" if tok is not None else "end of line"
        return ConntrackParseError(f"{what} at {where} in line: {self.line!r}")

    def next(self, what: str) -> str:
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected {what}")
        self.i += 1
        return tok

    def number(self, what: str) -> int:
        tok = self.next(what)
        if not tok.isdigit():
            self.i -= 1
            raise self.error(f"expected {what} (a number)")
        return int(tok)

    def key(self, key: str) -> str:
        """Consume ``key=value`` and return the value."""
        tok = self.peek()
        if tok is None or not tok.startswith(key + "="):
            raise self.error(f"expected {key}=")
        self.i += 1
        return tok[len(key) + 1 :]

    def key_int(self, key: str, base: int = 10) -> int:
        value = self.key(key)
        try:
            return int(value, base)
        except ValueError:
            self.i -= 1
            raise self.error(f"bad number in {key}=") from None

    def has_key(self, key: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.startswith(key + "=")


def _parse_tuple(cur: _Cursor, protonum: int, direction: str) -> tuple[dict[str, Any], int | None]:
    tup = _empty_tuple()
    tup["src"] = cur.key("src")
    tup["dst"] = cur.key("dst")
    for key in ("src", "dst"):
        try:
            ipaddress.ip_address(tup[key])
        except ValueError:
            cur.i -= 1
            raise cur.error(f"bad address in {key}=") from None
    if protonum in PORT_PROTOS:
        tup["sport"] = cur.key_int("sport")
        tup["dport"] = cur.key_int("dport")
    elif protonum == GRE:
        tup["sport"] = cur.key_int("srckey", 16)
        tup["dport"] = cur.key_int("dstkey", 16)
    elif protonum in ICMP_PROTOS:
        tup["icmp_type"] = cur.key_int("type")
        tup["icmp_code"] = cur.key_int("code")
        tup["icmp_id"] = cur.key_int("id")
    zone = cur.key_int(f"zone-{direction}") if cur.has_key(f"zone-{direction}") else None
    if cur.has_key("packets"):
        tup["packets"] = cur.key_int("packets")
        tup["bytes"] = cur.key_int("bytes")
    return tup, zone


def _is_l4_name(tok: str) -> bool:
    return tok == "unknown" or tok in LIB_PROTO_NAMES.values()


def parse_conntrack_line(line: str) -> RefFlow:
    """Parse one line of `conntrack -L -o extended,id` (``-o ktimestamp`` and no-`extended`
    lines are understood too) into a dict shaped like cttop's JSON FLOW object.

    Keys: id, family, proto, protonum, state, timeout, mark, zone, use, orig, reply (each with
    src, dst, sport, dport, icmp_type, icmp_code, icmp_id, packets, bytes), unreplied, assured,
    offload, hw_offload (the printed flag: at most one of the three is true), zone_orig,
    zone_reply, labels (list of names), helper, secctx, secmark, delta_time, start, stop (unix
    seconds, from ``[start=...]``/``[stop=...]``). Values not printed are None, except zone (0).
    """
    cur = _Cursor(line.strip())
    flow: RefFlow = {
        "id": None,
        "family": None,
        "proto": None,
        "protonum": None,
        "state": None,
        "timeout": None,
        "mark": None,
        "zone": 0,
        "use": None,
        "orig": None,
        "reply": None,
        "unreplied": False,
        "assured": False,
        "offload": False,
        "hw_offload": False,
        "zone_orig": None,
        "zone_reply": None,
        "labels": None,
        "helper": None,
        "secctx": None,
        "secmark": None,
        "delta_time": None,
        "start": None,
        "stop": None,
    }

    # Head: [l3name l3num] proto protonum [timeout] [STATE]
    first = cur.next("layer-3 or layer-4 protocol name")
    if first in LIB_L3_NAMES:
        l3num = cur.number("layer-3 protocol number")
        if l3num != LIB_L3_NAMES[first]:
            cur.i -= 1
            raise cur.error(f"layer-3 number does not match {first!r}")
        flow["family"] = first
        first = cur.next("layer-4 protocol name")
    elif first == "unknown" and len(cur.toks) > 2 and _is_l4_name(cur.toks[2]):
        # "unknown N tcp 6 ..." is an unknown family; "unknown 99 ..." a protocol without the
        # `extended` columns.
        cur.i -= 1
        raise cur.error("unknown layer-3 protocol")
    protonum = cur.number("layer-4 protocol number")
    if protonum > 255:
        cur.i -= 1
        raise cur.error("layer-4 protocol number out of range")
    if first != LIB_PROTO_NAMES.get(protonum, "unknown"):
        raise cur.error(f"protocol name {first!r} does not match number {protonum}")
    flow["protonum"] = protonum
    flow["proto"] = first if first != "unknown" else str(protonum)
    if (cur.peek() or "").isdigit():
        flow["timeout"] = cur.number("timeout")
    tok = cur.peek()
    if tok is not None and _STATE_RE.fullmatch(tok):
        names = LIB_STATE_NAMES.get(protonum)
        if names is None or tok not in names:
            raise cur.error(f"unexpected state for protocol {flow['proto']}")
        flow["state"] = cur.next("state")

    # Original direction, [UNREPLIED], reply direction, flag.
    flow["orig"], flow["zone_orig"] = _parse_tuple(cur, protonum, "orig")
    if cur.peek() == "[UNREPLIED]":
        cur.i += 1
        flow["unreplied"] = True
    flow["reply"], flow["zone_reply"] = _parse_tuple(cur, protonum, "reply")
    tok = cur.peek()
    if tok in FLAG_TAGS:
        flow[FLAG_TAGS[tok]] = True
        cur.i += 1

    # Trailer, in fixed order.
    last = -1
    while (tok := cur.peek()) is not None:
        if tok == "labels":
            # conntrack prints a bare "labels" when no set bit has a name in connlabel.conf.
            tok = "labels="
        if tok.startswith("[") and tok.endswith("]") and "=" in tok:
            key, _, value = tok[1:-1].partition("=")
        elif "=" in tok and not tok.startswith("["):
            key, _, value = tok.partition("=")
        else:
            raise cur.error("unknown token")
        bracketed = tok.startswith("[")
        if key not in TRAILER_ORDER or bracketed != (key in ("start", "stop")):
            raise cur.error("unknown token")
        pos = TRAILER_ORDER.index(key)
        if pos <= last:
            raise cur.error(f"{key}= out of order or repeated")
        last = pos
        try:
            if key in ("mark", "secmark", "zone", "delta-time", "use", "id"):
                if not value.isdigit():
                    raise ValueError(value)
                flow[key.replace("-", "_")] = int(value)
            elif key in ("start", "stop"):
                flow[key] = _parse_ctime(value)
            elif key == "labels":
                flow["labels"] = value.split(",") if value else []
            else:  # helper, secctx
                flow[key] = value
        except ValueError:
            raise cur.error(f"bad value for {key}") from None
        cur.i += 1

    if flow["family"] is None:  # no `-o extended`: infer it from the address
        flow["family"] = "ipv6" if ":" in flow["orig"]["src"] else "ipv4"
    return flow


def parse_conntrack_list(text: str) -> list[RefFlow]:
    """Parse the stdout of `conntrack -L -o extended,id`: one flow per non-empty line.

    conntrack's own summary line ("... flow entries have been shown.", normally on stderr) is
    skipped if present.
    """
    flows = []
    for line in text.splitlines():
        if not line.strip() or _SUMMARY_RE.match(line.strip()):
            continue
        flows.append(parse_conntrack_line(line))
    return flows


# --- comparison with cttop's JSON FLOW objects ----------------------------------------------


def _norm_addr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            return value
    return value


def _printed_flag(status: Iterable[str]) -> str | None:
    names = set(status)
    for name in ("HW_OFFLOAD", "OFFLOAD", "ASSURED"):
        if name in names:
            return name.lower()
    return None


def _ref_flag(ref: RefFlow) -> str | None:
    for key in ("hw_offload", "offload", "assured"):
        if ref.get(key):
            return key
    return None


def _state_equal(ref: RefFlow, ours_state: Any) -> bool:
    ref_state = ref.get("state")
    if ref_state == ours_state:
        return True
    protonum = ref.get("protonum")
    if protonum == DCCP and ref_state in SCTP_STATES:
        # libnetfilter_conntrack prints the DCCP state number with the SCTP names.
        idx = SCTP_STATES.index(ref_state)
        return idx < len(DCCP_STATES) and DCCP_STATES[idx] == ours_state
    # Out-of-range states print as NONE; cttop names them STATE_<n>.
    return ref_state == "NONE" and isinstance(ours_state, str) and ours_state.startswith("STATE_")


def compare_flow(
    ref: RefFlow,
    ours: JsonFlow,
    timeout_slack: int = 0,
    *,
    ref_time: float | None = None,
    start_slack: float = 2.0,
    ignore: Collection[str] = (),
) -> list[str]:
    """Differences between a parsed `conntrack -L` flow and one cttop JSON FLOW object.

    timeout_slack: allowed |ref timeout - our timeout| (the two were read at different times).
    ref_time: unix time at which `conntrack -L` ran; with it, ``delta-time`` is checked against
        our ``start`` (``ref_time - delta_time``, within start_slack seconds). ``[start=...]``
        (``-o ktimestamp``) is checked against our ``start`` without it. Without either, only
        the presence of a start time is compared.
    ignore: top-level keys to skip (e.g. {"use"}, or {"orig.packets"}-style "dir.key" names).

    Rules for what conntrack cannot print: unreplied is ``"SEEN_REPLY" not in status``; only the
    highest of HW_OFFLOAD > OFFLOAD > ASSURED is printed, so that is what is compared; a DCCP
    port printed as 0 matches our null (kernels without DCCP tracking send no ports, and
    conntrack prints 0); ``rate`` is ours only. Keys that conntrack prints but the JSON schema
    does not carry (helper, labels, zone_orig...) are compared only if ``ours`` has them.
    """
    diffs: list[str] = []

    def diff(key: str, r: Any, o: Any) -> None:
        diffs.append(f"{key}: conntrack={r!r} ours={o!r}")

    def want(key: str) -> bool:
        if key in ignore:
            return False
        if key not in ours:
            diffs.append(f"{key}: missing from our flow")
            return False
        return True

    for key in ("id", "family", "proto", "protonum", "mark", "zone", "use"):
        if want(key) and ref.get(key) != ours[key]:
            diff(key, ref.get(key), ours[key])

    if want("state") and not _state_equal(ref, ours["state"]):
        diff("state", ref.get("state"), ours["state"])

    if want("timeout"):
        r, o = ref.get("timeout"), ours["timeout"]
        if (r is None) != (o is None) or (
            r is not None and o is not None and abs(r - o) > timeout_slack
        ):
            diff("timeout", r, o)

    if want("status"):
        status = ours["status"] or []
        unreplied = "SEEN_REPLY" not in status
        if ref.get("unreplied") != unreplied:
            diff("unreplied", ref.get("unreplied"), f"{unreplied} (status {status})")
        if _ref_flag(ref) != _printed_flag(status):
            diff("printed flag", _ref_flag(ref), f"{_printed_flag(status)} (status {status})")

    protonum = ref.get("protonum")
    for direction in ("orig", "reply"):
        if not want(direction):
            continue
        r_tup, o_tup = ref.get(direction) or {}, ours[direction] or {}
        for key in TUPLE_KEYS:
            name = f"{direction}.{key}"
            if name in ignore:
                continue
            if key not in o_tup:
                diffs.append(f"{name}: missing from our flow")
                continue
            r, o = r_tup.get(key), o_tup[key]
            if key in ("src", "dst"):
                r, o = _norm_addr(r), _norm_addr(o)
            if r == o:
                continue
            if protonum == DCCP and key in ("sport", "dport") and r == 0 and o is None:
                continue
            diff(name, r_tup.get(key), o_tup[key])

    for key in ("zone_orig", "zone_reply", "helper", "labels", "secctx", "secmark"):
        if key in ours and key not in ignore and ref.get(key) != ours[key]:
            diff(key, ref.get(key), ours[key])

    if want("start"):
        diffs.extend(_compare_start(ref, ours["start"], ref_time, start_slack))
    return diffs


def _compare_start(
    ref: RefFlow, ours_start: Any, ref_time: float | None, slack: float
) -> list[str]:
    ref_has = ref.get("delta_time") is not None or ref.get("start") is not None
    if ref_has != (ours_start is not None):
        return [f"start: conntrack {'has' if ref_has else 'has no'} timestamp, ours={ours_start!r}"]
    if ours_start is None:
        return []
    if ref.get("start") is not None:
        # ctime() truncates to the second.
        if not ref["start"] - slack <= ours_start < ref["start"] + 1 + slack:
            return [f"start: conntrack [start=] {ref['start']} ours={ours_start!r}"]
    elif ref_time is not None:
        expected = ref_time - ref["delta_time"]
        if abs(expected - ours_start) > slack + 1:
            return [
                f"start: conntrack delta-time={ref['delta_time']} at {ref_time} "
                f"(start~{expected:.0f}) ours={ours_start!r}"
            ]
    return []


def _l4(value: Any) -> Any:
    return 0 if value is None else value


def flow_match_key(flow: RefFlow | JsonFlow) -> tuple[Any, ...]:
    """(id, zone, family, protonum, orig tuple): how flows of the two lists are paired.

    Absent ports/ICMP fields count as 0, because conntrack prints 0 for what the kernel did not
    send; compare_flow() then reports a real mismatch.
    """
    orig = flow.get("orig") or {}
    return (
        flow.get("id"),
        flow.get("zone") or 0,
        flow.get("family"),
        flow.get("protonum"),
        _norm_addr(orig.get("src")),
        _norm_addr(orig.get("dst")),
        _l4(orig.get("sport")),
        _l4(orig.get("dport")),
        _l4(orig.get("icmp_type")),
        _l4(orig.get("icmp_code")),
        _l4(orig.get("icmp_id")),
    )


def match_flows(
    refs: list[RefFlow], ours: list[JsonFlow]
) -> tuple[list[tuple[RefFlow, JsonFlow]], list[RefFlow], list[JsonFlow]]:
    """Pair flows by id + zone + original tuple: (pairs, only in refs, only in ours).

    Duplicates (a dump may repeat an entry) pair up in order; the extra copies are reported as
    unmatched.
    """
    waiting: dict[tuple[Any, ...], list[JsonFlow]] = {}
    for flow in ours:
        waiting.setdefault(flow_match_key(flow), []).append(flow)
    pairs: list[tuple[RefFlow, JsonFlow]] = []
    only_ref: list[RefFlow] = []
    for ref in refs:
        candidates = waiting.get(flow_match_key(ref))
        if candidates:
            pairs.append((ref, candidates.pop(0)))
        else:
            only_ref.append(ref)
    only_ours = [flow for group in waiting.values() for flow in group]
    return pairs, only_ref, only_ours
