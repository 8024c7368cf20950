"""The README's commands, run as shown on a fresh clone after `make install` / `make run` (issue 14, items 8 and 10).

The clone is this working tree's tracked (and new, not ignored) files copied to a temporary folder, with its
own `.venv` made by `make install`: nothing of this checkout's venv or var/ is used. Each command below is
quoted from the README (the test fails when the README changes it); the only change made to them is the port
(2346-2348 -> free ports), so that the test never collides with a server on the legacy port.

Not run here: the interactive WebSocket client (`.venv/bin/python -m websockets ...`, a REPL), `make test`
(this suite), the database sections' commands (they need a MariaDB set up by hand; tests/test_migrations.py and
tests/test_schema.py run the same commands), systemd and logrotate (tests/test_deploy.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import settings_table
from support import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the fixture runs `make install`

README = (ROOT / "README.md").read_text(encoding="utf-8")


def clean_env() -> dict[str, str]:
    """An operator's shell: none of the service's settings, no test overrides."""
    ours = {name for name, _default, _doc in settings_table()} | {"CHAT_ENV_FILE", "PROMETHEUS_MULTIPROC_DIR"}
    return {k: v for k, v in os.environ.items() if k not in ours and not k.startswith(("WEBSOCKET_", "JWT_"))}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh copy of the project with `make install` done in it; servers it started are stopped at the end."""
    directory = tmp_path_factory.mktemp("clone") / "chat"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, directory / name)
    installed = subprocess.run(["make", "install"], cwd=directory, env=clean_env(), capture_output=True, text=True,
                               timeout=900)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    try:
        yield directory
    finally:
        for pidfile in (directory / "var").glob("chat-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(os.getpgid(int(pidfile.read_text())), signal.SIGKILL)


def sh(clone: Path, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a README command with bash in the clone, as typed."""
    return subprocess.run(["bash", "-c", command], cwd=clone, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def quoted(command: str) -> str:
    assert command in README, f"the README no longer shows {command!r}: update this test with it"
    return command


def test_help_and_version_work_on_a_fresh_clone(clone: Path) -> None:
    """`.venv/bin/chat-service --help|--version`, and `python -m service` with a python that lacks the deps."""
    helped = sh(clone, quoted(".venv/bin/chat-service --help"))
    assert helped.returncode == 0 and "start" in helped.stdout and "status" in helped.stdout, helped.stderr
    version = sh(clone, quoted(".venv/bin/chat-service --version"))
    assert version.returncode == 0 and version.stdout.startswith("chat-service "), version.stderr
    bare = sh(clone, "python3 -m service --version")  # "python -m service ... is the same command line"
    assert "python -m service ...` is the same command line" in README
    assert bare.returncode == 0 and bare.stdout == version.stdout, bare.stderr


def test_make_run_serves_the_try_it_commands_with_settings_from_env_local(clone: Path) -> None:
    """`.env.local` sets the port; `make run` serves on 127.0.0.1; the README's curl opens a session."""
    port = free_port()
    assert "`.env.local`" in README
    (clone / ".env.local").write_text(f"WEBSOCKET_PORT={port}\n", encoding="utf-8")
    log = open(clone / "make-run.log", "wb")
    proc = subprocess.Popen(["make", "run"], cwd=clone, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while f"Listening at: http://127.0.0.1:{port}" not in (clone / "make-run.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (clone / "make-run.log").read_text()
            time.sleep(0.2)
        curl = quoted("curl -s -XPOST localhost:2346/api/sessions -H 'content-type: application/json' "
                      "-d '{\"user_id\": 123}'")
        deadline = time.monotonic() + 30
        while True:
            opened = sh(clone, curl.replace("2346", str(port)))
            if '"user_id":123' in opened.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert '"status":"active"' in opened.stdout, (opened.stdout, opened.stderr)
        for command in (".venv/bin/chat-service agent add USER_ID...", ".venv/bin/chat-service agent list",
                        ".venv/bin/chat-service agent remove USER_ID..."):
            quoted(command)
        added = sh(clone, ".venv/bin/chat-service agent add 41 42")
        assert added.returncode == 0 and "added agent 42" in added.stdout, added.stderr
        assert "41\t" in sh(clone, ".venv/bin/chat-service agent list").stdout
        assert sh(clone, ".venv/bin/chat-service agent remove 41 42").returncode == 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
        (clone / ".env.local").unlink()


def test_three_instances_recipe_works_as_shown(clone: Path) -> None:
    """The README's several-instances recipe: start -d three ports, status lists them, stop them."""
    ports = [free_port() for _ in range(3)]
    start = quoted("for port in 2346 2347 2348; do WEBSOCKET_PORT=$port .venv/bin/chat-service start -d; done")
    status = quoted(".venv/bin/chat-service status     # all three, each with its address and health")
    stop = quoted("for port in 2346 2347 2348; do WEBSOCKET_PORT=$port .venv/bin/chat-service stop; done")

    def with_ports(command: str) -> str:
        return command.replace("2346 2347 2348", " ".join(map(str, ports)))

    # The recipe keeps WEBSOCKET_HOST at its default; only loopback is used to reach the servers here.
    started = sh(clone, with_ports(start))
    assert started.returncode == 0, started.stderr
    for port in ports:
        assert f"on port {port} started" in started.stdout, started.stdout + started.stderr
    shown = sh(clone, f"WEBSOCKET_PORT={ports[0]} " + status.split("  ")[0])
    assert shown.returncode == 0
    for port in ports:
        assert f"on port {port} running" in shown.stdout and f"listen 0.0.0.0:{port}" in shown.stdout
    assert shown.stdout.count("ready  database ok") == 3, shown.stdout
    stopped = sh(clone, with_ports(stop))
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 3, stopped.stdout + stopped.stderr
    assert not list((clone / "var").glob("chat-*.pid"))


def test_start_d_stop_and_status_as_the_operations_table_shows(clone: Path) -> None:
    """`WEBSOCKET_PORT=2347 .venv/bin/chat-service start -d` and `stop`, as the README's Operations shows them."""
    port = free_port()
    start = quoted("WEBSOCKET_PORT=2347 .venv/bin/chat-service start -d")
    stop = quoted("WEBSOCKET_PORT=2347 .venv/bin/chat-service stop")
    started = sh(clone, start.replace("2347", str(port)))
    assert started.returncode == 0 and f"on port {port} started" in started.stdout, started.stderr
    stopped = sh(clone, stop.replace("2347", str(port)))
    assert stopped.returncode == 0 and f"on port {port} stopped" in stopped.stdout, stopped.stderr
