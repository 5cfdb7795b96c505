"""Runs inside a test namespace (`ip netns exec NAME python -m tests.probes.rate_probe`):
sends a paced UDP stream over loopback while cttop's client and sampler poll the table, and
prints, per sample, the rate cttop measured and the rate the sender's own log says was sent.

The expected bytes count what conntrack counts: the whole IPv4 packet, 20 bytes of IP header
and 8 of UDP header on top of the payload.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time

from cttop.conntrack.client import ConntrackClient
from cttop.sampler import Sampler

PAYLOAD = 972  # + 28 header bytes = 1000 bytes per packet as conntrack counts them
WIRE = PAYLOAD + 28
PORT_SRC, PORT_DST = 40123, 40124


def send(pps: float, seconds: float) -> int:
    """The sender, in its own process so that no GIL stands between its log and the wire:
    sends at an absolute pace for `seconds`, then prints the monotonic time of every send."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", PORT_DST))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", PORT_SRC))
    stop = threading.Event()

    def drain() -> None:  # a listener, so the kernel answers no ICMP port-unreachable
        rx.settimeout(0.2)
        while not stop.is_set():
            try:
                rx.recv(65536)
            except TimeoutError:
                continue

    drainer = threading.Thread(target=drain)
    drainer.start()
    data = b"x" * PAYLOAD
    sent: list[float] = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        wait = start + n / pps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        tx.sendto(data, ("127.0.0.1", PORT_DST))
        sent.append(time.monotonic())
        n += 1
    stop.set()
    drainer.join()
    json.dump(sent, sys.stdout)
    return 0


def main() -> int:
    if sys.argv[1:2] == ["send"]:
        return send(float(sys.argv[2]), float(sys.argv[3]))
    pps = float(sys.argv[1]) if len(sys.argv) > 1 else 400.0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    sender = subprocess.Popen(
        [sys.executable, __file__, "send", str(pps), str(seconds + 0.8)],
        stdout=subprocess.PIPE,
        text=True,
    )
    client = ConntrackClient()
    sampler = Sampler()
    polls: list[tuple[float, float | None, float | None, float]] = []  # time, rate, interval, took
    try:
        time.sleep(0.3)  # the flow exists and the sender is at pace
        begin = time.monotonic()
        while time.monotonic() - begin < seconds:
            asked = time.monotonic()
            snap = client.snapshot()
            took = time.monotonic() - asked  # the kernel read the counters somewhere in here
            sample = sampler.step(snap)
            rows = [
                r
                for r in sample.rows
                if r.flow.orig.sport == PORT_SRC and r.flow.orig.dport == PORT_DST
            ]
            if rows:
                rate = rows[0].rate
                polls.append(
                    (
                        snap.time_monotonic,
                        None if rate is None else rate.orig_bytes_per_s,
                        sample.interval,
                        took,
                    )
                )
            time.sleep(max(0.0, interval - (time.monotonic() - snap.time_monotonic)))
    finally:
        out, _ = sender.communicate(timeout=30)
    sent = json.loads(out)
    samples = []
    # The kernel read the counters during the dump; the snapshot's time is taken right after
    # it. Count the packets the sender logged between two such times.
    for (t0, _r, _i, took0), (t1, rate, step, took1) in itertools.pairwise(polls):
        count = sum(1 for s in sent if t0 < s <= t1)
        samples.append(
            {
                "interval": step,
                "measured": rate,
                "expected": count * WIRE / (t1 - t0),
                "packets": count,
                # How far off the snapshot times can be from the kernel's reads, in seconds.
                "uncertainty": (took0 + took1) / 2,
            }
        )
    json.dump({"samples": samples, "pps": pps, "wire": WIRE}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
