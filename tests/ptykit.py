"""Running cttop on a real pseudo-terminal, as an operator's SSH session would: for the tests
that need a real terminal (SIGHUP, NO_COLOR, what the app leaves behind on the screen).

    run = PtyRun([sys.executable, "-m", "cttop", "--demo"], env)
    run.wait_for(b"cttop", timeout=20)    # the first frame is on screen
    run.kill(signal.SIGHUP)
    run.finish(timeout=3)                 # output, exit status, seconds to exit
    run.close()

The child gets the pty as its controlling terminal (pty.fork: a session of its own), so closing
the master side (`hang_up`) is a real hangup: the kernel sends SIGHUP and terminal I/O fails.
Every loop here is bounded in time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping, Sequence


class PtyRun:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cols: int = 120,
        rows: int = 36,
        cwd: str | None = None,
    ) -> None:
        self.output = bytearray()
        self.status: int | None = None  # os.waitstatus_to_exitcode: -N for signal N
        self.exited_at: float | None = None
        pid, fd = pty.fork()
        if pid == 0:  # the child: never returns
            try:
                fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                if cwd is not None:
                    os.chdir(cwd)
                os.execvpe(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        self.pid = pid
        self.fd: int | None = fd
        self.modes_before = self.modes()

    def modes(self) -> list[object] | None:
        """The terminal's termios settings (through the master: they are the slave's)."""
        if self.fd is None:
            return None
        try:
            return termios.tcgetattr(self.fd)
        except termios.error:
            return None

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False at EOF (the child closed the pty)."""
        if self.fd is None:
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 1 << 16)
        except OSError:  # EIO: every slave side is closed
            return False
        if not data:
            return False
        self.output += data
        return True

    def _reap(self) -> bool:
        if self.status is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.status = os.waitstatus_to_exitcode(status)
        self.exited_at = time.monotonic()
        return True

    def wait_for(self, needle: bytes, timeout: float) -> bool:
        """Read until `needle` has been output (True), the child ended, or the time is up."""
        deadline = time.monotonic() + timeout
        while needle not in self.output and time.monotonic() < deadline:
            if not self._read(0.05) or self._reap():
                self._read(0)
                break
        return needle in self.output

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)

    def resize(self, cols: int, rows: int) -> None:
        assert self.fd is not None
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGWINCH)

    def kill(self, sig: int) -> float:
        os.kill(self.pid, sig)
        return time.monotonic()

    def hang_up(self) -> float:
        """Close the master side, as sshd does when the connection dies."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return time.monotonic()

    def finish(self, timeout: float) -> bool:
        """Read the rest and reap the child; True if it exited within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self._read(0.05)
            if self._reap():
                while self._read(0.05):  # what it wrote before exiting
                    if len(self.output) > 1 << 26:
                        break
                return True
            if not alive or self.fd is None:  # nothing to wait on: do not spin
                time.sleep(0.02)
        return self._reap()

    def close(self) -> None:
        """Kill the child if it still runs, reap it, close the pty. Idempotent."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self.pid, 0)
                self.status = os.waitstatus_to_exitcode(status)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> PtyRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")
