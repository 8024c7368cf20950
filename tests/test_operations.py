"""The server as an operator runs it (`python -m service start -d|status|reload|restart|stop`), in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websocket

from support import ROOT, Client, base_env, free_port, fresh_id, run_cli


@dataclass
class Deployment:
    """One server's settings (temp pid file, log, state dir, port), driven only through the CLI."""

    env: dict[str, str]
    directory: Path
    port: int

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(self.env, *args)

    @property
    def pidfile(self) -> Path:
        return Path(self.env["PIDFILE"])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def master(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def status(self) -> dict:
        result = self.cli("status", "--json")
        assert result.returncode == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def client(self, user_id: int | None = None) -> Client:
        c = Client(self.url)
        if user_id is not None:
            c.auth(user_id)
        return c

    def http(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """Settings for a server in a temp directory; any master it leaves running is killed with its group."""
    port = free_port()
    env = base_env(
        WEBSOCKET_HOST="127.0.0.1",
        WEBSOCKET_PORT=port,
        WEBSOCKET_WORKER_COUNT=1,
        DATABASE_URL=f"sqlite:///{tmp_path}/chat.db",
        STATE_DIR=tmp_path / "run",
        PIDFILE=tmp_path / "run" / "chat.pid",
        LOGFILE=tmp_path / "log" / "chat.log",
        LOG_LEVEL="info",
        GRACEFUL_TIMEOUT=5,
    )
    dep = Deployment(env, tmp_path, port)
    masters: set[int] = set()
    original_cli = dep.cli

    def tracking_cli(*args: str) -> subprocess.CompletedProcess:
        result = original_cli(*args)
        if (pid := dep.master()) is not None:
            masters.add(pid)
        return result

    dep.cli = tracking_cli  # type: ignore[method-assign]
    try:
        yield dep
    finally:
        for pid in masters:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(condition, timeout: float = 10.0, interval: float = 0.1):
    """Poll `condition` until it returns something true; fail after `timeout` with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


def frames_until_close(client: Client, timeout: float = 10.0) -> tuple[list[dict], int | None, str]:
    """Every frame the server sends until its close frame: (frames, close code, close reason)."""
    frames = []
    client.ws.settimeout(timeout)
    while True:
        try:
            opcode, frame = client.ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return frames, None, ""
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data or b""
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            return frames, code, data[2:].decode("utf-8", "replace")
        if opcode == websocket.ABNF.OPCODE_TEXT:
            frames.append(json.loads(frame.data))


def test_status_stop_and_reload_when_nothing_runs(deployment: Deployment) -> None:
    """Not running: status exits 3, stop says so and exits 0 (LSB), reload exits 7."""
    status = deployment.cli("status")
    assert status.returncode == 3 and "not running" in status.stdout
    assert json.loads(deployment.cli("status", "--json").stdout) == {"running": False, "stale_pid": None,
                                                                     "instances": []}
    stop = deployment.cli("stop")
    assert stop.returncode == 0 and "not running" in stop.stdout
    assert deployment.cli("reload").returncode == 7


def test_stale_pidfile_is_detected_and_removed(deployment: Deployment) -> None:
    """A pid file naming a dead process: status says so, removes it, exits 1; then plain not running (3)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    deployment.pidfile.parent.mkdir(parents=True, exist_ok=True)
    deployment.pidfile.write_text(f"{dead.pid}\n")
    status = deployment.cli("status")
    assert status.returncode == 1, status.stdout
    assert "stale" in status.stdout and str(dead.pid) in status.stdout
    assert not deployment.pidfile.exists()
    assert deployment.cli("status").returncode == 3


def test_start_after_a_crash_replaces_a_stale_pidfile(deployment: Deployment) -> None:
    """start -d with a stale pid file left by a crash starts normally; stop stops it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    deployment.pidfile.parent.mkdir(parents=True, exist_ok=True)
    deployment.pidfile.write_text(f"{dead.pid}\n")
    started = deployment.cli("start", "-d")
    assert started.returncode == 0, started.stderr
    assert "stale" in started.stderr
    assert deployment.master() not in (None, dead.pid)
    assert deployment.cli("stop").returncode == 0


def test_operator_lifecycle_start_status_reload_restart_stop(deployment: Deployment) -> None:
    """start -d, double start, live status figures, reload on the same port, restart with clients, stop."""
    started = deployment.cli("start", "-d")
    assert started.returncode == 0, started.stderr
    master = deployment.master()
    assert master is not None and f"pid {master}" in started.stdout

    again = deployment.cli("start", "-d")
    assert again.returncode == 0 and f"already running (pid {master})" in again.stdout

    # Traffic: a customer and an agent in one session, three messages.
    customer_id, agent_id = fresh_id(), fresh_id()
    assert deployment.cli("agent", "add", str(agent_id)).returncode == 0
    _, session = deployment.http("POST", "/api/sessions", {"user_id": customer_id})
    customer, agent = deployment.client(customer_id), deployment.client(agent_id)
    customer.join(session["id"])
    agent.join(session["id"])
    for text in ("one", "two", "three"):
        customer.say(session["id"], text)
        customer.recv_type("new_message")
        agent.recv_type("new_message")

    def figures_after_traffic():
        report = deployment.status()
        totals = report["totals"]
        if (totals["connections"], totals["authenticated"], totals["joined"], totals["stored"]) == (2, 2, 2, 3):
            return report
        return None

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_stats = Path(deployment.env["STATE_DIR"]) / "workers" / f"{dead.pid}.json"
    stale_stats.write_text(json.dumps({"pid": dead.pid, "master": master}))
    report = wait_until(figures_after_traffic, timeout=10)
    assert not stale_stats.exists()  # a dead worker's figures are ignored and removed
    (worker,) = report["workers"]
    assert report["master"]["pid"] == master
    assert worker["users"] == 2 and worker["messages_in"] >= 7 and worker["messages_out"] >= 6
    assert worker["rss_bytes"] > 1_000_000 and worker["uptime_seconds"] >= 0 and worker["node_id"]
    text = deployment.cli("status")
    assert text.returncode == 0
    worker_line = next(line for line in text.stdout.splitlines() if line.startswith(str(worker["pid"])))
    assert worker_line.split()[1:3] == ["2", "2"]  # connections, authenticated
    assert any(line.startswith("total") for line in text.stdout.splitlines())
    print(text.stdout)  # the sample shown in the README, "Operations"

    # reload: new workers, same port; connected clients are told to reconnect.
    reloaded = deployment.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    _, code, reason = frames_until_close(customer)
    assert code == 1001 and reason
    frames_until_close(agent)
    assert deployment.master() == master
    new_workers = [w["pid"] for w in deployment.status()["workers"]]
    assert new_workers and worker["pid"] not in new_workers
    customer, agent = deployment.client(customer_id), deployment.client(agent_id)
    customer.join(session["id"])
    agent.join(session["id"])
    customer.say(session["id"], "four")
    assert customer.recv_type("new_message")["message"]["content"] == "four"
    assert agent.recv_type("new_message")["message"]["content"] == "four"

    # restart with clients connected: 1001, then reconnect to a new master; history intact.
    restarted = deployment.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    for client in (customer, agent):
        _, code, _ = frames_until_close(client)
        assert code == 1001
    new_master = deployment.master()
    assert new_master not in (None, master)
    customer = deployment.client(customer_id)
    customer.join(session["id"])
    _, history = deployment.http("GET", f"/api/sessions/{session['id']}/messages")
    assert [m["content"] for m in history["messages"]] == ["one", "two", "three", "four"]
    customer.close()

    stopped = deployment.cli("stop")
    assert stopped.returncode == 0 and f"stopped (pid {new_master})" in stopped.stdout
    after = deployment.cli("status")
    assert after.returncode == 3 and "not running" in after.stdout
    assert not deployment.pidfile.exists()
    log = Path(deployment.env["LOGFILE"]).read_text()
    assert "Booting worker" in log and "gunicorn.access" in log


def test_foreground_start_logs_to_the_terminal_and_ctrl_c_still_says_1001(deployment: Deployment) -> None:
    """`start` runs gunicorn in the foreground (pid file written, logs on stderr); Ctrl-C closes clients with 1001."""
    log_path = deployment.directory / "terminal.log"
    with open(log_path, "wb") as terminal:
        proc = subprocess.Popen([sys.executable, "-m", "service", "start"], cwd=ROOT, env=deployment.env,
                                stdout=terminal, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: deployment.master() == proc.pid and deployment.cli("status").returncode == 0, timeout=30)
        client = deployment.client(fresh_id())
        proc.send_signal(signal.SIGINT)
        _, code, _ = frames_until_close(client)
        assert code == 1001
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    output = log_path.read_text()
    assert "Booting worker" in output and "gunicorn.access" in output
    assert deployment.cli("status").returncode == 3
