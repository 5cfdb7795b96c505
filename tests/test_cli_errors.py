"""The `cttop` command as an operator (or a script) meets it: every failure is exactly one line on
stderr starting "cttop: ", with the documented exit code and never a traceback; batch output
behaves in pipes.

Each case runs both the installed entry point (`cttop`) and `python -m cttop`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.netns import NetNS

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH_ONCE = ["-b", "-n", "1", "-o", "json"]
NEEDS_CAP = "cttop: cttop needs root or CAP_NET_ADMIN to read the conntrack table"


def _script() -> str | None:
    beside = Path(sys.executable).with_name("cttop")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("cttop")


SCRIPT = _script()
INVOCATIONS = {
    "script": [SCRIPT] if SCRIPT else None,
    "module": [sys.executable, "-m", "cttop"],
}


@pytest.fixture(params=sorted(INVOCATIONS))
def cttop(request: pytest.FixtureRequest) -> list[str]:
    argv = INVOCATIONS[request.param]
    if argv is None:
        pytest.skip("the cttop entry point is not installed (pip install -e .)")
    return argv


def run(argv: Sequence[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        **kw,  # type: ignore[call-overload]
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int | None) -> str:
    """Exactly one line on stderr, starting "cttop: "; nothing on stdout; the exit code."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("cttop: "), proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, repr(proc.stderr)
    assert proc.stdout == ""
    if code is None:
        assert proc.returncode != 0
    else:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    return proc.stderr.rstrip("\n")


# --- usage errors: exit 2, before anything touches the kernel -------------------------------

BAD_OPTIONS = {
    "delay 0": (["-d", "0"], "-d/--delay"),
    "delay abc": (["-d", "abc"], "-d/--delay"),
    "delay negative": (["--delay=-1"], "-d/--delay"),
    "delay nan": (["-d", "nan"], "-d/--delay"),
    "delay inf": (["-d", "1e309"], "-d/--delay"),
    "iterations 0": (["-n", "0"], "-n/--iterations"),
    "iterations abc": (["-n", "abc"], "-n/--iterations"),
    "iterations 1.5": (["-n", "1.5"], "-n/--iterations"),
    "output xml": (["-o", "xml"], "-o/--output"),
    "netns with a slash": (["--netns", "a/b"], "--netns"),
    "netns ..": (["--netns", ".."], "--netns"),
    "netns empty": (["--netns", ""], "--netns"),
    "netns and netns-path": (["--netns", "x", "--netns-path", "/run/netns/x"], "--netns"),
    "unknown option": (["--frobnicate"], "--frobnicate"),
    "missing value": (["-d"], "-d/--delay"),
    "limit 0": (["-l", "0"], "-l/--limit"),
    "sort key": (["-s", "nosuch"], "nosuch"),
    "group key": (["-g", "nosuch"], "nosuch"),
    "filter": (["-f", "((("], "((("),
    "keymap": (["--keymap", "bad"], "--keymap"),
}


@pytest.mark.parametrize("args", list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS))
def test_bad_option_is_one_line_exit_2(cttop: list[str], args: tuple[list[str], str]) -> None:
    argv, mentions = args
    line = assert_one_line_error(run([*cttop, "-b", "-n", "1", *argv]), 2)
    assert mentions in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--netns", "bad\nname"],  # reaches the kernel: "does not exist (/run/netns/bad<LF>name …)"
        ["--frob\nx"],  # argparse: "unrecognized arguments: --frob<LF>x"
        ["extra\nargument"],
    ],
    ids=["netns name", "unknown option", "positional"],
)
def test_newline_in_user_text_stays_one_line(cttop: list[str], argv: list[str]) -> None:
    """What the operator typed is quoted, so a newline in it cannot split the error line."""
    assert_one_line_error(run([*cttop, "-b", "-n", "1", *argv]), None)


def test_version_and_help_are_not_errors(cttop: list[str]) -> None:
    proc = run([*cttop, "--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("cttop ") and proc.stderr == ""
    proc = run([*cttop, "--help"])
    assert proc.returncode == 0 and "--netns" in proc.stdout and proc.stderr == ""


# --- namespaces that are not there ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--netns", "does-not-exist-xyz"], "does-not-exist-xyz"),
        (["--netns", "x" * 300], "xxxx"),  # ENAMETOOLONG
        (["--netns-path", "/nonexistent/netns/file"], "/nonexistent/netns/file"),
    ],
    ids=["unknown name", "name too long", "unknown path"],
)
def test_unknown_namespace_is_one_line(cttop: list[str], argv: list[str], mentions: str) -> None:
    assert not Path("/run/netns/does-not-exist-xyz").exists()
    line = assert_one_line_error(run([*cttop, "-b", "-n", "1", *argv]), 1)
    assert mentions in line


@pytest.mark.root
def test_namespace_path_that_is_not_a_namespace(cttop: list[str]) -> None:
    line = assert_one_line_error(run([*cttop, "-b", "-n", "1", "--netns-path", "/etc/hostname"]), 1)
    assert line == "cttop: /etc/hostname is not a network namespace"


# --- permissions --------------------------------------------------------------------------------


def _python_for_nobody() -> str | None:
    """An interpreter user 65534 can run that imports cttop from this checkout, or None.

    The test interpreter may live under /root (pyenv), which nobody cannot enter.
    """
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not Path(python).exists():
            continue
        proc = run(
            [*_AS_NOBODY, "env", f"PYTHONPATH={REPO_ROOT}", python, "-c", "import cttop.cli"],
            cwd="/",
        )
        if proc.returncode == 0:
            return python
    return None


_AS_NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
]


