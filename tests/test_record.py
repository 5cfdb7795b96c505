"""Recordings (cttop.record, cttop.source): the pcap files cttop writes — checked against the pcap
spec byte by byte and by tshark —, the reader's one-line errors on corrupt, truncated and foreign
files, replay positioning, and record -> replay round trips of a live table (root, netns).

The messages recorded in the non-root tests are real kernel messages: the golden capture of
tests/fixtures/golden (the ctnetlink dump of the known mix, see tests/fixtures/capture_golden.py).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import queue
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cttop.cli import run
from cttop.conntrack import const as c
from cttop.conntrack.decode import decode_message
from cttop.conntrack.model import Flow, FlowKey
from cttop.netlink import NLMSG_HDR, enter_netns
from cttop.record import (
    ARPHRD_NETLINK,
    LINKTYPE_NETLINK,
    EndOfRecording,
    Recorder,
    RecordingError,
    ReplaySource,
    demo_source,
    stats_message,
)
from cttop.sampler import Sampler
from cttop.source import LiveSource
from tests.ctgen import decoded_alike
from tests.netns import NetNS

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "mix.nlmsgs"
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

CT_NEW = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_NEW
CT_STATS = (c.NFNL_SUBSYS_CTNETLINK << 8) | c.IPCTNL_MSG_CT_GET_STATS
NLMSG_DONE = 3
T = TypeVar("T")


# --- helpers ----------------------------------------------------------------------------------


def split_messages(data: bytes) -> list[bytes]:
    out = []
    off = 0
    while off < len(data):
        (length,) = struct.unpack_from("=I", data, off)
        out.append(data[off : off + length])
        off += (length + 3) & ~3
    return out


GOLDEN_MESSAGES = split_messages(GOLDEN.read_bytes())


def reference_flows(messages: list[bytes], now: float) -> dict[FlowKey, Flow]:
    """The flows of a dump received at `now` by the reference decoder (not the one replay
    uses)."""
    flows = {}
    for msg in messages:
        flow = decode_message(msg, 0, len(msg), now)
        flows[flow.key] = flow
    return flows


def assert_decoded_alike(got: dict[FlowKey, Flow], want: dict[FlowKey, Flow]) -> None:
    """The same flows in the same order; an expiry may be one a poll before decoded (the same
    Flow reused: see SAME_EXPIRY), everything else is equal."""
    assert list(got) == list(want)
    assert all(decoded_alike(flow, want[key]) for key, flow in got.items())


def pcap_by_the_spec(data: bytes) -> tuple[tuple[int, ...], list[tuple[int, int, int, int, bytes]]]:
    """Parse a nanosecond pcap written on this (little-endian) machine exactly as the pcap spec
    (draft-ietf-opsawg-pcap) lays it out: the 24-byte file header, then records of a 16-byte
    header and incl_len bytes of packet."""
    header = struct.unpack_from("<IHHiIII", data, 0)
    records = []
    off = 24
    while off < len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, off)
        records.append((sec, frac, incl, orig, data[off + 16 : off + 16 + incl]))
        off += 16 + incl
    assert off == len(data), "the last record runs past the end of the file"
    return header, records


def write_golden(path: Path, times: list[float], count: int = 40, maximum: int = 65536) -> None:
    """One poll per time: the golden dump, then a made-up GET_STATS reply (count, maximum)."""
    with Recorder(path) as rec:
        for t in times:
            assert rec.write_poll(t, GOLDEN_MESSAGES, count, maximum)


def cttop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cttop", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tshark(path: Path, *args: str) -> list[str]:
    assert TSHARK is not None
    proc = subprocess.run(
        [TSHARK, "-r", str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout.splitlines()


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    argv = ["-T", "fields", "-E", "separator=|"]
    for f in fields:
        argv += ["-e", f]
    return [line.split("|") for line in tshark(path, *argv)]


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that entered the namespace (setns moves only the calling thread)."""
    result: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def body() -> None:
        try:
            enter_netns(path)
            result.put((True, fn()))
        except BaseException as e:
            result.put((False, e))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=120)
    ok, value = result.get_nowait()
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


# --- the file format ------------------------------------------------------------------------


