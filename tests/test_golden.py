"""The golden fixture: a raw ctnetlink dump of the known mix, decoded by cttop, against what
`conntrack -L -o extended,id` printed for the very same table state.

tests/fixtures/golden/ holds the kernel's messages byte for byte (mix.nlmsgs), conntrack's text
(mix.conntrack-L.txt) and the capture's meta data; tests/fixtures/capture_golden.py explains why
the two describe one state to the second (so: zero timeout slack, exact counters, exact start
second). Regenerate with ``python -m tests.fixtures.capture_golden`` (root). Runs anywhere.

Every expected value here comes from the captured conntrack text or the meta file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cttop.conntrack import const as c
from cttop.conntrack import decode
from cttop.conntrack.client import ConntrackClient
from cttop.conntrack.decode import FLOW_MESSAGE_TYPES, FastDecoder, decode_message
from cttop.conntrack.model import Flow, FlowKey
from cttop.fmt import flow_json, sample_json
from cttop.netlink import (
    NFGENMSG,
    NLM_F_MULTI,
    NLMSG_HDR,
    DumpStats,
    align4,
    iter_attrs,
)
from cttop.netlink import split_datagram as split_messages
from cttop.sampler import Sampler
from tests.ctref import compare_flow, match_flows, parse_conntrack_list
from tests.fixtures.capture_golden import (
    GOLDEN_DIR,
    META,
    NLMSGS,
    REFERENCE,
    differing_attrs,
)

Ref = dict[str, Any]
Json = dict[str, Any]


@dataclass
class Golden:
    meta: dict[str, Any]
    data: bytes
    raw: list[bytes]  # every message, as captured
    flows: dict[FlowKey, Flow]  # decoded and deduplicated (the last copy wins, as in a dump)
    refs: list[Ref]
    pairs: list[tuple[Ref, Json, Flow]]
    only_ref: list[Ref]
    only_ours: list[Json]
    decode_errors: list[str]
    malformed: int


def _load(directory: Path = GOLDEN_DIR) -> Golden:
    meta = json.loads((directory / META).read_text())
    data = (directory / NLMSGS).read_bytes()
    stats = DumpStats()
    raw: list[bytes] = []
    flows: dict[FlowKey, Flow] = {}
    errors: list[str] = []
    for msg in split_messages(data, stats):
        raw.append(msg.raw())
        try:
            flow = decode_message(msg.buf, msg.off, msg.end)
        except Exception as exc:  # every message of the capture must decode: report, not raise
            errors.append(f"message at offset {msg.off}: {exc!r}")
            continue
        flows[flow.key] = flow
    refs = parse_conntrack_list((directory / REFERENCE).read_text())
    by_json: dict[int, Flow] = {}
    ours: list[Json] = []
    for flow in flows.values():
        j = flow_json(flow, None, 0.0)  # decoded at time 0: expires is the timeout
        by_json[id(j)] = flow
        ours.append(j)
    pairs, only_ref, only_ours = match_flows(refs, ours)
    return Golden(
        meta=meta,
        data=data,
        raw=raw,
        flows=flows,
        refs=refs,
        pairs=[(r, o, by_json[id(o)]) for r, o in pairs],
        only_ref=only_ref,
        only_ours=only_ours,
        decode_errors=errors,
        malformed=stats.malformed,
    )


@pytest.fixture(scope="module")
def golden() -> Golden:
    return _load()


# --- the fixture itself ------------------------------------------------------------------


def test_fixture_is_whole_netlink_messages(golden: Golden) -> None:
    assert golden.malformed == 0
    assert len(golden.raw) == golden.meta["messages"]
    # Concatenated exactly: each message's own length, padded to 4 bytes, end to end.
    assert sum(align4(len(m)) for m in golden.raw) == len(golden.data)
    for m in golden.raw:
        length, msg_type, flags, _seq, _pid = NLMSG_HDR.unpack_from(m, 0)
        assert length == len(m)
        assert msg_type in FLOW_MESSAGE_TYPES
        assert flags & NLM_F_MULTI  # part of a dump
        family = NFGENMSG.unpack_from(m, NLMSG_HDR.size)[0]
        assert family in (c.AF_INET, c.AF_INET6)


def test_reference_is_the_capture(golden: Golden) -> None:
    assert len(golden.refs) == golden.meta["flows"]
    assert all(ref["delta_time"] is not None for ref in golden.refs)  # timestamps were on
    assert golden.meta["capture_time"] == int(golden.meta["conntrack_ran"][0])
    assert int(golden.meta["conntrack_ran"][0]) == int(golden.meta["conntrack_ran"][1])


# --- decoder vs conntrack ------------------------------------------------------------------


def test_every_message_decodes(golden: Golden) -> None:
    assert golden.decode_errors == []
    assert len(golden.flows) == golden.meta["flows"]


def test_every_flow_matches_conntrack_exactly(golden: Golden) -> None:
    ignore = () if golden.meta["use_stable"] else ("use",)
    problems = []
    for ref, ours, _flow in golden.pairs:
        diffs = compare_flow(
            ref,
            ours,
            timeout_slack=0,
            ref_time=golden.meta["capture_time"],
            start_slack=0,
            ignore=ignore,
        )
        problems += [f"id={ref['id']} {ref['proto']}: {d}" for d in diffs]
    assert problems == []
    assert golden.only_ref == []
    assert golden.only_ours == []
    assert len(golden.pairs) == golden.meta["flows"] == len(golden.refs)


def test_start_second_is_exact(golden: Golden) -> None:
    """conntrack's delta-time is time() - floor(start): with the capture second it is exact."""
    capture_time = golden.meta["capture_time"]
    problems = []
    for ref, ours, flow in golden.pairs:
        assert flow.start is not None and ours["start"] is not None
        want = capture_time - ref["delta_time"]
        if flow.start // 10**9 != want or int(ours["start"]) != want:
            problems.append((ref["id"], want, flow.start, ours["start"]))
    assert problems == []


