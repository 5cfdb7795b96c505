"""View: the filter language (every term, good and bad), sort keys, group-by, apply()."""

from __future__ import annotations

import pytest

from cttop.conntrack.const import (
    AF_INET,
    AF_INET6,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
)
from cttop.conntrack.model import Flow, Snapshot, Tuple
from cttop.sampler import ZERO_RATE, FlowRow, FlowRows, Rate, Sample, Sampler
from cttop.view import (
    GROUP_KEYS,
    SORT_KEYS,
    FilterError,
    GroupError,
    GroupRow,
    GroupRows,
    SortError,
    ViewError,
    apply,
    group_rows,
    kernel_filter,
    memo_parts,
    parse_filter,
    service_name,
    sort_flows,
    totals_of,
)

# --- a small table with one flow of each kind ------------------------------------------------


def _flow(
    protonum: int,
    orig: Tuple,
    reply: Tuple,
    *,
    state: int | None = None,
    status: int = IPS_SEEN_REPLY,
    mark: int | None = 0,
    zone: int = 0,
    **kw: int | None,
) -> Flow:
    family = AF_INET6 if orig.src and ":" in orig.src else AF_INET
    return Flow(
        family, protonum, orig, reply, state=state, status=status, mark=mark, zone=zone, **kw
    )


TABLE: dict[str, Flow] = {
    "web": _flow(
        IPPROTO_TCP,
        Tuple("10.0.0.1", "93.184.216.34", 40000, 443),
        Tuple("93.184.216.34", "10.0.0.1", 443, 40000),
        state=3,
        status=IPS_SEEN_REPLY | IPS_ASSURED,
        mark=0x10,
    ),
    "dns": _flow(
        IPPROTO_UDP,
        Tuple("10.0.0.2", "10.0.0.53", 5353, 53),
        Tuple("10.0.0.53", "10.0.0.2", 53, 5353),
        status=IPS_CONFIRMED,
    ),
    "ssh6": _flow(
        IPPROTO_TCP,
        Tuple("2001:db8::1", "2001:db8::2", 50000, 22),
        Tuple("2001:db8::2", "2001:db8::1", 22, 50000),
        state=7,
        zone=5,
    ),
    "ping": _flow(
        IPPROTO_ICMP,
        Tuple("10.0.1.9", "8.8.8.8", icmp_type=8, icmp_code=0, icmp_id=77),
        Tuple("8.8.8.8", "10.0.1.9", icmp_type=0, icmp_code=0, icmp_id=77),
    ),
    "snat": _flow(
        IPPROTO_TCP,
        Tuple("192.168.1.10", "1.1.1.1", 33333, 80),
        Tuple("1.1.1.1", "203.0.113.5", 80, 61000),
        state=1,
        status=IPS_CONFIRMED | IPS_SRC_NAT,
    ),
    "dnat": _flow(
        IPPROTO_TCP,
        Tuple("198.51.100.7", "203.0.113.5", 51000, 8080),
        Tuple("10.0.0.80", "198.51.100.7", 80, 51000),
        state=3,
        status=IPS_SEEN_REPLY | IPS_DST_NAT,
    ),
    "sctp": _flow(
        IPPROTO_SCTP,
        Tuple("10.0.0.3", "10.0.0.4", 2905, 2905),
        Tuple("10.0.0.4", "10.0.0.3", 2905, 2905),
        state=4,
    ),
    "gre": _flow(
        IPPROTO_GRE,
        Tuple("10.0.0.5", "10.0.0.6", 443, 443),  # GRE keys, not ports
        Tuple("10.0.0.6", "10.0.0.5", 443, 443),
    ),
    "offl": _flow(
        IPPROTO_TCP,
        Tuple("10.0.0.7", "10.0.0.8", 1234, 80),
        Tuple("10.0.0.8", "10.0.0.7", 80, 1234),
        status=IPS_SEEN_REPLY | IPS_OFFLOAD,
        mark=None,
    ),
}
ALL = set(TABLE)
TCP = {"web", "ssh6", "snat", "dnat", "offl"}


def matching(expr: str) -> set[str]:
    pred = parse_filter(expr)
    return {name for name, f in TABLE.items() if pred(f)}


