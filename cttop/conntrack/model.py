"""The conntrack data model: `Tuple`, `Flow` and the flow identity `FlowKey`.

Plain immutable records (NamedTuple: cheap to build on the hot path, hashable, slotted).
Every value the kernel may omit is `None` when absent — never 0 — except the zone, whose
absence on the wire *means* the default zone 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

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


class Tuple(NamedTuple):
    """One direction of a connection (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY)."""

    src: str | None
    dst: str | None
    sport: int | None = None  # TCP/UDP/SCTP/DCCP/UDPLITE port, GRE key
    dport: int | None = None
    icmp_type: int | None = None  # ICMP and ICMPv6
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int | None = None  # directional zone (CTA_TUPLE_ZONE), rare


# A flow's identity across dumps: CTA_ID is a 32-bit hash and can repeat, so the zone
# and the original tuple are part of it.
FlowKey = tuple[int, Tuple, "int | None"]


class Flow(NamedTuple):
    """One conntrack entry as the kernel reported it in one dump."""

    family: int  # AF_INET / AF_INET6 (nfgen_family of the message)
    protonum: int  # CTA_PROTO_NUM of the original tuple
    orig: Tuple
    reply: Tuple
    id: int | None = None  # CTA_ID
    status: int | None = None  # CTA_STATUS bits
    state: int | None = None  # TCP/SCTP/DCCP protocol state number
    # When the kernel drops the entry unless a packet refreshes it: unix seconds, the
    # CTA_TIMEOUT (seconds left) added to the time of the dump that sent it. An absolute time,
    # so that an entry nothing happened to decodes to the *same* Flow from poll to poll (see
    # `cttop.conntrack.decode.FastDecoder`); `timeout_at(now)` is the seconds left at `now`.
    expires: float | None = None
    mark: int | None = None
    zone: int = 0
    use: int | None = None
    orig_packets: int | None = None
    orig_bytes: int | None = None
    reply_packets: int | None = None
    reply_bytes: int | None = None
    start: int | None = None  # CTA_TIMESTAMP_START, ns since the epoch
    stop: int | None = None  # CTA_TIMESTAMP_STOP, ns since the epoch
    labels: int | None = None  # CTA_LABELS as one big-endian integer (bit n = label n)
    helper: str | None = None  # CTA_HELP_NAME
    secctx: str | None = None  # CTA_SECCTX_NAME

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
        o, r = self.orig, self.reply
        if r.src != o.dst:
            return True
        return self.protonum not in (IPPROTO_ICMP, IPPROTO_ICMPV6) and r.sport != o.dport

    @property
    def snat(self) -> bool:
        """The reply goes back to somewhere other than where the original came from."""
        o, r = self.orig, self.reply
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
