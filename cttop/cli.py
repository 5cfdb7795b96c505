"""Command line: options -> source + front end. Every failure becomes one line on stderr and
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

from cttop import __version__
from cttop.conntrack.client import ConntrackClient, ConntrackError, DumpFilter
from cttop.conntrack.model import Snapshot
from cttop.fmt import (
    csv_rows,
    csv_text,
    groups_csv,
    groups_json,
    groups_text,
    sample_json,
    text_table,
)
from cttop.heap import HeapPolicy
from cttop.netlink import enter_netns
from cttop.record import RecordingError, ReplaySource, demo_source
from cttop.sampler import Sample, Sampler, StepFeed
from cttop.source import LiveSource
from cttop.view import (
    GROUP_KEYS,
    SORT_KEYS,
    ViewError,
    ViewResult,
    apply,
    kernel_filter,
    parse_filter,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A one-line message for the operator, with the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: scripts grep stderr.
        raise CliError(f"{message} (see cttop --help)", EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive factor, e.g. 2 or 0.5: {text!r}")
    return value


def _netns_name(text: str) -> str:
    if not text or "/" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"not a namespace name: {text!r} (use --netns-path for a path)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cttop",
        description="top for the Linux connection-tracking table: which flows move bytes now, "
        "how full the table is, and where NAT rewrites addresses.",
    )
    p.add_argument("-V", "--version", action="version", version=f"cttop {__version__}")
    p.add_argument(
        "-b", "--batch", action="store_true", help="batch mode: print samples instead of a UI"
    )
    p.add_argument(
        "-n",
        "--iterations",
        type=_positive_int,
        metavar="N",
        help="batch mode: stop after N samples (default: run until interrupted)",
    )
    p.add_argument(
        "-d",
        "--delay",
        type=_positive_float,
        metavar="SECONDS",
        help="seconds between samples (default 1; a replay keeps the recording's own spacing)",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "csv"),
        default="text",
        help="batch output format (default text); json is one object per line per sample",
    )
    p.add_argument("--bits", action="store_true", help="show rates in bits per second")
    p.add_argument(
        "-f",
        "--filter",
        default="",
        metavar="EXPR",
        help="show only flows matching EXPR, e.g. 'tcp state:est dport:443 not src:10.0.0.0/8'",
    )
    p.add_argument(
        "-s",
        "--sort",
        default="rate",
        metavar="KEY",
        help=f"sort key: {', '.join(SORT_KEYS)} (default rate)",
    )
    p.add_argument("-r", "--reverse", action="store_true", help="reverse the sort order")
    p.add_argument(
        "-g",
        "--group",
        default="none",
        metavar="BY",
        help=f"group rows by: {', '.join(GROUP_KEYS)} (default none)",
    )
    p.add_argument(
        "-l", "--limit", type=_positive_int, metavar="K", help="batch: at most K rows per sample"
    )
    p.add_argument("--read-only", action="store_true", help="never delete flows (disables d and D)")
    p.add_argument(
        "--keymap",
        default="",
        metavar="ID=KEYS;...",
        help="rebind keys by id (see the help screen), e.g. 'quit=ctrl+q;pause=p'",
    )
    rec = p.add_argument_group("recording and replay")
    rec.add_argument(
        "--record",
        metavar="FILE",
        help="also write every poll, as the kernel's raw netlink messages, to FILE (pcap, "
        "LINKTYPE_NETLINK; gzip-compressed if FILE ends in .gz); in the interactive view it "
        "records while you watch (R toggles); without a terminal it records quietly and prints "
        "one summary line at the end",
    )
    rec.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="stop after SECONDS (the polls at 0, d, 2d, … up to SECONDS); instead of -n",
    )
    played = rec.add_mutually_exclusive_group()
    played.add_argument(
        "--replay",
        metavar="FILE",
        help="play a recording instead of reading the kernel (no root needed)",
    )
    played.add_argument(
        "--demo",
        action="store_true",
        help="play the recording that ships with cttop (no root needed; loops in the "
        "interactive view, plays once in batch mode unless -n asks for more)",
    )
    rec.add_argument(
        "--speed",
        type=_speed,
        metavar="X",
        help="replay at X times the recorded pace (default: real time in the interactive view; "
        "batch mode prints as fast as it can unless --speed is given)",
    )
    ns = p.add_mutually_exclusive_group()
    ns.add_argument(
        "--netns",
        type=_netns_name,
        metavar="NAME",
        help="read the table of the network namespace /run/netns/NAME",
    )
    ns.add_argument(
        "--netns-path", metavar="PATH", help="read the table of the network namespace at PATH"
    )
    return p


def _enter_namespace(args: argparse.Namespace) -> None:
    path = args.netns_path or (f"/run/netns/{args.netns}" if args.netns else None)
    if path is None:
        return
    label = f"network namespace {args.netns!r}" if args.netns else f"namespace path {path}"
    try:
        enter_netns(path)
    except FileNotFoundError:
        raise CliError(f"{label} does not exist ({path} not found)") from None
    except PermissionError:
        raise CliError(f"cttop needs root or CAP_SYS_ADMIN to enter {label}") from None
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise CliError(f"{path} is not a network namespace") from None
        raise CliError(f"cannot enter {label}: {os.strerror(e.errno or errno.EIO)}") from None


def _view_rows(args: argparse.Namespace, sample: Sample) -> tuple[Any, ViewResult]:
    result = apply(
        sample.rows,
        filter=args.predicate,
        sort=args.sort,
        reverse=args.reverse,
        group=args.group,
        limit=args.limit,
    )
    return result.rows, result


def _renderer(args: argparse.Namespace) -> Callable[[Sample, bool], str]:
    grouped = args.group != "none"
    if args.output == "json":

        def as_json(sample: Sample, first: bool) -> str:
            rows, _ = _view_rows(args, sample)
            if grouped:
                return groups_json(sample, rows, args.group) + "\n"
            return sample_json(sample, rows) + "\n"

        return as_json
    if args.output == "csv":

        def as_csv(sample: Sample, first: bool) -> str:
            rows, _ = _view_rows(args, sample)
            if grouped:
                return groups_csv(sample, rows, header=first)
            return csv_text(csv_rows(sample, rows), header=first)

        return as_csv

    def as_text(sample: Sample, first: bool) -> str:
        rows, _ = _view_rows(args, sample)
        sep = "" if first else "\n"
        if grouped:
            return sep + groups_text(sample, rows, bits=args.bits)
        return sep + text_table(sample, rows, bits=args.bits)

    return as_text


def _replaying(args: argparse.Namespace) -> bool:
    return bool(args.replay is not None or args.demo)


def _check_source_options(args: argparse.Namespace) -> None:
    """Options that do not go together are usage errors; fills in the default delay."""

    def usage(message: str) -> NoReturn:
        raise CliError(f"{message} (see cttop --help)", EXIT_USAGE)

    if args.iterations is not None and args.duration is not None:
        usage("-n and --duration both say when to stop: give one")
    if _replaying(args):
        what = "--demo" if args.demo else "--replay"
        if args.netns or args.netns_path:
            usage(f"{what} plays a recording: --netns/--netns-path do not apply")
        if args.record is not None:
            usage(f"--record records the live table, not {what}")
        if args.delay is not None:
            usage(f"{what} keeps the recording's own spacing: -d does not apply, --speed does")
        if args.duration is not None:
            usage(f"--duration does not apply to {what} (use -n)")
    elif args.speed is not None:
        usage("--speed applies to --replay and --demo")
    if args.delay is None:
        args.delay = 1.0


def _replay_source(args: argparse.Namespace, loop: bool) -> ReplaySource:
    speed = args.speed or 1.0
    source = demo_source(speed, loop) if args.demo else ReplaySource(args.replay, speed, loop)
    if source.warning:
        print(f"cttop: warning: {source.warning}", file=sys.stderr)
    return source


def _polls(
    args: argparse.Namespace, source: LiveSource | ReplaySource, sampler: Sampler | None = None
) -> Iterator[tuple[Snapshot, StepFeed | None]]:
    """The snapshots of a batch run, paced, until -n / --duration / the end of a recording;
    each with the `sampler`'s feed it was given while its dump arrived (live table only)."""
    limit = args.iterations
    if isinstance(source, ReplaySource):
        # The output does not depend on the pace (times come from the file): a script gets it
        # at once, unless --speed asks for the recording's pace.
        due = time.monotonic()
        i = 0
        while (limit is None or i < limit) and not source.at_end:
            if i and args.speed is not None:
                due += source.delay()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield source.snapshot(), None
            i += 1
        return
    if args.duration is not None:
        limit = math.floor(args.duration / args.delay + 1e-9) + 1
    i = 0
    start = time.monotonic()
    while limit is None or i < limit:
        if i:
            # Keep the cadence: a slow dump shortens the sleep instead of adding to it.
            wait = start + i * args.delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        fed = sampler.feed() if sampler is not None else None
        snapshot = source.snapshot(feed=fed)
        if source.recording_error is not None:
            raise CliError(str(source.recording_error))
        yield snapshot, fed
        i += 1