def test_written_file_follows_the_pcap_spec_one_message_per_packet(tmp_path: Path) -> None:
    path = tmp_path / "golden.pcap"
    times = [1795703302.25, 1795703303.5]
    write_golden(path, times)
    header, records = pcap_by_the_spec(path.read_bytes())
    magic, major, minor, thiszone, sigfigs, snaplen, network = header
    assert magic == 0xA1B23C4D  # nanosecond-resolution pcap
    assert (major, minor, thiszone, sigfigs) == (2, 4, 0, 0)
    assert network == LINKTYPE_NETLINK == 253
    assert snaplen >= max(r[2] for r in records)

    per_poll = len(GOLDEN_MESSAGES) + 1  # the dump, then the GET_STATS reply closing the poll
    assert len(records) == per_poll * len(times)
    stats = stats_message(40, 65536)
    for i, (sec, nsec, incl, orig, packet) in enumerate(records):
        poll, j = divmod(i, per_poll)
        assert sec * 10**9 + nsec == round(times[poll] * 1e9)
        assert nsec < 10**9
        assert incl == orig == len(packet)
        # LINKTYPE_NETLINK's 16-byte header: pkttype, ARPHRD type, address length, address,
        # netlink protocol; all big-endian.
        pkttype, hatype, halen, addr, proto = struct.unpack_from(">HHH8sH", packet)
        assert (hatype, halen, addr, proto) == (ARPHRD_NETLINK, 0, b"\0" * 8, 12)
        assert pkttype == 4  # PACKET_OUTGOING, as libpcap shows every nlmon packet
        want = GOLDEN_MESSAGES[j] if j < len(GOLDEN_MESSAGES) else stats
        assert packet[16:] == want  # the kernel's bytes, untouched


def test_replay_decodes_what_the_reference_decoder_sees(tmp_path: Path) -> None:
    path = tmp_path / "golden.pcap"
    write_golden(path, [1000.0, 1001.0, 1002.5], count=40, maximum=65536)
    with ReplaySource(path) as source:
        assert len(source) == 3
        snaps = [source.snapshot() for _ in range(3)]
        assert source.at_end
        with pytest.raises(EndOfRecording):
            source.snapshot()
    assert snaps[0].flows == reference_flows(GOLDEN_MESSAGES, 1000.0)
    for snap in snaps:
        # dump order kept; an idle entry is the Flow of the poll before while its expiry agrees
        assert_decoded_alike(snap.flows, reference_flows(GOLDEN_MESSAGES, snap.time_wall))
        assert (snap.table_count, snap.table_max, snap.skipped) == (40, 65536, 0)
    assert [s.time_wall for s in snaps] == [1000.0, 1001.0, 1002.5]
    assert [s.time_monotonic for s in snaps] == [0.0, 1.0, 2.5]


def test_gzip_recording_round_trips(tmp_path: Path) -> None:
    plain, packed = tmp_path / "a.pcap", tmp_path / "a.pcap.gz"
    write_golden(plain, [10.0, 11.0])
    write_golden(packed, [10.0, 11.0])
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    with ReplaySource(packed) as a, ReplaySource(plain) as b:
        assert len(a) == len(b) == 2
        assert a.snapshot() == b.snapshot()


def test_a_file_is_replayable_after_every_poll(tmp_path: Path) -> None:
    """Written per poll and flushed: another reader sees each whole poll as soon as it is
    written, for plain and gzip files alike (gzip has no trailer until close)."""
    for name in ("live.pcap", "live.pcap.gz"):
        path = tmp_path / name
        rec = Recorder(path)
        try:
            for n in range(1, 4):
                rec.write_poll(100.0 + n, GOLDEN_MESSAGES, 40, 65536)
                with ReplaySource(path) as source:
                    assert len(source) == n
                    assert source[-1].flows == reference_flows(GOLDEN_MESSAGES, 100.0 + n)
        finally:
            rec.close()


