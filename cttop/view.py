"""What the operator sees of a sample: the filter language, the sort keys and group-by.

Pure (no widgets, no clock): `apply(rows, filter=..., sort=..., group=...)` → ordered rows + totals.
The TUI's filter bar and `--filter` both go through `parse_filter`, so they speak one language.
"""

from __future__ import annotations

import contextlib
import functools
import math
import socket
import threading
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, count, repeat
from operator import add, and_, attrgetter, eq, is_, is_not, itemgetter, le, lt, mul, ne, not_, or_
from typing import Any, NamedTuple, overload

from cttop.conntrack.const import (
    AF_INET,
    AF_INET6,
    IPPROTO_DCCP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    IPS_ASSURED,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    PROTO_NAMES,
    STATE_TABLES,
    proto_name,
    state_name,
)
from cttop.conntrack.model import Flow, Tuple
from cttop.sampler import ZERO_RATE, Carry, FlowRow, FlowRows, Rate, permuted

__all__ = [
    "GROUP_KEYS",
    "SORT_KEYS",
    "FilterError",
    "GroupError",
    "GroupRow",
    "GroupRows",
    "Predicate",
    "SortError",
    "SortKey",
    "ViewAbandoned",
    "ViewError",
    "ViewResult",
    "ViewTotals",
    "apply",
    "group_rows",
    "kernel_filter",
    "parse_filter",
    "service_name",
    "sort_flows",
    "totals_of",
]


class ViewError(ValueError):
    """A filter, sort key or group-by the view cannot use; the message is for the operator."""


class FilterError(ViewError):
    """A filter expression with a bad term: the message names the term and says why."""

    def __init__(self, term: str, why: str) -> None:
        super().__init__(f"filter term {term!r}: {why}")
        self.term = term
        self.why = why


class SortError(ViewError):
    """An unknown sort key."""


class ViewAbandoned(ViewError):
    """`apply` gave up because its `stop` said so (what it was computing is no longer wanted)."""


class GroupError(ViewError):
    """An unknown group-by mode."""


Predicate = Callable[[Flow], bool]
_Mask = Callable[[list[Flow]], list[bool]]


# A predicate can carry a `mask`: the same test over a whole list of flows at once, made of
# C-level passes (attrgetter, map, a dict of the distinct values): a filter over 250k flows
# then costs a few passes instead of a Python call per flow. `matches` uses it when there.


def _masked(pred: Predicate, mask: _Mask) -> Predicate:
    pred.mask = mask  # type: ignore[attr-defined]
    return pred


class _ColumnStore:
    """The columns of one list of flows (`get` over every flow: a list, and its distinct
    values), kept with a sample's memo: typing a filter re-filters the same rows at every key,
    and the terms mostly read the same few columns (a port, the addresses, the protocol).
    The next sample's store copies those that depend only on a flow's identity from here,
    for the rows that are the same flows again (see `_inherit`)."""

    __slots__ = ("distinct", "exact", "flows", "generation", "read", "values")

    def __init__(self, flows: list[Flow], generation: int = 0) -> None:
        self.flows = flows
        # By the getter over each flow (or a function of the flows, for derived columns).
        self.values: dict[Callable[..., Any], list[Any]] = {}
        # A carried column's may be wider than its values (what vanished stays in until
        # it is read anew): `_by_value` asks each of them its test, which is none the worse.
        self.distinct: dict[Callable[[Flow], Any], set[Any]] = {}
        self.exact: dict[Callable[[Flow], Any], int] = {}  # its size when last read exactly
        self.generation = generation  # stores inherited from, one sample each
        self.read: dict[Callable[..., Any], int] = {}  # column -> generation it was last read


# The computation running on this thread: .columns, its _ColumnStore; .stop, its `stop`.
_local = threading.local()


@contextlib.contextmanager
def _columns_of(store: _ColumnStore | None, stop: Callable[[], bool] | None) -> Iterator[None]:
    before = getattr(_local, "columns", None), getattr(_local, "stop", None)
    _local.columns, _local.stop = store, stop
    try:
        yield
    finally:
        _local.columns, _local.stop = before


def _check(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise ViewAbandoned("the view is no longer wanted")


def _store(flows: list[Flow]) -> _ColumnStore | None:
    """This thread's column store, when it holds the columns of these flows."""
    store: _ColumnStore | None = getattr(_local, "columns", None)
    return store if store is not None and store.flows is flows else None


def _cached(key: Callable[..., Any], flows: list[Flow], make: Callable[[], list[Any]]) -> list[Any]:
    """make(), a list over `flows`, kept under `key` in this thread's column store when it
    holds these flows. A pass over the flows is where a computation no longer wanted stops."""
    _check(getattr(_local, "stop", None))
    store = _store(flows)
    if store is None:
        return make()
    values = store.values.get(key)
    if values is None:
        values = store.values[key] = make()
    store.read[key] = store.generation
    return values


def _column(get: Callable[[Flow], Any], flows: list[Flow]) -> list[Any]:
    """list(map(get, flows)), from the column store when it has it (see `_cached`)."""
    return _cached(get, flows, lambda: _read(get, flows))


# Flows read between two looks at whether the computation is still wanted (~5-20 ms).
_READ_CHUNK = 1 << 15


def _chunks(flows: list[Flow]) -> Iterator[list[Flow]]:
    """The flows a chunk at a time, asking before each whether the computation is still
    wanted: reading a column of 250k flows is 20-80 ms of cache misses, and a view no longer
    wanted (a filter typed on) stops within a chunk."""
    if len(flows) <= _READ_CHUNK:
        if flows:  # (none at all: no chunk)
            yield flows
        return
    stop = getattr(_local, "stop", None)
    for at in range(0, len(flows), _READ_CHUNK):
        _check(stop)
        yield flows[at : at + _READ_CHUNK]


def _read(get: Callable[[Flow], Any], flows: list[Flow]) -> list[Any]:
    """list(map(get, flows)), a chunk at a time (see _chunks); a getter with a `column`
    method reads its column so."""
    column = getattr(get, "column", None)
    if column is not None:
        return column(flows)  # type: ignore[no-any-return]
    out: list[Any] = []
    for chunk in _chunks(flows):
        out += map(get, chunk)
    return out


def _prefetch(gets: tuple[Callable[[Flow], Any], ...], flows: list[Flow]) -> None:
    """Read the columns of `gets` that this thread's store lacks in one pass over the flows,
    each flow's tuples touched once instead of once a column: a NAT mask's eight columns of
    250k flows in ~190 ms instead of ~570 (then carried: see _inherit)."""
    store = _store(flows)
    if store is None:
        return
    reads: list[Callable[[Flow], Any]] = []
    for get in gets:  # (a reply's field is read from two columns: see _ReplyField)
        reads += (get.mirror, _stored_reply) if isinstance(get, _ReplyField) else (get,)
    missing = [get for get in dict.fromkeys(reads) if get not in store.values and get in _PATHS]
    if len(missing) < 2:
        return
    both = attrgetter(*(_PATHS[get] for get in missing))
    outs: list[list[Any]] = [[] for _ in missing]
    for chunk in _chunks(flows):
        rows = map(both, chunk)  # (a tuple of the values per flow)
        for out, values in zip(outs, zip(*rows, strict=True), strict=True):
            out += values
    for get, out in zip(missing, outs, strict=True):
        store.values[get] = out


def _distinct(get: Callable[[Flow], Any], flows: list[Flow], values: list[Any]) -> set[Any]:
    """set(values), where values is _column(get, flows): from the store too."""
    store = _store(flows)
    if store is None:
        return set(values)
    distinct = store.distinct.get(get)
    if distinct is None:
        distinct = store.distinct[get] = set(values)
        store.exact[get] = len(distinct)
    return distinct


def _by_value(get: Callable[[Flow], Any], test: Callable[[Any], bool]) -> _Mask:
    """A mask testing one value per flow, each distinct value once (or, for a test that is
    membership of a set it names as `test.members`, by that set: one pass in C)."""
    members: frozenset[Any] | None = getattr(test, "members", None)

    def mask(flows: list[Flow]) -> list[bool]:
        values = _column(get, flows)
        if members is not None:
            return list(map(members.__contains__, values))
        verdict = {v: bool(test(v)) for v in _distinct(get, flows, values)}
        passing = sum(verdict.values())
        if passing == 0 or passing == len(verdict):
            # One answer for every flow (a filter half typed matches nothing, mostly).
            return [passing != 0] * len(values)
        return list(map(verdict.__getitem__, values))

    return mask


def _equal(values: list[Any], value: Any) -> list[bool]:
    """[v == value for v in values], at C speed (operator.eq: twice as fast as value.__eq__)."""
    return list(map(eq, values, repeat(value)))


def _any_of(masks: list[_Mask], reads: tuple[Callable[[Flow], Any], ...] = ()) -> _Mask:
    """Any of the masks; `reads`: the columns they read, read together first (_prefetch)."""

    def mask(flows: list[Flow]) -> list[bool]:
        _prefetch(reads, flows)
        out = masks[0](flows)
        for m in masks[1:]:
            if all(out):
                break
            more = m(flows)
            if any(more):  # a pass that would change nothing is skipped (C-speed checks)
                out = list(map(or_, out, more))
        return out

    return mask


def matches(pred: Predicate, flows: list[Flow]) -> list[bool]:
    """[pred(flow) for flow in flows], by the predicate's mask when it has one."""
    mask = getattr(pred, "mask", None)
    if mask is not None:
        return mask(flows)  # type: ignore[no-any-return]
    return list(map(pred, flows))


# Protocols whose tuples carry ports (the same fields hold a GRE key, which is not a port).
_PORT_PROTOS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_DCCP, IPPROTO_UDPLITE})

# ---------------------------------------------------------------------------------------------
# Addresses: text → (version, integer), shared by the address filters and the address sorts.
# The decoder interns address text, so a table has few distinct strings and the cache hits.
# ---------------------------------------------------------------------------------------------

