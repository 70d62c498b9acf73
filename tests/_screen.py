"""What a person sees: run a command under a pseudo-terminal of a given size (as in an 80-column
terminal window) and replay its output on a small screen model, or run it with its output
piped to a file (as under ``sbatch``). Used by tests/test_first_hour.py.

The screen model knows what tqdm, rich and Lightning write: printable text, ``\\r``, ``\\n``,
backspace, and the CSI sequences for cursor movement and erasing (``ESC [ n A/B/C/D/G/K/J``);
colours and other CSI sequences are dropped. A line longer than the terminal wraps, as a
terminal wraps it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence

_CSI = re.compile(rb"\x1b\[([0-9;?]*)([@-~])|\x1b[()][0-9A-B]|\x1b[=>78]|\x1b\][^\x07]*\x07")


def run_in_terminal(
    argv: Sequence[str],
    *,
    cols: int = 80,
    rows: int = 24,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 240,
) -> tuple[int, bytes]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal of ``cols`` x ``rows``;
    returns its exit status and every byte it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = dict(os.environ if env is None else env)
    env.update(COLUMNS=str(cols), LINES=str(rows), TERM="xterm")
    proc = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise TimeoutError(f"{argv} ran over {timeout} s; its output:\n{out[-3000:]!r}")
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=30), bytes(out)


class Screen:
    """The lines a terminal of ``cols`` columns shows after ``data`` is written to it (all of
    them, scrolled-off ones included)."""

    def __init__(self, data: bytes, cols: int = 80) -> None:
        self.cols = cols
        self.lines: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.longest_write = 0
        self._feed(data.decode("utf-8", errors="replace").encode("utf-8"))

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def _put(self, ch: str) -> None:
        if self.col >= self.cols:  # wrap, as a terminal does
            self.row += 1
            self.col = 0
        line = self._line()
        while len(line) < self.col:
            line.append(" ")
        if self.col < len(line):
            line[self.col] = ch
        else:
            line.append(ch)
        self.col += 1

    def _feed(self, data: bytes) -> None:
        text_start = 0
        for m in _CSI.finditer(data):
            self._text(data[text_start : m.start()].decode("utf-8", errors="replace"))
            text_start = m.end()
            if m.group(2) is None:
                continue
            args = [int(a) if a.isdigit() else 0 for a in m.group(1).decode().split(";")]
            n = max(1, args[0]) if args else 1
            op = m.group(2)
            if op == b"A":
                self.row = max(0, self.row - n)
            elif op == b"B":
                self.row += n
            elif op == b"C":
                self.col = min(self.cols - 1, self.col + n)
            elif op == b"D":
                self.col = max(0, self.col - n)
            elif op == b"G":
                self.col = min(self.cols - 1, n - 1)
            elif op == b"K":
                line = self._line()
                mode = args[0] if args else 0
                if mode == 0:
                    del line[self.col :]
                elif mode == 2:
                    line.clear()
                else:
                    for i in range(min(self.col + 1, len(line))):
                        line[i] = " "
            elif op == b"J":
                mode = args[0] if args else 0
                if mode == 0:
                    del self._line()[self.col :]
                    del self.lines[self.row + 1 :]
        self._text(data[text_start:].decode("utf-8", errors="replace"))

    def _text(self, text: str) -> None:
        for ch in text:
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0
                self._line()
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch == "\t":
                for _ in range(8 - self.col % 8):
                    self._put(" ")
            elif ch >= " " or ch == "\x1b":
                if ch != "\x1b":
                    self._put(ch)

    def text(self) -> list[str]:
        """Every line, trailing blanks removed."""
        return ["".join(line).rstrip() for line in self.lines]

    def __str__(self) -> str:
        return "\n".join(self.text())


def frames(data: bytes) -> list[str]:
    """Every state a progress bar's line passed through: the text between two ``\\r`` or
    ``\\n`` (escape sequences removed), so a test can find the bar's look at any moment."""
    text = _CSI.sub(b"", data).decode("utf-8", errors="replace")
    return [f for f in re.split(r"[\r\n]", text) if f.strip()]