@pytest.mark.root
def test_without_cap_net_admin_as_nobody() -> None:
    """An unprivileged user: the kernel answers EPERM, cttop says so in its one line."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that user 65534 can run with cttop importable")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT)}
    proc = run([*_AS_NOBODY, python, "-m", "cttop", "-b", "-n", "1"], cwd="/", env=env)
    line = assert_one_line_error(proc, None)
    assert line == NEEDS_CAP
    assert proc.returncode == 1


@pytest.mark.root
def test_without_cap_net_admin_as_root(cttop: list[str]) -> None:
    """uid 0 is not enough: with CAP_NET_ADMIN dropped from the bounding set, EPERM."""
    if shutil.which("capsh") is None:
        pytest.skip("capsh (libcap2-bin) is not installed")
    # capsh runs /bin/bash -c 'exec "$@"' with the capability gone from the bounding set.
    proc = run(
        ["capsh", "--drop=cap_net_admin", "--", "-c", 'exec "$@"', "cttop", *cttop, *BATCH_ONCE]
    )
    line = assert_one_line_error(proc, None)
    assert line == NEEDS_CAP
    assert proc.returncode == 1


@pytest.mark.root
def test_own_user_and_network_namespace(cttop: list[str]) -> None:
    """`unshare -rn`: root of a fresh user+net namespace has CAP_NET_ADMIN over its own
    (empty) conntrack table, so cttop works without host privileges there."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    proc = run(["unshare", "-rn", *cttop, "-b", "-n", "1", "-o", "json"])
    if "Operation not permitted" in proc.stderr and "unshare" in proc.stderr:
        pytest.skip(f"user namespaces are not allowed here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    sample = json.loads(line)
    assert sample["flows"] == []
    assert sample["count"] == 0
    assert sample["interval"] is None
    assert isinstance(sample["time"], float)
    assert sample["max"] is None or sample["max"] > 0


# --- success cases in a namespace with a few entries -------------------------------------------

ENTRIES = [
    "-p tcp -s 192.0.2.1 -d 198.51.100.1 --sport 40000 --dport 443 --state ESTABLISHED -m 7",
    "-p udp -s 2001:db8::1 -d 2001:db8::2 --sport 5353 --dport 53",
    "-p icmp -s 192.0.2.9 -d 192.0.2.10 --icmp-type 8 --icmp-code 0 --icmp-id 77",
]


@pytest.fixture
def table(netns: NetNS) -> NetNS:
    return netns.insert(ENTRIES)


@pytest.mark.root
def test_json_lists_the_namespace_table(cttop: list[str], table: NetNS) -> None:
    proc = run([*cttop, "-b", "-n", "2", "-d", "0.2", "-o", "json", "--netns", table.name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["count"] == len(ENTRIES) and first["interval"] is None
    assert second["interval"] == pytest.approx(0.2, abs=0.15)
    by_proto = {f["proto"]: f for f in first["flows"]}
    assert sorted(by_proto) == ["icmp", "tcp", "udp"]
    tcp = by_proto["tcp"]
    assert (tcp["family"], tcp["state"], tcp["mark"], tcp["zone"]) == ("ipv4", "ESTABLISHED", 7, 0)
    assert tcp["orig"]["src"] == "192.0.2.1" and tcp["orig"]["dport"] == 443
    assert tcp["reply"]["src"] == "198.51.100.1" and tcp["reply"]["dport"] == 40000
    assert 3500 < tcp["timeout"] <= 3600
    assert tcp["rate"] is None
    udp = by_proto["udp"]
    assert udp["family"] == "ipv6" and udp["orig"]["dst"] == "2001:db8::2"
    icmp = by_proto["icmp"]
    assert (icmp["orig"]["icmp_type"], icmp["orig"]["icmp_id"]) == (8, 77)
    assert icmp["reply"]["icmp_type"] == 0
    assert all(f["rate"] is not None for f in second["flows"])


@pytest.mark.root
def test_csv_header_once(cttop: list[str], table: NetNS) -> None:
    proc = run([*cttop, "-b", "-n", "2", "-d", "0.2", "-o", "csv", "--netns", table.name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    header = lines[0]
    assert header.startswith("time,") and "orig_src" in header
    assert lines.count(header) == 1
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 2 * len(ENTRIES)  # every entry in each of the two samples
    assert {r["proto"] for r in rows} == {"tcp", "udp", "icmp"}
    assert len({r["time"] for r in rows}) == 2


@pytest.mark.root
def test_broken_pipe_exits_quietly(cttop: list[str], table: NetNS) -> None:
    """`cttop -b -o json | head -c 10`: the reader leaves early; cttop ends with 0, silently."""
    argv = [*cttop, "-b", "-n", "30", "-d", "0.05", "-o", "json", "--netns", table.name]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(10)
    proc.stdout.close()  # like head -c 10 exiting
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert head.startswith(b'{"time":') and len(head) == 10
    assert "Traceback" not in err and err == "", err
    assert code == 0


@pytest.mark.root
def test_broken_pipe_in_a_shell_pipeline(cttop: list[str], table: NetNS) -> None:
    args = ["-b", "-n", "30", "-d", "0.05", "-o", "json", "--netns", table.name]
    cmd = " ".join(shlex.quote(a) for a in [*cttop, *args]) + " | head -c 10"
    proc = run(["bash", "-c", f"set -o pipefail; {cmd}"])
    assert proc.stdout.startswith('{"time":') and len(proc.stdout) == 10
    assert "Traceback" not in proc.stderr and proc.stderr == "", proc.stderr
    assert proc.returncode == 0  # pipefail: cttop's own status