_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


@functools.lru_cache(maxsize=1 << 18)
def _address(text: str) -> tuple[int, int] | None:
    """(4 or 6, address as an integer), or None when `text` is not an IP address."""
    try:
        if ":" in text:
            return 6, _from_bytes(_inet_pton(socket.AF_INET6, text), "big")
        return 4, _from_bytes(_inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


# Sort key of an address as one integer (fast to compare): IPv4 numerically, then IPv6
# numerically, then text that is not an address (all equal, so the sort stays total and stable).
_V6_BASE = 1 << 32
_NOT_AN_ADDRESS = 1 << 129


@functools.lru_cache(maxsize=1 << 18)
def _address_key(text: str | None) -> int | None:
    if text is None:
        return None
    parsed = _address(text)
    if parsed is None:
        return _NOT_AN_ADDRESS
    version, number = parsed
    return number if version == 4 else _V6_BASE + number


# ---------------------------------------------------------------------------------------------
# The filter language
# ---------------------------------------------------------------------------------------------

_FIELDS_HELP = "proto:, state:, src:, dst:, host:, port:, sport:, dport:, mark:, zone:, family:"
_WORDS_HELP = "tcp, udp, icmp, …, ipv4, ipv6, nat, snat, dnat, assured, unreplied, offload"
_TEXT_CHARS = frozenset("0123456789abcdef.:")

# Protocol names a bare word may be: the ones conntrack tracks by name, plus spellings of ICMPv6.
_PROTO_WORDS: dict[str, int] = {name: num for num, name in PROTO_NAMES.items()}
_PROTO_WORDS.update({"icmp6": IPPROTO_ICMPV6, "ipv6-icmp": IPPROTO_ICMPV6})

# State name → the (protocol, state number) pairs that carry it: ESTABLISHED is TCP's and SCTP's.
_STATES: dict[str, frozenset[tuple[int, int]]] = {}
for _pn, _table in STATE_TABLES.items():
    for _num, _name in enumerate(_table):
        _STATES[_name] = _STATES.get(_name, frozenset()) | {(_pn, _num)}

_FAMILIES = {
    "ipv4": AF_INET,
    "inet": AF_INET,
    "4": AF_INET,
    "ipv6": AF_INET6,
    "inet6": AF_INET6,
    "6": AF_INET6,
}


def _is_number(text: str) -> bool:
    # str.isdigit is true for "²" and other digits int() refuses.
    return text.isascii() and text.isdigit()


def _match_all(flow: Flow) -> bool:
    return True


def _terms(expr: str) -> list[tuple[bool, str]]:
    """The expression's terms as (negated, term), `not`/`!` folded in."""
    tokens = expr.split()
    out: list[tuple[bool, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        negate = False
        while token.lower() in ("not", "!"):
            negate = not negate
            i += 1
            if i == len(tokens):
                raise FilterError(token, "nothing after it to negate")
            token = tokens[i]
        while token.startswith("!"):
            negate = not negate
            token = token[1:]
        if not token:
            raise FilterError(tokens[i], "nothing after it to negate")
        out.append((negate, token))
        i += 1
    return out


def parse_filter(expr: str) -> Predicate:
    """Compile a filter expression into a predicate on `Flow`.

    Space-separated terms, all must match; `not TERM`, `! TERM` or `!TERM` negates one.
    Raises `FilterError` naming the first bad term and why.
    """
    preds: list[Predicate] = []
    for negate, token in _terms(expr):
        pred = _term(token)
        preds.append(_negated(pred) if negate else pred)
    return _all_of(preds)


# Keywords that test one status bit: the bit, and whether the keyword wants it set.
_STATUS_WORDS: dict[str, tuple[int, bool]] = {
    "assured": (IPS_ASSURED, True),
    "unreplied": (IPS_SEEN_REPLY, False),
    "offload": (IPS_OFFLOAD, True),
    "offloaded": (IPS_OFFLOAD, True),
}


def kernel_filter(expr: str) -> dict[str, int]:
    """The part of a (valid) expression the kernel can apply to its dump, so it sends less:
    `family`, `mark` (with `mark_mask`) and `zone` from plain, non-negated terms, and `status`
    with `status_mask` from the status keywords (assured, unreplied, offload), negated or not:
    the bits they want set and clear. A field named twice is left to the view, and so are
    status keywords that contradict each other. The view still applies the whole expression
    afterwards.
    """
    parse_filter(expr)  # raise on a bad expression, exactly as the view would
    found: dict[str, list[dict[str, int]]] = {}
    bits_set = bits_clear = 0
    for negate, token in _terms(expr):
        field, colon, value = token.partition(":")
        field, word = field.lower(), token.lower()
        if not colon and word in _STATUS_WORDS:
            bit, wanted = _STATUS_WORDS[word]
            if wanted != negate:
                bits_set |= bit
            else:
                bits_clear |= bit
            continue
        if negate:
            continue
        if not colon and word in _FAMILIES and not word.isdigit():  # as _term reads it
            found.setdefault("family", []).append({"family": _FAMILIES[word]})
        elif field == "family":
            found.setdefault("family", []).append({"family": _FAMILIES[value.lower()]})
        elif field == "zone":
            found.setdefault("zone", []).append({"zone": _number(token, value, "zone", 0xFFFF)})
        elif field == "mark":
            value_text, slash, mask_text = value.partition("/")
            mark = _number(token, value_text, "mark", 0xFFFFFFFF)
            mask = _number(token, mask_text, "mask", 0xFFFFFFFF) if slash else 0xFFFFFFFF
            found.setdefault("mark", []).append({"mark": mark, "mark_mask": mask})
    out: dict[str, int] = {}
    for values in found.values():
        if len(values) == 1:
            out.update(values[0])
    if (bits_set or bits_clear) and not bits_set & bits_clear:
        out.update(status=bits_set, status_mask=bits_set | bits_clear)
    return out


def _negated(pred: Predicate) -> Predicate:
    return _masked(lambda flow: not pred(flow), lambda flows: list(map(not_, matches(pred, flows))))


def all_of(preds: list[Predicate]) -> Predicate:
    """A predicate that holds when all of `preds` do (masks combined when they have them)."""
    if not preds:
        return _match_all
    if len(preds) == 1:
        return preds[0]
    # A chain of `and`s: no generator per flow, and the first failing term ends it.
    head, rest = preds[0], all_of(preds[1:])

    def mask(flows: list[Flow]) -> list[bool]:
        first = matches(head, flows)
        if not any(first):
            return first
        return list(map(and_, first, matches(rest, flows)))

    return _masked(lambda flow: head(flow) and rest(flow), mask)


_all_of = all_of


def _term(token: str) -> Predicate:
    word = token.lower()
    field, colon, value = token.partition(":")
    if colon:
        parse = _FIELD_PARSERS.get(field.lower())
        if parse is not None:
            if not value:
                raise FilterError(token, f"{field}: needs a value")
            return parse(token, value)
        if set(word) <= _TEXT_CHARS | {"/"}:  # an IPv6 address or prefix, not a field
            return _bare(token)
        raise FilterError(token, f"unknown field {field!r}; fields are {_FIELDS_HELP}")
    keyword = _KEYWORDS.get(word)
    if keyword is not None:
        return keyword
    protonum = _PROTO_WORDS.get(word)
    if protonum is not None:
        return _proto_is(protonum)
    if word in _FAMILIES and not word.isdigit():
        return _family_is(_FAMILIES[word])
    return _bare(token)


def _bare(token: str) -> Predicate:
    """A bare word: text found in an address or a port of either direction."""
    word = token.lower()
    if "/" in word:  # a network as a bare word cannot match as text: take it as host:
        return _host_term(token, token)
    if not set(word) <= _TEXT_CHARS:
        raise FilterError(
            token,
            f"not a protocol or keyword ({_WORDS_HELP}), not field:value ({_FIELDS_HELP}), "
            "and as text it cannot match an address or a port",
        )

    def in_address(flow: Flow) -> bool:
        o, r = flow.orig, flow.reply
        return any(a is not None and word in a for a in (o.src, o.dst, r.src, r.dst))

    def address_has(address: str | None) -> bool:
        return address is not None and word in address

    addresses = [_by_value(get, address_has) for get in _ADDRESSES]
    if not word.isdigit():
        return _masked(in_address, _any_of(addresses, _ADDRESSES))

    def in_address_or_port(flow: Flow) -> bool:
        o, r = flow.orig, flow.reply
        return in_address(flow) or any(
            p is not None and word in str(p) for p in (o.sport, o.dport, r.sport, r.dport)
        )

    def port_has(port: int | None) -> bool:
        return port is not None and word in str(port)

    ports = [_by_value(get, port_has) for get in _PORT_VALUES]
    return _masked(in_address_or_port, _any_of(addresses + ports, _ADDRESSES + _PORT_VALUES))


def _proto_is(*protonums: int) -> Predicate:
    """The protocol is one of these."""
    if len(protonums) == 1:
        (protonum,) = protonums
        return _masked(
            lambda flow: flow.protonum == protonum,
            lambda flows: _equal(_column(_protonum, flows), protonum),
        )
    among = frozenset(protonums)
    return _masked(
        lambda flow: flow.protonum in among,
        lambda flows: list(map(among.__contains__, _column(_protonum, flows))),
    )


proto_is = _proto_is


def proto_not(*protonums: int) -> Predicate:
    """The protocol is none of these."""
    return _negated(_proto_is(*protonums))


def state_named(name: str) -> Predicate:
    """The flow's state, by name as shown (Flow.state_name), is `name`."""

    def test(pair: tuple[int, int | None]) -> bool:
        return state_name(*pair) == name

    return _masked(lambda flow: flow.state_name == name, _by_value(_proto_and_state, test))


def _family_is(family: int) -> Predicate:
    return _masked(
        lambda flow: flow.family == family,
        lambda flows: _equal(_column(_family, flows), family),
    )


def _proto_term(token: str, value: str) -> Predicate:
    word = value.lower()
    if _is_number(word):
        num = int(word)
        if num > 255:
            raise FilterError(token, f"protocol number {num} is out of range 0-255")
        return _proto_is(num)
    protonum = _PROTO_WORDS.get(word)
    if protonum is None:
        try:  # /etc/protocols knows the rest (esp, ah, ipip, …)
            protonum = socket.getprotobyname(word)
        except (OSError, ValueError):
            raise FilterError(
                token, f"unknown protocol {value!r} (not a number and not in /etc/protocols)"
            ) from None
    return _proto_is(protonum)


def _state_term(token: str, value: str) -> Predicate:
    name = value.upper().replace("-", "_")
    # An exact name wins over the longer names it is a prefix of: state:close is not CLOSE_WAIT.
    names = [name] if name in _STATES else [s for s in _STATES if s.startswith(name)]
    if not names:
        known = ", ".join(sorted(n.lower() for n in _STATES))
        raise FilterError(token, f"no TCP, SCTP or DCCP state is called {value!r}; states: {known}")
    pairs = frozenset(pair for n in names for pair in _STATES[n])
    return _masked(
        lambda flow: (flow.protonum, flow.state) in pairs,
        lambda flows: list(map(pairs.__contains__, _column(_proto_and_state, flows))),
    )


def _network(token: str, value: str) -> tuple[int, int, int]:
    """An address or CIDR network as (version, network integer, mask integer)."""
    text = value.replace("[", "").replace("]", "")  # [2001:db8::1] as in URLs
    addr, slash, bits_text = text.partition("/")
    parsed = _address(addr)
    if parsed is None:
        raise FilterError(token, f"{addr!r} is not an IPv4 or IPv6 address")
    version, number = parsed
    width = 32 if version == 4 else 128
    if not slash:
        bits = width
    elif _is_number(bits_text) and int(bits_text) <= width:
        bits = int(bits_text)
    else:
        raise FilterError(token, f"prefix length {bits_text!r} is not a number 0-{width}")
    mask = ((1 << bits) - 1) << (width - bits)
    return version, number & mask, mask


def _address_matcher(token: str, value: str) -> Callable[[str | None], bool]:
    version, network, mask = _network(token, value)

    def match(text: str | None) -> bool:
        if text is None:
            return False
        parsed = _address(text)
        return parsed is not None and parsed[0] == version and parsed[1] & mask == network

    return match


def _src_term(token: str, value: str) -> Predicate:
    match = _address_matcher(token, value)
    return _masked(lambda flow: match(flow.orig.src), _by_value(_orig_src, match))


def _dst_term(token: str, value: str) -> Predicate:
    match = _address_matcher(token, value)
    return _masked(lambda flow: match(flow.orig.dst), _by_value(_orig_dst, match))


def _host_term(token: str, value: str) -> Predicate:
    """Either end in either direction: a DNAT'd server and an SNAT address match too."""
    match = _address_matcher(token, value)

    def any_address(flow: Flow) -> bool:
        o, r = flow.orig, flow.reply
        return match(o.src) or match(o.dst) or match(r.src) or match(r.dst)

    return _masked(any_address, _any_of([_by_value(get, match) for get in _ADDRESSES], _ADDRESSES))


def _ports(token: str, value: str) -> Callable[[int | None], bool]:
    """A port test: a number, a range `lo-hi`, or a service name from /etc/services."""
    lo_text, dash, hi_text = value.partition("-")
    if _is_number(value) or (dash and _is_number(lo_text) and _is_number(hi_text)):
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
        for port in (lo, hi):
            if port > 65535:
                raise FilterError(token, f"port {port} is out of range 0-65535")
        if lo > hi:
            raise FilterError(token, f"range {value!r} is empty: {lo} is above {hi}")
        if hi - lo >= _PORT_SET_MAX:
            return lambda port: port is not None and lo <= port <= hi
        found = set(range(lo, hi + 1))
    else:
        found = set()
        for transport in ("tcp", "udp", "sctp"):
            with contextlib.suppress(OSError, ValueError):  # ValueError: a NUL, not encodable
                found.add(socket.getservbyname(value.lower(), transport))
        if not found:
            raise FilterError(
                token,
                f"{value!r} is not a port, a range like 1000-2000, or a service in /etc/services",
            )
    ports = frozenset(found)

    def test(port: int | None) -> bool:
        return port in ports

    test.members = ports  # type: ignore[attr-defined]  # (see _by_value)
    return test


# A port range up to this wide is tested as a set of ports (see _by_value).
_PORT_SET_MAX = 1024


def _port_mask(test: Callable[[int | None], bool], gets: tuple[Any, ...]) -> _Mask:
    """Any of these ports passes `test`, for flows of a protocol with ports (the others'
    port fields are something else: GRE keys)."""
    any_port = _any_of([_by_value(get, test) for get in gets], gets)

    def mask(flows: list[Flow]) -> list[bool]:
        ports = any_port(flows)
        if not any(ports):
            return ports
        return list(map(and_, _has_ports(flows), ports))

    return mask


def _has_ports(flows: list[Flow]) -> list[bool]:
    return _cached(
        _has_ports, flows, lambda: list(map(_PORT_PROTOS.__contains__, _column(_protonum, flows)))
    )


_ICMPS = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})


def _not_icmp(flows: list[Flow]) -> list[bool]:
    return _cached(
        _not_icmp,
        flows,
        lambda: list(map(not_, map(_ICMPS.__contains__, _column(_protonum, flows)))),
    )


def _rewritten(towards: int) -> _Mask:
    """Flow.dnat (towards 1: the reply comes from elsewhere than the original went to) or
    Flow.snat (towards 0: it goes back elsewhere than the original came from) over a list of
    flows, from four columns the next sample carries: the address, or but for ICMP the port,
    of the reply is not the original's."""
    other = 3 - towards  # reply.src (2) faces orig.dst (1); reply.dst (3) faces orig.src (0)

    def mask(flows: list[Flow]) -> list[bool]:
        _prefetch(_ADDRESSES + _PORT_VALUES, flows)
        address = _ADDRESSES[towards]
        out = list(map(ne, _column(_ADDRESSES[other], flows), _column(address, flows)))
        ports = list(
            map(ne, _column(_PORT_VALUES[other], flows), _column(_PORT_VALUES[towards], flows))
        )
        if any(ports):
            out = list(map(or_, out, map(and_, _not_icmp(flows), ports)))
        return out

    return mask


def _sport_term(token: str, value: str) -> Predicate:
    test = _ports(token, value)
    return _masked(
        lambda flow: flow.protonum in _PORT_PROTOS and test(flow.orig.sport),
        _port_mask(test, _PORT_VALUES[:1]),
    )


def _dport_term(token: str, value: str) -> Predicate:
    test = _ports(token, value)
    return _masked(
        lambda flow: flow.protonum in _PORT_PROTOS and test(flow.orig.dport),
        _port_mask(test, _PORT_VALUES[1:2]),
    )


def _port_term(token: str, value: str) -> Predicate:
    """Any port of either direction, so a DNAT'd service port matches too."""
    test = _ports(token, value)

    def any_port(flow: Flow) -> bool:
        if flow.protonum not in _PORT_PROTOS:
            return False
        o, r = flow.orig, flow.reply
        return test(o.sport) or test(o.dport) or test(r.sport) or test(r.dport)

    return _masked(any_port, _port_mask(test, _PORT_VALUES))


def _number(token: str, text: str, what: str, maximum: int) -> int:
    try:
        num = int(text, 0)  # 16, 0x10
    except ValueError:
        try:
            num = int(text, 10)  # 010: int(text, 0) refuses a leading zero
        except ValueError:
            raise FilterError(
                token, f"{what} {text!r} is not a number (decimal or 0x hex)"
            ) from None
    if not 0 <= num <= maximum:
        raise FilterError(token, f"{what} {num} is out of range 0-{maximum}")
    return num


def _mark_term(token: str, value: str) -> Predicate:
    """`mark:N` or `mark:VALUE/MASK`, as conntrack --mark takes it."""
    value_text, slash, mask_text = value.partition("/")
    mark = _number(token, value_text, "mark", 0xFFFFFFFF)
    mask = _number(token, mask_text, "mask", 0xFFFFFFFF) if slash else 0xFFFFFFFF
    if mark & ~mask:
        raise FilterError(token, f"mark {mark:#x} has bits outside the mask {mask:#x}")

    def test(value: int | None) -> bool:
        return value is not None and value & mask == mark

    return _masked(lambda flow: test(flow.mark), _by_value(_mark, test))


def _zone_term(token: str, value: str) -> Predicate:
    zone = _number(token, value, "zone", 0xFFFF)
    return _masked(
        lambda flow: flow.zone == zone, lambda flows: _equal(_column(_zone, flows), zone)
    )


def _family_term(token: str, value: str) -> Predicate:
    family = _FAMILIES.get(value.lower())
    if family is None:
        raise FilterError(token, f"family is ipv4 or ipv6, not {value!r}")
    return _family_is(family)


_FIELD_PARSERS: dict[str, Callable[[str, str], Predicate]] = {
    "proto": _proto_term,
    "state": _state_term,
    "src": _src_term,
    "dst": _dst_term,
    "host": _host_term,
    "port": _port_term,
    "sport": _sport_term,
    "dport": _dport_term,
    "mark": _mark_term,
    "zone": _zone_term,
    "family": _family_term,
}

_KEYWORDS: dict[str, Predicate] = {
    "nat": _masked(lambda flow: flow.snat or flow.dnat, _any_of([_rewritten(0), _rewritten(1)])),
    "snat": _masked(lambda flow: flow.snat, _rewritten(0)),
    "dnat": _masked(lambda flow: flow.dnat, _rewritten(1)),
}


_status = attrgetter("status")


def _status_is(bit: int, wanted: bool) -> Predicate:
    """The status is known and has `bit` set (wanted) or clear (not wanted)."""

    def test(status: int | None) -> bool:
        return status is not None and bool(status & bit) == wanted

    return _masked(lambda flow: test(flow.status), _by_value(_status, test))


# The status keywords are the ones the kernel can apply too (kernel_filter): one table.
_KEYWORDS.update({word: _status_is(*spec) for word, spec in _STATUS_WORDS.items()})


# ---------------------------------------------------------------------------------------------
# Sort keys and group-by modes
# ---------------------------------------------------------------------------------------------


class SortKey(NamedTuple):
    name: str
    descending: bool  # its natural direction; `reverse` flips it
    help: str


SORT_KEYS: dict[str, SortKey] = {
    k.name: k
    for k in (
        SortKey("rate", True, "total bytes/s, both directions (default)"),
        SortKey("orig_rate", True, "bytes/s in the original direction"),
        SortKey("reply_rate", True, "bytes/s in the reply direction"),
        SortKey("bytes", True, "bytes so far, both directions"),
        SortKey("packets", True, "packets so far, both directions"),
        SortKey("flows", True, "flows in the group (1 for a flow)"),
        SortKey("age", True, "time since the flow started, oldest first (needs timestamps)"),
        SortKey("timeout", False, "seconds left before the entry expires, soonest first"),
        SortKey("proto", False, "protocol name"),
        SortKey("state", False, "TCP/SCTP/DCCP state name"),
        SortKey("src", False, "original source address, numerically, IPv4 before IPv6"),
        SortKey("dst", False, "original destination address, numerically, IPv4 before IPv6"),
        SortKey("sport", False, "original source port"),
        SortKey("dport", False, "original destination port"),
        SortKey("mark", False, "connection mark"),
        SortKey("zone", False, "conntrack zone"),
        SortKey("id", False, "conntrack id"),
    )
}

GROUP_KEYS: dict[str, str] = {
    "none": "one row per flow",
    "src": "original source address",
    "dst": "original destination address",
    "dport": "protocol and destination port (service)",
    "pair": "source → destination address pair",
    "proto": "protocol",
    "state": "protocol state",
    "mark": "connection mark",
    "zone": "conntrack zone",
}
_GROUP_ALIASES = {"service": "dport", "flows": "none", "": "none"}


def _sort_key(sort: str) -> SortKey:
    spec = SORT_KEYS.get(sort.lower())
    if spec is None:
        raise SortError(f"unknown sort key {sort!r}; sort keys: {', '.join(SORT_KEYS)}")
    return spec


def _group_mode(group: str) -> str:
    mode = _GROUP_ALIASES.get(group.lower(), group.lower())
    if mode not in GROUP_KEYS:
        raise GroupError(f"unknown group-by {group!r}; choose one of: {', '.join(GROUP_KEYS)}")
    return mode


_INDEX: list[int] = []


def _indices(n: int) -> list[int]:
    """0, 1, 2, … at least up to n - 1 (longer is fine for compress): one list of int objects
    for every order and filter to share. At 250k flows a list of indices made anew is 250k
    ints, 7 MB, for each order a memo keeps."""
    global _INDEX
    index = _INDEX
    if len(index) < n or n < len(index) // 4:  # (a table that shrank a lot lets them go)
        index = _INDEX = list(range(n))
    return index


def _order(values: list[Any], descending: bool, index: list[int] | None = None) -> list[int]:
    """Indices of `values` in order; stable, and None (absent) last in either direction.
    `index`: the ints to use (see `_indices`), if they are to be kept.

    C-level passes only (compress, map, list.sort with a C key): at 250k flows a Python loop
    per flow is most of a key press's latency.
    """
    n = len(values)
    if index is None:
        index = list(range(n))
    if None not in values:
        order = index[:n]
        # list.sort with reverse=True keeps equal items in their original order: still stable.
        order.sort(key=values.__getitem__, reverse=descending)
        return order
    absent = list(map(is_, values, repeat(None)))
    present = list(compress(index, map(not_, absent)))
    present.sort(key=values.__getitem__, reverse=descending)
    present += compress(index, absent)
    return present


def _sum2(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


# ---------------------------------------------------------------------------------------------
# Flow rows: sort values a whole column at a time (None: absent, last in both directions), with
# C-level helpers where they exist, since one Python call per flow is most of the cost.
# ---------------------------------------------------------------------------------------------

_Column = Callable[[list[Flow], list["Rate | None"]], list[Any]]
_orig_bytes = attrgetter("orig_bytes")
_reply_bytes = attrgetter("reply_bytes")
_orig_packets = attrgetter("orig_packets")
_reply_packets = attrgetter("reply_packets")
_protonum = attrgetter("protonum")
_proto_and_state = attrgetter("protonum", "state")
_family = attrgetter("family")
_mark = attrgetter("mark")
_zone = attrgetter("zone")
# The original tuple's ports and addresses (one getter each: one column in a store, carried)
_ORIG_PATHS = ("orig.sport", "orig.dport", "orig.src", "orig.dst")
_orig_sport, _orig_dport, _orig_src, _orig_dst = map(attrgetter, _ORIG_PATHS)
_stored_reply = attrgetter("kept_reply")  # None for the original mirrored (see Flow.reply)
# What each reads, for reading several in one pass (see _prefetch).
_PATHS = {
    **dict(zip((_orig_sport, _orig_dport, _orig_src, _orig_dst), _ORIG_PATHS, strict=True)),
    _stored_reply: "kept_reply",
}


class _ReplyField:
    """`flow.reply.<name>` as a column getter. Most flows do not keep their reply (it is the
    original mirrored, made when read: see `Flow.reply`), so a column is the mirrored field's
    column of the originals, with the kept replies' values put in: passes in C, and Python
    only for the NATed flows."""

    __slots__ = ("index", "mirror", "name")

    def __init__(self, name: str, mirror: Callable[[Flow], Any]) -> None:
        self.name = name
        self.index = Tuple._fields.index(name)
        self.mirror = mirror

    def __call__(self, flow: Flow) -> Any:
        return flow.reply[self.index]

    def column(self, flows: list[Flow]) -> list[Any]:
        out = _column(self.mirror, flows).copy()
        kept = _column(_stored_reply, flows)
        i = self.index
        for at in compress(count(), kept):
            out[at] = kept[at][i]
        return out

    def __repr__(self) -> str:
        return f"<reply.{self.name}>"


_reply_src = _ReplyField("src", _orig_dst)
_reply_dst = _ReplyField("dst", _orig_src)
_reply_sport = _ReplyField("sport", _orig_dport)
_reply_dport = _ReplyField("dport", _orig_sport)
# A flow's four ports and four addresses, for the masks
_PORT_VALUES: tuple[Callable[[Flow], Any], ...] = (
    _orig_sport,
    _orig_dport,
    _reply_sport,
    _reply_dport,
)
_ADDRESSES: tuple[Callable[[Flow], Any], ...] = (_orig_src, _orig_dst, _reply_src, _reply_dst)
_state = attrgetter("state")
_expires = attrgetter("expires")
_start = attrgetter("start")
_id = attrgetter("id")


def _c_rate(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    # (The idle flows' shared ZERO_RATE gives the one 0.0: no float made per idle flow.)
    return [None if r is None else 0.0 if r is ZERO_RATE else r[0] + r[1] for r in rates]


def _c_orig_rate(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    return [None if r is None else r[0] for r in rates]


def _c_reply_rate(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    return [None if r is None else r[1] for r in rates]


def _c_bytes(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    return list(map(_sum2, map(_orig_bytes, flows), map(_reply_bytes, flows)))


def _c_packets(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    return list(map(_sum2, map(_orig_packets, flows), map(_reply_packets, flows)))


# The columns below are read through this thread's column store when it has one for these
# flows (see _cached): a sort's column is then a filter's too, and the identity columns are
# copied from the last sample's (see _inherit) instead of read from 250k flows (20-80 ms).


def _c_age(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    # An earlier start is a greater age: sort on -start so that "descending" means oldest first.
    return [None if s is None else -s for s in _column(_start, flows)]


def _c_proto(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    nums = _column(_protonum, flows)
    names = {p: proto_name(p) for p in _distinct(_protonum, flows, nums)}
    return list(map(names.__getitem__, nums))


def _c_state(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    state = _state_codes(flows)
    assert state.key_of is not None
    names = {code: state.key_of(code) for code in set(state.codes)}
    return list(map(names.__getitem__, state.codes))


def _c_id(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
    ids = _column(_id, flows)
    if None in ids:
        return ids
    # As floats (exact: an id has 32 bits), which CPython compares on a fast path; ints from
    # 2**30 up it compares digit by digit. At 250k flows ~10 ms to make, ~60 saved sorting.
    return list(map(float, ids))


def _c_attr(get: Callable[[Flow], Any]) -> _Column:
    return lambda flows, rates: _column(get, flows)


def _c_address(get: Callable[[Flow], Any]) -> _Column:
    def column(flows: list[Flow], rates: list[Rate | None]) -> list[Any]:
        addresses = _column(get, flows)
        # A big table has far fewer distinct addresses than flows: each parsed once, and
        # numbered in the order of its key. A sort then compares small ints, which CPython
        # compares on a fast path, instead of the keys (up to 130 bits, compared digit by
        # digit): at 250k flows ~55 ms instead of ~110.
        keys = {a: _address_key(a) for a in _distinct(get, flows, addresses)}
        ordered = sorted({k for k in keys.values() if k is not None})
        rank: dict[int | None, int | None] = {k: i for i, k in enumerate(ordered)}
        rank[None] = None  # (absent: last)
        ranks = {a: rank[k] for a, k in keys.items()}
        return list(map(ranks.__getitem__, addresses))

    return column


_FLOW_COLUMNS: dict[str, _Column] = {
    "rate": _c_rate,
    "orig_rate": _c_orig_rate,
    "reply_rate": _c_reply_rate,
    "bytes": _c_bytes,
    "packets": _c_packets,
    "flows": lambda flows, rates: [1] * len(flows),
    "age": _c_age,
    "timeout": _c_attr(_expires),  # the soonest expiry is the fewest seconds left
    "proto": _c_proto,
    "state": _c_state,
    "src": _c_address(_orig_src),
    "dst": _c_address(_orig_dst),
    "sport": _c_attr(_orig_sport),
    "dport": _c_attr(_orig_dport),
    "mark": _c_attr(_mark),
    "zone": _c_attr(_zone),
    "id": _c_id,
}


def _rate_total(rate: Rate) -> float:
    return rate[0] + rate[1]


# The rate columns, by the value each reads of a (present) Rate.
_RATE_VALUES: dict[_Column, Callable[[Rate], float]] = {
    _c_rate: _rate_total,
    _c_orig_rate: itemgetter(0),
    _c_reply_rate: itemgetter(1),
}


def sort_flows(
    rows: Iterable[FlowRow], sort: str = "rate", reverse: bool = False, limit: int | None = None
) -> FlowRows:
    """Order flow rows by a SORT_KEYS name in its natural direction (`reverse` flips it).

    Stable (equal keys keep their order) and total; rows without the value go last either way.
    """
    return _sorted(FlowRows.of(rows), sort, reverse, limit)


def _sorted(
    table: FlowRows,
    sort: str,
    reverse: bool,
    limit: int | None = None,
    values: list[Any] | None = None,
) -> FlowRows:
    """`sort_flows`: `table`'s rows by index (see FlowRows.in_order), in an order made of the
    shared ints of `_indices`. `values`: the sort's column, when already made."""
    spec = _sort_key(sort)
    flows, rates = table.flows, table.rates
    column = _FLOW_COLUMNS[spec.name]
    descending = spec.descending != reverse
    if values is None:
        values = column(flows, rates)
    index = _indices(len(flows))
    order = _by_rate(values, descending, index) if column in _RATE_VALUES else None
    if order is None:
        order = _order(values, descending, index)
    if limit is not None:
        del order[limit:]
    return FlowRows.in_order(table, order)


def _by_rate(values: list[Any], descending: bool, index: list[int]) -> list[int] | None:
    """What `_order` would give for a rate column, without sorting every flow: a rate is never
    negative, so the flows at 0 (most of a big table: idle) are one run at the low end, kept
    in their order as a stable sort keeps them; only the moving ones are sorted. None for
    rates the Sampler does not make (negative, NaN)."""
    moving = list(compress(index, values))
    if not all(map(le, repeat(0.0), map(values.__getitem__, moving))):  # negative, NaN
        return None
    moving.sort(key=values.__getitem__, reverse=descending)
    idle = list(compress(index, map(eq, values, repeat(0.0))))
    order = moving + idle if descending else idle + moving
    if len(order) < len(values):  # the flows without a rate, last either way
        order += compress(index, map(is_, values, repeat(None)))
    return order


# ---------------------------------------------------------------------------------------------
# Group rows
# ---------------------------------------------------------------------------------------------


class GroupRow(NamedTuple):
    """Flows sharing one value of the group-by key, with their rates and counters summed.

    The attributes the key determines (`src` for group-by src, …) are set; the others are None.
    """

    group: str  # the GROUP_KEYS mode that made it
    key: Any  # the raw key value: an address, (src, dst), (protonum, dport), a state name, …
    flows: int
    rate: Rate | None  # sum over the flows that have a rate; None when none has
    orig_bytes: int | None  # sums over the flows that have the counter; None when none has
    reply_bytes: int | None
    orig_packets: int | None
    reply_packets: int | None
    src: str | None = None
    dst: str | None = None
    protonum: int | None = None
    dport: int | None = None
    state: str | None = None
    mark: int | None = None
    zone: int | None = None

    @property
    def label(self) -> str:
        """The key as the operator reads it: `10.0.0.1 → 10.0.0.2`, `tcp/443 (https)`."""
        g = self.group
        if g == "pair":
            return f"{self.src or '-'} → {self.dst or '-'}"
        if g in ("dport", "proto"):
            proto = proto_name(self.protonum) if self.protonum is not None else "-"
            if g == "proto" or self.dport is None:
                return proto
            service = service_name(self.dport, self.protonum)
            return f"{proto}/{self.dport}" + (f" ({service})" if service else "")
        return "-" if self.key is None else str(self.key)


@functools.lru_cache(maxsize=4096)
def service_name(port: int, protonum: int | None = IPPROTO_TCP) -> str | None:
    """The /etc/services name of a port, or None."""
    transport = {IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}.get(protonum or 0, "tcp")
    try:
        return socket.getservbyport(port, transport)
    except (OSError, OverflowError):
        return None


class _Codes(NamedTuple):
    """The group of each flow, as a code cheap to hash (a string, a small int), and what
    turns a code into its group's key (None: the code is the key). Several codes may have
    one key unless `one_each`."""

    codes: list[Any]
    key_of: Callable[[Any], Any] | None = None
    one_each: bool = False


class _Numbered(NamedTuple):
    codes: list[int]  # per flow, the place of its value in `values`
    values: list[Any]  # the distinct values (and maybe more: see _ColumnStore.distinct)


def _numbered(get: Callable[[Flow], Any], flows: list[Flow]) -> _Numbered:
    """A column as the places of its values among the distinct ones (a big table has few)."""
    values = _column(get, flows)
    distinct = list(_distinct(get, flows, values))
    return _Numbered(list(map(dict(zip(distinct, count())).__getitem__, values)), distinct)


def _paired(high: list[int], low: list[int], width: int) -> list[int]:
    """high * width + low, per flow, in C: one int for two values, cheap to hash (hashing
    250k tuples, twice, to number them and then to look them up, is ~100 ms)."""
    return list(map(add, map(mul, high, repeat(width)), low))


def _state_codes(flows: list[Flow]) -> _Codes:
    """Each flow's protocol and state as one int, and a code's state name (a column of
    (protocol, state) tuples is 250k tuples made, and hashed)."""
    states = _numbered(_state, flows)
    width = len(states.values)

    def name(code: int) -> str | None:
        protonum, at = divmod(code, width)
        return state_name(protonum, states.values[at])

    return _Codes(_paired(_column(_protonum, flows), states.codes, width), name)


def _group_codes(flows: list[Flow], mode: str) -> _Codes:
    """The group code of each flow, from columns: the store's when this thread has one for
    these flows (the identity columns are carried from the last sample: see _inherit)."""
    if mode == "src":
        return _Codes(_column(_orig_src, flows))
    if mode == "dst":
        return _Codes(_column(_orig_dst, flows))
    if mode == "pair":
        _prefetch((_orig_src, _orig_dst), flows)
        srcs, dsts = _numbered(_orig_src, flows), _numbered(_orig_dst, flows)

        def pair(code: int) -> tuple[str | None, str | None]:
            src, dst = divmod(code, len(dsts.values))
            return srcs.values[src], dsts.values[dst]

        return _Codes(_paired(srcs.codes, dsts.codes, len(dsts.values)), pair, True)
    protos = _column(_protonum, flows)
    if mode == "dport":
        # Ports only mean something per protocol; ICMP and GRE flows group under their protocol.
        ports = _numbered(_orig_dport, flows)

        def service(code: int) -> tuple[int, int | None]:
            protonum, port = divmod(code, len(ports.values))
            return protonum, ports.values[port] if protonum in _PORT_PROTOS else None

        return _Codes(_paired(protos, ports.codes, len(ports.values)), service)
    if mode == "proto":
        return _Codes(protos)
    if mode == "state":
        return _state_codes(flows)
    if mode == "mark":
        return _Codes(_column(_mark, flows))
    return _Codes(_column(_zone, flows))


# The GroupRow fields each mode's key fills in, and the sort keys that read them.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "src": ("src",),
    "dst": ("dst",),
    "pair": ("src", "dst"),
    "dport": ("protonum", "dport"),
    "proto": ("protonum",),
    "state": ("state",),
    "mark": ("mark",),
    "zone": ("zone",),
}
_SORT_FIELD = {"proto": "protonum"}
_COUNTERS = attrgetter("orig_bytes", "reply_bytes", "orig_packets", "reply_packets")


def _not_the_same(
    flows: list[Flow], old: list[Flow], runs: list[int]
) -> tuple[list[int], list[int]] | None:
    """The rows of `flows` and of `old` (the last sample's) that are not the very same Flow
    objects at the places `runs` pairs (see Carry): two lists of indices, made in C but for
    one step a run. None when the runs do not fit the lists."""
    new_rows: list[int] = []
    old_rows: list[int] = []
    covered: list[tuple[int, int]] = []
    at = 0
    for i in range(0, len(runs), 3):
        start, was, length = runs[i], runs[i + 1], runs[i + 2]
        if length < 0 or start < at or start + length > len(flows) or was + length > len(old):
            return None
        new_rows += range(at, start)
        moved = list(map(is_not, flows[start : start + length], old[was : was + length]))
        new_rows += compress(range(start, start + length), moved)
        old_rows += compress(range(was, was + length), moved)
        covered.append((was, was + length))
        at = start + length
    new_rows += range(at, len(flows))
    at = 0
    for lo, hi in sorted(covered):
        if lo < at:  # (two runs of one last row)
            return None
        old_rows += range(at, lo)
        at = hi
    old_rows += range(at, len(old))
    return new_rows, old_rows


def _add_counters(
    sums: tuple[list[Any], ...],
    missing: tuple[dict[int, int], ...],
    groups: Iterable[int],
    flows: Iterable[Flow],
) -> None:
    """Add each flow's four counters (orig and reply bytes, orig and reply packets) to its
    group's in `sums`, or, for a counter it lacks, count it in that counter's `missing`."""
    ob_s, rb_s, op_s, rp_s = sums
    ob_m, rb_m, op_m, rp_m = missing
    for g, (ob, rb, op, rp) in zip(groups, map(_COUNTERS, flows), strict=True):
        if ob is not None:
            ob_s[g] += ob
        else:
            ob_m[g] = ob_m.get(g, 0) + 1
        if rb is not None:
            rb_s[g] += rb
        else:
            rb_m[g] = rb_m.get(g, 0) + 1
        if op is not None:
            op_s[g] += op
        else:
            op_m[g] = op_m.get(g, 0) + 1
        if rp is not None:
            rp_s[g] += rp
        else:
            rp_m[g] = rp_m.get(g, 0) + 1


class _Groups:
    """Flows aggregated by a group key, as flat per-group columns.

    Flat lists of numbers rather than one object per group: grouping 250k flows by address pair
    makes about as many groups, and only the rows read (see GroupRows) become GroupRow. Made
    by passes in C but for the flows whose rate moved. The counters are summed when first
    read, for the groups read (a block of rows: see GroupRows): summing four counters of
    every flow is a Python loop, ~100 ms at 250k flows.
    """

    def __init__(self, flows: list[Flow], rates: list[Rate | None], codes: _Codes, mode: str):
        # Groups are numbered in the order their first flows come.
        first = dict.fromkeys(codes.codes)
        key_of = codes.key_of
        if key_of is None or codes.one_each:
            by_code = dict(zip(first, count()))
            keys = list(first) if key_of is None else list(map(key_of, first))
        else:
            ordinal: dict[Any, int] = {}
            by_code = {code: ordinal.setdefault(key_of(code), len(ordinal)) for code in first}
            keys = list(ordinal)
        n = len(keys)
        group_of = list(map(by_code.__getitem__, codes.codes))
        counts = Counter(group_of)
        self.count = list(map(counts.__getitem__, range(n)))
        # Rates are summed over the flows that have one (None for a group without any); the
        # shared zero adds nothing (x + 0.0 == x), so only the others are, in the flows' order.
        if None in rates:
            self.rated = [False] * n
            for g in set(compress(group_of, map(is_not, rates, repeat(None)))):
                self.rated[g] = True
        else:
            self.rated = [True] * n
        ob_s, rb_s, op_s, rp_s = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
        moving = list(map(is_not, rates, repeat(ZERO_RATE)))
        for g, rate in zip(compress(group_of, moving), compress(rates, moving), strict=True):
            if rate is not None:
                ob_s[g] += rate[0]
                rb_s[g] += rate[1]
                op_s[g] += rate[2]
                rp_s[g] += rate[3]
        self.mode = mode
        self.keys = keys
        self.rate_sums = (ob_s, rb_s, op_s, rp_s)
        self.flows, self.rates, self.group_of = flows, rates, group_of
        # Summed over the flows that have the counter: absent is not 0, and a group whose
        # flows all lack it sums to None. Filled in by sum_counters.
        self.orig_bytes: list[int | None] = [None] * n
        self.reply_bytes: list[int | None] = [None] * n
        self.orig_packets: list[int | None] = [None] * n
        self.reply_packets: list[int | None] = [None] * n
        # Per counter, the flows of each summed group without it (when some are).
        self.missing: tuple[dict[int, int], ...] = ({}, {}, {}, {})
        self.summed = bytearray(n)
        self._lock = threading.Lock()  # (rows are read on the UI thread, views made on others)

    def __len__(self) -> int:
        return len(self.keys)

    def sum_counters(self, wanted: Iterable[int]) -> None:
        """Sum the counters of the groups `wanted` that are not summed yet."""
        with self._lock:
            summed = self.summed
            want = {g for g in wanted if not summed[g]}
            if not want:
                return
            groups_of: Iterable[int] = self.group_of
            members: Iterable[Flow] = self.flows
            if len(want) < len(summed):  # their flows only, found in C
                mask = list(map(want.__contains__, self.group_of))
                groups_of, members = compress(groups_of, mask), compress(members, mask)
            outs = (self.orig_bytes, self.reply_bytes, self.orig_packets, self.reply_packets)
            for out in outs:
                for g in want:
                    out[g] = 0
            # Flows without the counter, per group: a group of only those sums to None.
            missing: tuple[dict[int, int], ...] = ({}, {}, {}, {})
            _add_counters(outs, missing, groups_of, members)
            sizes = self.count
            for out, lacking, kept in zip(outs, missing, self.missing, strict=True):
                kept.update(lacking)
                for g, k in lacking.items():
                    if k == sizes[g]:
                        out[g] = None
            for g in want:
                summed[g] = 1

    def carry_counters(self, carry: Carry) -> None:
        """Sum every group's counters from the last sample's groups by the same mode (in
        `carry.views`, when all of them were summed): the rows that are the very same Flow
        objects as the last sample's rows at the places `carry.runs` gives (so in the same
        group, with the same counters) change nothing, and only the other rows, of either
        sample, are read. A poll while grouped by protocol, state, zone or mark otherwise
        sums every flow's counters in a Python loop (~60 ms at 250k flows)."""
        shared = carry.views.get(_SHARED)
        old: _Groups | None = None if shared is None else shared.get(("group", self.mode))
        if old is None or id(old.flows) != carry.prev or len(old.flows) != carry.prev_length:
            return
        if len(old.group_of) != len(old.flows) or len(old.keys) != len(old.count):  # (freed)
            return
        if 0 in old.summed:
            return
        flows, old_flows = self.flows, old.flows
        most = len(flows) * _CARRIED_SUMS_SHARE
        if len(self.keys) > most:  # (many small groups: a pass over them costs more)
            return
        changed = _not_the_same(flows, old_flows, carry.runs)
        # Much of the table changed (a busy table, a dump walked in another order): summing
        # the flows themselves is cheaper than taking out and putting back that many.
        if changed is None or len(changed[0]) + len(changed[1]) > most:
            return
        n = len(self.keys)
        # Each last group's new place; n for a group no flow of which is left (no row of the
        # last sample that is in it is the same object now, so all of them are taken off).
        place = dict(zip(self.keys, count()))
        to_new = [place.get(key, n) for key in old.keys]
        # The last sums and flows without each counter, by the new groups, ...
        sums = tuple([0] * (n + 1) for _ in range(4))
        missing: tuple[dict[int, int], ...] = ({}, {}, {}, {})
        old_outs = (old.orig_bytes, old.reply_bytes, old.orig_packets, old.reply_packets)
        for og, g in enumerate(to_new):
            for k in range(4):
                value = old_outs[k][og]
                sums[k][g] = 0 if value is None else value
                if og in old.missing[k]:
                    missing[k][g] = old.missing[k][og]
        # ... the rows that came in added, and those that went out taken off.
        came, went = changed
        groups_came = map(self.group_of.__getitem__, came)
        _add_counters(sums, missing, groups_came, map(flows.__getitem__, came))
        off = tuple([0] * (n + 1) for _ in range(4))
        off_missing: tuple[dict[int, int], ...] = ({}, {}, {}, {})
        groups_went = map(to_new.__getitem__, map(old.group_of.__getitem__, went))
        _add_counters(off, off_missing, groups_went, map(old_flows.__getitem__, went))
        with self._lock:
            outs = (self.orig_bytes, self.reply_bytes, self.orig_packets, self.reply_packets)
            parts = zip(outs, sums, off, missing, off_missing, self.missing, strict=True)
            for out, total, taken, lacking, lacking_taken, kept in parts:
                kept.clear()
                for g in range(n):
                    k = lacking.get(g, 0) - lacking_taken.get(g, 0)
                    if k:
                        kept[g] = k
                    out[g] = None if k == self.count[g] else total[g] - taken[g]
            self.summed[:] = bytes([1]) * n

    def row(self, g: int) -> GroupRow:
        """Group g as a GroupRow (its counters summed first, alone if need be)."""
        if not self.summed[g]:
            self.sum_counters((g,))
        key = self.keys[g]
        fields = _KEY_FIELDS[self.mode]
        values = key if len(fields) > 1 else (key,)
        ob_s, rb_s, op_s, rp_s = self.rate_sums
        return GroupRow(
            self.mode,
            key,
            self.count[g],
            Rate(ob_s[g], rb_s[g], op_s[g], rp_s[g]) if self.rated[g] else None,
            self.orig_bytes[g],
            self.reply_bytes[g],
            self.orig_packets[g],
            self.reply_packets[g],
            **dict(zip(fields, values, strict=True)),
        )

    def natural(self) -> list[Any]:
        """The order of the key itself: for a sort key the group key does not determine."""
        mode, keys = self.mode, self.keys
        if mode in ("src", "dst"):
            return list(map(_address_key, keys))
        if mode == "pair":
            return [
                (_address_key(s) or _NOT_AN_ADDRESS + 1, _address_key(d) or _NOT_AN_ADDRESS + 1)
                for s, d in keys
            ]
        if mode == "dport":
            return [(proto_name(p), -1 if port is None else port) for p, port in keys]
        if mode == "proto":
            return list(map(proto_name, keys))
        return keys  # state name, mark, zone

    def column(self, sort: str) -> list[Any]:
        ob_s, rb_s = self.rate_sums[0], self.rate_sums[1]
        if sort == "rate":
            return [a + b if k else None for a, b, k in zip(ob_s, rb_s, self.rated, strict=True)]
        if sort == "orig_rate":
            return [a if k else None for a, k in zip(ob_s, self.rated, strict=True)]
        if sort == "reply_rate":
            return [b if k else None for b, k in zip(rb_s, self.rated, strict=True)]
        if sort in ("bytes", "packets"):
            self.sum_counters(range(len(self)))
        if sort == "bytes":
            return list(map(_sum2, self.orig_bytes, self.reply_bytes))
        if sort == "packets":
            return list(map(_sum2, self.orig_packets, self.reply_packets))
        if sort == "flows":
            return self.count
        field = _SORT_FIELD.get(sort, sort)
        fields = _KEY_FIELDS[self.mode]
        if field not in fields:
            return self.natural()
        values = self.keys if len(fields) == 1 else [k[fields.index(field)] for k in self.keys]
        if field in ("src", "dst"):
            return list(map(_address_key, values))
        if field == "protonum":
            return [None if p is None else proto_name(p) for p in values]
        return values


# Groups whose counters are summed together when one of them is read (a screenful and more).
_GROUP_BLOCK = 256
# Group sums are carried from the last sample's (see _Groups.carry_counters) while the groups,
# and the rows to take out and put back, are at most this share of the flows.
_CARRIED_SUMS_SHARE = 1 / 8
# Groups of more flows than this are summed with the first block (a block holding one would be
# a long pass on the thread that shows it).
_BIG_GROUP = 4096


class GroupRows(Sequence[GroupRow]):
    """Groups in order, read as GroupRows made on access: the groups of a big table are many
    (~80k by address pair at 250k flows), and a screenful of them is read. Their counters
    are summed a block of rows at a time, when a row of the block is first read (a pass in C
    over the flows' groups, and a Python loop over the flows of the block's groups only)."""

    __slots__ = ("groups", "order")

    def __init__(self, groups: _Groups, order: list[int]) -> None:
        self.groups = groups
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    @overload
    def __getitem__(self, index: int) -> GroupRow: ...

    @overload
    def __getitem__(self, index: slice) -> GroupRows: ...

    def __getitem__(self, index: int | slice) -> GroupRow | GroupRows:
        if isinstance(index, slice):
            return GroupRows(self.groups, self.order[index])
        order = self.order
        g = order[index]
        if not self.groups.summed[g]:
            at = index % len(order)
            start = at - at % _GROUP_BLOCK
            self.groups.sum_counters(order[start : start + _GROUP_BLOCK])
        return self.groups.row(g)

    def prepare(self) -> None:
        """Sum now (in the worker making the view, not on the thread that shows it) the
        counters of the first block and of the groups of many flows, wherever they are."""
        sizes = self.groups.count
        big = compress(count(), map(lt, repeat(_BIG_GROUP), sizes))
        self.groups.sum_counters([*self.order[:_GROUP_BLOCK], *big])

    def __iter__(self) -> Iterator[GroupRow]:
        self.groups.sum_counters(self.order)
        return map(self.groups.row, self.order)

    def find(self, key: Any) -> int | None:
        """The index of the group with this key (as GroupRow.key has it), or None."""
        try:
            return self.order.index(self.groups.keys.index(key))
        except ValueError:  # no such group, or cut off by a limit
            return None

    def parts(self) -> list[list[Any]]:
        """The big lists it reads (for a front end that frees them gradually)."""
        groups = self.groups
        return [self.order, groups.group_of, groups.flows, groups.rates, groups.keys]


def group_rows(
    rows: Iterable[FlowRow],
    mode: str,
    sort: str | None = None,
    reverse: bool = False,
    limit: int | None = None,
) -> list[GroupRow]:
    """Aggregate flow rows by `mode` (a GROUP_KEYS name other than none).

    In first-seen order, or ordered by a SORT_KEYS name like flow rows (see `sort_flows`); a sort
    key the group key does not determine (sport of a group by src, id, age…) orders by the key.
    """
    mode = _group_mode(mode)
    if mode == "none":
        raise GroupError("group 'none' has no groups: use the flow rows")
    table = FlowRows.of(rows)
    groups = _Groups(table.flows, table.rates, _group_codes(table.flows, mode), mode)
    return list(_grouped(groups, sort, reverse, limit))


def _grouped(groups: _Groups, sort: str | None, reverse: bool, limit: int | None) -> GroupRows:
    if sort is None:
        order = list(range(len(groups)))
    else:
        spec = _sort_key(sort)
        order = _order(groups.column(spec.name), spec.descending != reverse)
    if limit is not None:
        del order[limit:]
    return GroupRows(groups, order)


# ---------------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------------


class ViewTotals:
    """The flows that passed the filter, summed (before any limit).

    The rate sums are made at once; the counter sums (four passes over a big table) only when
    read.
    """

    __slots__ = ("_counters", "flows", "no_rate", "rate", "rows")

    def __init__(self, rows: FlowRows) -> None:
        self.rows = rows
        self.flows = len(rows)
        rates = rows.rates
        self.no_rate = rates.count(None)  # flows among them without a rate
        # The shared zero adds nothing to a sum (x + 0.0 == x): only the others are summed.
        moving = list(filter(None, compress(rates, map(is_not, rates, repeat(ZERO_RATE)))))
        present: list[Rate] = moving if moving or self.no_rate == len(rates) else [ZERO_RATE]
        # Sum over the flows with a rate; None when none has one.
        # fsum: exactly rounded, so the same flows give the same total in any order.
        self.rate: Rate | None = (
            Rate(
                math.fsum(map(itemgetter(0), present)),
                math.fsum(map(itemgetter(1), present)),
                math.fsum(map(itemgetter(2), present)),
                math.fsum(map(itemgetter(3), present)),
            )
            if present
            else None
        )
        self._counters: dict[str, int | None] = {}

    def _counter(self, name: str) -> int | None:
        if name not in self._counters:
            values = list(map(attrgetter(name), self.rows.each_flow()))
            present = len(values) - values.count(None)
            self._counters[name] = sum(filter(None, values)) if present else None
        return self._counters[name]

    @property
    def orig_bytes(self) -> int | None:
        """Sum over the flows with counters; None when none has them."""
        return self._counter("orig_bytes")

    @property
    def reply_bytes(self) -> int | None:
        return self._counter("reply_bytes")

    @property
    def orig_packets(self) -> int | None:
        return self._counter("orig_packets")

    @property
    def reply_packets(self) -> int | None:
        return self._counter("reply_packets")

    @property
    def bytes(self) -> int | None:
        return _sum2(self.orig_bytes, self.reply_bytes)

    @property
    def packets(self) -> int | None:
        return _sum2(self.orig_packets, self.reply_packets)

    def __repr__(self) -> str:
        return f"<ViewTotals flows={self.flows} rate={self.rate} no_rate={self.no_rate}>"


def _run_starts(values: list[Any], base: int) -> list[int]:
    """base + the index of each run of equal values in `values` (at C speed)."""
    if not values:
        return []
    return [base, *compress(range(base + 1, base + len(values)), map(ne, values[1:], values[:-1]))]


def _rate_run_starts(
    rates: list[Rate | None], present: int, value: Callable[[Rate], float]
) -> list[int]:
    """Run starts of rates[:present] (Rates, sorted by `value` one way or the other): the
    values are read only outside the run of zeros, which a big table's idle flows make most
    of the table, and whose ends two binary searches find."""
    head: list[Rate] = rates[:present]  # type: ignore[assignment]
    if not head:
        return [0]
    first, last = value(head[0]), value(head[-1])
    if not (first >= 0 and last >= 0):
        # Not rates a Sampler makes (those are finite and never negative): read them all.
        return _run_starts(list(map(value, head)), 0)
    if first > last:  # descending: the zeros last
        lo, hi = bisect_left(head, 0.0, key=lambda r: -value(r)), present
    else:  # ascending (or all equal): the zeros first
        lo, hi = 0, bisect_right(head, 0.0, key=value)
    starts = _run_starts(list(map(value, head[:lo])), 0)
    if lo < hi:
        starts.append(lo)
    starts += _run_starts(list(map(value, head[hi:])), hi)
    return starts


def _the_other_way(
    table: FlowRows, order: list[int], column: _Column, values: list[Any] | None, descending: bool
) -> FlowRows:
    """`table`'s rows stably sorted by `column` one way (by the indices `order`), stably
    sorted the other way (`descending` or not), the rows without a value still last.
    `values`: the column of `table` (in its order), for all but the rate columns."""
    value = _RATE_VALUES.get(column)
    if value is None:
        assert values is not None
        present = len(values) - values.count(None)
        out = order[:present]
        # Already in order the one way, with equal values in the table's order: sorted the
        # other way, stably, equal values stay so. The sort finds it in one pass (each run of
        # equal values is one run of its own, and all-distinct values one turned-over run),
        # then merges the runs by galloping: at 250k flows 10-50 ms, ~half of sorting anew.
        out.sort(key=values.__getitem__, reverse=descending)
        out += order[present:]
        return FlowRows.in_order(table, out)
    # The rows by rate: the runs of equal rates in reverse order, each run as it was. The
    # idle flows all rate 0, one long run whose ends two binary searches find: only the
    # moving flows' rates are read.
    rates = permuted(table.rates, order)
    present = bisect_left(rates, True, key=_is_none)  # the rows without a rate are last
    starts = _rate_run_starts(rates, present, value)
    bounds = list(zip(starts, [*starts[1:], present], strict=True))
    out = []
    for start, end in reversed(bounds):  # (an empty table: one empty run)
        out += order[start:end]
    out += order[present:]
    return FlowRows.in_order(table, out)


def _is_none(value: object) -> bool:
    return value is None


# Whole-table orders a memo keeps (6 MB each at 250k flows): the current sort both ways and one
# more.
_MEMO_ORDERS = 3


_MEMO_LOCK = threading.Lock()

# A memo's entry for what its orders share: the column store, the unfiltered totals and
# groups.
_SHARED = "shared"


def memo_parts(memo: dict[Any, Any]) -> list[list[Any]]:
    """The big lists a memo of `apply` holds (for a front end that frees them gradually),
    the rows its shared totals read included."""
    parts: list[list[Any]] = []
    for key, entry in list(memo.items()):
        if key == _SHARED:
            parts += entry["columns"].values.values()
            totals = entry.get("totals")
            if totals is not None:
                parts += totals.rows.parts()
            for name, groups in list(entry.items()):
                if isinstance(name, tuple):  # ("group", mode)
                    parts += [groups.group_of, groups.keys]
        else:
            parts += entry.parts()
    return parts


# The columns that depend only on what a `Carry` keeps of a flow from one sample to the next
# (family, protocol, both tuples, zone, id): a column store's key -> the column's value for a
# flow.
_CARRIED: dict[Callable[..., Any], Callable[[Flow], Any]] = {
    _protonum: _protonum,
    _family: _family,
    _zone: _zone,
    _id: _id,
    _stored_reply: _stored_reply,
    _has_ports: lambda flow: flow.protonum in _PORT_PROTOS,
    _not_icmp: lambda flow: flow.protonum not in _ICMPS,
    **{get: get for get in (*_PORT_VALUES, *_ADDRESSES)},
}
# A column not read for this many samples is no longer carried (each costs ~2 MB at 250k
# flows); the protocol's, which the protocol keys read, always is.
_CARRY_SAMPLES = 10


def _inherit(store: _ColumnStore, carry: Carry) -> None:
    """Fill a new sample's column store from the last sample's (in `carry.views`, the memo
    kept with it): the values of the rows that are the same flows again are copied in slices,
    and only the other rows' are read. At 250k flows a column read from every flow is 20-80 ms
    of cache misses; copied, 1-2 ms."""
    shared = carry.views.get(_SHARED)
    old: _ColumnStore | None = None if shared is None else shared.get("columns")
    flows, runs, n = store.flows, carry.runs, carry.prev_length
    # (The old store holds its rows: alive, their id is theirs alone.)
    if old is None or id(old.flows) != carry.prev or len(old.flows) != n:
        return
    if len(flows) - sum(runs[2::3]) > max(len(flows) // 8, _READ_CHUNK):
        # Mostly other flows, or the dump walked in another order (a resized hash table):
        # copying would save little over reading the columns a filter asks for when it does.
        return
    store.generation = old.generation + 1
    for key, values in list(old.values.items()):
        get = _CARRIED.get(key)
        last = old.read.get(key)
        if get is None or last is None or len(values) != n:  # (emptied: freed)
            continue
        if store.generation - last > _CARRY_SAMPLES and key is not _protonum:
            continue
        out: list[Any] = []
        read: list[Any] = []  # the values of the rows that are not the same flows again
        at = 0
        for i in range(0, len(runs), 3):
            start, was, length = runs[i], runs[i + 1], runs[i + 2]
            if start > at:
                read += map(get, flows[at:start])
                out += read[len(read) - (start - at) :]
            out += values[was : was + length]
            at = start + length
        if at < len(flows):
            read += map(get, flows[at:])
            out += read[len(read) - (len(flows) - at) :]
        if len(out) != len(flows):
            continue
        store.values[key] = out
        store.read[key] = last
        # Its distinct values (a set of 250k values is ~10 ms): the last ones and the new,
        # while what vanished has not made it much wider than it was when last read exactly.
        distinct, exact = old.distinct.get(key), old.exact.get(key)
        if distinct is not None and exact is not None:
            wider = distinct.union(read)
            if len(wider) <= 2 * exact + 1024:
                store.distinct[key] = wider
                store.exact[key] = exact


class ViewResult(NamedTuple):
    rows: FlowRows | GroupRows  # ordered; at most `limit`
    totals: ViewTotals  # of every flow that passed the filter
    matched: int  # rows (flows, or groups) before the limit
    all_flows: int  # flows in the input, before the filter


def totals_of(rows: Iterable[FlowRow]) -> ViewTotals:
    """Sum the rates and counters of flow rows."""
    return ViewTotals(FlowRows.of(rows))


def _filtered(
    pred: Predicate, flows: list[Flow], rates: list[Rate | None], stop: Callable[[], bool] | None
) -> tuple[list[Flow], list[Rate | None]]:
    """The rows `pred` keeps, their order kept."""
    with _columns_of(None, stop):
        keep = matches(pred, flows)
    _check(stop)
    return list(compress(flows, keep)), list(compress(rates, keep))


def _filtered_in_order(
    pred: Predicate,
    table: FlowRows,
    ordered: FlowRows,
    columns: _ColumnStore,
    stop: Callable[[], bool] | None,
) -> FlowRows:
    """The rows of `ordered` (`table`'s rows by index) that `pred` keeps: tested in the
    table's own order, from the columns kept for it, and taken by index, so that no flow is
    read but for the columns a column store lacks."""
    with _columns_of(columns, stop):
        keep = matches(pred, table.flows)
    _check(stop)
    if all(keep):
        return ordered
    order = ordered.order
    assert order is not None
    return FlowRows.in_order(table, list(compress(order, permuted(keep, order))))


def _shared(memo: dict[Any, Any], table: FlowRows, carry: Carry | None) -> dict[Any, Any]:
    """The memo's entry for what does not depend on the order: the column store (made, and
    filled from the last sample's, the first time), the unfiltered totals and groups."""
    shared: dict[Any, Any] | None = memo.get(_SHARED)
    if shared is None:
        columns = _ColumnStore(table.flows)
        if carry is not None:
            _inherit(columns, carry)
        # A front end may compute views of one sample on two threads at once.
        with _MEMO_LOCK:
            shared = memo.setdefault(_SHARED, {"columns": columns})
    return shared


def _unfiltered_totals(shared: dict[Any, Any], table: FlowRows) -> ViewTotals:
    """The totals of all of `table`, made once for the memo's views (see `_shared`)."""
    totals: ViewTotals | None = shared.get("totals")
    return totals or shared.setdefault("totals", ViewTotals(table))


def apply(
    rows: Iterable[FlowRow],
    *,
    filter: str | Predicate | None = None,  # the operator's word, shadowing the builtin here
    sort: str = "rate",
    reverse: bool = False,
    group: str = "none",
    limit: int | None = None,
    memo: dict[Any, Any] | None = None,
    stop: Callable[[], bool] | None = None,
    carry: Carry | None = None,
) -> ViewResult:
    """Filter, then group (optional), then sort, then cut to `limit` rows.

    `rows` is a sample's `rows` (a FlowRows) or any iterable of FlowRow. `filter` is an
    expression (parsed here; `FilterError` if bad) or a predicate from `parse_filter`.
    Totals cover every flow that passed the filter, whatever the limit.

    `memo`: a dict the caller keeps with `rows` (and only with them) to make the next views
    of the same rows cheaper: the whole table's order per sort is kept there, and a new
    filter only filters it (a stable sort and a filter commute: same rows, same order).

    `stop`: asked between the passes over the flows; when it says True, `ViewAbandoned` is
    raised (a front end whose operator typed on: the next key's view is the one wanted).

    `carry`: the sample's `Sample.carry`, with a memo: the last sample's memo lends the new
    one the columns it had of the flows both share.
    """
    mode = _group_mode(group)
    _sort_key(sort)
    if limit is not None and limit < 0:
        raise ViewError(f"limit must not be negative, got {limit}")
    pred = parse_filter(filter) if isinstance(filter, str) else filter
    table = FlowRows.of(rows)
    if table.order is not None:  # (rows by index: the orders below index lists of their own)
        table = FlowRows(table.flows, table.rates)
    if pred is _match_all:
        pred = None
    if mode != "none" and memo is not None:
        shared = _shared(memo, table, carry)
        groups: _Groups | None = None if pred is not None else shared.get(("group", mode))
        if groups is None:
            flows, rates = table.flows, table.rates
            with _columns_of(shared["columns"], stop):
                codes = _group_codes(flows, mode)
                if pred is not None:
                    keep = matches(pred, flows)
                    codes = codes._replace(codes=list(compress(codes.codes, keep)))
                    flows, rates = list(compress(flows, keep)), list(compress(rates, keep))
            _check(stop)
            groups = _Groups(flows, rates, codes, mode)
            if pred is None:
                if carry is not None:
                    groups.carry_counters(carry)
                with _MEMO_LOCK:
                    groups = shared.setdefault(("group", mode), groups)
        if pred is not None:
            totals = ViewTotals(FlowRows(groups.flows, groups.rates))
        else:
            totals = _unfiltered_totals(shared, table)
        rows_out = _grouped(groups, sort, reverse, limit)
        rows_out.prepare()
        return ViewResult(rows_out, totals, len(groups), len(table))
    if mode == "none" and memo is not None:
        shared = _shared(memo, table, carry)
        ordered: FlowRows | None = memo.get((sort, reverse))
        if ordered is None:
            _check(stop)
            other = memo.get((sort, not reverse))
            column = _FLOW_COLUMNS[_sort_key(sort).name]
            with _columns_of(shared["columns"], stop):
                values = None if column in _RATE_VALUES else column(table.flows, table.rates)
                if other is None:
                    made = _sorted(table, sort, reverse, values=values)
                else:
                    descending = _sort_key(sort).descending != reverse
                    made = _the_other_way(table, other.order, column, values, descending)
            with _MEMO_LOCK:
                orders = [key for key in memo if key != _SHARED]
                if len(orders) >= _MEMO_ORDERS:
                    del memo[orders[0]]
                ordered = memo.setdefault((sort, reverse), made)
        rows = ordered
        if pred is not None:
            rows = _filtered_in_order(pred, table, ordered, shared["columns"], stop)
        totals = _unfiltered_totals(shared, table) if rows is ordered else ViewTotals(rows)
        return ViewResult(rows if limit is None else rows[:limit], totals, len(rows), len(table))
    flows, rates = table.flows, table.rates
    if pred is not None:
        flows, rates = _filtered(pred, flows, rates, stop)
    totals = ViewTotals(FlowRows(flows, rates))
    if mode == "none":
        return ViewResult(
            sort_flows(FlowRows(flows, rates), sort, reverse, limit), totals, len(flows), len(table)
        )
    groups = _Groups(flows, rates, _group_codes(flows, mode), mode)
    return ViewResult(_grouped(groups, sort, reverse, limit), totals, len(groups), len(table))