def _live_source(args: argparse.Namespace) -> LiveSource:
    """The kernel's table, recording to --record FILE if given. Permission and kernel errors
    come out here as one line, before a recording file is made or the screen changes."""
    # Terms of --filter the kernel understands (family, mark, zone) shrink the dump itself.
    client = ConntrackClient(DumpFilter(**kernel_filter(args.filter)))
    try:
        client.probe()
        source = LiveSource(client)
        if args.record is not None:
            source.start_recording(args.record)
    except BaseException:
        client.close()
        raise
    return source


def _source(args: argparse.Namespace, loop: bool) -> LiveSource | ReplaySource:
    return _replay_source(args, loop) if _replaying(args) else _live_source(args)


def run_batch(args: argparse.Namespace, out: TextIO) -> int:
    render = _renderer(args)
    sampler = Sampler()
    heap = HeapPolicy()
    heap.before_poll()
    # A demo plays once, or loops when -n asks for more polls than it holds.
    with _source(args, loop=args.demo and args.iterations is not None) as source:
        for i, (snapshot, fed) in enumerate(_polls(args, source, sampler)):
            sample = sampler.step(snapshot, fed)
            out.write(render(sample, i == 0))
            out.flush()
            heap.after_poll()
            heap.before_poll()  # collections stay off while the next poll builds its table
    return EXIT_OK


