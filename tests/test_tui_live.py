"""The TUI against a live conntrack table (root only): a fresh network namespace, loopback TCP
traffic started while the app runs, and the flow it makes must show up with a rate.

`enter_netns` moves only the calling thread, and a thread inherits its creator's namespace: so
the app runs in a thread of its own that enters the namespace first and then runs the whole
`run_test` with `asyncio.run` — the event loop, the poll workers and the netlink socket all live
in there, as they do under `cttop --netns NAME`.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

from cttop.conntrack.client import ConntrackClient
from cttop.conntrack.const import IPPROTO_TCP
from cttop.netlink import enter_netns
from cttop.sampler import FlowRows
from cttop.source import LiveSource
from cttop.tui.app import CttopApp
from cttop.tui.header import Header
from cttop.tui.table import FlowTable
from tests.netns import NetNS

pytestmark = pytest.mark.root

PORT = 48123

# A bounded bulk transfer over loopback: about 2 s of 16 KiB writes, echoed back in part.
TRAFFIC = f"""
import socket, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", {PORT})); srv.listen(1)
cli = socket.create_connection(("127.0.0.1", {PORT})); acc, _ = srv.accept()
print("ready", flush=True)
end = time.monotonic() + 2.0
chunk = b"x" * 16384
while time.monotonic() < end:
    cli.sendall(chunk)
    got = 0
    while got < len(chunk):
        got += len(acc.recv(65536))
    acc.sendall(chunk[:1024]); cli.recv(65536)
    time.sleep(0.005)
cli.close(); acc.close(); srv.close()
"""


def ours(app: CttopApp) -> tuple[Any, Any] | None:
    rows = app.query_one(FlowTable).rows
    assert isinstance(rows, FlowRows)
    for flow, rate in zip(rows.flows, rows.rates, strict=True):
        if flow.protonum == IPPROTO_TCP and flow.orig.dport == PORT:
            return flow, rate
    return None


async def watch(ns: NetNS, seen: dict[str, Any]) -> None:
    source = LiveSource(ConntrackClient())  # the socket is made inside the namespace
    app = CttopApp(source, interval=0.25, label=ns.name)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.monotonic() + 5
            while app.polls < 1 and time.monotonic() < deadline:
                await pilot.pause(0.05)
            seen["before"] = ours(app)
            traffic = ns.spawn([sys.executable, "-c", TRAFFIC])
            assert traffic.stdout is not None
            ready = await asyncio.to_thread(traffic.stdout.readline)
            assert ready.strip() == "ready", traffic.stderr.read() if traffic.stderr else ""
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                await pilot.pause(0.1)
                row = ours(app)
                if row is not None and row[1] is not None and row[1].total_bytes_per_s > 0:
                    seen["row"] = row
                    seen["header"] = [line.plain for line in app.query_one(Header).lines()]
                    seen["error"] = app.error
                    seen["polls"] = app.polls
                    break
            await asyncio.to_thread(traffic.wait, 10)
    finally:
        source.close()


def run_in_namespace(ns: NetNS) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def main() -> None:
        try:
            enter_netns(ns.path)
            asyncio.run(watch(ns, seen))
        except BaseException as e:  # handed to the test thread
            seen["exception"] = e

    thread = threading.Thread(target=main, name="cttop-netns-app")
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the app did not finish in 30 s"
    if "exception" in seen:
        raise seen["exception"]
    return seen


def test_live_flow_shows_with_a_rate(netns: NetNS) -> None:
    seen = run_in_namespace(netns)
    assert seen["before"] is None  # the flow is made during the test
    assert "row" in seen, "the traffic's flow never showed with a rate"
    flow, rate = seen["row"]
    assert flow.orig.src == "127.0.0.1" and flow.state_name == "ESTABLISHED"
    assert rate.orig_bytes_per_s > 10_000  # 16 KiB writes every few ms
    assert rate.reply_bytes_per_s > 0
    assert flow.orig_bytes is not None and flow.orig_bytes > 16384
    assert seen["error"] is None
    line1, line2, *_ = seen["header"]
    assert line1.startswith(f"cttop {netns.name}")
    assert "tcp " in line2 and "↑ " in line2