FILTERS: list[tuple[str, set[str]]] = [
    # protocols
    ("tcp", TCP),
    ("TCP", TCP),
    ("udp", {"dns"}),
    ("icmp", {"ping"}),
    ("icmpv6", set()),
    ("icmp6", set()),
    ("sctp", {"sctp"}),
    ("gre", {"gre"}),
    ("proto:6", TCP),
    ("proto:47", {"gre"}),
    ("proto:udp", {"dns"}),
    ("proto:esp", set()),
    # states
    ("state:established", {"web", "dnat", "sctp"}),
    ("state:Est", {"web", "dnat", "sctp"}),
    ("state:time", {"ssh6"}),
    ("state:time-wait", {"ssh6"}),
    ("state:syn", {"snat"}),
    ("state:syn_sent", {"snat"}),
    ("state:close", set()),  # the exact name CLOSE, not CLOSE_WAIT
    # addresses
    ("src:10.0.0.0/24", {"web", "dns", "sctp", "gre", "offl"}),
    ("src:10.0.0.1", {"web"}),
    ("src:10.0.0.1/32", {"web"}),
    ("src:10.0.0.1/24", {"web", "dns", "sctp", "gre", "offl"}),  # host bits ignored
    ("dst:8.8.8.8", {"ping"}),
    ("dst:10.0.0.0/8", {"dns", "sctp", "gre", "offl"}),
    ("src:2001:db8::/32", {"ssh6"}),
    ("src:[2001:db8::1]", {"ssh6"}),
    ("dst:2001:DB8::2", {"ssh6"}),
    ("src:0.0.0.0/0", ALL - {"ssh6"}),
    ("src:::/0", {"ssh6"}),
    ("host:10.0.0.80", {"dnat"}),  # the DNAT'd server, in the reply tuple
    ("host:203.0.113.5", {"snat", "dnat"}),
    ("host:198.51.100.7", {"dnat"}),
    # ports
    ("port:443", {"web"}),  # not the GRE key 443
    ("dport:53", {"dns"}),
    ("sport:40000", {"web"}),
    ("dport:domain", {"dns"}),
    ("dport:https", {"web"}),
    ("port:80", {"snat", "dnat", "offl"}),  # dnat: the reply comes from port 80
    ("port:61000", {"snat"}),
    ("dport:1-100", {"dns", "ssh6", "snat", "offl"}),
    ("dport:8000-9000", {"dnat"}),
    ("sport:0-65535", TCP | {"dns", "sctp"}),
    # mark, zone, family
    ("mark:0x10", {"web"}),
    ("mark:16", {"web"}),
    ("mark:0x10/0xf0", {"web"}),
    ("mark:0", ALL - {"web", "offl"}),  # offl has no mark at all: n/a is not 0
    ("mark:0/0xf", ALL - {"offl"}),
    ("mark:00", ALL - {"web", "offl"}),
    ("zone:5", {"ssh6"}),
    ("zone:0", ALL - {"ssh6"}),
    ("family:ipv6", {"ssh6"}),
    ("family:inet6", {"ssh6"}),
    ("ipv6", {"ssh6"}),
    ("family:ipv4", ALL - {"ssh6"}),
    ("ipv4", ALL - {"ssh6"}),
    # flags
    ("nat", {"snat", "dnat"}),
    ("snat", {"snat"}),
    ("dnat", {"dnat"}),
    ("assured", {"web"}),
    ("unreplied", {"dns", "snat"}),
    ("offload", {"offl"}),
    ("offloaded", {"offl"}),
    # bare words: text in an address or a port
    ("8.8", {"ping"}),
    ("10.0.0.8", {"offl", "dnat"}),
    ("53", {"dns"}),
    ("db8", {"ssh6"}),
    ("2001:db8::2", {"ssh6"}),
    ("cafe", set()),
    ("10.0.0.0/8", {"web", "dns", "ping", "sctp", "gre", "offl", "dnat"}),  # a network: host:
    # negation and combinations
    ("tcp state:est", {"web", "dnat"}),
    ("tcp !state:est", {"ssh6", "snat", "offl"}),
    ("not tcp", ALL - TCP),
    ("! tcp", ALL - TCP),
    ("!tcp", ALL - TCP),
    ("NOT tcp", ALL - TCP),
    ("not not tcp", TCP),
    ("!!tcp", TCP),
    ("tcp not nat", {"web", "ssh6", "offl"}),
    ("tcp dport:80 !nat", {"offl"}),
    ("tcp state:est dport:443 src:10.0.0.0/8", {"web"}),
    ("", ALL),
    ("   ", ALL),
]


@pytest.mark.parametrize("expr, expected", FILTERS, ids=[e or "<empty>" for e, _ in FILTERS])
def test_filter(expr, expected):
    assert matching(expr) == expected


BAD_FILTERS: list[tuple[str, str, str]] = [
    ("foo:bar", "foo:bar", "unknown field 'foo'"),
    ("tcp state:bogus", "state:bogus", "no TCP, SCTP or DCCP state is called 'bogus'"),
    ("state:", "state:", "needs a value"),
    ("src:", "src:", "needs a value"),
    ("src:10.0.0.300", "src:10.0.0.300", "'10.0.0.300' is not an IPv4 or IPv6 address"),
    ("dst:example.com", "dst:example.com", "is not an IPv4 or IPv6 address"),
    ("dst:10.0.0.0/33", "dst:10.0.0.0/33", "prefix length '33' is not a number 0-32"),
    ("host:::1/129", "host:::1/129", "0-128"),
    ("host:10.0.0.0/x", "host:10.0.0.0/x", "prefix length 'x'"),
    ("port:99999", "port:99999", "port 99999 is out of range 0-65535"),
    ("dport:2000-1000", "dport:2000-1000", "empty: 2000 is above 1000"),
    ("port:nosuchservice", "port:nosuchservice", "/etc/services"),
    ("sport:1000-", "sport:1000-", "range like 1000-2000"),
    ("mark:zz", "mark:zz", "mark 'zz' is not a number"),
    ("mark:0x11/0x10", "mark:0x11/0x10", "bits outside the mask"),
    ("mark:0x100000000", "mark:0x100000000", "out of range"),
    ("mark:1/zz", "mark:1/zz", "mask 'zz' is not a number"),
    ("zone:70000", "zone:70000", "zone 70000 is out of range 0-65535"),
    ("family:ipx", "family:ipx", "family is ipv4 or ipv6"),
    ("proto:300", "proto:300", "out of range 0-255"),
    ("proto:bogus", "proto:bogus", "unknown protocol 'bogus'"),
    ("tpc", "tpc", "not a protocol or keyword"),
    ("tcp estab", "estab", "cannot match an address or a port"),
    ("not", "not", "nothing after it to negate"),
    ("tcp !", "!", "nothing after it to negate"),
    ("tcp !!", "!!", "nothing after it to negate"),
]


