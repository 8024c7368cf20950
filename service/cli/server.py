"""`start [-d] | stop | restart | reload | status [--json]`: run the server as the legacy `php ... start` did.

Built on gunicorn itself: `start` runs `gunicorn -c gunicorn.conf.py wsgi:app` (with `--daemon` for `-d`),
gunicorn writes the pid file (atomically) and handles the signals; these commands read that pid file and
send TERM (stop) or HUP (reload). Exit codes follow the LSB init-script conventions: 0 success (including
`start` when already running and `stop` when not running), 1 failure, 3 `status` not running, 7 `reload`
when not running; `status` answers 1 when it found (and removed) a stale pid file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import PROJECT_ROOT, Settings, serving_problems
from ..ops import state
from . import Context, cli, pass_context

GUNICORN_CONF = PROJECT_ROOT / "gunicorn.conf.py"
APP = "wsgi:app"
NAME = "chat-service"
EXIT_NOT_RUNNING = 3  # LSB: status of a program that is not running
EXIT_RELOAD_NOT_RUNNING = 7  # LSB: any other action on a program that is not running
START_TIMEOUT = 30.0
STOP_MARGIN = 5.0


def gunicorn_command(daemon: bool, settings: Settings) -> list[str]:
    """The gunicorn command line `start` runs (the docs show the same for systemd and by hand)."""
    command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--chdir", str(PROJECT_ROOT)]
    if daemon:
        command += ["--daemon", "--error-logfile", settings.logfile, "--capture-output"]
    return [*command, APP]


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def master_pid(settings: Settings) -> int | None:
    """The running master's pid; a stale pid file is removed (and said so)."""
    pid, stale = state.running_pid(settings.pidfile)
    if stale is not None and state.remove_stale_pidfile(settings.pidfile, stale):
        click.echo(f"{NAME}: removed stale pid file {settings.pidfile} (pid {stale} is not running)", err=True)
    return pid


def live_workers(settings: Settings, master: int) -> list[dict[str, Any]]:
    return state.read_worker_stats(settings.state_dir, master=master)


def log_tail(settings: Settings, lines: int = 15) -> str:
    try:
        return "\n".join(Path(settings.logfile).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log file)"


