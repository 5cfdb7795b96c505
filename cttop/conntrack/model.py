"""The conntrack data model: `Tuple`, `Flow` and the flow identity `FlowKey`.

Plain immutable records (tuples: cheap to build on the hot path, hashable, slotted; see
`_Record`). Every value the kernel may omit is `None` when absent — never 0 — except the
zone, whose absence on the wire *means* the default zone 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from cttop.conntrack.const import (
    FAMILY_NAMES,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPS_ASSURED,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    proto_name,
    state_name,
    status_names,
)

try:  # the C descriptor a NamedTuple's fields read through
    from _collections import _tuplegetter  # type: ignore[import-not-found]
except ImportError:  # (another Python)

    def _tuplegetter(index: int, doc: str | None) -> Any:
        return property(itemgetter(index), doc=doc)


class _Record(tuple):  # type: ignore[type-arg]
    """An immutable record whose last fields are left out when all of them are absent.

    A NamedTuple of every field would cost 8 bytes a field, in every object: at 250k flows,
    each with two tuples, the rare fields (ICMP ids, a tuple's zone, timestamps, labels,
    helper, security context) were ~22 MiB of Nones. Here a record holds only its first
    `_short` fields while the rest are all None (the one form of such a record: the
    constructor and the decoder both make it so), and those read as None. Fields read like a
    NamedTuple's (the first ones through the same C descriptors), and `_fields`,
    `_replace` and `_asdict` behave as theirs do.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _short = 0

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "_fields" not in cls.__dict__ and "_short" not in cls.__dict__:
            return  # (the layout of the record it extends, with its fields as that reads them)
        for index, name in enumerate(cls._fields):
            if name not in cls.__dict__:  # (a field the class reads its own way)
                setattr(cls, name, _field(index, index >= cls._short))

    @classmethod
    def _of(cls: type[_R], values: tuple[Any, ...]) -> _R:
        """The record of these values (one per field): its short form when it can be."""
        short = cls._short
        if values[short:].count(None) == len(values) - short:
            values = values[:short]
        return tuple.__new__(cls, values)

    def _full(self) -> tuple[Any, ...]:
        return (*self, *(None,) * (len(self._fields) - len(self)))

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self._full(), strict=True))

    def _replace(self: _R, **changes: Any) -> _R:
        return type(self)(**{**self._asdict(), **changes})

    @classmethod
    def _make(cls: type[_R], values: Iterable[Any]) -> _R:
        return cls(*values)

    def __getnewargs__(self) -> tuple[Any, ...]:  # (pickle, copy: through __new__)
        return tuple(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, self._full(), strict=True))
        return f"{type(self).__name__}({fields})"


_R = TypeVar("_R", bound=_Record)


def _field(index: int, optional: bool) -> Any:
    if not optional:
        return _tuplegetter(index, None)

    def get(record: tuple[Any, ...]) -> Any:
        return record[index] if len(record) > index else None

    return property(get)


class Tuple(_Record):
    """One direction of a connection (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY)."""

    __slots__ = ()
    _fields = ("src", "dst", "sport", "dport", "icmp_type", "icmp_code", "icmp_id", "zone")
    _short = 4
    if TYPE_CHECKING:
        src: str | None
        dst: str | None
        sport: int | None  # TCP/UDP/SCTP/DCCP/UDPLITE port, GRE key
        dport: int | None
        icmp_type: int | None  # ICMP and ICMPv6
        icmp_code: int | None
        icmp_id: int | None
        zone: int | None  # directional zone (CTA_TUPLE_ZONE), rare

    def __new__(
        cls,
        src: str | None,
        dst: str | None,
        sport: int | None = None,
        dport: int | None = None,
        icmp_type: int | None = None,
        icmp_code: int | None = None,
        icmp_id: int | None = None,
        zone: int | None = None,
    ) -> Tuple:
        return cls._of((src, dst, sport, dport, icmp_type, icmp_code, icmp_id, zone))


def mirrored(orig: Tuple) -> Tuple:
    """The reply tuple of an entry nothing rewrote: the original's addresses and ports swapped
    (ICMP's and a directional zone's are not this: a reply with them is kept as it is)."""
    return tuple.__new__(Tuple, (orig[1], orig[0], orig[3], orig[2]))


def reply_to_keep(orig: Tuple, reply: Tuple) -> Tuple | None:
    """What a Flow keeps of its reply: None for the original mirrored (see `Flow.reply`)."""
    return None if reply == mirrored(orig) else reply


# A flow's identity across dumps: CTA_ID is a 32-bit hash and can repeat, so the zone
# and the original tuple are part of it.
FlowKey = tuple[int, Tuple, "int | None"]


