"""Kernel constants for ctnetlink, each with the name the kernel headers give it.

Sources: include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h,
nf_conntrack_common.h, nf_conntrack_tcp.h, nf_conntrack_sctp.h, and the state names
that libnetfilter_conntrack prints (so our text matches `conntrack -L`).
"""

from __future__ import annotations

from typing import Final

# --- nfnetlink.h -----------------------------------------------------------------
NFNL_SUBSYS_CTNETLINK: Final = 1  # NFNL_SUBSYS_CTNETLINK
NFNETLINK_V0: Final = 0  # NFNETLINK_V0

# --- enum cntl_msg_types ---------------------------------------------------------
IPCTNL_MSG_CT_NEW: Final = 0  # IPCTNL_MSG_CT_NEW
IPCTNL_MSG_CT_GET: Final = 1  # IPCTNL_MSG_CT_GET
IPCTNL_MSG_CT_DELETE: Final = 2  # IPCTNL_MSG_CT_DELETE
IPCTNL_MSG_CT_GET_CTRZERO: Final = 3  # IPCTNL_MSG_CT_GET_CTRZERO
IPCTNL_MSG_CT_GET_STATS_CPU: Final = 4  # IPCTNL_MSG_CT_GET_STATS_CPU
IPCTNL_MSG_CT_GET_STATS: Final = 5  # IPCTNL_MSG_CT_GET_STATS
IPCTNL_MSG_CT_GET_DYING: Final = 6  # IPCTNL_MSG_CT_GET_DYING
IPCTNL_MSG_CT_GET_UNCONFIRMED: Final = 7  # IPCTNL_MSG_CT_GET_UNCONFIRMED

# --- enum ctattr_type ------------------------------------------------------------
CTA_TUPLE_ORIG: Final = 1  # CTA_TUPLE_ORIG
CTA_TUPLE_REPLY: Final = 2  # CTA_TUPLE_REPLY
CTA_STATUS: Final = 3  # CTA_STATUS
CTA_PROTOINFO: Final = 4  # CTA_PROTOINFO
CTA_HELP: Final = 5  # CTA_HELP
CTA_NAT_SRC: Final = 6  # CTA_NAT_SRC
CTA_TIMEOUT: Final = 7  # CTA_TIMEOUT
CTA_MARK: Final = 8  # CTA_MARK
CTA_COUNTERS_ORIG: Final = 9  # CTA_COUNTERS_ORIG
CTA_COUNTERS_REPLY: Final = 10  # CTA_COUNTERS_REPLY
CTA_USE: Final = 11  # CTA_USE
CTA_ID: Final = 12  # CTA_ID
CTA_NAT_DST: Final = 13  # CTA_NAT_DST
CTA_TUPLE_MASTER: Final = 14  # CTA_TUPLE_MASTER
CTA_SEQ_ADJ_ORIG: Final = 15  # CTA_SEQ_ADJ_ORIG
CTA_SEQ_ADJ_REPLY: Final = 16  # CTA_SEQ_ADJ_REPLY
CTA_SECMARK: Final = 17  # CTA_SECMARK (obsolete)
CTA_ZONE: Final = 18  # CTA_ZONE
CTA_SECCTX: Final = 19  # CTA_SECCTX
CTA_TIMESTAMP: Final = 20  # CTA_TIMESTAMP
CTA_MARK_MASK: Final = 21  # CTA_MARK_MASK
CTA_LABELS: Final = 22  # CTA_LABELS
CTA_LABELS_MASK: Final = 23  # CTA_LABELS_MASK
CTA_SYNPROXY: Final = 24  # CTA_SYNPROXY
CTA_FILTER: Final = 25  # CTA_FILTER
CTA_STATUS_MASK: Final = 26  # CTA_STATUS_MASK
CTA_TIMESTAMP_EVENT: Final = 27  # CTA_TIMESTAMP_EVENT

# --- enum ctattr_tuple / ctattr_ip / ctattr_l4proto --------------------------------
CTA_TUPLE_IP: Final = 1  # CTA_TUPLE_IP
CTA_TUPLE_PROTO: Final = 2  # CTA_TUPLE_PROTO
CTA_TUPLE_ZONE: Final = 3  # CTA_TUPLE_ZONE

CTA_IP_V4_SRC: Final = 1  # CTA_IP_V4_SRC
CTA_IP_V4_DST: Final = 2  # CTA_IP_V4_DST
CTA_IP_V6_SRC: Final = 3  # CTA_IP_V6_SRC
CTA_IP_V6_DST: Final = 4  # CTA_IP_V6_DST