def test_timestamps_follow_the_monotonic_clock_from_the_first_poll(tmp_path: Path) -> None:
    """A wall-clock step while recording must not bend the intervals rates come from."""
    path = tmp_path / "step.pcap"
    with Recorder(path) as rec:
        rec.write_poll(5000.0, GOLDEN_MESSAGES, None, None, time_monotonic=100.0)
        rec.write_poll(4000.0, GOLDEN_MESSAGES, None, None, time_monotonic=101.0)  # NTP step
        rec.write_poll(4001.5, GOLDEN_MESSAGES, None, None, time_monotonic=102.5)
    with ReplaySource(path) as source:
        assert [source.poll_time(i) for i in range(3)] == [5000.0, 5001.0, 5002.5]
        snap = source[0]
    assert (snap.table_count, snap.table_max) == (None, None)  # nothing was known: none made up


def test_write_poll_rejects_what_would_make_a_broken_file(tmp_path: Path) -> None:
    with Recorder(tmp_path / "x.pcap") as rec:
        with pytest.raises(ValueError, match="whole netlink message"):
            rec.write_poll(1.0, [GOLDEN_MESSAGES[0][:-4]], 1, 1)
        with pytest.raises(ValueError, match="must come last"):
            rec.write_poll(1.0, [stats_message(1, 2), GOLDEN_MESSAGES[0]], 1, 1)
        assert rec.polls == 0
    assert not rec.write_poll(2.0, GOLDEN_MESSAGES, 1, 1)  # closed: dropped, no exception


def test_recorder_cannot_write_says_why(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"cannot write .*/nodir/x\.pcap"):
        Recorder(tmp_path / "nodir" / "x.pcap")


# --- reading other pcap variants ------------------------------------------------------------


def _rewrite(data: bytes, endian: str, usec: bool) -> bytes:
    """The same recording as another pcap writer might lay it out: header byte order and/or
    microsecond timestamps (the netlink payloads stay as they are)."""
    (_magic, major, minor, zone, sigfigs, snaplen, network) = struct.unpack_from("<IHHiIII", data)
    magic = 0xA1B2C3D4 if usec else 0xA1B23C4D
    out = bytearray(
        struct.pack(endian + "IHHiIII", magic, major, minor, zone, sigfigs, snaplen, network)
    )
    off = 24
    while off < len(data):
        sec, nsec, incl, orig = struct.unpack_from("<IIII", data, off)
        frac = nsec // 1000 if usec else nsec
        out += struct.pack(endian + "IIII", sec, frac, incl, orig)
        out += data[off + 16 : off + 16 + incl]
        off += 16 + incl
    return bytes(out)


@pytest.mark.parametrize(("endian", "usec"), [(">", False), ("<", True), (">", True)])
def test_reads_big_endian_headers_and_microsecond_timestamps(
    tmp_path: Path, endian: str, usec: bool
) -> None:
    path = tmp_path / "a.pcap"
    write_golden(path, [1000.25, 1001.5])
    other = tmp_path / "b.pcap"
    other.write_bytes(_rewrite(path.read_bytes(), endian, usec))
    with ReplaySource(path) as a, ReplaySource(other) as b:
        assert len(b) == 2
        assert [b.poll_time(i) for i in range(2)] == [1000.25, 1001.5]
        assert b.snapshot() == a.snapshot()


# --- reader errors: one line, with the offset ---------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> bytes:
    path = tmp_path / "good.pcap"
    write_golden(path, [1000.0, 1001.0, 1002.0])
    return path.read_bytes()


def _patched(data: bytes, off: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, off, *values)
    return bytes(out)


FIRST = 24  # offset of the first record header
FIRST_PACKET = FIRST + 16