@pytest.mark.parametrize("expr, term, why", BAD_FILTERS, ids=[e for e, _, _ in BAD_FILTERS])
def test_bad_filter_names_the_term_and_why(expr, term, why):
    with pytest.raises(FilterError) as err:
        parse_filter(expr)
    assert err.value.term == term
    assert why in err.value.why
    assert str(err.value).startswith(f"filter term {term!r}: ")
    assert isinstance(err.value, ValueError)  # argparse-friendly


def test_filter_on_flows_with_absent_addresses_and_ports():
    bare = Flow(AF_INET, IPPROTO_TCP, Tuple(None, None), Tuple(None, None))
    for expr in ("src:10.0.0.0/8", "host:::/0", "port:0-65535", "mark:0", "10", "state:est"):
        assert parse_filter(expr)(bare) is False
        assert parse_filter("!" + expr)(bare) is True


# --- sorting ----------------------------------------------------------------------------------


def _row(i: int, rate: Rate | None = None, **kw) -> FlowRow:
    """Row number i (the id says which) with fields set on its flow."""
    orig = Tuple(
        kw.pop("src", None), kw.pop("dst", None), kw.pop("sport", None), kw.pop("dport", None)
    )
    return FlowRow(Flow(AF_INET, kw.pop("protonum", IPPROTO_TCP), orig, orig, id=i, **kw), rate)


def ids(rows) -> list[int | None]:
    return [r.flow.id for r in rows]


def r(total: float, reply: float = 0.0) -> Rate:
    return Rate(total - reply, reply, 1.0, 1.0)


RATED = FlowRows.of(
    [
        _row(0, r(100.0, 60.0)),
        _row(1, None),
        _row(2, r(300.0, 10.0)),
        _row(3, ZERO_RATE),
        _row(4, None),
        _row(5, r(100.0, 100.0)),
    ]
)


@pytest.mark.parametrize(
    "key, reverse, expected",
    [
        ("rate", False, [2, 0, 5, 3, 1, 4]),  # descending; ties keep their order; None last
        ("rate", True, [3, 0, 5, 2, 1, 4]),  # ascending; None still last
        ("RATE", False, [2, 0, 5, 3, 1, 4]),
        ("orig_rate", False, [2, 0, 3, 5, 1, 4]),  # 290, 40, 0, 0
        ("reply_rate", False, [5, 0, 2, 3, 1, 4]),  # 100, 60, 10, 0
        ("reply_rate", True, [3, 2, 0, 5, 1, 4]),
    ],
)
def test_sort_by_rate(key, reverse, expected):
    assert ids(sort_flows(RATED, key, reverse)) == expected


ADDRESSES = FlowRows.of(
    [
        _row(0, src="10.0.0.10", dst="::1"),
        _row(1, src="10.0.0.9", dst=None),
        _row(2, src="2001:db8::1", dst="10.0.0.1"),
        _row(3, src=None, dst="9.0.0.1"),
        _row(4, src="::1", dst="2001:db8::"),
        _row(5, src="9.255.255.255", dst="10.0.0.1"),
        _row(6, src="192.168.0.1", dst="255.255.255.255"),
    ]
)


@pytest.mark.parametrize(
    "key, reverse, expected",
    [
        # numerically (10.0.0.9 before 10.0.0.10), IPv4 before IPv6 (even ::1), absent last
        ("src", False, [5, 1, 0, 6, 4, 2, 3]),
        ("src", True, [2, 4, 6, 0, 1, 5, 3]),
        ("dst", False, [3, 2, 5, 6, 0, 4, 1]),
        ("dst", True, [4, 0, 6, 2, 5, 3, 1]),
    ],
)
def test_sort_by_address(key, reverse, expected):
    assert ids(sort_flows(ADDRESSES, key, reverse)) == expected


def test_text_that_is_no_address_sorts_after_the_addresses_as_equals() -> None:
    """(A recording could hold anything.) Such texts all sort as one value after every
    address, so they keep the table's order between them, either way."""
    rows = FlowRows.of(
        [_row(0, src="zz"), _row(1, src=None), _row(2, src="aa"), _row(3, src="::2")]
    )
    assert ids(sort_flows(rows, "src")) == [3, 0, 2, 1]
    assert ids(sort_flows(rows, "src", reverse=True)) == [0, 2, 3, 1]


FIELDS = FlowRows.of(
    [
        _row(0, sport=5, dport=80, expires=10, mark=3, zone=1, start=300, state=3),
        _row(1, sport=None, dport=443, expires=None, mark=None, zone=0, start=None, state=None),
        _row(2, sport=7, dport=22, expires=5, mark=0, zone=2, start=100, protonum=17),
        _row(3, sport=5, dport=None, expires=431999, mark=1, zone=0, start=200, state=1),
    ]
)


