"""`start [-d] | stop | restart | reload | status [--json]`: run the server as the legacy `php ... start` did.

Built on gunicorn itself: `start` runs `gunicorn -c gunicorn.conf.py wsgi:app` (with `--daemon` for `-d`),
gunicorn writes the pid file (atomically) and handles the signals; these commands read that pid file and
send TERM (stop) or HUP (reload). Exit codes follow the LSB init-script conventions: 0 success (including
`start` when already running and `stop` when not running), 1 failure, 3 `status` not running, 7 `reload`
when not running; `status` answers 1 when it found (and removed) a stale pid file.
"""

from __future__ import annotations

import glob
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

from ..config import PROJECT_ROOT, ControlSettings, Settings, serving_problems
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


def named(port: int | None) -> str:
    """`chat-service on port 2346`: every message about one instance says which (several share a folder)."""
    return f"{NAME} on port {port}" if port is not None else NAME


def master_pid(pidfile: str, port: int | None) -> int | None:
    """The running master's pid; a stale pid file is removed (and said so)."""
    pid, stale = state.running_pid(pidfile)
    if stale is not None and state.remove_stale_pidfile(pidfile, stale):
        click.echo(f"{named(port)}: removed stale pid file {pidfile} (pid {stale} is not running)", err=True)
    return pid


def live_workers(state_dir: str, master: int) -> list[dict[str, Any]]:
    return state.read_worker_stats(state_dir, master=master)


def log_tail(logfile: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(logfile).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log file)"


def probe_readiness(host: str, port: int, ssl: bool, timeout: float = 2.0) -> tuple[int | None, dict[str, Any]]:
    """GET /readyz of one instance: (HTTP status, body); (None, {"error": ...}) when it does not answer."""
    import http.client

    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ssl:
        import ssl as tls

        context = tls.create_default_context()
        context.check_hostname = False
        context.verify_mode = tls.CERT_NONE  # our own server, on this host: the check is of readiness, not TLS
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(target, port, timeout=timeout,
                                                                        context=context)
    else:
        conn = http.client.HTTPConnection(target, port, timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"error": raw[:200].decode("utf-8", "replace")}
        return response.status, body if isinstance(body, dict) else {"error": str(body)}
    except (OSError, http.client.HTTPException) as exc:
        return None, {"error": f"no answer on {target}:{port} ({exc.__class__.__name__}: {exc})"}
    finally:
        conn.close()


def not_ready_reason(body: dict[str, Any]) -> str:
    """One line from a /readyz answer: `database: OperationalError 1049: Unknown database 'chat'`."""
    if "error" in body:
        return str(body["error"])
    reasons = body.get("reasons") or {}
    checks = body.get("checks") or {}
    parts = [f"{name}: {reasons.get(name, value)}" for name, value in checks.items() if value != "ok"]
    return "; ".join(parts) or "not ready"