CTA_PROTO_NUM: Final = 1  # CTA_PROTO_NUM
CTA_PROTO_SRC_PORT: Final = 2  # CTA_PROTO_SRC_PORT (GRE: source key)
CTA_PROTO_DST_PORT: Final = 3  # CTA_PROTO_DST_PORT (GRE: destination key)
CTA_PROTO_ICMP_ID: Final = 4  # CTA_PROTO_ICMP_ID
CTA_PROTO_ICMP_TYPE: Final = 5  # CTA_PROTO_ICMP_TYPE
CTA_PROTO_ICMP_CODE: Final = 6  # CTA_PROTO_ICMP_CODE
CTA_PROTO_ICMPV6_ID: Final = 7  # CTA_PROTO_ICMPV6_ID
CTA_PROTO_ICMPV6_TYPE: Final = 8  # CTA_PROTO_ICMPV6_TYPE
CTA_PROTO_ICMPV6_CODE: Final = 9  # CTA_PROTO_ICMPV6_CODE

# --- enum ctattr_protoinfo and friends ---------------------------------------------
CTA_PROTOINFO_TCP: Final = 1  # CTA_PROTOINFO_TCP
CTA_PROTOINFO_DCCP: Final = 2  # CTA_PROTOINFO_DCCP
CTA_PROTOINFO_SCTP: Final = 3  # CTA_PROTOINFO_SCTP

CTA_PROTOINFO_TCP_STATE: Final = 1  # CTA_PROTOINFO_TCP_STATE
CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: Final = 2  # CTA_PROTOINFO_TCP_WSCALE_ORIGINAL
CTA_PROTOINFO_TCP_WSCALE_REPLY: Final = 3  # CTA_PROTOINFO_TCP_WSCALE_REPLY
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: Final = 4  # CTA_PROTOINFO_TCP_FLAGS_ORIGINAL
CTA_PROTOINFO_TCP_FLAGS_REPLY: Final = 5  # CTA_PROTOINFO_TCP_FLAGS_REPLY

CTA_PROTOINFO_DCCP_STATE: Final = 1  # CTA_PROTOINFO_DCCP_STATE
CTA_PROTOINFO_DCCP_ROLE: Final = 2  # CTA_PROTOINFO_DCCP_ROLE

CTA_PROTOINFO_SCTP_STATE: Final = 1  # CTA_PROTOINFO_SCTP_STATE
CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: Final = 2  # CTA_PROTOINFO_SCTP_VTAG_ORIGINAL
CTA_PROTOINFO_SCTP_VTAG_REPLY: Final = 3  # CTA_PROTOINFO_SCTP_VTAG_REPLY

# --- enum ctattr_counters / ctattr_tstamp / ctattr_help ----------------------------
CTA_COUNTERS_PACKETS: Final = 1  # CTA_COUNTERS_PACKETS (u64)
CTA_COUNTERS_BYTES: Final = 2  # CTA_COUNTERS_BYTES (u64)
CTA_COUNTERS32_PACKETS: Final = 3  # CTA_COUNTERS32_PACKETS (old u32)
CTA_COUNTERS32_BYTES: Final = 4  # CTA_COUNTERS32_BYTES (old u32)
CTA_COUNTERS_PAD: Final = 5  # CTA_COUNTERS_PAD

CTA_TIMESTAMP_START: Final = 1  # CTA_TIMESTAMP_START (ns, wall clock)
CTA_TIMESTAMP_STOP: Final = 2  # CTA_TIMESTAMP_STOP
CTA_TIMESTAMP_PAD: Final = 3  # CTA_TIMESTAMP_PAD

CTA_HELP_NAME: Final = 1  # CTA_HELP_NAME

CTA_SECCTX_NAME: Final = 1  # CTA_SECCTX_NAME

# --- enum ctattr_stats_global / ctattr_stats_cpu -----------------------------------
CTA_STATS_GLOBAL_ENTRIES: Final = 1  # CTA_STATS_GLOBAL_ENTRIES
CTA_STATS_GLOBAL_MAX_ENTRIES: Final = 2  # CTA_STATS_GLOBAL_MAX_ENTRIES

# Per-CPU statistics (IPCTNL_MSG_CT_GET_STATS_CPU); res_id of each message is the CPU.
STATS_CPU_NAMES: Final[dict[int, str]] = {
    1: "searched",  # CTA_STATS_SEARCHED (no longer used)
    2: "found",  # CTA_STATS_FOUND
    3: "new",  # CTA_STATS_NEW (no longer used)
    4: "invalid",  # CTA_STATS_INVALID
    5: "ignore",  # CTA_STATS_IGNORE (no longer used)
    6: "delete",  # CTA_STATS_DELETE (no longer used)
    7: "delete_list",  # CTA_STATS_DELETE_LIST (no longer used)
    8: "insert",  # CTA_STATS_INSERT
    9: "insert_failed",  # CTA_STATS_INSERT_FAILED
    10: "drop",  # CTA_STATS_DROP
    11: "early_drop",  # CTA_STATS_EARLY_DROP
    12: "error",  # CTA_STATS_ERROR
    13: "search_restart",  # CTA_STATS_SEARCH_RESTART
    14: "clash_resolve",  # CTA_STATS_CLASH_RESOLVE
    15: "chaintoolong",  # CTA_STATS_CHAIN_TOOLONG
}