@pytest.mark.parametrize(
    "key, reverse, expected",
    [
        ("sport", False, [0, 3, 2, 1]),
        ("sport", True, [2, 0, 3, 1]),
        ("dport", False, [2, 0, 1, 3]),
        ("timeout", False, [2, 0, 3, 1]),  # soonest to expire first
        ("timeout", True, [3, 0, 2, 1]),
        ("mark", False, [2, 3, 0, 1]),
        ("zone", False, [1, 3, 0, 2]),
        ("age", False, [2, 3, 0, 1]),  # oldest first
        ("age", True, [0, 3, 2, 1]),
        ("proto", False, [0, 1, 3, 2]),  # tcp, tcp, tcp, then udp
        ("state", False, [0, 3, 1, 2]),  # ESTABLISHED, SYN_SENT; row 2 is UDP: no state name
        ("state", True, [3, 0, 1, 2]),
        ("id", True, [3, 2, 1, 0]),
        ("flows", False, [0, 1, 2, 3]),
    ],
)
def test_sort_by_field(key, reverse, expected):
    assert ids(sort_flows(FIELDS, key, reverse)) == expected


def test_sort_by_counters():
    rows = FlowRows.of(
        [
            _row(0, orig_bytes=100, reply_bytes=900, orig_packets=1, reply_packets=1),
            _row(1),  # accounting off
            _row(2, orig_bytes=5000, reply_bytes=0, orig_packets=9, reply_packets=0),
            _row(3, orig_bytes=10, reply_bytes=10, orig_packets=4, reply_packets=7),
        ]
    )
    assert ids(sort_flows(rows, "bytes")) == [2, 0, 3, 1]
    assert ids(sort_flows(rows, "bytes", reverse=True)) == [3, 0, 2, 1]
    assert ids(sort_flows(rows, "packets")) == [3, 2, 0, 1]


def test_sort_with_limit_and_errors():
    assert ids(sort_flows(RATED, "rate", limit=2)) == [2, 0]
    assert ids(sort_flows(RATED, "rate", limit=0)) == []
    assert ids(sort_flows([], "src")) == []
    with pytest.raises(SortError, match="unknown sort key 'speed'"):
        sort_flows(RATED, "speed")
    assert set(SORT_KEYS) >= {
        "rate", "orig_rate", "reply_rate", "bytes", "packets", "age", "timeout", "proto",
        "state", "src", "dst", "sport", "dport", "mark", "zone", "id",
    }  # fmt: skip


# --- group-by ---------------------------------------------------------------------------------

GROUPABLE = FlowRows.of(
    [
        _row(0, r(100.0, 40.0), src="10.0.0.1", dst="10.0.0.9", dport=443, state=3,
             orig_bytes=10, reply_bytes=20, orig_packets=1, reply_packets=2, mark=1),
        _row(1, None, src="10.0.0.2", dst="10.0.0.9", dport=443, state=3,
             orig_bytes=5, reply_bytes=5, orig_packets=1, reply_packets=1, mark=1),
        _row(2, r(50.0, 50.0), src="10.0.0.1", dst="10.0.0.9", dport=22, state=7,
             orig_bytes=1, reply_bytes=2, orig_packets=3, reply_packets=4, mark=2),
        _row(3, None, src="10.0.0.1", dst="10.0.0.8", protonum=IPPROTO_ICMP, zone=3),
        _row(4, ZERO_RATE, src="2001:db8::5", dst="10.0.0.9", dport=53, protonum=IPPROTO_UDP,
             orig_bytes=7, reply_bytes=0, orig_packets=1, reply_packets=0),
    ]
)  # fmt: skip


def test_group_by_src():
    groups = group_rows(GROUPABLE, "src")
    assert [g.key for g in groups] == ["10.0.0.1", "10.0.0.2", "2001:db8::5"]  # first seen
    g = groups[0]
    assert (g.flows, g.src, g.dst) == (3, "10.0.0.1", None)
    assert g.rate == Rate(60.0 + 0.0, 40.0 + 50.0, 2.0, 2.0)
    assert (g.orig_bytes, g.reply_bytes, g.orig_packets, g.reply_packets) == (11, 22, 4, 6)
    assert groups[1].rate is None  # its only flow has no rate
    assert groups[2].rate == ZERO_RATE
    assert g.label == "10.0.0.1"


def test_group_by_dport_is_per_protocol_with_service_names():
    groups = {g.key: g for g in group_rows(GROUPABLE, "service")}
    assert set(groups) == {(6, 443), (6, 22), (1, None), (17, 53)}
    assert groups[(6, 443)].flows == 2
    assert groups[(6, 443)].label == "tcp/443 (https)"
    assert groups[(6, 22)].label == "tcp/22 (ssh)"
    assert groups[(17, 53)].label == "udp/53 (domain)"
    assert groups[(1, None)].label == "icmp"
    assert (groups[(6, 443)].protonum, groups[(6, 443)].dport) == (6, 443)


