"""Throw-away network namespaces with connection tracking switched on, for root-only tests.

    with NetNS(acct=True, timestamp=False) as ns:
        ns.run(["python3", "-c", "..."])      # runs inside the namespace
        print(ns.conntrack_list())            # `conntrack -L -o extended,id` in there

Each namespace gets a unique name ``cttop-test-<pid>-<n>`` (pid of the creating process), is
deleted in ``__exit__`` (also when the body raises), by an ``atexit`` safety net, and — should the
creating process have died without either running — by `cleanup_stale()` in the next run, which
deletes ``cttop-test-<pid>-*`` namespaces whose pid is no longer alive.

Conntrack only tracks packets once something in the namespace asks for it. We load one nftables
rule on the *output* hook (``ct state new counter``). That is enough for loopback traffic in both
directions: any nft ``ct`` expression makes the kernel register the conntrack hooks of the
namespace on every hook (prerouting, input, output, postrouting) for IPv4 and IPv6, so replies are
tracked and counted too without an input-hook rule (checked on kernel 6.18: a loopback TCP
exchange shows packets/bytes in both directions).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "cttop-test"
_NAME_RE = re.compile(rf"^{NAME_PREFIX}-(\d+)-[A-Za-z0-9_]+$")
_counter = itertools.count(1)
_live: dict[str, NetNS] = {}

TRACK_RULES = """\
table inet cttop_track {
    chain out {
        type filter hook output priority 0; policy accept;
        ct state new counter
    }
}
"""


class NetNSCommandError(subprocess.CalledProcessError):
    """A command inside the namespace failed; unlike the base class, str() shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout!r}\nstderr: {self.stderr!r}"


def missing_tools() -> list[str]:
    """The external programs NetNS needs that are not on PATH."""
    return [tool for tool in ("ip", "nft", "conntrack") if shutil.which(tool) is None]


def _run_host(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise NetNSCommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def list_netns() -> list[str]:
    """Names of the namespaces under /run/netns (``ip netns list``)."""
    out = _run_host(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete ``cttop-test-<pid>-*`` namespaces left by processes that no longer exist."""
    removed = []
    for name in list_netns():
        m = _NAME_RE.match(name)
        if m is None or name in _live:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if _run_host(["ip", "netns", "delete", name], check=False).returncode == 0:
            removed.append(name)
    return removed


class NetNS:
    """A fresh network namespace with lo up and conntrack tracking local traffic.

    acct: value for net.netfilter.nf_conntrack_acct (per-namespace; counters are attached to an
        entry only if acct was on when it was created).
    timestamp: value for net.netfilter.nf_conntrack_timestamp (start time of each entry).
    track: load the nftables rule that makes conntrack see the namespace's own traffic.
    """

    def __init__(self, *, acct: bool = True, timestamp: bool = False, track: bool = True) -> None:
        self.acct = acct
        self.timestamp = timestamp
        self.track = track
        self.name = self._unique_name()
        self._created = False
        self._procs: list[subprocess.Popen[str]] = []

    @staticmethod
    def _unique_name() -> str:
        while True:
            name = f"{NAME_PREFIX}-{os.getpid()}-{next(_counter)}"
            if not (NETNS_DIR / name).exists():
                return name

    @property
    def path(self) -> str:
        """The bind-mounted namespace file, usable with setns(2) or ``--netns-path``."""
        return str(NETNS_DIR / self.name)

    # --- life cycle ---------------------------------------------------------------------

    def create(self) -> NetNS:
        if self._created:
            return self
        cleanup_stale()
        _run_host(["ip", "netns", "add", self.name])
        self._created = True
        _live[self.name] = self
        try:
            _run_host(["ip", "-n", self.name, "link", "set", "lo", "up"])
            self.sysctl("net.netfilter.nf_conntrack_acct", int(self.acct))
            self.sysctl("net.netfilter.nf_conntrack_timestamp", int(self.timestamp))
            if self.track:
                self.nft(TRACK_RULES)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop processes started with spawn(), then delete the namespace. Idempotent."""
        for proc in self._procs:
            with contextlib.suppress(OSError):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()
        if self._created:
            _run_host(["ip", "netns", "delete", self.name], check=False)
            self._created = False
        _live.pop(self.name, None)

    @property
    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()

    def __enter__(self) -> NetNS:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetNS({self.name!r}, acct={self.acct}, timestamp={self.timestamp})"

    # --- running things inside ------------------------------------------------------------

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        *,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the namespace (``ip netns exec``); text output is captured."""
        full = self._argv(argv)
        proc = subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise NetNSCommandError(proc.returncode, full, proc.stdout, proc.stderr)
        return proc

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a long-running process inside the namespace; close() kills it.

        stdin/stdout are pipes (text); stderr is a pipe too.
        """
        proc = subprocess.Popen(
            self._argv(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        return proc

    def sysctl(self, name: str, value: str | int) -> None:
        """Set a sysctl of this namespace, e.g. ``sysctl("net.netfilter.nf_conntrack_acct", 1)``."""
        path = "/proc/sys/" + name.replace(".", "/")
        self.run(["sh", "-c", 'printf "%s\\n" "$0" > "$1"', str(value), path])

    def sysctl_get(self, name: str) -> str:
        path = "/proc/sys/" + name.replace(".", "/")
        return self.run(["cat", path]).stdout.strip()

    def nft(self, script: str) -> None:
        """Load an nftables script (``nft -f -``) into this namespace."""
        self.run(["nft", "-f", "-"], input=script)

    def conntrack(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``conntrack ARGS`` inside the namespace."""
        return self.run(["conntrack", *args], check=check)

    def conntrack_list(self, output: str = "extended,id") -> str:
        """Output of ``conntrack -L -o extended,id`` (stdout only: the summary goes to stderr)."""
        return self.conntrack("-L", "-o", output).stdout

    def conntrack_count(self) -> int:
        """``conntrack -C``: nf_conntrack_count of this namespace."""
        return int(self.conntrack("-C").stdout.strip())

    def insert(self, entries: list[str], timeout: int = 3600) -> NetNS:
        """``conntrack -I`` each entry (its arguments as one string) into an empty table, and
        check that the table holds exactly them. Returns the namespace (for fixtures)."""
        for entry in entries:
            self.conntrack("-I", *entry.split(), "-t", str(timeout))
        assert self.conntrack_count() == len(entries)
        return self


@atexit.register
def _close_all() -> None:
    for ns in list(_live.values()):
        with contextlib.suppress(Exception):
            ns.close()
