"""The records of `cttop.conntrack.model`: one form per value, whichever way it is made."""

from __future__ import annotations

import copy
import pickle
import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cttop.conntrack.model import Flow, Tuple
from tests.ctgen import flow_fields, flow_of

V4 = Tuple("10.0.0.1", "10.0.0.2", 40000, 443)
ICMP = Tuple("10.0.0.1", "10.0.0.2", icmp_type=8, icmp_code=0, icmp_id=7)


def test_a_tuple_without_its_rare_fields_holds_only_the_common_ones() -> None:
    assert len(V4) == 4
    assert (V4.icmp_type, V4.icmp_code, V4.icmp_id, V4.zone) == (None, None, None, None)
    assert Tuple("10.0.0.1", "10.0.0.2", 40000, 443, None, None, None, None) == V4
    assert len(ICMP) == 8 and (ICMP.sport, ICMP.icmp_id, ICMP.zone) == (None, 7, None)
    assert sys.getsizeof(V4) < sys.getsizeof(ICMP)


def test_replace_moves_a_record_between_its_forms() -> None:
    zoned = V4._replace(zone=3)
    assert len(zoned) == 8 and zoned.zone == 3 and zoned.dport == 443
    assert zoned._replace(zone=None) == V4 and len(zoned._replace(zone=None)) == 4
    flow = Flow(2, 6, V4, V4, id=1)
    stamped = flow._replace(start=10**18)
    assert len(flow) == len(Flow._fields) - 5 and len(stamped) == len(Flow._fields)
    assert stamped.start == 10**18 and stamped.stop is None and flow.start is None
    assert stamped._replace(start=None) == flow


def test_records_read_and_print_as_named_tuples_do() -> None:
    flow = Flow(2, 6, V4, ICMP, id=1, orig_bytes=5, helper="ftp")
    assert flow._asdict()["orig_bytes"] == 5 and flow._asdict()["labels"] is None
    assert list(flow._asdict()) == list(Flow._fields)
    assert repr(V4) == (
        "Tuple(src='10.0.0.1', dst='10.0.0.2', sport=40000, dport=443, icmp_type=None, "
        "icmp_code=None, icmp_id=None, zone=None)"
    )
    assert Tuple._make(["a", "b", 1, 2]) == Tuple("a", "b", 1, 2)


@given(flow_fields())
def test_every_flow_has_one_form(fields: dict[str, Any]) -> None:
    """However made (the constructor, its fields, `_replace`, pickle, copy), equal values are
    the equal record, of the same length: a dict finds it under either. (The decoders make
    the same records: see test_decode.)"""
    flow = flow_of(fields)
    again = Flow(**flow._asdict())
    assert again == flow and len(again) == len(flow) and hash(again) == hash(flow)
    assert Flow(*flow._asdict().values()) == flow
    assert flow._replace() == flow
    assert pickle.loads(pickle.dumps(flow)) == flow
    assert copy.deepcopy(flow) == flow
    for t in (flow.orig, flow.reply):
        assert Tuple(**t._asdict()) == t and len(Tuple(**t._asdict())) == len(t)


@given(st.sampled_from(Flow._fields[-5:]))
def test_a_flow_with_any_rare_field_has_them_all(name: str) -> None:
    value = "x" if name in ("helper", "secctx") else 1
    flow = Flow(2, 17, V4, V4)._replace(**{name: value})
    assert len(flow) == len(Flow._fields) and getattr(flow, name) == value


def test_a_reply_that_mirrors_the_original_is_made_when_read_not_kept() -> None:
    """Most entries are not NATed: their reply is the original with addresses and ports
    swapped. Such a flow keeps None in the reply's place (72 bytes less), reads its reply as
    the mirrored tuple, and is equal to, and prints as, the same flow made with it. A reply
    that is anything else (NAT, ICMP's, a directional zone's) is kept as it is."""
    mirror = Tuple("10.0.0.2", "10.0.0.1", 443, 40000)
    plain = Flow(2, 6, V4, mirror, id=1)
    assert plain[3] is None and plain.reply == mirror and type(plain.reply) is Tuple
    assert not plain.dnat and not plain.snat
    assert plain._asdict()["reply"] == mirror and "reply=Tuple(src='10.0.0.2'" in repr(plain)
    assert plain == Flow(**plain._asdict()) == pickle.loads(pickle.dumps(plain))
    assert plain.reply.sport is V4.dport  # (the original's values, not copies)
    icmp_reply = Tuple("10.0.0.2", "10.0.0.1", icmp_type=0, icmp_code=0, icmp_id=7)
    for orig, protonum, reply, dnat, snat in (
        (V4, 6, Tuple("10.9.9.9", "10.0.0.1", 443, 40000), True, False),  # DNAT
        (V4, 6, Tuple("10.0.0.2", "192.0.2.1", 443, 1024), False, True),  # SNAT
        (V4, 6, Tuple("10.0.0.2", "10.0.0.1", 443, 40000, zone=2), False, False),  # its zone
        (ICMP, 1, icmp_reply, False, False),
    ):
        flow = Flow(2, protonum, orig, reply, id=1)
        assert flow[3] is reply and flow.reply is reply
        assert (flow.dnat, flow.snat) == (dnat, snat)

    # A record that extends Flow reads its fields as Flow does.
    class Extended(Flow):
        __slots__ = ()

    assert Extended(2, 6, V4, mirror, id=1).reply == mirror
    # Replaced by the mirror, a reply is no longer kept; and back.
    nat = Flow(2, 6, V4, Tuple("10.9.9.9", "10.0.0.1", 443, 40000), id=1)
    assert nat._replace(reply=mirror)[3] is None
    assert nat._replace(reply=mirror)._replace(reply=nat.reply) == nat