def test_group_by_pair_state_proto_mark_zone():
    pairs = {g.key: g for g in group_rows(GROUPABLE, "pair")}
    assert pairs[("10.0.0.1", "10.0.0.9")].flows == 2
    assert pairs[("10.0.0.1", "10.0.0.9")].label == "10.0.0.1 → 10.0.0.9"
    states = {g.key: g.flows for g in group_rows(GROUPABLE, "state")}
    assert states == {"ESTABLISHED": 2, "TIME_WAIT": 1, None: 2}
    protos = {g.label: g.flows for g in group_rows(GROUPABLE, "proto")}
    assert protos == {"tcp": 3, "icmp": 1, "udp": 1}
    assert {g.key: g.flows for g in group_rows(GROUPABLE, "mark")} == {1: 2, 2: 1, None: 2}
    assert {g.key: g.flows for g in group_rows(GROUPABLE, "zone")} == {0: 4, 3: 1}
    assert [g.label for g in group_rows(GROUPABLE, "state")][-1] == "-"


def test_groups_sort_like_flows():
    def keys(sort: str, reverse: bool = False, group: str = "src") -> list:
        return [g.key for g in group_rows(GROUPABLE, group, sort, reverse)]

    assert keys("rate") == ["10.0.0.1", "2001:db8::5", "10.0.0.2"]  # 150, 0, absent
    assert keys("rate", reverse=True) == ["2001:db8::5", "10.0.0.1", "10.0.0.2"]
    assert keys("flows") == ["10.0.0.1", "10.0.0.2", "2001:db8::5"]
    assert keys("bytes") == ["10.0.0.1", "10.0.0.2", "2001:db8::5"]  # 33, 10, 7
    assert keys("src", reverse=True) == ["2001:db8::5", "10.0.0.2", "10.0.0.1"]
    # a key the group does not determine orders by the group key itself
    assert keys("sport", reverse=True) == ["2001:db8::5", "10.0.0.2", "10.0.0.1"]
    assert keys("dst", group="pair") == [
        ("10.0.0.1", "10.0.0.8"),
        ("10.0.0.1", "10.0.0.9"),
        ("10.0.0.2", "10.0.0.9"),
        ("2001:db8::5", "10.0.0.9"),
    ]
    assert keys("proto", group="dport") == [(1, None), (6, 443), (6, 22), (17, 53)]
    assert keys("dport", group="dport") == [(6, 22), (17, 53), (6, 443), (1, None)]
    assert keys("state", group="state") == ["ESTABLISHED", "TIME_WAIT", None]


def test_group_errors():
    with pytest.raises(GroupError, match="unknown group-by 'host'"):
        group_rows(GROUPABLE, "host")
    with pytest.raises(GroupError):
        group_rows(GROUPABLE, "none")
    assert set(GROUP_KEYS) == {
        "none",
        "src",
        "dst",
        "dport",
        "pair",
        "proto",
        "state",
        "mark",
        "zone",
    }


def test_group_row_fields():
    g = GroupRow("zone", 3, 1, None, None, None, None, None, zone=3)
    assert g.label == "3"
    assert service_name(443) == "https"
    assert service_name(1) in (None, "tcpmux")
    assert service_name(70000) is None


# --- apply --------------------------------------------------------------------------------------


def test_apply_filters_sorts_limits_and_sums():
    result = apply(GROUPABLE, filter="tcp", sort="rate", limit=1)
    assert ids(result.rows) == [0]
    assert result.matched == 3  # tcp flows, before the limit
    assert result.all_flows == 5
    t = result.totals  # of the three TCP flows, whatever the limit
    assert t.flows == 3
    assert t.rate == Rate(60.0, 90.0, 2.0, 2.0)
    assert t.no_rate == 1
    assert (t.orig_bytes, t.reply_bytes, t.orig_packets, t.reply_packets) == (16, 27, 5, 7)
    assert (t.bytes, t.packets) == (43, 12)


def test_apply_groups():
    result = apply(GROUPABLE, filter="!icmp", group="dst", sort="flows")
    assert [(g.key, g.flows) for g in result.rows] == [("10.0.0.9", 4)]
    assert result.matched == 1
    assert result.totals.flows == 4
    assert result.totals.rate == Rate(60.0, 90.0, 2.0, 2.0)


def test_group_rows_sum_the_shown_groups_and_the_big_ones_first(monkeypatch):
    """A group view sums the counters of its first block of rows and of the groups of many
    flows (not on the thread that shows it); the others when a row of their block is read;
    a group is found by its key, and not when a limit cut it."""
    import cttop.view as view_module

    monkeypatch.setattr(view_module, "_GROUP_BLOCK", 1)
    monkeypatch.setattr(view_module, "_BIG_GROUP", 1)
    result = apply(GROUPABLE, group="dport", sort="flows", reverse=True, memo={})
    rows = result.rows
    assert isinstance(rows, GroupRows)
    sizes = {g.key: g.flows for g in group_rows(GROUPABLE, "dport")}
    summed = [rows.groups.summed[g] for g in rows.order]
    assert summed == [1] + [1 if sizes[rows.groups.keys[g]] > 1 else 0 for g in rows.order[1:]]
    assert 0 in summed  # (some group of one flow left for later)
    assert list(rows) == group_rows(GROUPABLE, "dport", "flows", reverse=True)
    assert all(rows.groups.summed)
    last = rows[-1]
    assert rows.find(last.key) == len(rows) - 1
    assert rows[:1].find(last.key) is None and rows.find("no such key") is None