def _corruptions(good: bytes) -> Iterator[tuple[str, bytes, str]]:
    """(what, file bytes, a regex the one-line error must match)."""
    yield (
        "text file",
        b"root:x:0:0:root:/root:/bin/bash\n",
        r"not a pcap file \(magic 0x726f6f74\) at offset 0",
    )
    yield "pcapng", b"\x0a\x0d\x0d\x0a" + good[4:], r"pcapng file; cttop reads classic pcap"
    yield "tiny", b"\xd4\xc3", r"not a pcap file \(only 2 bytes\)"
    yield (
        "truncated header",
        good[:20],
        r"truncated pcap file header \(20 of 24 bytes\) at offset 0",
    )
    yield "version", _patched(good, 4, "<HH", 3, 0), r"pcap version 3\.0 .* at offset 4"
    yield (
        "ethernet",
        _patched(good, 20, "<I", 1),
        r"link type LINKTYPE_ETHERNET, not LINKTYPE_NETLINK \(253\).* at offset 20",
    )
    yield "linktype 12345", _patched(good, 20, "<I", 12345), r"link type 12345, .* at offset 20"
    yield (
        "over snaplen",
        _patched(good, FIRST + 8, "<II", 262145, 262145),
        rf"262145-byte record, larger than the snapshot length .* at offset {FIRST}\b",
    )
    yield (
        "absurd",
        _patched(_patched(good, 16, "<I", 0xFFFFFFFF), FIRST + 8, "<II", 2**31, 2**31),
        rf"{2**31}-byte record, larger than any netlink .* at offset {FIRST}\b",
    )
    yield (
        "cut by snaplen",
        _patched(good, FIRST + 12, "<I", 5000),
        rf"cut by the capture's snapshot length.* at offset {FIRST}\b",
    )
    yield (
        "timestamp",
        _patched(good, FIRST + 4, "<I", 10**9),
        rf"bad timestamp fraction 1000000000 .* at offset {FIRST}\b",
    )
    yield (
        "ARPHRD",
        _patched(good, FIRST_PACKET + 2, ">H", 1),
        rf"ARPHRD type 1, not ARPHRD_NETLINK \(824\) at offset {FIRST_PACKET}\b",
    )
    yield (
        "NETLINK_ROUTE",
        _patched(good, FIRST_PACKET + 14, ">H", 0),
        rf"netlink protocol 0, not NETLINK_NETFILTER \(12\) at offset {FIRST_PACKET + 14}\b",
    )
    yield (
        "nlmsg_len",
        _patched(good, FIRST_PACKET + 16, "=I", 99999),
        rf"netlink message of length 99999 that does not fit .* at offset {FIRST_PACKET + 16}\b",
    )
    yield "empty", b"", r"empty file"


def test_corrupt_and_foreign_files_fail_with_one_line_and_the_offset(
    tmp_path: Path, good: bytes
) -> None:
    for what, data, pattern in _corruptions(good):
        path = tmp_path / f"{what.replace(' ', '_')}.pcap"
        path.write_bytes(data)
        with pytest.raises(RecordingError, match=pattern) as err:
            ReplaySource(path)
        assert "\n" not in str(err.value), what
        assert str(err.value).startswith(str(path)), what


def test_cli_reports_a_corrupt_file_in_one_line_without_a_traceback(
    tmp_path: Path, good: bytes
) -> None:
    for what, data, pattern in _corruptions(good):
        path = tmp_path / "bad.pcap"
        path.write_bytes(data)
        proc = cttop("--replay", str(path), "-b", "-o", "json")
        assert proc.returncode == 1, what
        assert proc.stdout == "", what
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cttop: "), (what, proc.stderr)
        assert re.search(pattern, lines[0]), (what, lines[0])
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("packed", [False, True])
def test_random_damage_is_a_one_line_error_or_skipped_messages(
    tmp_path: Path, packed: bool
) -> None:
    """Whatever the damage: a RecordingError (one line) or a replay, never another exception.
    Damage inside a conntrack message is counted as skipped, as in a live dump."""
    path = tmp_path / ("a.pcap.gz" if packed else "a.pcap")
    write_golden(path, [1.0, 2.0, 3.0])
    good = path.read_bytes()
    rng = random.Random(5)
    outcomes = {"error": 0, "replayed": 0, "skipped": 0}
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        try:
            source = ReplaySource(data=bytes(data), name="damaged")
            skipped = sum(source[i].skipped for i in range(len(source)))
        except RecordingError as e:
            assert "\n" not in str(e) and str(e).startswith("damaged")
            outcomes["error"] += 1
            continue
        outcomes["skipped" if skipped else "replayed"] += 1
    if packed:
        assert outcomes["error"], outcomes  # a damaged deflate stream fails its checks
    else:
        assert all(outcomes.values()), outcomes  # each outcome actually happened


