"""Progress of long work (migration back-fills, demo-data, long reports): a bar with counts and rate on a
terminal, a plain line every few seconds otherwise (log files, CI), nothing when nobody asked."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`advance(n)` as work is done, `done()` at the end. Writes to `stream` (stderr by default)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, every: float = 5.0,
                 enabled: bool = True) -> None:
        self.label, self.total, self.count = label, max(total, 0), 0
        self.stream = stream or sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.enabled, self.every = enabled, (0.2 if self.tty else every)
        self.started = self.last = time.monotonic()

    @classmethod
    def silent(cls, label: str, total: int) -> Progress:
        return cls(label, total, enabled=False)

    @classmethod
    def to_stderr(cls, label: str, total: int) -> Progress:
        return cls(label, total)

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self._write(now, final=False)

    def done(self) -> None:
        if self.enabled:
            self._write(time.monotonic(), final=True)

    def _write(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.count / elapsed
        of = f"/{self.total:,}" if self.total else ""
        figures = f"{self.count:,}{of} ({rate:,.0f}/s, {elapsed:.1f} s)"
        if self.tty:
            bar = ""
            if self.total:
                filled = int(30 * min(self.count / self.total, 1))
                bar = "[" + "#" * filled + "." * (30 - filled) + "] "
            self.stream.write(f"\r{self.label}: {bar}{figures}" + ("\n" if final else ""))
        else:
            self.stream.write(f"{self.label}: {figures}{' done' if final else ''}\n")
        self.stream.flush()