def start_daemon(settings: Settings, timeout: float) -> int:
    """Start gunicorn with --daemon; wait until every worker reports and /readyz says ready (database, Redis).

    Not ready within `timeout`: say why (the database's own error), stop the server and fail, so that a
    service that can never work is not reported as started."""
    port = settings.websocket_port
    result = subprocess.run(gunicorn_command(True, settings), cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        click.echo(f"{named(port)}: gunicorn exited with {result.returncode}", err=True)
        click.echo((result.stderr or result.stdout).strip(), err=True)
        return 1

    deadline = time.monotonic() + timeout
    pid = wait_until_serving(settings, timeout)
    if pid is None:
        click.echo(f"{named(port)}: did not come up; last lines of {settings.logfile}:", err=True)
        click.echo(log_tail(settings.logfile), err=True)
        return 1
    answer: list[tuple[int | None, dict[str, Any]]] = []

    def ready() -> bool:
        answer[:] = [probe_readiness(settings.websocket_host, port, settings.websocket_ssl)]
        return answer[0][0] == 200

    if not wait_for(ready, max(0.0, deadline - time.monotonic()), 0.2):
        click.echo(f"{named(port)}: not ready after {timeout:g}s: {not_ready_reason(answer[0][1])}", err=True)
        click.echo(f"{named(port)}: stopping it (pid {pid}); `start -d --timeout SECONDS` waits longer", err=True)
        stop_master(settings.pidfile, port, settings.graceful_timeout, pid, quiet=True)
        return 1
    click.echo(f"{named(port)} started (pid {pid}), listening on {settings.websocket_host}:{port}, "
               f"{settings.worker_count} worker(s), ready, log {settings.logfile}")
    return 0


def wait_until_serving(settings: Settings, timeout: float) -> int | None:
    """The master's pid once every worker reports; None on timeout or when the master died (port in use...)."""
    deadline = time.monotonic() + timeout
    seen: int | None = None
    while time.monotonic() < deadline:
        pid, _ = state.running_pid(settings.pidfile)
        if pid is None and seen is not None:
            return None
        if pid is not None:
            seen = pid
            if len(live_workers(settings.state_dir, pid)) >= settings.worker_count:
                return pid
        time.sleep(0.1)
    return None


def stop_master(pidfile: str, port: int | None, graceful_timeout: float, pid: int, quiet: bool = False) -> int:
    """TERM the master (graceful: clients get 1001), wait for it to go, report."""
    started = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        click.echo(f"{named(port)} is not running")
        return 0
    limit = graceful_timeout + STOP_MARGIN

    def gone() -> bool:
        # A master started by our own parent stays a zombie until reaped: that counts as gone.
        return state.running_pid(pidfile)[0] != pid and (not state.pid_alive(pid) or state.is_zombie(pid))

    if not wait_for(gone, limit, 0.05):
        click.echo(f"{named(port)}: pid {pid} did not stop within {limit:.0f}s (kill -KILL {pid} to force it)",
                   err=True)
        return 1
    if not quiet:
        click.echo(f"{named(port)} stopped (pid {pid}) in {time.monotonic() - started:.1f}s")
    return 0


TIMEOUT_OPTION = click.option(
    "--timeout", type=click.FloatRange(1, 3600), default=START_TIMEOUT, show_default=True,
    help="Seconds to wait for the workers and for /readyz (database, Redis); not ready by then: stop, exit 1.",
)


@cli.command()
@click.option("-d", "--daemon", is_flag=True,
              help="Run in the background (pid file PIDFILE, log LOGFILE); wait until ready.")
@TIMEOUT_OPTION
@pass_context
def start(ctx: Context, daemon: bool, timeout: float) -> None:
    """Start the server (in the foreground, logging to the terminal, unless -d)."""
    settings = ctx.settings
    pid = master_pid(settings.pidfile, settings.websocket_port)
    if pid is not None:
        click.echo(f"{named(settings.websocket_port)} is already running (pid {pid}); pid file {settings.pidfile}")
        sys.exit(0)
    if daemon:
        sys.exit(start_daemon(settings, timeout))
    command = gunicorn_command(False, settings)
    os.chdir(PROJECT_ROOT)
    os.execv(command[0], command)


def control_target(ctx: Context) -> tuple[str, int | None]:
    """(pid file, port) of the instance this command is about, from the control settings only."""
    control = ctx.control
    if control.pidfile is None:
        running = ", ".join(f"{r['port']} (pid {r['pid']})" for r in find_instances(control)) or "none"
        raise click.ClickException(f"configuration error: {control.problem}; instances running: {running}; "
                                   "fix the value or set WEBSOCKET_PORT for this command")
    return control.pidfile, control.websocket_port


@cli.command()
@pass_context
def stop(ctx: Context) -> None:
    """Stop gracefully: finish messages in flight, close every WebSocket with 1001, wait for the exit."""
    pidfile, port = control_target(ctx)
    pid = master_pid(pidfile, port)
    if pid is None:
        click.echo(f"{named(port)} is not running")
        sys.exit(0)
    sys.exit(stop_master(pidfile, port, ctx.control.graceful_timeout, pid))


@cli.command()
@TIMEOUT_OPTION
@pass_context
def restart(ctx: Context, timeout: float) -> None:
    """Stop (clients get 1001 and reconnect), then start in the background and wait until ready."""
    settings = ctx.settings
    pid = master_pid(settings.pidfile, settings.websocket_port)
    if pid is not None:
        code = stop_master(settings.pidfile, settings.websocket_port, settings.graceful_timeout, pid)
        if code:
            sys.exit(code)
    sys.exit(start_daemon(settings, timeout))


@cli.command()
@pass_context
def reload(ctx: Context) -> None:
    """Replace the workers (new code and settings) without closing the port (gunicorn HUP)."""
    pidfile, port = control_target(ctx)
    pid = master_pid(pidfile, port)
    if pid is None:
        click.echo(f"{named(port)} is not running")
        sys.exit(EXIT_RELOAD_NOT_RUNNING)
    settings = ctx.settings  # the new settings must be valid: the master refuses the HUP otherwise
    problems = serving_problems(settings)
    if problems:
        click.echo(f"{named(port)}: not reloading: {problems[0]}", err=True)
        sys.exit(1)
    old = {w["pid"] for w in live_workers(settings.state_dir, pid)}
    os.kill(pid, signal.SIGHUP)

    def replaced() -> list[int] | None:
        pids = {w["pid"] for w in live_workers(settings.state_dir, pid)}
        fresh = pids - old
        return sorted(fresh) if len(fresh) >= settings.worker_count and not pids & old else None

    new = wait_for(replaced, settings.graceful_timeout + START_TIMEOUT)
    if not new:
        click.echo(f"{named(port)}: workers were not replaced in time; last lines of the log:", err=True)
        click.echo(log_tail(settings.logfile), err=True)
        sys.exit(1)
    click.echo(f"{named(port)} reloaded (pid {pid}): workers {', '.join(map(str, sorted(old))) or '-'} -> "
               f"{', '.join(map(str, new))}")
    sys.exit(0)


def find_instances(control: ControlSettings) -> list[dict[str, Any]]:
    """Every running instance of this folder: the configured state dir, and every dir its template names
    with another port (STATE_DIR=var/run-{port} finds var/run-2346, var/run-2347...)."""
    dirs = [control.state_dir] if control.state_dir else []
    template = control.templates["STATE_DIR"]
    if "{port}" in template:
        dirs += sorted(glob.glob(glob.escape(template).replace(glob.escape("{port}"), "*")))
    seen: set[int] = set()
    found = []
    for directory in dict.fromkeys(dirs):
        record = state.read_instance(directory)
        if record is not None and record["pid"] not in seen:
            seen.add(record["pid"])
            found.append(record)
    return sorted(found, key=lambda r: (r.get("port") or 0, r["pid"]))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Every instance of this folder: address, health (database, Redis), and each worker's figures."""
    control = ctx.control
    stale_removed = None
    running: int | None = None
    if control.pidfile is not None:
        running, stale = state.running_pid(control.pidfile)
        if running is None and stale is not None and state.remove_stale_pidfile(control.pidfile, stale):
            stale_removed = stale
    instances = find_instances(control)
    if running is not None and all(r["pid"] != running for r in instances) and control.state_dir:
        # A master of an older release (no instance record): what the settings say it listens on.
        instances.insert(0, {"pid": running, "port": control.websocket_port, "state_dir": control.state_dir,
                             "listen": [f"{control.websocket_host}:{control.websocket_port}"],
                             "pidfile": control.pidfile, "ssl": control.websocket_ssl})
    reports = [status_report(record) for record in instances]
    configured = next((r for r in reports if r["master"]["pid"] == running), None)
    if as_json:
        doc: dict[str, Any] = dict(configured) if configured else {"running": False, "stale_pid": stale_removed}
        doc["instances"] = reports
        if control.problem:
            doc["configuration_problem"] = control.problem
        click.echo(json.dumps(doc, indent=2))
    else:
        blocks = [render_status(r) for r in reports]
        if configured is None:
            blocks.insert(0, f"{named(control.websocket_port)} is not running"
                          + (f" (removed stale pid file {control.pidfile} of pid {stale_removed})"
                             if stale_removed else ""))
        if control.problem:
            blocks.append(f"note: {control.problem}; a reload or start would be refused until it is fixed")
        if reports:
            blocks.append(LEGEND)
        click.echo("\n\n".join(blocks))
    if reports:
        sys.exit(0)
    sys.exit(1 if stale_removed else EXIT_NOT_RUNNING)


FIGURES = ("connections", "authenticated", "users", "joined", "messages_in", "messages_out", "stored", "rss_bytes")


def status_report(record: dict[str, Any]) -> dict[str, Any]:
    """One instance's figures: its master, address, health (from its own /readyz) and workers."""
    pid = record["pid"]
    now = time.time()
    workers = [w for w in live_workers(record["state_dir"], pid) if "started_at" in w and "updated_at" in w]
    for worker in workers:
        for name in FIGURES:
            worker.setdefault(name, 0)
        worker.setdefault("node_id", "")
        worker["uptime_seconds"] = round(now - worker["started_at"], 1)
        worker["age_seconds"] = round(now - worker["updated_at"], 1)
    totals = {name: sum(w.get(name, 0) for w in workers) for name in FIGURES}
    totals["workers"] = len(workers)
    totals["rss_bytes"] += state.rss_bytes(pid)  # the master's memory too
    listen = [_address(entry) for entry in record.get("listen") or []]
    health: dict[str, Any] = {}
    if listen and record.get("port") is not None:
        host = listen[0].rsplit(":", 1)[0].strip("[]")
        code, body = probe_readiness(host, int(record["port"]), bool(record.get("ssl")))
        health = {"ready": code == 200, **({"checks": body.get("checks", {})} if "checks" in body else {}),
                  **({"reason": not_ready_reason(body)} if code != 200 else {})}
    return {
        "running": True,
        "master": {
            "pid": pid,
            "started_at": _process_start(pid),
            "uptime_seconds": round(now - _process_start(pid), 1),
            "rss_bytes": state.rss_bytes(pid),
        },
        "port": record.get("port"),
        "listen": ", ".join(listen),
        "pidfile": record.get("pidfile"),
        "health": health,
        "workers_configured": record.get("workers", len(workers)),
        "workers": workers,
        "totals": totals,
    }


def _address(listener: str) -> str:
    """`http://127.0.0.1:2346` (gunicorn's listener) -> `127.0.0.1:2346`."""
    return listener.split("://", 1)[-1]


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


def _render_health(health: dict[str, Any]) -> str:
    if not health:
        return "health unknown (no address recorded)"
    checks = "  ".join(f"{name} {value}" for name, value in (health.get("checks") or {}).items())
    if health.get("ready"):
        return f"ready  {checks}".rstrip()
    return f"NOT READY  {checks}  ({health.get('reason', '')})"


def render_status(report: dict[str, Any]) -> str:
    """The Workerman-style table: one line per worker, then the totals."""
    master = report["master"]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(master["started_at"]))
    lines = [
        f"{named(report.get('port'))} running  master pid {master['pid']}  started {started}  "
        f"up {state.describe_uptime(master['uptime_seconds'])}",
        f"listen {report['listen']}  workers {len(report['workers'])}/{report['workers_configured']}  "
        f"master memory {_mb(master['rss_bytes'])}",
        _render_health(report.get("health") or {}),
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
    return "\n".join(lines)


LEGEND = ("auth = authenticated connections, users = distinct users per worker, joined = connections in a session, "
          "msg_in/out = frames received/sent, stored = messages stored; figures refresh every "
          f"{state.STATS_INTERVAL:.0f}s")