def start_daemon(settings: Settings) -> int:
    """Start gunicorn with --daemon and wait until the master wrote its pid file and every worker reports."""
    result = subprocess.run(gunicorn_command(True, settings), cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        click.echo(f"{NAME}: gunicorn exited with {result.returncode}", err=True)
        click.echo((result.stderr or result.stdout).strip(), err=True)
        return 1

    pid = wait_until_serving(settings)
    if pid is None:
        click.echo(f"{NAME}: did not come up; last lines of {settings.logfile}:", err=True)
        click.echo(log_tail(settings), err=True)
        return 1
    click.echo(f"{NAME} started (pid {pid}), listening on {settings.websocket_host}:{settings.websocket_port}, "
               f"{settings.worker_count} worker(s), log {settings.logfile}")
    return 0


def wait_until_serving(settings: Settings) -> int | None:
    """The master's pid once every worker reports; None on timeout or when the master died (port in use...)."""
    deadline = time.monotonic() + START_TIMEOUT
    seen: int | None = None
    while time.monotonic() < deadline:
        pid, _ = state.running_pid(settings.pidfile)
        if pid is None and seen is not None:
            return None
        if pid is not None:
            seen = pid
            if len(live_workers(settings, pid)) >= settings.worker_count:
                return pid
        time.sleep(0.1)
    return None


def stop_master(settings: Settings, pid: int) -> int:
    """TERM the master (graceful: clients get 1001), wait for it to go, report."""
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        click.echo(f"{NAME} is not running")
        return 0
    limit = settings.graceful_timeout + STOP_MARGIN

    def gone() -> bool:
        # A master started by our own parent stays a zombie until reaped: that counts as gone.
        return state.running_pid(settings.pidfile)[0] != pid and (not state.pid_alive(pid) or state.is_zombie(pid))

    if not wait_for(gone, limit, 0.05):
        click.echo(f"{NAME}: pid {pid} did not stop within {limit:.0f}s (kill -KILL {pid} to force it)", err=True)
        return 1
    click.echo(f"{NAME} stopped (pid {pid}) in {time.monotonic() - started:.1f}s")
    return 0


@cli.command()
@click.option("-d", "--daemon", is_flag=True, help="Run in the background (pid file PIDFILE, log LOGFILE).")
@pass_context
def start(ctx: Context, daemon: bool) -> None:
    """Start the server (in the foreground, logging to the terminal, unless -d)."""
    settings = ctx.settings
    pid = master_pid(settings)
    if pid is not None:
        click.echo(f"{NAME} is already running (pid {pid})")
        sys.exit(0)
    if daemon:
        sys.exit(start_daemon(settings))
    command = gunicorn_command(False, settings)
    os.chdir(PROJECT_ROOT)
    os.execv(command[0], command)


@cli.command()
@pass_context
def stop(ctx: Context) -> None:
    """Stop gracefully: finish messages in flight, close every WebSocket with 1001, wait for the exit."""
    settings = ctx.settings
    pid = master_pid(settings)
    if pid is None:
        click.echo(f"{NAME} is not running")
        sys.exit(0)
    sys.exit(stop_master(settings, pid))


@cli.command()
@pass_context
def restart(ctx: Context) -> None:
    """Stop (clients get 1001 and reconnect), then start in the background."""
    settings = ctx.settings
    pid = master_pid(settings)
    if pid is not None:
        code = stop_master(settings, pid)
        if code:
            sys.exit(code)
    sys.exit(start_daemon(settings))


@cli.command()
@pass_context
def reload(ctx: Context) -> None:
    """Replace the workers (new code and settings) without closing the port (gunicorn HUP)."""
    settings = ctx.settings
    pid = master_pid(settings)
    if pid is None:
        click.echo(f"{NAME} is not running")
        sys.exit(EXIT_RELOAD_NOT_RUNNING)
    problems = serving_problems(settings)
    if problems:
        # gunicorn re-reads gunicorn.conf.py on HUP, and a refusal there would stop the running master.
        click.echo(f"{NAME}: not reloading: {problems[0]}", err=True)
        sys.exit(1)
    old = {w["pid"] for w in live_workers(settings, pid)}
    os.kill(pid, signal.SIGHUP)

    def replaced() -> list[int] | None:
        pids = {w["pid"] for w in live_workers(settings, pid)}
        fresh = pids - old
        return sorted(fresh) if len(fresh) >= settings.worker_count and not pids & old else None

    new = wait_for(replaced, settings.graceful_timeout + START_TIMEOUT)
    if not new:
        click.echo(f"{NAME}: workers were not replaced in time; last lines of the log:", err=True)
        click.echo(log_tail(settings), err=True)
        sys.exit(1)
    click.echo(f"{NAME} reloaded (pid {pid}): workers {', '.join(map(str, sorted(old))) or '-'} -> "
               f"{', '.join(map(str, new))}")
    sys.exit(0)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Is it running, and each worker's connections, users, sessions, messages, memory and uptime."""
    settings = ctx.settings
    pid, stale = state.running_pid(settings.pidfile)
    if pid is None:
        removed = stale is not None and state.remove_stale_pidfile(settings.pidfile, stale)
        if as_json:
            click.echo(json.dumps({"running": False, "stale_pid": stale if removed else None}))
        else:
            click.echo(f"{NAME} is not running"
                       + (f" (removed stale pid file {settings.pidfile} of pid {stale})" if removed else ""))
        sys.exit(1 if removed else EXIT_NOT_RUNNING)
    report = status_report(settings, pid)
    click.echo(json.dumps(report, indent=2) if as_json else render_status(report))
    sys.exit(0)


FIGURES = ("connections", "authenticated", "users", "joined", "messages_in", "messages_out", "stored", "rss_bytes")


def status_report(settings: Settings, pid: int) -> dict[str, Any]:
    now = time.time()
    workers = [w for w in live_workers(settings, pid) if "started_at" in w and "updated_at" in w]
    for worker in workers:
        for name in FIGURES:
            worker.setdefault(name, 0)
        worker.setdefault("node_id", "")
        worker["uptime_seconds"] = round(now - worker["started_at"], 1)
        worker["age_seconds"] = round(now - worker["updated_at"], 1)
    totals = {name: sum(w.get(name, 0) for w in workers) for name in FIGURES}
    totals["workers"] = len(workers)
    totals["rss_bytes"] += state.rss_bytes(pid)  # the master's memory too
    return {
        "running": True,
        "master": {
            "pid": pid,
            "started_at": _process_start(pid),
            "uptime_seconds": round(now - _process_start(pid), 1),
            "rss_bytes": state.rss_bytes(pid),
        },
        "listen": f"{settings.websocket_host}:{settings.websocket_port}",
        "workers_configured": settings.worker_count,
        "workers": workers,
        "totals": totals,
    }


def _process_start(pid: int) -> float:
    """When the process started (Linux /proc), else now."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}M"


def render_status(report: dict[str, Any]) -> str:
    """The Workerman-style table: one line per worker, then the totals."""
    master = report["master"]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(master["started_at"]))
    lines = [
        f"{NAME} running  master pid {master['pid']}  started {started}  "
        f"up {state.describe_uptime(master['uptime_seconds'])}",
        f"listen {report['listen']}  workers {len(report['workers'])}/{report['workers_configured']}  "
        f"master memory {_mb(master['rss_bytes'])}",
        "",
    ]
    header = ("pid", "connections", "auth", "users", "joined", "msg_in", "msg_out", "stored", "memory", "uptime",
              "updated", "node")
    rows = []
    for w in report["workers"]:
        rows.append((str(w["pid"]), str(w["connections"]), str(w["authenticated"]), str(w["users"]),
                     str(w["joined"]), str(w["messages_in"]), str(w["messages_out"]), str(w["stored"]),
                     _mb(w["rss_bytes"]), state.describe_uptime(w["uptime_seconds"]),
                     f"{w['age_seconds']:.0f}s ago" + (" stopping" if w.get("stopping") else ""), w["node_id"]))
    t = report["totals"]
    rows.append(("total", str(t["connections"]), str(t["authenticated"]), str(t["users"]), str(t["joined"]),
                 str(t["messages_in"]), str(t["messages_out"]), str(t["stored"]), _mb(t["rss_bytes"]), "", "", ""))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    lines.append(fmt(header))
    lines.extend(fmt(r) for r in rows)
    lines.append("")
    lines.append("auth = authenticated connections, users = distinct users per worker, joined = connections in a "
                 "session, msg_in/out = frames received/sent, stored = messages stored; figures refresh every "
                 f"{state.STATS_INTERVAL:.0f}s")
    return "\n".join(lines)
