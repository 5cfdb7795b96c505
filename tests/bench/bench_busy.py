"""The decoder on a busy table: a share of the flows' counters move between every two dumps.

A script, not a test (needs root):

    python tests/bench/bench_busy.py [--n 250000] [--share 0.3] [--dumps 12] [--json PATH]

`bench.py`'s tables are mostly idle (2% of the flows moving): there the decoder gives back
the last poll's Flow for nearly every message. On a busy gateway many flows move every
second, and each of those is a message the decoder has not seen but for its counters: the
decode of its last poll with the new counters, in its place. This fills a namespace's table
with N entries (as `bench_dump.py` does), receives one dump, and then, in one process, decodes
it `--dumps` times with a `FastDecoder` as the poll loop does, each time after raising the
orig byte counter of `--share` of the messages (in the received bytes: the kernel cannot be
made to move 75k flows a second from here). Per dump: decode time, the decoder's cache size,
VmRSS and VmHWM (the heap trimmed after each, as the TUI's would be at that size).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dump as bd


def worker(n: int, share: float, dumps: int) -> dict[str, Any]:
    import gc

    from cttop.conntrack import const as c
    from cttop.conntrack.client import _CT, ConntrackClient, nfgenmsg
    from cttop.conntrack.decode import FastDecoder
    from cttop.heap import trim_heap, tune_allocator
    from cttop.netlink import NF_FAMILY, NF_PAYLOAD, NLM_F_DUMP, DumpStats, iter_attrs

    tune_allocator()
    client = ConntrackClient()
    sock = client._open()
    seq = sock.send(_CT | c.IPCTNL_MSG_CT_GET, NLM_F_DUMP, nfgenmsg(c.AF_UNSPEC))
    frames = [
        (bytearray(data), offsets)
        for data, offsets, _end in sock.dump_datagrams(seq, DumpStats(), threaded=False)
    ]
    client.close()
    # The last byte of each message's CTA_COUNTERS_ORIG / CTA_COUNTERS_BYTES value.
    spots: list[tuple[bytearray, int]] = []
    for data, offsets in frames:
        raw = bytes(data)
        for off, end in offsets:
            for t, s, e, _n in iter_attrs(raw, off + NF_PAYLOAD, end):
                if t == c.CTA_COUNTERS_ORIG:
                    spots += [
                        (data, cs + 7)
                        for ct, cs, _ce, _cn in iter_attrs(raw, s, e)
                        if ct == c.CTA_COUNTERS_BYTES
                    ]
    rnd = random.Random(1)
    decoder = FastDecoder()
    rows = []
    gc.disable()
    for dump in range(dumps):
        if dump:
            for data, at in rnd.sample(spots, int(share * len(spots))):
                data[at] = (data[at] + 1) & 0xFF
        messages = [(bytes(data), offsets) for data, offsets in frames]
        decoder.begin()
        decoder.clock[0] = time.time()
        t0 = time.perf_counter()
        flows = [
            decoder.decode(data, off + NF_PAYLOAD, end, data[off + NF_FAMILY])
            for data, offsets in messages
            for off, end in offsets
        ]
        took = time.perf_counter() - t0
        decoder.end()
        del flows, messages
        trim_heap()
        status = bd._proc_status_kib
        rows.append(
            {
                "dump": dump,
                "decode_s": took,
                "cached": decoder.cached,
                "vmrss_kib": status("VmRSS"),
                "vmhwm_kib": status("VmHWM"),
            }
        )
        print(
            f"dump {dump:2d}: decode {took * 1000:6.0f} ms, cache {decoder.cached:8,}, "
            f"VmRSS {(status('VmRSS') or 0) / 1024:5.0f} MiB, VmHWM "
            f"{(status('VmHWM') or 0) / 1024:5.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
    return {"n": n, "messages": sum(len(o) for _d, o in frames), "with_counters": len(spots),
            "share": share, "dumps": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--n", type=int, default=250_000, help="entries (default 250000)")
    p.add_argument("--share", type=float, default=0.3, help="flows moving per dump (0.3)")
    p.add_argument("--dumps", type=int, default=12, help="dumps decoded (default 12)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.n, args.share, args.dumps)))
        return 0
    bd._cleanup_stale()
    with bd.bench_netns(args.n) as name:
        build = argparse.Namespace(repeat=1, clients=8192, batch=256)
        bd._run_worker(name, "build", build, args.n)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bd.REPO), env.get("PYTHONPATH")]))
        argv_ = ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()),
                 "--worker", "--n", str(args.n), "--share", str(args.share),
                 "--dumps", str(args.dumps)]  # fmt: skip
        proc = subprocess.run(argv_, stdout=subprocess.PIPE, text=True, env=env, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    last = result["dumps"][-1]
    print(
        f"N={args.n:,}, {args.share:.0%} moving per dump: cache max "
        f"{max(r['cached'] for r in result['dumps']):,}, VmHWM {last['vmhwm_kib'] / 1024:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
