"""Filters pushed down to the kernel (`--filter` terms the kernel can apply to its dump) against
a real table: the kernel sends exactly the entries the view keeps for those terms, and
`cttop -b --filter` shows what the view shows of the whole table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cttop.conntrack.client import ConntrackClient, DumpFilter
from cttop.conntrack.decode import decode_message
from cttop.view import kernel_filter, parse_filter
from tests.ctload import inside
from tests.netns import NetNS

pytestmark = pytest.mark.root

# Every pushable field, each value on some entries and not on others.
ENTRIES = [
    "-p tcp -s 192.0.2.1 -d 198.51.100.1 --sport 40000 --dport 443 --state ESTABLISHED"
    " -u ASSURED,SEEN_REPLY -m 7",
    "-p tcp -s 192.0.2.2 -d 198.51.100.1 --sport 40001 --dport 443 --state SYN_SENT -m 0x17",
    "-p udp -s 192.0.2.3 -d 198.51.100.2 --sport 40002 --dport 53",
    "-p udp -s 192.0.2.4 -d 198.51.100.2 --sport 40003 --dport 53 -u SEEN_REPLY -w 3",
    "-p udp -s 192.0.2.5 -d 198.51.100.2 --sport 40004 --dport 53 -u ASSURED,SEEN_REPLY -w 3"
    " -m 0x10",
    "-p udp -s 2001:db8::1 -d 2001:db8::2 --sport 5353 --dport 53 -u SEEN_REPLY -m 7",
    "-p tcp -s 2001:db8::3 -d 2001:db8::4 --sport 40005 --dport 22 --state ESTABLISHED"
    " -u ASSURED,SEEN_REPLY -w 3",
    "-p icmp -s 192.0.2.9 -d 192.0.2.10 --icmp-type 8 --icmp-code 0 --icmp-id 77",
]

# Expressions made only of terms the kernel can apply.
PUSHABLE = [
    "ipv6",
    "family:ipv4",
    "mark:7",
    "mark:0x10/0xf0",
    "zone:3",
    "assured",
    "unreplied",
    "!unreplied",
    "not assured",
    "ipv4 assured zone:3",
    "ipv6 !assured mark:7",
]


@pytest.fixture
def table(netns: NetNS) -> NetNS:
    return netns.insert(ENTRIES)


@pytest.mark.parametrize("expr", PUSHABLE)
def test_the_kernel_sends_what_the_view_keeps(table: NetNS, expr: str) -> None:
    pushed = kernel_filter(expr)
    assert pushed, f"{expr!r} should push something down"
    with inside(table.path):
        whole = ConntrackClient().snapshot().flows
        client = ConntrackClient(DumpFilter(**pushed))
        # What the kernel sent, before the client's own check of the same filter.
        sent = [decode_message(m.buf, m.off, m.end) for m in client.dump_messages()]
        client.close()
    pred = parse_filter(expr)
    kept = sorted(f.key for f in whole.values() if pred(f))
    assert sorted(f.key for f in sent) == kept
    assert 0 < len(kept) < len(whole), "the table should tell the filter's effect apart"


def test_cli_filter_shows_the_view_of_the_whole_table(table: NetNS) -> None:
    """A filter with pushable and other terms: the kernel sends less, the view does the rest,
    and the result is the view of the whole table."""
    expr = "ipv4 !unreplied dport:443"
    assert kernel_filter(expr) == {"family": 2, "status": 2, "status_mask": 2}

    def ids(extra: list[str]) -> list[int]:
        argv = [sys.executable, "-m", "cttop", "-b", "-n", "1", "-o", "json"]
        argv += ["--netns", table.name, *extra]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return sorted(f["id"] for f in json.loads(proc.stdout)["flows"])

    with inside(table.path):
        whole = ConntrackClient().snapshot().flows
    pred = parse_filter(expr)
    want = sorted(f.id for f in whole.values() if pred(f) and f.id is not None)
    assert want and ids(["--filter", expr]) == want
