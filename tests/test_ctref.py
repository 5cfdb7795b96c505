"""The reference parser of `conntrack -L -o extended,id` output, and flow comparison."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ctref import (
    ConntrackParseError,
    compare_flow,
    match_flows,
    parse_conntrack_line,
    parse_conntrack_list,
)
from tests.lab import MIX_SIZE, check_entry, expected_entries, populate_mix
from tests.netns import NetNS

SAMPLE = Path(__file__).parent / "fixtures" / "conntrack_L_sample.txt"

TCP_LINE = (
    "ipv4     2 tcp      6 99 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=80 "
    "packets=0 bytes=0 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1000 packets=0 "
    "bytes=0 [ASSURED] mark=5 zone=3 use=1 id=1548877227"
)
UNKNOWN_LINE = (
    "ipv4     2 unknown  99 99 src=10.0.0.1 dst=10.0.0.2 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 "
    "mark=0 use=1 id=2028097118"
)
ICMPV6_LINE = (
    "ipv6     10 icmpv6   58 99 src=::1 dst=::2 type=128 code=0 id=7 [UNREPLIED] src=::2 dst=::1 "
    "type=129 code=0 id=7 mark=0 use=1 id=3996091319"
)
GRE_LINE = (
    "ipv4     2 gre      47 99 src=10.0.0.1 dst=10.0.0.2 srckey=0x5 dstkey=0x6 [UNREPLIED] "
    "src=10.0.0.2 dst=10.0.0.1 srckey=0x6 dstkey=0x5 mark=0 use=1 id=4289857859"
)
DCCP_LINE = (
    "ipv4     2 dccp     33 99 src=10.0.0.1 dst=10.0.0.2 sport=0 dport=0 [UNREPLIED] "
    "src=10.0.0.2 dst=10.0.0.1 sport=0 dport=0 mark=0 use=1 id=4266739134"
)
# Real output of `conntrack -L -o extended,id,ktimestamp` (nf_conntrack_timestamp=1).
KTIMESTAMP_LINE = (
    "ipv4     2 tcp      6 3598 NONE src=10.0.1.1 dst=10.0.1.2 sport=3000 dport=443 packets=0 "
    "bytes=0 [UNREPLIED] src=10.0.1.2 dst=10.0.1.1 sport=443 dport=3000 packets=0 bytes=0 mark=0 "
    "delta-time=1 [start=Thu Nov 26 14:12:44 2026] use=1 id=4251680383"
)
UDP_BASE = (
    "ipv4     2 udp      17 30 src=10.0.0.1 dst=10.0.0.2 sport=5 dport=53 "
    "src=10.0.0.2 dst=10.0.0.1 sport=53 dport=5"
)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with TZ=UTC (conntrack prints [start=] in local time)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def as_json_flow(ref: dict[str, Any], start: float | None = None) -> dict[str, Any]:
    """A cttop JSON FLOW object that agrees with a parsed reference flow."""
    status = ["CONFIRMED"]
    if not ref["unreplied"]:
        status.insert(0, "SEEN_REPLY")
    for key, names in (
        ("assured", ["ASSURED"]),
        ("offload", ["ASSURED", "OFFLOAD"]),
        ("hw_offload", ["ASSURED", "OFFLOAD", "HW_OFFLOAD"]),
    ):
        if ref[key]:
            status += names
    return {
        "id": ref["id"],
        "family": ref["family"],
        "proto": ref["proto"],
        "protonum": ref["protonum"],
        "state": ref["state"],
        "status": status,
        "timeout": ref["timeout"],
        "mark": ref["mark"],
        "zone": ref["zone"],
        "use": ref["use"],
        "start": start,
        "orig": copy.deepcopy(ref["orig"]),
        "reply": copy.deepcopy(ref["reply"]),
        "rate": None,
    }


# --- the captured sample --------------------------------------------------------------------


def test_sample_parses_into_the_known_mix() -> None:
    refs = parse_conntrack_list(SAMPLE.read_text())
    assert len(refs) == MIX_SIZE
    problems = []
    for entry in expected_entries(dccp_tracked=False):  # captured on kernel 6.18
        found = [ref for ref in refs if entry.matches(ref)]
        if len(found) != 1:
            problems.append(f"{entry.kind}: {len(found)} matching lines")
            continue
        problems += check_entry(entry, found[0])
    assert problems == []


def test_sample_covers_every_token_kind_conntrack_printed() -> None:
    refs = parse_conntrack_list(SAMPLE.read_text())
    assert {r["proto"] for r in refs} == {
        "tcp",
        "udp",
        "icmp",
        "icmpv6",
        "sctp",
        "gre",
        "udplite",
        "dccp",
        "99",
    }
    assert {r["family"] for r in refs} == {"ipv4", "ipv6"}
    assert all(isinstance(r["id"], int) and r["use"] == 1 for r in refs)
    assert all(r["delta_time"] is not None and r["start"] is None for r in refs)
    assert len({r["id"] for r in refs}) == len(refs)
    gre = next(r for r in refs if r["proto"] == "gre")
    assert (gre["orig"]["sport"], gre["orig"]["dport"]) == (0x5, 0xFFFF)
    assert (gre["reply"]["sport"], gre["reply"]["dport"]) == (0xFFFF, 0x5)
    icmp = next(r for r in refs if r["proto"] == "icmp" and r["orig"]["icmp_type"] == 13)
    assert (icmp["reply"]["icmp_type"], icmp["reply"]["icmp_id"]) == (14, 77)
    assert icmp["orig"]["sport"] is None and icmp["state"] is None
    assert any(r["unreplied"] and r["assured"] for r in refs)
    assert any(r["orig"]["packets"] is None for r in refs)
    assert any(r["helper"] == "ftp" for r in refs)
    assert {r["zone_orig"] for r in refs} == {None, 4}
    assert {r["zone_reply"] for r in refs} == {None, 5}


# --- hand-made lines, one per token kind ----------------------------------------------------


def test_tcp_line_from_the_brief() -> None:
    flow = parse_conntrack_line(TCP_LINE)
    assert flow == {
        "id": 1548877227,
        "family": "ipv4",
        "proto": "tcp",
        "protonum": 6,
        "state": "ESTABLISHED",
        "timeout": 99,
        "mark": 5,
        "zone": 3,
        "use": 1,
        "orig": {
            "src": "10.0.0.1",
            "dst": "10.0.0.2",
            "sport": 1000,
            "dport": 80,
            "icmp_type": None,
            "icmp_code": None,
            "icmp_id": None,
            "packets": 0,
            "bytes": 0,
        },
        "reply": {
            "src": "10.0.0.2",
            "dst": "10.0.0.1",
            "sport": 80,
            "dport": 1000,
            "icmp_type": None,
            "icmp_code": None,
            "icmp_id": None,
            "packets": 0,
            "bytes": 0,
        },
        "unreplied": True,
        "assured": True,
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


def test_unknown_protocol_has_no_l4_fields_nor_counters() -> None:
    flow = parse_conntrack_line(UNKNOWN_LINE)
    assert (flow["proto"], flow["protonum"], flow["state"], flow["timeout"]) == ("99", 99, None, 99)
    assert set(flow["orig"].values()) == {"10.0.0.1", "10.0.0.2", None}
    assert flow["reply"]["packets"] is None
    assert (flow["mark"], flow["zone"], flow["id"]) == (0, 0, 2028097118)


def test_icmpv6_type_code_id() -> None:
    flow = parse_conntrack_line(ICMPV6_LINE)
    assert flow["family"] == "ipv6" and flow["proto"] == "icmpv6"
    assert (flow["orig"]["icmp_type"], flow["orig"]["icmp_code"], flow["orig"]["icmp_id"]) == (
        128,
        0,
        7,
    )
    assert (flow["reply"]["icmp_type"], flow["reply"]["src"]) == (129, "::2")
    assert flow["orig"]["sport"] is None
    assert flow["id"] == 3996091319  # the trailing id, not the ICMP id


def test_gre_keys_are_hex_ports() -> None:
    flow = parse_conntrack_line(GRE_LINE)
    assert (flow["orig"]["sport"], flow["orig"]["dport"]) == (5, 6)
    assert (flow["reply"]["sport"], flow["reply"]["dport"]) == (6, 5)


def test_dccp_without_state_prints_zero_ports() -> None:
    flow = parse_conntrack_line(DCCP_LINE)
    assert (flow["proto"], flow["state"], flow["orig"]["sport"]) == ("dccp", None, 0)


def test_ktimestamp_start(utc: None) -> None:
    flow = parse_conntrack_line(KTIMESTAMP_LINE)
    assert flow["delta_time"] == 1
    assert flow["start"] == 1795702364  # 2026-11-26 14:12:44 UTC
    assert flow["stop"] is None and flow["use"] == 1 and flow["id"] == 4251680383


def test_all_trailer_tokens(utc: None) -> None:
    line = (
        f"{UDP_BASE} [ASSURED] mark=1 secmark=2 secctx=system_u:object_r:unlabeled_t:s0 zone=4 "
        "delta-time=5 [start=Thu Jan  1 00:00:10 1970] [stop=Thu Jan  1 00:00:15 1970] "
        "helper=tftp use=2 id=9 labels=eth0-in,foo"
    )
    flow = parse_conntrack_line(line)
    assert {k: flow[k] for k in ("mark", "secmark", "secctx", "zone", "delta_time")} == {
        "mark": 1,
        "secmark": 2,
        "secctx": "system_u:object_r:unlabeled_t:s0",
        "zone": 4,
        "delta_time": 5,
    }
    assert (flow["start"], flow["stop"]) == (10, 15)
    assert (flow["helper"], flow["use"], flow["id"]) == ("tftp", 2, 9)
    assert flow["labels"] == ["eth0-in", "foo"]
    assert flow["unreplied"] is False and flow["assured"] is True


def test_bare_labels_token_means_no_named_label() -> None:
    assert parse_conntrack_line(f"{UDP_BASE} use=1 id=3 labels")["labels"] == []


@pytest.mark.parametrize(
    ("tag", "key"),
    [("[OFFLOAD]", "offload"), ("[HW_OFFLOAD]", "hw_offload"), ("[ASSURED]", "assured")],
)
def test_printed_flags(tag: str, key: str) -> None:
    flow = parse_conntrack_line(f"{UDP_BASE} {tag} mark=0 use=1 id=1")
    flags = {k: flow[k] for k in ("offload", "hw_offload", "assured")}
    assert flags == {k: k == key for k in flags}


def test_offloaded_entry_without_timeout_and_state() -> None:
    line = (
        "ipv4     2 tcp      6 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 "
        "dst=10.0.0.1 sport=2 dport=1 [OFFLOAD] mark=0 use=2 id=5"
    )
    flow = parse_conntrack_line(line)
    assert (flow["timeout"], flow["state"], flow["offload"]) == (None, None, True)


def test_directional_zones() -> None:
    line = (
        "ipv4     2 udp      17 30 src=10.0.0.1 dst=10.0.0.2 sport=5 dport=53 zone-orig=4 "
        "packets=1 bytes=2 src=10.0.0.2 dst=10.0.0.1 sport=53 dport=5 zone-reply=5 packets=3 "
        "bytes=4 mark=0 use=1 id=1"
    )
    flow = parse_conntrack_line(line)
    assert (flow["zone_orig"], flow["zone_reply"], flow["zone"]) == (4, 5, 0)
    assert (flow["orig"]["bytes"], flow["reply"]["packets"]) == (2, 3)


def test_line_without_extended_columns() -> None:
    flow = parse_conntrack_line(ICMPV6_LINE.split(None, 2)[2])
    assert flow["family"] == "ipv6" and flow["proto"] == "icmpv6"
    flow = parse_conntrack_line(UNKNOWN_LINE.split(None, 2)[2])
    assert flow["family"] == "ipv4" and flow["proto"] == "99"


def test_list_skips_blank_and_summary_lines() -> None:
    text = (
        f"{TCP_LINE}\n\n{GRE_LINE}\n"
        "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
    )
    assert [f["proto"] for f in parse_conntrack_list(text)] == ["tcp", "gre"]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(TCP_LINE + " newfield=1", id="unknown key at the end"),
        pytest.param(TCP_LINE.replace("mark=5", "mark=5 frob"), id="unknown bare word"),
        pytest.param(TCP_LINE.replace("[ASSURED]", "[DYING]"), id="unknown flag"),
        pytest.param(TCP_LINE.replace("sport=1000 dport=80", "sport=1000"), id="missing dport"),
        pytest.param(TCP_LINE.replace("mark=5 zone=3", "zone=3 mark=5"), id="out of order"),
        pytest.param(TCP_LINE.replace("use=1", "use=1 use=1"), id="repeated"),
        pytest.param(TCP_LINE.replace("ESTABLISHED", "OPEN"), id="state not of tcp"),
        pytest.param(TCP_LINE.replace("tcp      6", "udp      6"), id="name/number mismatch"),
        pytest.param(UDP_BASE.replace("30 src", "30 ESTABLISHED src"), id="state on udp"),
        pytest.param(TCP_LINE.replace("packets=0 bytes=0 [UN", "packets=0 [UN"), id="no bytes"),
        pytest.param(TCP_LINE.replace("src=10.0.0.1", "src=10.0.0.x", 1), id="bad address"),
        pytest.param(GRE_LINE.replace("srckey=0x5", "srckey=0xzz"), id="bad key"),
        pytest.param(TCP_LINE.replace("ipv4     2", "ipv4     10"), id="family mismatch"),
        pytest.param(TCP_LINE.replace("ipv4     2", "unknown  7"), id="unknown family"),
        pytest.param(TCP_LINE.replace("[ASSURED]", "[start=yesterday]"), id="bad start"),
        pytest.param("[NEW] " + TCP_LINE, id="event prefix"),
        pytest.param("ipv4     2 tcp", id="truncated"),
    ],
)
def test_unknown_or_malformed_tokens_raise(line: str) -> None:
    with pytest.raises(ConntrackParseError):
        parse_conntrack_line(line)


# --- compare_flow / match_flows ---------------------------------------------------------------


def test_agreeing_flows_have_no_differences() -> None:
    for ref in parse_conntrack_list(SAMPLE.read_text()):
        assert compare_flow(ref, as_json_flow(ref, start=time.time() - ref["delta_time"])) == []


def test_each_field_difference_is_reported() -> None:
    ref = parse_conntrack_line(TCP_LINE)
    cases: list[tuple[str, Any]] = [
        ("id", 1),
        ("mark", None),
        ("zone", 0),
        ("use", 2),
        ("state", "SYN_SENT"),
        ("proto", "udp"),
        ("timeout", None),
    ]
    for key, value in cases:
        ours = as_json_flow(ref)
        ours[key] = value
        diffs = compare_flow(ref, ours)
        assert len(diffs) == 1 and diffs[0].startswith(f"{key}:"), (key, diffs)
    ours = as_json_flow(ref)
    ours["reply"]["bytes"] = None
    assert compare_flow(ref, ours) == ["reply.bytes: conntrack=0 ours=None"]
    ours = as_json_flow(ref)
    del ours["use"]
    assert compare_flow(ref, ours) == ["use: missing from our flow"]
    assert compare_flow(ref, ours, ignore={"use"}) == []


def test_status_is_compared_through_what_conntrack_prints() -> None:
    ref = parse_conntrack_line(TCP_LINE)  # [UNREPLIED] ... [ASSURED]
    ours = as_json_flow(ref)
    ours["status"] = ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert [d.split(":")[0] for d in compare_flow(ref, ours)] == ["unreplied"]
    ours["status"] = ["CONFIRMED"]
    assert [d.split(":")[0] for d in compare_flow(ref, ours)] == ["printed flag"]
    offloaded = parse_conntrack_line(TCP_LINE.replace("[ASSURED]", "[OFFLOAD]"))
    ours = as_json_flow(offloaded)
    assert ours["status"] == ["CONFIRMED", "ASSURED", "OFFLOAD"]  # ASSURED hidden by OFFLOAD
    assert compare_flow(offloaded, ours) == []
    ours["status"].append("HW_OFFLOAD")
    assert [d.split(":")[0] for d in compare_flow(offloaded, ours)] == ["printed flag"]


def test_timeout_slack() -> None:
    ref = parse_conntrack_line(TCP_LINE)
    ours = as_json_flow(ref)
    ours["timeout"] = 97
    assert compare_flow(ref, ours, timeout_slack=2) == []
    assert len(compare_flow(ref, ours, timeout_slack=1)) == 1


def test_addresses_compare_normalized() -> None:
    ref = parse_conntrack_line(ICMPV6_LINE)
    ours = as_json_flow(ref)
    ours["orig"]["dst"] = "0:0::0002"
    assert compare_flow(ref, ours) == []
    ours["orig"]["dst"] = "::3"
    assert compare_flow(ref, ours) == ["orig.dst: conntrack='::2' ours='::3'"]


def test_dccp_printed_zero_port_matches_our_null_but_tcp_does_not() -> None:
    dccp = parse_conntrack_line(DCCP_LINE)
    ours = as_json_flow(dccp)
    for tup in (ours["orig"], ours["reply"]):
        tup["sport"] = tup["dport"] = None
    assert compare_flow(dccp, ours) == []
    tcp = parse_conntrack_line(TCP_LINE)
    ours = as_json_flow(tcp)
    ours["orig"]["sport"] = None
    assert compare_flow(tcp, ours) == ["orig.sport: conntrack=1000 ours=None"]


def test_start_against_delta_time_and_ktimestamp(utc: None) -> None:
    ref = parse_conntrack_line(KTIMESTAMP_LINE)  # delta-time=1, start 1795702364
    assert compare_flow(ref, as_json_flow(ref, start=1795702364.7)) == []
    assert len(compare_flow(ref, as_json_flow(ref, start=1795702300.0))) == 1
    assert len(compare_flow(ref, as_json_flow(ref, start=None))) == 1
    ref["start"] = None  # what plain `-o extended,id` gives
    ok = as_json_flow(ref, start=1000.0)
    assert compare_flow(ref, ok, ref_time=1001.2) == []
    assert len(compare_flow(ref, ok, ref_time=1100.0)) == 1
    assert compare_flow(ref, ok) == []  # no reference time: presence only
    no_ts = parse_conntrack_line(TCP_LINE)
    assert len(compare_flow(no_ts, as_json_flow(no_ts, start=1000.0))) == 1


def test_match_flows_pairs_by_id_zone_and_orig_tuple() -> None:
    refs = parse_conntrack_list("\n".join([TCP_LINE, GRE_LINE, DCCP_LINE, ICMPV6_LINE]))
    ours = [as_json_flow(r) for r in refs]
    ours[2]["orig"]["sport"] = ours[2]["orig"]["dport"] = None  # dccp: absent == printed 0
    ours[3]["orig"]["src"] = "0::1"
    extra = as_json_flow(refs[0])
    extra["zone"] = 0  # same id and tuple, other zone: another flow
    duplicate = as_json_flow(refs[1])
    unmatched = parse_conntrack_line(UNKNOWN_LINE)
    pairs, only_ref, only_ours = match_flows([*refs, unmatched], [*ours, extra, duplicate])
    assert [(r["proto"], o["proto"]) for r, o in pairs] == [
        ("tcp", "tcp"),
        ("gre", "gre"),
        ("dccp", "dccp"),
        ("icmpv6", "icmpv6"),
    ]
    assert all(o is ours[i] for i, (_, o) in enumerate(pairs))
    assert only_ref == [unmatched]
    assert len(only_ours) == 2
    assert any(o is extra for o in only_ours) and any(o is duplicate for o in only_ours)


# --- live output (root) --------------------------------------------------------------------


@pytest.mark.root
def test_live_output_parses_with_and_without_ktimestamp(netns_factory: Any) -> None:
    ns: NetNS = netns_factory(timestamp=True)
    populate_mix(ns)
    before = time.time()
    plain = parse_conntrack_list(ns.conntrack_list("extended,id"))
    stamped = parse_conntrack_list(ns.conntrack_list("extended,id,ktimestamp"))
    after = time.time()
    assert len(plain) == len(stamped) == MIX_SIZE
    for flow in stamped:
        assert flow["start"] is not None and before - 120 <= flow["start"] <= after
        assert abs(flow["start"] - (after - flow["delta_time"])) <= 2
    pairs, only_plain, only_stamped = match_flows(plain, [as_json_flow(f) for f in stamped])
    assert (len(pairs), only_plain, only_stamped) == (MIX_SIZE, [], [])
