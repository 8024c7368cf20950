"""Files that let operators see inside a running server: the state directory, per-worker stats, pid file.

Standard library only: the gunicorn master (gunicorn.conf.py hooks) and the CLI import this module, and
neither may import the database, Redis or socket libraries before the workers fork and monkey-patch.

Layout under STATE_DIR:
    workers/<pid>.json   one worker's figures, rewritten atomically every few seconds by that worker
    metrics/             prometheus-client multiprocess files (PROMETHEUS_MULTIPROC_DIR)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

STATS_INTERVAL = 2.0


def workers_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "workers"


def metrics_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "metrics"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (zombies included; EPERM means it exists as another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pidfile(path: str | Path) -> int | None:
    """The pid in the file, or None when the file is missing, empty or not a pid."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def running_pid(path: str | Path) -> tuple[int | None, int | None]:
    """(live master pid, stale pid): a pid file naming a dead process is stale."""
    pid = read_pidfile(path)
    if pid is None:
        return None, None
    if pid_alive(pid) and not is_zombie(pid) and _is_gunicorn(pid):
        return pid, None
    return None, pid


def _is_gunicorn(pid: int) -> bool:
    """Whether the pid still belongs to a gunicorn master: a pid file under var/ outlives a reboot, and its pid
    may be reused by an unrelated process. True where /proc cannot tell."""
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def remove_stale_pidfile(path: str | Path, pid: int) -> bool:
    """Remove the pid file only if it still names `pid` (never a file a new master just wrote)."""
    if read_pidfile(path) != pid:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, then rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process, from /proc (0 where /proc is not available)."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def read_worker_stats(state_dir: str | Path, master: int | None = None) -> list[dict[str, Any]]:
    """Figures of the live workers (of `master`, when given), by pid; files of dead workers are removed."""
    out = []
    directory = workers_dir(state_dir)
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pid_alive(pid) or is_zombie(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if master is not None and data.get("master") != master:
            continue
        out.append(data)
    return sorted(out, key=lambda d: d["pid"])


def forget_worker(state_dir: str | Path, pid: int) -> None:
    """A worker exited: drop its stats file (called by the master, so crashed workers are covered too)."""
    with contextlib.suppress(OSError):
        (workers_dir(state_dir) / f"{pid}.json").unlink()


def prepare_state_dir(state_dir: str | Path) -> Path:
    """Called by a starting master: fresh metrics files, no stats of dead workers. Returns the metrics dir."""
    metrics = metrics_dir(state_dir)
    if metrics.exists():
        shutil.rmtree(metrics)
    metrics.mkdir(parents=True)
    workers_dir(state_dir).mkdir(parents=True, exist_ok=True)
    read_worker_stats(state_dir)  # removes files of dead pids
    return metrics


INSTANCE_FILE = "instance.json"


def write_instance(state_dir: str | Path, record: dict[str, Any]) -> None:
    """A master's address and files, for `status` (which finds every instance of a folder by these files)."""
    write_json_atomic(Path(state_dir) / INSTANCE_FILE, record)


def read_instance(state_dir: str | Path) -> dict[str, Any] | None:
    """The record of the master that last started with this state dir, if it is still running."""
    try:
        record = json.loads((Path(state_dir) / INSTANCE_FILE).read_text())
        pid = int(record["pid"])
        pidfile = record["pidfile"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if running_pid(pidfile)[0] != pid:
        return None
    record["state_dir"] = str(state_dir)
    return record


def describe_uptime(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else f"{hours:02d}:{minutes:02d}:{secs:02d}"