def run_record(args: argparse.Namespace) -> int:
    """`--record FILE` without -b: record quietly until -n/--duration or Ctrl-C (the file is
    whole either way), then one summary line on stderr."""
    with _live_source(args) as source:
        recorder = source.recorder
        assert recorder is not None
        try:
            for _ in _polls(args, source):
                pass
        except KeyboardInterrupt:
            pass  # the way to end an open-ended recording, like tcpdump -w
        source.stop_recording()
    size = os.path.getsize(recorder.path) if os.path.exists(recorder.path) else 0
    polls, flows = recorder.polls, recorder.last_flows
    print(
        f"cttop: recorded {polls} poll{'s' if polls != 1 else ''} "
        f"({flows} flow{'s' if flows != 1 else ''} in the last) "
        f"to {recorder.path} ({size / 1e6:.1f} MB)",
        file=sys.stderr,
    )
    return EXIT_OK


def _parse_keymap(text: str) -> dict[str, str]:
    keymap: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        bid, sep, keys = item.partition("=")
        if not sep or not bid.strip() or not keys.strip():
            raise CliError(f"--keymap: expected ID=KEYS, got {item!r}", EXIT_USAGE)
        keymap[bid.strip()] = keys.strip()
    return keymap


def _check_view_options(args: argparse.Namespace) -> None:
    """Bad --filter/--sort/--group are usage errors, reported before anything starts."""
    try:
        args.predicate = parse_filter(args.filter) if args.filter.strip() else None
        apply([], filter=args.predicate, sort=args.sort, group=args.group)
    except ViewError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def run_tui(args: argparse.Namespace) -> int:
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise CliError("the interactive view needs a terminal; use -b for batch output", EXIT_USAGE)
    from cttop.tui.app import CttopApp, ViewSettings

    source = _source(args, loop=args.demo)
    if args.demo:
        label = "demo"
    elif args.replay:
        label = f"replay {os.path.basename(args.replay)}"
    else:
        where = f" · netns {args.netns or args.netns_path}" if args.netns or args.netns_path else ""
        label = f"{socket.gethostname()}{where} · kernel {os.uname().release}"
    settings = ViewSettings(
        expr=args.filter.strip(), sort=args.sort, reverse=args.reverse, group=args.group
    )
    app = CttopApp(
        source,
        interval=args.delay,
        settings=settings,
        read_only=args.read_only,
        keymap=_parse_keymap(args.keymap),
        label=label,
    )
    try:
        app.run()
    finally:
        source.close()
    return app.return_code or EXIT_OK


def run(argv: Sequence[str] | None, out: TextIO) -> int:
    args = build_parser().parse_args(argv)
    _check_view_options(args)
    _check_source_options(args)
    _parse_keymap(args.keymap)
    _enter_namespace(args)
    try:
        if args.batch:
            return run_batch(args, out)
        if args.record is not None and not (sys.stdout.isatty() and sys.stdin.isatty()):
            return run_record(args)  # no terminal: record quietly, like tcpdump -w
        return run_tui(args)
    except (ConntrackError, RecordingError) as e:
        raise CliError(str(e)) from None


def one_line(text: str) -> str:
    """Control characters from the operator's own input (a name with a newline in it) must not
    break the one-line error contract: show them escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv, sys.stdout)
    except CliError as e:
        print(f"cttop: {one_line(str(e))}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`cttop -b | head`): not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
