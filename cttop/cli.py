"""Command line: options -> source + front end. Every failure becomes one line on stderr and
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from cttop import __version__
from cttop.conntrack.client import ConntrackClient, ConntrackError
from cttop.fmt import csv_rows, csv_text, sample_json, text_table
from cttop.netlink import enter_netns
from cttop.sampler import Sample, Sampler

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
        default=1.0,
        metavar="SECONDS",
        help="seconds between samples (default 1)",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "csv"),
        default="text",
        help="batch output format (default text); json is one object per line per sample",
    )
    p.add_argument("--bits", action="store_true", help="show rates in bits per second")
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


def _renderer(args: argparse.Namespace) -> Callable[[Sample, bool], str]:
    if args.output == "json":
        return lambda sample, first: sample_json(sample) + "\n"
    if args.output == "csv":
        return lambda sample, first: csv_text(csv_rows(sample), header=first)

    def text(sample: Sample, first: bool) -> str:
        return ("" if first else "\n") + text_table(sample, bits=args.bits)

    return text


def run_batch(args: argparse.Namespace, out: TextIO) -> int:
    render = _renderer(args)
    sampler = Sampler()
    with ConntrackClient() as client:
        i = 0
        start = time.monotonic()
        while args.iterations is None or i < args.iterations:
            if i:
                # Keep the cadence: a slow dump shortens the sleep instead of adding to it.
                wait = start + i * args.delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            sample = sampler.step(client.snapshot())
            out.write(render(sample, i == 0))
            out.flush()
            i += 1
    return EXIT_OK


def run(argv: Sequence[str] | None, out: TextIO) -> int:
    args = build_parser().parse_args(argv)
    if not args.batch:
        raise CliError(
            "the interactive view is not available in this build yet; use -b for batch output",
            EXIT_USAGE,
        )
    _enter_namespace(args)
    try:
        return run_batch(args, out)
    except ConntrackError as e:
        raise CliError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv, sys.stdout)
    except CliError as e:
        print(f"cttop: {e}", file=sys.stderr)
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