def test_a_memo_reads_each_column_once_for_the_filters_typed_after_each_other(monkeypatch):
    """Typing a filter re-filters the same sample at every key: a memo keeps the columns the
    terms read, so the next filter over the same column does not read every flow again."""
    import cttop.view as view_module

    reads: list[object] = []
    real_map = map

    def counting_map(fn, *its):  # type: ignore[no-untyped-def]
        reads.append(fn)
        return real_map(fn, *its)

    memo: dict[object, object] = {}
    first = apply(GROUPABLE, filter="dport:443", memo=memo)
    monkeypatch.setattr(view_module, "map", counting_map, raising=False)
    again = apply(GROUPABLE, filter="dport:44", memo=memo)
    monkeypatch.undo()
    assert view_module._PORT_VALUES[1] not in reads  # the port column came from the memo
    assert view_module._protonum not in reads
    assert ids(first.rows) == ids(apply(GROUPABLE, filter="dport:443").rows)
    assert ids(again.rows) == ids(apply(GROUPABLE, filter="dport:44").rows) == []
    # Another memo (another sample, or no memo at all) never sees these columns.
    assert ids(apply(GROUPABLE, filter="dport:443", memo={}).rows) == ids(first.rows)


def _poll(sampler: Sampler, t: float, flows: list[Flow]) -> Sample:
    return sampler.step(Snapshot(t, 1_700_000_000.0 + t, {f.key: f for f in flows}, None, None))


def test_a_sample_takes_the_columns_of_the_flows_it_shares_with_the_last(monkeypatch):
    """A column a view read of the last sample (kept in its memo) is copied for the rows that
    are the same flows again (`Sample.carry`), and read only from the others: a filter kept
    on from poll to poll reads no more than what changed. Views are as without any memo."""
    import cttop.view as view_module

    first = [f.flow for f in GROUPABLE]
    sampler = Sampler()
    one = _poll(sampler, 0.0, first)
    kept = apply(one.rows, filter="dport:443", memo=one.views)
    new = first[0]._replace(orig=first[0].orig._replace(sport=2), id=77)
    moved = first[2]._replace(orig_bytes=100, orig_packets=9)  # the same tuples
    second = [first[0], new, first[1], moved, first[4]]  # 3 vanished, one new
    two = _poll(sampler, 1.0, second)
    assert two.carry is not None and two.carry.runs == [0, 0, 1, 2, 1, 2, 4, 4, 1]

    reads: list[tuple[object, int]] = []
    real_map = map

    def counting_map(fn, *its):  # type: ignore[no-untyped-def]
        reads.append((fn, len(its[0]) if isinstance(its[0], list) else -1))
        return real_map(fn, *its)

    monkeypatch.setattr(view_module, "map", counting_map, raising=False)
    got = apply(two.rows, filter="dport:443", memo=two.views, carry=two.carry)
    monkeypatch.undo()
    dport = view_module._PORT_VALUES[1]
    assert [n for fn, n in reads if fn is dport] == [1]  # the new flow's, of five
    assert [n for fn, n in reads if fn is view_module._protonum] == [1]
    want = apply(two.rows, filter="dport:443")
    assert ids(got.rows) == ids(want.rows) == [first[0].id, first[1].id, new.id]
    assert got.totals.bytes == want.totals.bytes
    assert ids(kept.rows) == ids(apply(one.rows, filter="dport:443").rows)
    # Copied, not read again: a value changed in the last sample's column shows.
    columns = two.views["shared"]["columns"]
    assert columns.values[dport] == [443, 443, 443, 22, 53]
    one.views["shared"]["columns"].values[dport][4] = 443
    three = _poll(sampler, 2.0, second)
    apply(three.rows, filter="dport:443", memo=three.views, carry=three.carry)
    assert three.views["shared"]["columns"].values[dport][4] == 53  # from two, not one


@pytest.mark.parametrize("word", ["nat", "snat", "dnat", "10.0", "9"])
def test_terms_over_several_columns_read_them_together_and_carry_them(word: str) -> None:
    """NAT keywords and bare words read four or eight columns: the originals' in one pass over
    the flows, the replies' from them and the replies kept (see `Flow.reply`), all kept in the
    memo and carried to the next sample like the others; the rows are the predicate's."""
    import cttop.view as view_module

    flows = [f.flow for f in GROUPABLE]
    sampler = Sampler()
    one = _poll(sampler, 0.0, flows)
    got = apply(one.rows, filter=word, memo=one.views)
    pred = parse_filter(word)
    assert ids(got.rows) == ids(r for r in apply(one.rows).rows if pred(r.flow))
    columns = one.views["shared"]["columns"]
    assert set(view_module._ADDRESSES[:2]) <= set(columns.values)  # read together
    if word.endswith("nat"):  # (a word the originals' addresses all match reads no more)
        assert view_module._stored_reply in columns.values
    two = _poll(sampler, 1.0, flows)
    apply(two.rows, memo=two.views, carry=two.carry)
    carried = set(two.views["shared"]["columns"].values)
    assert set(columns.read) & set(view_module._ADDRESSES) and set(columns.read) <= carried