def test_truncated_recording_replays_up_to_its_last_whole_poll(tmp_path: Path, good: bytes) -> None:
    poll = (len(good) - 24) // 3
    path = tmp_path / "cut.pcap"
    # Every cut inside the third poll (header, cooked header, netlink message, between packets).
    for cut in range(24 + 2 * poll + 1, len(good), 7):
        path.write_bytes(good[:cut])
        with ReplaySource(path) as source:
            assert len(source) == 2, cut
            assert source.warning is not None and "replaying its 2 whole polls" in source.warning
            assert source[1].flows == reference_flows(GOLDEN_MESSAGES, source[1].time_wall)
    # Cut inside the first poll: nothing to replay.
    path.write_bytes(good[: 24 + poll // 2])
    with pytest.raises(RecordingError, match="no complete poll"):
        ReplaySource(path)
    # Cut exactly after a poll: whole, no warning.
    path.write_bytes(good[: 24 + 2 * poll])
    with ReplaySource(path) as source:
        assert (len(source), source.warning) == (2, None)


def test_truncated_gzip_recording_replays_up_to_its_last_whole_poll(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap.gz"
    with Recorder(path) as rec:
        for n in range(3):
            rec.write_poll(100.0 + n, GOLDEN_MESSAGES, 40, 65536)
        data = path.read_bytes()  # what a killed cttop leaves: no gzip trailer
    path.write_bytes(data[: len(data) - 10])  # and a torn last write
    with ReplaySource(path) as source:
        assert len(source) == 2
        assert source.warning is not None
    proc = cttop("--replay", str(path), "-b", "-o", "json")
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 2
    assert proc.stderr.startswith("cttop: warning: ") and proc.stderr.count("\n") == 1


# --- positioning and pacing -----------------------------------------------------------------


def test_replay_positions_seek_jump_step_and_loop(tmp_path: Path) -> None:
    path = tmp_path / "four.pcap"
    times = [1000.0, 1001.0, 1003.0, 1004.0]
    write_golden(path, times)
    source = ReplaySource(path, speed=2.0)
    assert (len(source), source.position, source.time_wall, source.clock()) == (4, -1, None, None)
    assert source.delay() == 0.0
    assert source.snapshot().time_wall == 1000.0
    assert (source.position, source.clock()) == (0, 1000.0)
    assert source.delay() == 0.5  # 1 s recorded, at speed 2
    source.snapshot()
    assert source.delay() == 1.0  # 2 s recorded

    source.seek(-1)
    assert source.snapshot().time_wall == 1004.0 and source.at_end
    assert source.delay() == 0.0

    warm = source.jump(2)
    assert [s.time_wall for s in warm] == [1001.0]  # the poll before, to prime a fresh Sampler
    assert source.snapshot().time_wall == 1003.0
    assert [s.time_wall for s in source.step(-1)] == [1000.0]
    assert source.snapshot().time_wall == 1001.0
    assert source.step(-5) == [] and source.snapshot().time_wall == 1000.0  # clamped
    assert source.jump(0) == []
    with pytest.raises(IndexError):
        source.seek(4)
    assert source[3].time_wall == 1004.0 and source.position == 0  # indexing does not move

    looped = ReplaySource(path, loop=True)
    walls, monos = [], []
    for _ in range(9):
        snap = looped.snapshot()
        walls.append(snap.time_wall)
        monos.append(snap.time_monotonic)
    assert walls == times + times + times[:1]  # the recording's own clock, lap after lap
    assert all(b > a for a, b in itertools.pairwise(monos))  # rates keep working
    assert monos[4] - monos[3] == 1.0  # the seam is one typical (median) interval
    assert looped.laps == 2 and not looped.at_end


def test_jump_primes_a_reset_sampler_so_the_poll_shows_with_rates() -> None:
    source = demo_source(loop=False)
    sampler = Sampler()
    target = len(source) // 2
    for snap in source.jump(target):
        sampler.step(snap)
    sample = sampler.step(source.snapshot())
    assert source.position == target
    assert sample.interval is not None and sample.interval > 0
    assert any(rate is not None and rate.total_bytes_per_s > 0 for _f, rate in sample.rows)


def test_batch_replay_paces_only_when_speed_is_given(tmp_path: Path) -> None:
    path = tmp_path / "paced.pcap"
    write_golden(path, [1000.0, 1000.4, 1000.8])
    started = time.monotonic()
    fast = cttop("--replay", str(path), "-b", "-o", "json")
    unpaced = time.monotonic() - started
    started = time.monotonic()
    slow = cttop("--replay", str(path), "-b", "-o", "json", "--speed", "0.5")
    paced = time.monotonic() - started
    assert fast.returncode == slow.returncode == 0
    assert fast.stdout == slow.stdout  # the pace never changes what is printed
    assert paced >= 1.6  # 0.8 s of recording at half speed
    assert paced - unpaced >= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "x.pcap", "-d", "2"], "-d does not apply"),
        (["--demo", "--netns", "foo"], "--netns/--netns-path do not apply"),
        (["--demo", "--record", "x.pcap"], "--record records the live table"),
        (["--replay", "x.pcap", "--duration", "5"], "--duration does not apply"),
        (["--speed", "2"], "--speed applies to --replay and --demo"),
        (["-n", "3", "--duration", "5"], "-n and --duration"),
        (["--demo", "--speed", "0"], "must be a positive factor"),
        (["--demo", "--replay", "x.pcap"], "not allowed with argument"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(args: list[str], message: str) -> None:
    proc = cttop(*args, "-b")
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1


# --- live: record, replay, compare (root) -------------------------------------------------------

TRAFFIC = r"""
import socket, sys, time
# Bounded: about 12 s of UDP ping-pong (IPv4 and IPv6) and a TCP stream, all on loopback.
u4s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4s.bind(("127.0.0.1", 5300))
u4c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4c.bind(("127.0.0.1", 40300))
u6s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6s.bind(("::1", 5301))
u6c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6c.bind(("::1", 40301))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 5302)); srv.listen(1)
tc = socket.socket(); tc.bind(("127.0.0.1", 40302)); tc.connect(("127.0.0.1", 5302))
ts, _ = srv.accept()
print("ready", flush=True)
end = time.monotonic() + 12
i = 0
while time.monotonic() < end:
    i += 1
    u4c.sendto(b"q" * (50 + i % 50), ("127.0.0.1", 5300))
    d, a = u4s.recvfrom(2000)
    u4s.sendto(d * 3, a)
    u4c.recv(2000)
    u6c.sendto(b"q" * 80, ("::1", 5301))
    d, a = u6s.recvfrom(2000)
    u6s.sendto(d, a)
    u6c.recv(2000)
    tc.sendall(b"t" * 1000)
    n = 0
    while n < 1000:
        n += len(ts.recv(1000 - n))
    time.sleep(0.01 if (i // 100) % 2 else 0.03)
"""


def _start_traffic(ns: NetNS) -> None:
    proc = ns.spawn([sys.executable, "-c", TRAFFIC])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""


def _lab(ns: NetNS) -> None:
    """A few inserted entries (IPv6, DNAT) next to the real traffic."""
    ns.conntrack(
        *("-I", "-p", "tcp", "-s", "10.0.0.1", "-d", "203.0.113.10", "--sport", "40000"),
        *("--dport", "443", "--state", "ESTABLISHED", "-t", "3600", "-u", "SEEN_REPLY,ASSURED"),
        *("--dst-nat", "10.0.0.80:8443"),
    )
    ns.conntrack(
        *("-I", "-p", "udp", "-s", "2001:db8::1", "-d", "2001:db8::2", "--sport", "5000"),
        *("--dport", "53", "-t", "3600"),
    )


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_same_samples(live: list[dict[str, Any]], replay: list[dict[str, Any]]) -> None:
    """Flows, counters, states, count/max: identical. Rates and intervals: equal up to the
    nanosecond rounding of pcap timestamps; time: to the microsecond."""
    assert len(replay) == len(live)
    for a, b in zip(live, replay, strict=True):
        assert b["time"] == pytest.approx(a["time"], abs=1e-5)
        if a["interval"] is None:
            assert b["interval"] is None
        else:
            assert b["interval"] == pytest.approx(a["interval"], abs=1e-8)
        assert (b["count"], b["max"]) == (a["count"], a["max"])
        assert len(b["flows"]) == len(a["flows"])
        for fa, fb in zip(a["flows"], b["flows"], strict=True):
            ra, rb = fa.pop("rate"), fb.pop("rate")
            assert fb == fa
            if ra is None:
                assert rb is None
            else:
                assert rb == pytest.approx(ra, rel=1e-6, abs=1e-6)


@pytest.mark.root
def test_live_record_then_batch_replay_prints_what_the_live_run_printed(
    netns_factory: Callable[..., NetNS], tmp_path: Path
) -> None:
    ns = netns_factory(acct=True, timestamp=True)
    _lab(ns)
    _start_traffic(ns)
    path = tmp_path / "live.pcap"
    live = cttop(
        "--netns", ns.name, "--record", str(path), "-b", "-n", "4", "-d", "0.5", "-o", "json"
    )
    assert live.returncode == 0, live.stderr
    replay = cttop("--replay", str(path), "-b", "-o", "json")
    assert replay.returncode == 0, replay.stderr
    assert live.stderr == replay.stderr == ""
    a, b = _json_lines(live.stdout), _json_lines(replay.stdout)
    assert len(a) == 4
    # The comparison means something: real flows that moved, both families, NAT.
    moving = [f for f in a[-1]["flows"] if f["rate"] and f["rate"]["orig_bytes_per_s"] > 0]
    assert {f["family"] for f in moving} == {"ipv4", "ipv6"}
    assert {f["proto"] for f in moving} >= {"udp", "tcp"}
    assert any(f["reply"]["src"] != f["orig"]["dst"] for f in a[-1]["flows"])
    assert_same_samples(a, b)


@pytest.mark.root
def test_live_recording_holds_the_kernels_done_and_stats_messages(
    netns_factory: Callable[..., NetNS], tmp_path: Path
) -> None:
    """Each poll: the dump, its NLMSG_DONE, then the kernel's own GET_STATS reply (same port
    id as the dump: sent by the kernel to our socket, not made up by the recorder)."""
    ns = netns_factory(acct=True)
    _lab(ns)
    path = tmp_path / "live.pcap"
    proc = cttop("--netns", ns.name, "--record", str(path), "-n", "3", "-d", "0.2")
    assert proc.returncode == 0
    assert proc.stderr.startswith(f"cttop: recorded 3 polls (2 flows in the last) to {path}")
    _header, records = pcap_by_the_spec(path.read_bytes())
    msgs = [r[4][16:] for r in records]
    assert len(msgs) == 3 * 4  # 2 entries, DONE, stats — per poll
    for poll in range(3):
        hdrs = [NLMSG_HDR.unpack_from(m) for m in msgs[4 * poll : 4 * poll + 4]]
        types = [h[1] for h in hdrs]
        assert types == [CT_NEW, CT_NEW, NLMSG_DONE, CT_STATS]
        pids = {h[4] for h in hdrs}
        assert len(pids) == 1 and pids != {0}
        dump_seq = hdrs[0][3]
        assert [h[3] for h in hdrs] == [dump_seq, dump_seq, dump_seq, dump_seq + 1]
        snap = ReplaySource(path)[poll]
        assert (snap.table_count, len(snap.flows)) == (ns.conntrack_count(), 2)


@pytest.mark.root
def test_recorder_attaches_and_detaches_at_runtime(
    netns_factory: Callable[..., NetNS], tmp_path: Path
) -> None:
    ns = netns_factory(acct=True)
    _lab(ns)
    first, second = tmp_path / "first.pcap", tmp_path / "second.pcap.gz"

    def session() -> list[str]:
        notes = []
        with LiveSource(record_dir=str(tmp_path)) as source:
            source.snapshot()  # not recorded
            source.start_recording(first)
            assert str(source.recording) == "first.pcap · 0 polls"
            source.snapshot()
            source.snapshot()
            notes.append(source.toggle_recording())  # stop
            assert source.recording is None
            source.snapshot()  # not recorded
            source.recorder = Recorder(second)  # attaching is just setting the attribute
            source.snapshot()
            # close() finishes the file
        notes.append(source.toggle_recording())  # start, to a name of its own
        source.stop_recording()
        return notes

    notes = in_netns(ns.path, session)
    assert notes[0] == f"recorded 2 polls to {first}"
    assert notes[1].startswith(f"recording to {tmp_path}/cttop-")
    assert len(ReplaySource(first)) == 2
    assert len(ReplaySource(second)) == 1
    assert gzip.decompress(second.read_bytes())[:4] == struct.pack("=I", 0xA1B23C4D)


# --- tshark, the outside opinion ----------------------------------------------------------------


@needs_tshark
def test_tshark_decodes_every_packet_as_netfilter_netlink_conntrack(tmp_path: Path) -> None:
    path = tmp_path / "golden.pcap"
    write_golden(path, [1795703302.0, 1795703303.0])
    rows = tshark_fields(
        path,
        "frame.protocols",
        "netlink.hatype",
        "netlink.family",
        "netlink.hdr_type",
        "netlink-netfilter.subsys",
        "netlink-netfilter.ct_attr.id",
    )
    per_poll = len(GOLDEN_MESSAGES) + 1
    assert len(rows) == 2 * per_poll
    for protocols, hatype, family, _type, subsys, _id in rows:
        assert protocols == "netlink:netlink-netfilter"
        assert (hatype, int(family, 16), subsys) == ("824", 12, "1")  # ARPHRD_NETLINK, conntrack
    # The CTA_IDs tshark reads are the ids of the flows cttop replays, in order.
    with ReplaySource(path) as source:
        ours = [f.id for f in source.snapshot().flows.values()]
    theirs = [int(r[5], 16) for r in rows[: len(GOLDEN_MESSAGES)]]
    assert theirs == ours
    assert tshark(path, "-Y", "_ws.malformed") == []


@needs_tshark
def test_tshark_reads_gzip_recordings(tmp_path: Path) -> None:
    path = tmp_path / "golden.pcap.gz"
    write_golden(path, [1.0, 2.0, 3.0])
    assert len(tshark(path)) == 3 * (len(GOLDEN_MESSAGES) + 1)


@needs_tshark
@pytest.mark.root
def test_tshark_decodes_a_live_recording(
    netns_factory: Callable[..., NetNS], tmp_path: Path
) -> None:
    ns = netns_factory(acct=True, timestamp=True)
    _lab(ns)
    _start_traffic(ns)
    path = tmp_path / "live.pcap"
    assert cttop("--netns", ns.name, "--record", str(path), "-n", "2", "-d", "0.3").returncode == 0
    rows = tshark_fields(path, "netlink.hdr_type", "netlink-netfilter.ct_attr.id")
    ids = {int(r[1], 16) for r in rows if r[1]}
    with ReplaySource(path) as source:
        ours = {f.id for i in range(len(source)) for f in source[i].flows.values()}
    assert ids == ours and len(ours) >= 5
    assert {r[0] for r in rows} == {"0x0100", "0x0003", "0x0105"}  # CT_NEW, DONE, GET_STATS
    assert tshark(path, "-Y", "_ws.malformed") == []


def test_replay_intervals_are_the_recorded_ones_to_the_nanosecond(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    with Recorder(path) as rec:
        for i in range(5):
            wall, mono = 1795703302.0 + i * 0.1, 7.0 + i * 0.1
            rec.write_poll(wall, GOLDEN_MESSAGES, 40, 1, time_monotonic=mono)
    with ReplaySource(path) as source:
        monos = [source.snapshot().time_monotonic for _ in range(5)]
    assert [round(b - a, 9) for a, b in itertools.pairwise(monos)] == [0.1] * 4


def test_replay_never_opens_a_netlink_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.socket

    def guarded(family: int = -1, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_NETLINK:
            raise AssertionError("a replay opened a netlink socket")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", guarded)
    path = tmp_path / "a.pcap"
    write_golden(path, [1.0, 2.0])
    out = io.StringIO()
    assert run(["--replay", str(path), "-b", "-o", "json"], out) == 0
    assert len(out.getvalue().splitlines()) == 2