class Flow(_Record):
    """One conntrack entry as the kernel reported it in one dump."""

    __slots__ = ()
    _fields = (
        "family",
        "protonum",
        "orig",
        "reply",
        "id",
        "status",
        "state",
        "expires",
        "mark",
        "zone",
        "use",
        "orig_packets",
        "orig_bytes",
        "reply_packets",
        "reply_bytes",
        "start",
        "stop",
        "labels",
        "helper",
        "secctx",
    )
    _short = 15
    if TYPE_CHECKING:
        family: int  # AF_INET / AF_INET6 (nfgen_family of the message)
        protonum: int  # CTA_PROTO_NUM of the original tuple
        orig: Tuple
        id: int | None  # CTA_ID
        status: int | None  # CTA_STATUS bits
        state: int | None  # TCP/SCTP/DCCP protocol state number
        # When the kernel drops the entry unless a packet refreshes it: unix seconds, the
        # CTA_TIMEOUT (seconds left) added to the time of the dump that sent it. An absolute
        # time, so that an entry nothing happened to decodes to the *same* Flow from poll to
        # poll (see `cttop.conntrack.decode.FastDecoder`); `timeout_at(now)` is the seconds
        # left at `now`.
        expires: float | None
        mark: int | None
        zone: int
        use: int | None
        orig_packets: int | None
        orig_bytes: int | None
        reply_packets: int | None
        reply_bytes: int | None
        # The rare fields, left out of the record while all are absent (see _Record):
        start: int | None  # CTA_TIMESTAMP_START, ns since the epoch
        stop: int | None  # CTA_TIMESTAMP_STOP, ns since the epoch
        labels: int | None  # CTA_LABELS as one big-endian integer (bit n = label n)
        helper: str | None  # CTA_HELP_NAME
        secctx: str | None  # CTA_SECCTX_NAME

    def __new__(
        cls,
        family: int,
        protonum: int,
        orig: Tuple,
        reply: Tuple,
        id: int | None = None,
        status: int | None = None,
        state: int | None = None,
        expires: float | None = None,
        mark: int | None = None,
        zone: int = 0,
        use: int | None = None,
        orig_packets: int | None = None,
        orig_bytes: int | None = None,
        reply_packets: int | None = None,
        reply_bytes: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        labels: int | None = None,
        helper: str | None = None,
        secctx: str | None = None,
    ) -> Flow:
        kept = reply_to_keep(orig, reply)
        return cls._of(
            (
                *(family, protonum, orig, kept, id, status, state, expires, mark),
                *(zone, use),
                *(orig_packets, orig_bytes, reply_packets, reply_bytes),
                *(start, stop, labels, helper, secctx),
            )
        )

    # The reply as kept: None where it is the original mirrored (a C getter, for passes over
    # many flows: see `cttop.view`).
    kept_reply = _tuplegetter(3, None)

    @property
    def reply(self) -> Tuple:
        """CTA_TUPLE_REPLY. Most entries are not NATed: their reply is the original mirrored
        (`mirrored`), and is then not kept but made when read (72 bytes less a flow; the
        decoders and the constructor store None for it). Code comparing two flows' replies
        without reading them compares `kept_reply`: the stored one, or None."""
        reply: Tuple | None = self.kept_reply
        return mirrored(self.orig) if reply is None else reply

    def _full(self) -> tuple[Any, ...]:
        full = super()._full()
        return (*full[:3], self.reply, *full[4:])

    @property
    def key(self) -> FlowKey:
        return (self.zone, self.orig, self.id)

    def timeout_at(self, now: float) -> int | None:
        """Seconds left at unix time `now` (what CTA_TIMEOUT would say then), None when the
        kernel sent no timeout (an offloaded entry)."""
        expires = self.expires
        # Rounded half up: [n - 0.5, n + 0.5) is n.
        return None if expires is None else max(0, math.floor(expires - now + 0.5))

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family) or str(self.family)

    @property
    def proto(self) -> str:
        return proto_name(self.protonum)

    @property
    def state_name(self) -> str | None:
        return state_name(self.protonum, self.state)

    @property
    def status_names(self) -> list[str]:
        return status_names(self.status)

    @property
    def has_counters(self) -> bool:
        return self.orig_bytes is not None or self.reply_bytes is not None

    @property
    def assured(self) -> bool:
        return bool(self.status and self.status & IPS_ASSURED)

    @property
    def unreplied(self) -> bool:
        return self.status is not None and not self.status & IPS_SEEN_REPLY

    @property
    def offloaded(self) -> bool:
        return bool(self.status and self.status & IPS_OFFLOAD)

    @property
    def dnat(self) -> bool:
        """The reply comes from somewhere other than where the original was sent."""
        o, r = self.orig, self.kept_reply
        if r is None:  # (the original mirrored)
            return False
        if r.src != o.dst:
            return True
        return self.protonum not in (IPPROTO_ICMP, IPPROTO_ICMPV6) and r.sport != o.dport

    @property
    def snat(self) -> bool:
        """The reply goes back to somewhere other than where the original came from."""
        o, r = self.orig, self.kept_reply
        if r is None:
            return False
        if r.dst != o.src:
            return True
        return self.protonum not in (IPPROTO_ICMP, IPPROTO_ICMPV6) and r.dport != o.sport


class Snapshot(NamedTuple):
    """One poll of the table: what a Source yields and the Sampler consumes.

    Times come in here (taken by the Source) so that everything downstream is pure.
    """

    time_monotonic: float  # seconds, time.monotonic() of the middle of the dump
    time_wall: float  # unix seconds of the same moment
    flows: dict[FlowKey, Flow]  # deduplicated by key; the last copy in a dump wins
    table_count: int | None  # nf_conntrack_count (None when unknown)
    table_max: int | None  # nf_conntrack_max (None when unknown)
    stats: dict[str, int] | None = None  # per-CPU statistics summed, when asked for
    skipped: int = 0  # malformed messages skipped in this dump
    resized: bool = False  # the hash table kept being resized under the dump: may miss flows


class FlowFeed(Protocol):
    """Takes a snapshot's flows while its dump arrives (`cttop.sampler.StepFeed` is one), so
    that their processing overlaps the kernel's dumping."""

    def begin(self) -> None:
        """The dump starts (again): forget what was added."""

    def add(self, flows: dict[FlowKey, Flow], batch: list[Flow]) -> None:
        """Put the next flows of the dump into the snapshot's dict `flows` (empty before the
        first batch), by key (a key that comes again replaces its earlier copy), and take
        them in."""

    def end(self, flows: dict[FlowKey, Flow]) -> None:
        """The dump is complete: `flows` must now hold exactly its flows."""