def test_columns_are_not_carried_when_the_dump_came_in_another_order(monkeypatch) -> None:
    """Runs that cover little of the table (a resized hash table is walked in another
    order) carry nothing: reading the other rows would cost nearly the whole column, for
    columns the next views may not ask for. A filter then reads what it needs."""
    import cttop.view as view_module

    monkeypatch.setattr(view_module, "_READ_CHUNK", 1)  # (as if the table were big)
    flows = [f.flow for f in GROUPABLE]
    sampler = Sampler()
    one = _poll(sampler, 0.0, flows)
    apply(one.rows, filter="dport:443", memo=one.views)
    two = _poll(sampler, 1.0, flows[::-1])
    assert two.carry is not None and sum(two.carry.runs[2::3]) == 0
    apply(two.rows, memo=two.views, carry=two.carry)
    assert two.views["shared"]["columns"].values == {}
    got = apply(two.rows, filter="dport:443", memo=two.views)
    assert ids(got.rows) == ids(apply(two.rows, filter="dport:443").rows)


def test_a_column_no_view_reads_is_carried_for_a_while_then_dropped() -> None:
    """Each carried column costs memory and a copy a poll: one no view read for
    _CARRY_SAMPLES samples is left behind, but for the protocol's, which is small and always
    wanted by the protocol keys."""
    import cttop.view as view_module

    flows = [f.flow for f in GROUPABLE]
    sampler = Sampler()
    sample = _poll(sampler, 0.0, flows)
    apply(sample.rows, filter="tcp dport:443", memo=sample.views)
    dport = view_module._PORT_VALUES[1]
    for step in range(1, view_module._CARRY_SAMPLES + 3):
        sample = _poll(sampler, float(step), flows)
        apply(sample.rows, memo=sample.views, carry=sample.carry)  # unfiltered: reads none
        carried = sample.views["shared"]["columns"].values
        assert view_module._protonum in carried
        assert (dport in carried) == (step <= view_module._CARRY_SAMPLES)


def test_apply_accepts_a_predicate_and_plain_rows():
    pred = parse_filter("dport:443")
    result = apply(list(GROUPABLE), filter=pred, sort="src")
    assert ids(result.rows) == [0, 1]
    assert isinstance(result.rows, FlowRows)


def test_apply_totals_without_counters_or_rates_are_none():
    t = apply(GROUPABLE, filter="icmp").totals
    assert (t.flows, t.rate, t.bytes, t.packets, t.no_rate) == (1, None, None, None, 1)
    t = totals_of([])
    assert (t.flows, t.rate, t.orig_bytes) == (0, None, None)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"filter": "bogus:1"}, FilterError),
        ({"sort": "speed"}, SortError),
        ({"group": "host"}, GroupError),
        ({"limit": -1}, ViewError),
    ],
)
def test_apply_errors(kwargs, error):
    with pytest.raises(error):
        apply(GROUPABLE, **kwargs)


def test_state_exact_name_wins_over_longer_names():
    close = TABLE["web"]._replace(state=8)  # TCP CLOSE
    close_wait = TABLE["web"]._replace(state=5)  # TCP CLOSE_WAIT
    closed = TABLE["sctp"]._replace(state=1)  # SCTP CLOSED
    exact = parse_filter("state:close")
    assert (exact(close), exact(close_wait), exact(closed)) == (True, False, False)
    prefix = parse_filter("state:close_")
    assert (prefix(close), prefix(close_wait), prefix(closed)) == (False, True, False)
    dccp_open = Flow(AF_INET, 33, Tuple("10.0.0.1", "10.0.0.2", 1, 2), Tuple(None, None), state=4)
    assert parse_filter("state:open")(dccp_open)


# --- kernel pushdown --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("", {}),
        ("tcp dport:443", {}),
        ("ipv6", {"family": 10}),
        ("family:ipv4 tcp", {"family": 2}),
        ("4", {}),  # a bare number is text (a port or address part), not a family
        ("mark:7", {"mark": 7, "mark_mask": 0xFFFFFFFF}),
        ("mark:0x10/0xf0", {"mark": 0x10, "mark_mask": 0xF0}),
        ("zone:3", {"zone": 3}),
        ("not zone:3", {}),  # a negated term is the view's job
        ("!ipv6 zone:2", {"zone": 2}),
        ("zone:1 zone:2", {}),  # named twice: left to the view
        ("ipv4 ipv6", {}),
        ("udp ipv4 mark:1 zone:9", {"family": 2, "mark": 1, "mark_mask": 0xFFFFFFFF, "zone": 9}),
        # status keywords: the bits wanted set, and the mask of every bit they test
        ("assured", {"status": IPS_ASSURED, "status_mask": IPS_ASSURED}),
        ("unreplied", {"status": 0, "status_mask": IPS_SEEN_REPLY}),
        ("not unreplied", {"status": IPS_SEEN_REPLY, "status_mask": IPS_SEEN_REPLY}),
        ("!assured offload", {"status": IPS_OFFLOAD, "status_mask": IPS_ASSURED | IPS_OFFLOAD}),
        (
            "tcp assured !unreplied mark:1",
            {
                "status": IPS_ASSURED | IPS_SEEN_REPLY,
                "status_mask": IPS_ASSURED | IPS_SEEN_REPLY,
                "mark": 1,
                "mark_mask": 0xFFFFFFFF,
            },
        ),
        ("assured !assured", {}),  # contradictory: the view says it matches nothing
        ("offload !offloaded", {}),
    ],
)
def test_kernel_filter_pushes_down_plain_terms(expr: str, expected: dict[str, int]) -> None:
    assert kernel_filter(expr) == expected