# --- enum ip_conntrack_status (nf_conntrack_common.h), bit number -> name ----------
IPS_EXPECTED: Final = 1 << 0  # IPS_EXPECTED_BIT
IPS_SEEN_REPLY: Final = 1 << 1  # IPS_SEEN_REPLY_BIT
IPS_ASSURED: Final = 1 << 2  # IPS_ASSURED_BIT
IPS_CONFIRMED: Final = 1 << 3  # IPS_CONFIRMED_BIT
IPS_SRC_NAT: Final = 1 << 4  # IPS_SRC_NAT_BIT
IPS_DST_NAT: Final = 1 << 5  # IPS_DST_NAT_BIT
IPS_OFFLOAD: Final = 1 << 14  # IPS_OFFLOAD_BIT
IPS_HW_OFFLOAD: Final = 1 << 15  # IPS_HW_OFFLOAD_BIT

STATUS_BITS: Final[tuple[str, ...]] = (
    "EXPECTED",  # 0  IPS_EXPECTED_BIT
    "SEEN_REPLY",  # 1  IPS_SEEN_REPLY_BIT
    "ASSURED",  # 2  IPS_ASSURED_BIT
    "CONFIRMED",  # 3  IPS_CONFIRMED_BIT
    "SRC_NAT",  # 4  IPS_SRC_NAT_BIT
    "DST_NAT",  # 5  IPS_DST_NAT_BIT
    "SEQ_ADJUST",  # 6  IPS_SEQ_ADJUST_BIT
    "SRC_NAT_DONE",  # 7  IPS_SRC_NAT_DONE_BIT
    "DST_NAT_DONE",  # 8  IPS_DST_NAT_DONE_BIT
    "DYING",  # 9  IPS_DYING_BIT
    "FIXED_TIMEOUT",  # 10 IPS_FIXED_TIMEOUT_BIT
    "TEMPLATE",  # 11 IPS_TEMPLATE_BIT
    "NAT_CLASH",  # 12 IPS_NAT_CLASH_BIT (was IPS_UNTRACKED_BIT)
    "HELPER",  # 13 IPS_HELPER_BIT
    "OFFLOAD",  # 14 IPS_OFFLOAD_BIT
    "HW_OFFLOAD",  # 15 IPS_HW_OFFLOAD_BIT
)

# --- address families and protocol numbers -----------------------------------------
AF_UNSPEC: Final = 0
AF_INET: Final = 2
AF_INET6: Final = 10
FAMILY_NAMES: Final[dict[int, str]] = {AF_INET: "ipv4", AF_INET6: "ipv6"}

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_DCCP: Final = 33
IPPROTO_GRE: Final = 47
IPPROTO_ICMPV6: Final = 58
IPPROTO_SCTP: Final = 132
IPPROTO_UDPLITE: Final = 136

PROTO_NAMES: Final[dict[int, str]] = {
    IPPROTO_ICMP: "icmp",
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_DCCP: "dccp",
    IPPROTO_GRE: "gre",
    IPPROTO_ICMPV6: "icmpv6",
    IPPROTO_SCTP: "sctp",
    IPPROTO_UDPLITE: "udplite",
}

# --- protocol state names, as libnetfilter_conntrack prints them -------------------
# enum tcp_conntrack (nf_conntrack_tcp.h); 9 is TCP_CONNTRACK_SYN_SENT2.
TCP_STATES: Final[tuple[str, ...]] = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)
# enum sctp_conntrack (nf_conntrack_sctp.h)
SCTP_STATES: Final[tuple[str, ...]] = (
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
    "HEARTBEAT_ACKED",
)
# enum ct_dccp_states (nf_conntrack_dccp.h)
DCCP_STATES: Final[tuple[str, ...]] = (
    "NONE",
    "REQUEST",
    "RESPOND",
    "PARTOPEN",
    "OPEN",
    "CLOSEREQ",
    "CLOSING",
    "TIMEWAIT",
    "IGNORE",
    "INVALID",
)
STATE_TABLES: Final[dict[int, tuple[str, ...]]] = {
    IPPROTO_TCP: TCP_STATES,
    IPPROTO_SCTP: SCTP_STATES,
    IPPROTO_DCCP: DCCP_STATES,
}


def proto_name(protonum: int) -> str:
    """Protocol name as the JSON schema spells it (a number when we have no name)."""
    return PROTO_NAMES.get(protonum) or str(protonum)


def state_name(protonum: int, state: int | None) -> str | None:
    """Protocol state name as `conntrack -L` prints it, or None when absent."""
    if state is None:
        return None
    table = STATE_TABLES.get(protonum)
    if table is not None and 0 <= state < len(table):
        return table[state]
    return f"STATE_{state}"


def status_names(status: int | None) -> list[str]:
    """Names of the set IPS_* bits (without the prefix), lowest bit first."""
    if not status:
        return []
    names = []
    for bit, name in enumerate(STATUS_BITS):
        if status & (1 << bit):
            names.append(name)
    for bit in range(len(STATUS_BITS), 32):
        if status & (1 << bit):
            names.append(f"BIT_{bit}")
    return names