def test_fast_decoder_matches_on_every_pass(golden: Golden) -> None:
    """The client's decoder (shapes learned on the first pass, compiled code afterwards) gives
    the same Flow as decode_message for every message, pass after pass, and so the same JSON."""
    decoder = FastDecoder()
    expected = [flow for _r, _o, flow in golden.pairs]
    for n in range(3):
        decoder.begin()
        flows: dict[FlowKey, Flow] = {}
        for msg in split_messages(golden.data, DumpStats()):
            family = msg.buf[msg.off + NLMSG_HDR.size]
            flow = decoder.decode(msg.buf, msg.payload_off + NFGENMSG.size, msg.end, family)
            flows[flow.key] = flow
        decoder.end()
        assert [flows.get(f.key) for f in expected] == expected
        assert len(flows) == len(expected)
        problems = []
        for ref, _ours, flow in golden.pairs:
            diffs = compare_flow(
                ref,
                flow_json(flows[flow.key], None, 0.0),
                timeout_slack=0,
                ref_time=golden.meta["capture_time"],
                start_slack=0,
                ignore=() if golden.meta["use_stable"] else ("use",),
            )
            problems += [f"pass {n} id={ref['id']}: {d}" for d in diffs]
        assert problems == []


def test_fast_decoder_needs_the_reference_only_on_the_first_pass(
    golden: Golden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a dump has been seen, every message of the same table decodes by a learned shape:
    the reference decoder (FastDecoder's fallback) is not called again."""
    fallbacks: list[int] = []
    reference = decode.decode_flow

    def counting(buf: bytes, off: int, end: int, family: int, now: float = 0.0) -> Flow:
        fallbacks.append(end - off)
        return reference(buf, off, end, family, now)

    monkeypatch.setattr(decode, "decode_flow", counting)
    decoder = FastDecoder()
    per_pass = []
    for _ in range(4):
        fallbacks.clear()
        decoder.begin()
        for msg in split_messages(golden.data, DumpStats()):
            family = msg.buf[msg.off + NLMSG_HDR.size]
            decoder.decode(msg.buf, msg.payload_off + NFGENMSG.size, msg.end, family)
        decoder.end()
        per_pass.append(sorted(fallbacks))
    assert per_pass[0]  # the first pass learns: the counter does see the fallbacks
    assert per_pass[1:] == [[], [], []]


# --- the mix is really covered ----------------------------------------------------------------
# Each case selects flows by what conntrack printed, requires at least one, and checks that our
# JSON carries the same values (and the right absence) for that feature.


def _no_counters(ref: Ref) -> bool:
    return ref["orig"]["packets"] is None


def _check_no_counters(ref: Ref, ours: Json) -> None:
    assert ref["reply"]["packets"] is None and ref["orig"]["bytes"] is None
    for d in ("orig", "reply"):
        assert ours[d]["packets"] is None
        assert ours[d]["bytes"] is None


def _real_counters(ref: Ref) -> bool:
    return bool(ref["orig"]["packets"]) and bool(ref["reply"]["packets"])


def _zero_counters(ref: Ref) -> bool:
    return ref["orig"]["packets"] == 0 and ref["reply"]["packets"] == 0


def _check_counters(ref: Ref, ours: Json) -> None:
    for d in ("orig", "reply"):
        for k in ("packets", "bytes"):
            assert type(ours[d][k]) is int
            assert ours[d][k] == ref[d][k]


def _check_icmp(ref: Ref, ours: Json) -> None:
    for d in ("orig", "reply"):
        for k in ("icmp_type", "icmp_code", "icmp_id"):
            assert ours[d][k] is not None and ours[d][k] == ref[d][k]
        assert ours[d]["sport"] is None and ours[d]["dport"] is None
    assert ours["protonum"] == ref["protonum"] and ours["family"] == ref["family"]


def _check_ports(ref: Ref, ours: Json) -> None:
    for d in ("orig", "reply"):
        assert (ours[d]["sport"], ours[d]["dport"]) == (ref[d]["sport"], ref[d]["dport"])
        assert ours[d]["icmp_type"] is None


def _is_gre(ref: Ref) -> bool:
    return ref["proto"] == "gre" and bool(ref["orig"]["sport"] or ref["orig"]["dport"])


def _check_zone(ref: Ref, ours: Json) -> None:
    assert ours["zone"] == ref["zone"] != 0


def _check_mark(ref: Ref, ours: Json) -> None:
    assert ours["mark"] == ref["mark"] != 0


def _dnat(ref: Ref) -> bool:
    return ref["reply"]["src"] != ref["orig"]["dst"]


def _check_dnat(ref: Ref, ours: Json) -> None:
    assert ours["reply"]["src"] == ref["reply"]["src"] != ours["orig"]["dst"]
    assert ours["reply"]["sport"] == ref["reply"]["sport"]


def _snat(ref: Ref) -> bool:
    return ref["reply"]["dst"] != ref["orig"]["src"]


def _check_snat(ref: Ref, ours: Json) -> None:
    assert ours["reply"]["dst"] == ref["reply"]["dst"] != ours["orig"]["src"]


def _check_state(ref: Ref, ours: Json) -> None:
    assert ours["state"] == ref["state"] is not None
    assert ours["proto"] == ref["proto"]


def _check_no_l4(ref: Ref, ours: Json) -> None:
    assert ours["proto"] == ref["proto"] == str(ref["protonum"])
    for d in ("orig", "reply"):
        assert all(ours[d][k] is None for k in ("sport", "dport", "icmp_type", "icmp_id"))


def _check_assured(ref: Ref, ours: Json) -> None:
    assert "ASSURED" in ours["status"]
    assert ("SEEN_REPLY" not in ours["status"]) == ref["unreplied"]


def _check_unreplied(ref: Ref, ours: Json) -> None:
    assert "SEEN_REPLY" not in ours["status"]


def _check_helper_flow(ref: Ref, ours: Json) -> None:
    assert ours["state"] == ref["state"]
    assert ours["orig"]["dport"] == ref["orig"]["dport"]


COVERAGE: dict[str, tuple[Callable[[Ref], bool], Callable[[Ref, Json], None]]] = {
    "no counters (acct off): null, not 0": (_no_counters, _check_no_counters),
    "real counters both ways": (_real_counters, _check_counters),
    "zero counters stay 0, not null": (_zero_counters, _check_counters),
    "icmpv6 type/code/id": (lambda r: r["proto"] == "icmpv6", _check_icmp),
    "icmp type/code/id": (lambda r: r["proto"] == "icmp", _check_icmp),
    "gre keys": (_is_gre, _check_ports),
    "udplite ports": (lambda r: r["proto"] == "udplite", _check_ports),
    "nonzero zone": (lambda r: r["zone"] != 0, _check_zone),
    "nonzero mark": (lambda r: r["mark"] not in (0, None), _check_mark),
    "dnat: reply.src != orig.dst": (_dnat, _check_dnat),
    "snat: reply.dst != orig.src": (_snat, _check_snat),
    "sctp state": (lambda r: r["proto"] == "sctp" and r["state"] is not None, _check_state),
    "ipv6 tcp": (lambda r: r["family"] == "ipv6" and r["proto"] == "tcp", _check_state),
    "ipv6 sctp": (lambda r: r["family"] == "ipv6" and r["proto"] == "sctp", _check_state),
    "protocol without a name": (lambda r: r["proto"].isdigit(), _check_no_l4),
    "assured": (lambda r: r["assured"], _check_assured),
    "unreplied": (lambda r: r["unreplied"], _check_unreplied),
    "helper flow": (lambda r: r["helper"] is not None, _check_helper_flow),
}


@pytest.mark.parametrize("case", list(COVERAGE))
def test_mix_covers(golden: Golden, case: str) -> None:
    select, check = COVERAGE[case]
    chosen = [(ref, ours) for ref, ours, _flow in golden.pairs if select(ref)]
    assert chosen, f"the golden capture has no flow for {case!r}"
    for ref, ours in chosen:
        check(ref, ours)


def test_mix_covers_every_tcp_state_and_both_families(golden: Golden) -> None:
    ref_states = {r["state"] for r, _o, _f in golden.pairs if r["proto"] == "tcp"}
    our_states = {o["state"] for _r, o, _f in golden.pairs if o["proto"] == "tcp"}
    assert our_states == ref_states
    assert len(ref_states) == len(c.TCP_STATES)  # NONE .. SYN_SENT2: all ten
    assert {o["family"] for _r, o, _f in golden.pairs} == {"ipv4", "ipv6"}
    assert {o["proto"] for _r, o, _f in golden.pairs} == {r["proto"] for r in golden.refs}


# --- a dump that repeats entries -------------------------------------------------------------


class _FakeKernel:
    """Stands in for the netlink socket: answers the next request with given datagrams."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.datagrams = datagrams

    def sendto(self, data: bytes, addr: object) -> int:
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int, flags: int = 0) -> int:
        data = self.datagrams.pop(0)
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def _with_seq(data: bytes, seq: int) -> bytes:
    """The golden messages renumbered to answer request `seq`."""
    out = bytearray()
    for msg in split_messages(data, DumpStats()):
        raw = bytearray(msg.raw())
        struct.pack_into("=I", raw, 8, seq)
        out += raw + b"\0" * (-len(raw) % 4)
    return bytes(out)


def _repeating_client(data: bytes) -> ConntrackClient:
    """A client whose dump is the golden capture with every entry sent twice, as a dump that
    the table changed under may do; no kernel involved."""
    client = ConntrackClient()
    sock = client._open()
    sock.sock.close()
    seq = sock.seq + 1
    body = _with_seq(data, seq)
    done = struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0)  # NLMSG_DONE, NLM_F_MULTI
    sock.sock = _FakeKernel([body, body, done])  # type: ignore[assignment]
    return client


def test_repeated_entries_appear_once_in_the_json_output(golden: Golden) -> None:
    stats = DumpStats()
    assert sum(1 for _ in _repeating_client(golden.data).dump(stats)) == 2 * golden.meta["flows"]
    client = _repeating_client(golden.data)
    client.table_size = lambda raw_sink=None: (None, None)  # type: ignore[method-assign]
    line = json.loads(sample_json(Sampler().step(client.snapshot())))
    flows = line["flows"]
    keys = [(f["zone"], json.dumps(f["orig"], sort_keys=True), f["id"]) for f in flows]
    assert len(keys) == len(set(keys)) == golden.meta["flows"]
    pairs, only_ref, only_ours = match_flows(golden.refs, flows)
    assert len(pairs) == len(golden.refs) and only_ref == [] and only_ours == []


# --- the capture's consistency check ----------------------------------------------------------


def _with_timeout(msg: bytes, delta: int) -> bytes:
    out = bytearray(msg)
    for t, s, e, _nested in iter_attrs(msg, NLMSG_HDR.size + NFGENMSG.size, len(msg)):
        if t == c.CTA_TIMEOUT and e - s == 4:
            (value,) = struct.unpack_from(">I", msg, s)
            struct.pack_into(">I", out, s, value + delta)
            return bytes(out)
    raise AssertionError("message without CTA_TIMEOUT")


def test_capture_consistency_check_sees_a_timeout_tick(golden: Golden) -> None:
    first = golden.raw
    assert differing_attrs(first, list(first)) == set()
    other_seq = [m[:8] + struct.pack("=I", 12345) + m[12:] for m in first]
    assert differing_attrs(first, other_seq) == set()  # each request has its own seq
    ticked = [_with_timeout(first[0], -1), *first[1:]]
    assert differing_attrs(first, ticked) == {c.CTA_TIMEOUT}
    assert differing_attrs(first, first[:-1]) is None