def test_kernel_filter_rejects_what_the_view_rejects() -> None:
    with pytest.raises(FilterError):
        kernel_filter("zone:99999")


@pytest.mark.parametrize(
    "expr",
    ["assured", "unreplied", "!unreplied", "not assured", "offload", "!offload",
     "assured !unreplied", "ipv4 unreplied mark:7", "zone:3 !assured"],
)  # fmt: skip
def test_pushdown_never_drops_what_the_view_keeps(expr: str) -> None:
    """What the kernel is asked to drop (and the client drops again for kernels that ignore the
    request) is never a flow the whole expression keeps, status absent included."""
    from cttop.conntrack.client import DumpFilter

    check = DumpFilter(**kernel_filter(expr))
    pred = parse_filter(expr)
    statuses = [None, 0, IPS_SEEN_REPLY, IPS_ASSURED | IPS_SEEN_REPLY, IPS_OFFLOAD, IPS_ASSURED]
    for flow in TABLE.values():
        for status in statuses:
            for mark, zone in ((None, 0), (7, 0), (7, 3), (0, 3)):
                f = flow._replace(status=status, mark=mark, zone=zone)
                if pred(f):
                    assert check.match(f), (expr, f)


def test_the_shared_totals_read_the_rows_not_an_order() -> None:
    """The unfiltered totals of a sample are shared by its orders and read the rows
    themselves, not the order they were first made with: when that order has left the memo
    (and a front end freed it), they still sum the same; the rows' lists are among the memo's
    parts."""
    memo: dict[object, object] = {}
    table = FlowRows.of(GROUPABLE)
    first = apply(table, sort="rate", memo=memo)
    for key in ("src", "dst", "bytes", "id"):
        apply(table, sort=key, memo=memo)
    assert ("rate", False) not in memo
    assert first.totals.rows is table
    parts = memo_parts(memo)  # type: ignore[arg-type]
    assert any(part is table.flows for part in parts)
    assert apply(table, sort="src", memo=memo).totals.bytes == first.totals.bytes


@pytest.mark.parametrize("chunk", [1 << 15, 2])
@pytest.mark.parametrize("expr", ["dport:443", "tcp !unreplied", "10.0", "state:est mark:1"])
def test_an_abandoned_view_leaves_the_memo_sound(expr: str, chunk: int, monkeypatch) -> None:
    """A view given up part-way (its `stop` says so at its n-th question, for every n it asks)
    raises ViewAbandoned, and the memo it was filling gives the same views afterwards as no
    memo at all. (With columns read a chunk of 2 flows at a time, it is also asked inside
    the reading of a column.)"""
    import cttop.view as view_module
    from cttop.view import ViewAbandoned

    monkeypatch.setattr(view_module, "_READ_CHUNK", chunk)

    asked = [0]

    def counting() -> bool:
        asked[0] += 1
        return False

    never = apply(GROUPABLE, filter=expr, sort="bytes", memo={}, stop=counting)
    assert ids(never.rows) == ids(apply(GROUPABLE, filter=expr, sort="bytes").rows)
    total = asked[0]
    assert total >= 2  # before the sort, and after the filter at least
    for after in range(total):
        asked[0] = 0

        def stop(after: int = after) -> bool:
            asked[0] += 1
            return asked[0] > after

        memo: dict[object, object] = {}
        with pytest.raises(ViewAbandoned):
            apply(GROUPABLE, filter=expr, sort="bytes", memo=memo, stop=stop)
        for sort, reverse in (("bytes", False), ("bytes", True), ("rate", False)):
            want = apply(GROUPABLE, filter=expr, sort=sort, reverse=reverse)
            got = apply(GROUPABLE, filter=expr, sort=sort, reverse=reverse, memo=memo)
            assert ids(got.rows) == ids(want.rows)
            assert got.totals.bytes == want.totals.bytes
    with pytest.raises(ViewAbandoned):
        apply(GROUPABLE, filter=expr, stop=lambda: True)  # no memo: stops as well


def test_the_other_direction_through_a_memo_takes_any_rates() -> None:
    """The memo's shortcut for the other sort direction of a rate order (zeros found by binary
    search) assumes what the Sampler makes: rates never negative. Rows with other rates still
    get the view a fresh sort gives."""
    flows = list(GROUPABLE.flows)[:4]
    odd = [Rate(-1.0, 0.0, 0.0, 0.0), ZERO_RATE, Rate(3.0, 0.0, 0.0, 0.0), ZERO_RATE]
    rows = FlowRows(flows, odd)
    for key in ("rate", "orig_rate"):
        for first in (False, True):
            memo: dict[object, object] = {}
            apply(rows, sort=key, reverse=first, memo=memo)
            got = apply(rows, sort=key, reverse=not first, memo=memo)
            assert got.rows == apply(rows, sort=key, reverse=not first).rows
