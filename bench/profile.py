"""Sampling profiles of the server under load (py-spy, no code change in the service) and their summary.

`python -m bench latency --profile DIR` records every worker during the measured interval into
DIR/<scenario>-<pid>.txt (collapsed stacks); `python -m bench.profile DIR/file.txt` prints where the time goes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


class Recorder:
    """py-spy on each worker pid for `seconds`, at 250 Hz, without pausing the worker."""

    def __init__(self, directory: str | None, label: str, pids: list[int], seconds: float) -> None:
        self.procs: list[subprocess.Popen] = []
        self.files: list[Path] = []
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not directory or not Path(spy).exists():
            return
        Path(directory).mkdir(parents=True, exist_ok=True)
        for pid in pids:
            out = Path(directory) / f"{label}-{pid}.txt"
            self.files.append(out)
            self.procs.append(subprocess.Popen(
                [spy, "record", "--nonblocking", "-r", "250", "-f", "raw", "-d", str(max(1, int(seconds))),
                 "-p", str(pid), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def wait(self) -> list[Path]:
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return self.files


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarize(path: str | Path, top: int = 25) -> str:
    """Self time per function and inclusive time of the hottest frames, as % of samples."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        total += n
        if frames and ("run (gevent/" in frames[-1] or "_wait" in frames[-1] or "poll" in frames[-1]):
            idle += n
        if frames:
            self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{path}: {total} samples"]
    lines.append("self time:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarize(arg))
