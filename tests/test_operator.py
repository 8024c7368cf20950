"""What an operator does by the book (issue 14): HUP after a typo, a database that can never work, several
instances in one folder, a port in use, trust mode on a public address, a bad value while stopping."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_mariadb
from test_operations import wait_until

from support import ROOT, Server, base_env, free_port, run_cli


def worker_pids(master: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
    except OSError:
        return set()


def kill_master(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.killpg(os.getpgid(int(pidfile.read_text())), signal.SIGKILL)


@pytest.fixture
def env_file_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A real gunicorn whose port and settings are in an env file (as .env holds them), not the environment."""
    port = free_port()
    env_file = tmp_path / "chat.env"
    env_file.write_text(f"WEBSOCKET_HOST=127.0.0.1\nWEBSOCKET_PORT={port}\n", encoding="utf-8")
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path}/chat.db", GRACEFUL_TIMEOUT=3, LOG_LEVEL="info")
    env["CHAT_ENV_FILE"] = str(env_file)
    server = Server(port=port, env=env, log_path=tmp_path / "server.log")
    try:
        yield server.start(), env_file
    finally:
        server.stop()


def test_hup_after_a_typo_in_env_keeps_serving_and_says_why_the_reload_was_refused(
    env_file_server: tuple[Server, Path],
) -> None:
    """`kill -HUP <master>` with WEBSOCKET_PORT=23a46 in .env: one log line, same workers still serving."""
    server, env_file = env_file_server
    master = server.proc.pid
    before = wait_until(lambda: worker_pids(master), 20)
    good = env_file.read_text()
    env_file.write_text(good.replace(f"WEBSOCKET_PORT={server.port}", "WEBSOCKET_PORT=23a46"), encoding="utf-8")

    os.kill(master, signal.SIGHUP)
    line = wait_until(lambda: next((ln for ln in server.log().splitlines() if "reload refused" in ln), None), 20)
    assert "WEBSOCKET_PORT='23a46' is not valid" in line, line
    assert server.log().count("reload refused") == 1
    assert "Parent changed" not in server.log()
    assert server.proc.poll() is None
    assert server.http("GET", "/healthz") == (200, {"status": "ok"})
    assert worker_pids(master) == before

    env_file.write_text(good, encoding="utf-8")  # fixed: the next HUP reloads as usual
    os.kill(master, signal.SIGHUP)
    wait_until(lambda: (pids := worker_pids(master)) and not pids & before, 20)
    assert server.http("GET", "/healthz")[0] == 200


def test_hup_with_settings_the_server_would_refuse_is_refused_too(env_file_server: tuple[Server, Path]) -> None:
    """Valid values that cannot serve (2 workers without Redis) are refused on HUP like at start."""
    server, env_file = env_file_server
    master = server.proc.pid
    before = wait_until(lambda: worker_pids(master), 20)
    env_file.write_text(env_file.read_text() + "WEBSOCKET_WORKER_COUNT=2\n", encoding="utf-8")
    os.kill(master, signal.SIGHUP)
    line = wait_until(lambda: next((ln for ln in server.log().splitlines() if "reload refused" in ln), None), 20)
    assert "needs REDIS_URL" in line
    assert server.proc.poll() is None and worker_pids(master) == before


# -- item 4: a database that can never work -------------------------------------------------------------


@pytest.fixture
def unusable_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(DATABASE_URL, expected error code) of a MariaDB database the service can never use."""
    import pymysql

    need_mariadb()
    name = f"chat_test_{uuid.uuid4().hex[:10]}"
    if request.param == "1049":
        yield f"mysql+pymysql://root:@127.0.0.1:3306/{name}?charset=utf8mb4", "1049"
        return
    user, password = f"ro_{uuid.uuid4().hex[:8]}", "s3cret-" + uuid.uuid4().hex[:8]
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT SELECT ON `{name}`.* TO '{user}'@'%'")
        cur.execute(f"GRANT SELECT ON `{name}`.* TO '{user}'@'localhost'")
    try:
        yield f"mysql+pymysql://{user}:{password}@127.0.0.1:3306/{name}?charset=utf8mb4", "1142"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'localhost'")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.mark.mariadb
@pytest.mark.parametrize("unusable_database", ["1049", "1142"], indirect=True)
def test_start_d_fails_naming_the_database_error_when_the_database_can_never_work(
    tmp_path: Path, unusable_database: tuple[str, str]
) -> None:
    """Unknown database / access denied: `start -d` exits 1 naming the problem (no password), nothing left.

    An unknown database is a /readyz reason (the server keeps trying); a user without the privileges the schema
    needs is refused by the workers at boot, in one line that names what is missing.
    """
    url, code = unusable_database
    port = free_port()
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=url, GRACEFUL_TIMEOUT=3,
                   PIDFILE=tmp_path / "chat.pid", LOGFILE=tmp_path / "chat.log", STATE_DIR=tmp_path / "run")
    try:
        result = run_cli(env, "start", "-d", "--timeout", "8")
        assert result.returncode == 1, (result.stdout, result.stderr)
        if code == "1049":
            assert f"on port {port}: not ready" in result.stderr
            assert f"database: OperationalError {code}:" in result.stderr, result.stderr
            assert "Unknown database" in result.stderr
        else:
            assert f"on port {port}: did not come up" in result.stderr
            assert "cannot serve: the database user" in result.stderr and "lacks INSERT" in result.stderr
        assert "s3cret" not in result.stderr + result.stdout
        log = (tmp_path / "chat.log").read_text()
        assert (code if code == "1049" else "lacks INSERT") in log and "s3cret" not in log
        assert "database error: OperationalError\n" not in log
        wait_until(lambda: not (tmp_path / "chat.pid").exists(), 15)
    finally:
        kill_master(tmp_path / "chat.pid")


@pytest.mark.mariadb
@pytest.mark.parametrize("unusable_database", ["1049"], indirect=True)
def test_readyz_answers_503_with_the_database_error(tmp_path: Path, unusable_database: tuple[str, str]) -> None:
    """A running server on a database that does not exist: /readyz 503 with the reason, `status` shows it."""
    url, _code = unusable_database
    port = free_port()
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=url, GRACEFUL_TIMEOUT=3)
    server = Server(port=port, env=env, log_path=tmp_path / "server.log").start()
    try:
        status, body = server.http("GET", "/readyz")
        assert status == 503
        assert body["checks"] == {"database": "down"}
        assert body["reasons"]["database"].startswith("OperationalError 1049: Unknown database"), body
        shown = run_cli(env, "status")
        assert shown.returncode == 0, shown.stderr
        assert "NOT READY" in shown.stdout and "Unknown database" in shown.stdout
    finally:
        server.stop()


def test_status_shows_database_and_redis_health(tmp_path: Path, redis_url: str) -> None:
    """`status` of a healthy server with Redis: ready, database ok, backplane ok (text and JSON)."""
    port = free_port()
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db",
                   REDIS_URL=redis_url, REDIS_CHANNEL_PREFIX=f"test-{uuid.uuid4().hex[:8]}", GRACEFUL_TIMEOUT=3)
    try:
        started = run_cli(env, "start", "-d")
        assert started.returncode == 0 and "ready" in started.stdout, started.stderr
        shown = run_cli(env, "status")
        assert shown.returncode == 0
        assert "ready  database ok  backplane ok" in shown.stdout, shown.stdout
        report = json.loads(run_cli(env, "status", "--json").stdout)
        assert report["health"] == {"ready": True, "checks": {"database": "ok", "backplane": "ok"}}
    finally:
        assert run_cli(env, "stop").returncode == 0


# -- item 7: several instances from one folder, default settings --------------------------------------


def test_three_instances_from_one_folder_with_default_settings(tmp_path: Path) -> None:
    """WEBSOCKET_PORT=P start -d three times: three servers, own files, status lists all, messages say the port."""
    ports = [free_port() for _ in range(3)]
    env = base_env(WEBSOCKET_HOST="127.0.0.1", DATABASE_URL=f"sqlite:///{tmp_path}/chat.db", GRACEFUL_TIMEOUT=3)
    for name in ("PIDFILE", "LOGFILE", "STATE_DIR"):
        env.pop(name)  # the defaults, as in a fresh clone: var/chat-PORT.pid, var/chat-PORT.log, var/run-PORT
    pidfiles = [ROOT / "var" / f"chat-{port}.pid" for port in ports]
    try:
        for port in ports:
            started = run_cli({**env, "WEBSOCKET_PORT": str(port)}, "start", "-d")
            assert started.returncode == 0, started.stderr
            assert f"on port {port} started" in started.stdout
        for port, pidfile in zip(ports, pidfiles, strict=True):
            assert pidfile.is_file() and (ROOT / "var" / f"chat-{port}.log").is_file()
            assert (ROOT / "var" / f"run-{port}" / "instance.json").is_file()
        again = run_cli({**env, "WEBSOCKET_PORT": str(ports[1])}, "start", "-d")
        assert again.returncode == 0 and f"on port {ports[1]} is already running" in again.stdout

        shown = run_cli({**env, "WEBSOCKET_PORT": str(ports[0])}, "status")
        assert shown.returncode == 0, shown.stderr
        for port in ports:
            assert f"on port {port} running" in shown.stdout
            assert f"listen 127.0.0.1:{port} " in shown.stdout
        doc = json.loads(run_cli({**env, "WEBSOCKET_PORT": str(ports[0])}, "status", "--json").stdout)
        assert {i["port"] for i in doc["instances"]} >= set(ports)
        assert doc["port"] == ports[0]

        for port in ports:
            stopped = run_cli({**env, "WEBSOCKET_PORT": str(port)}, "stop")
            assert stopped.returncode == 0 and f"on port {port} stopped" in stopped.stdout, stopped.stderr
        assert not any(p.exists() for p in pidfiles)
    finally:
        for pidfile in pidfiles:
            kill_master(pidfile)


# -- item 13: a failed start leaves no pid file --------------------------------------------------------


def test_failed_start_on_a_port_in_use_leaves_no_pid_file(tmp_path: Path) -> None:
    """Port taken by another program: `start -d` exits 1 with the log, and no stale pid file is left."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db",
                       PIDFILE=tmp_path / "chat.pid", LOGFILE=tmp_path / "chat.log", STATE_DIR=tmp_path / "run")
        try:
            result = run_cli(env, "start", "-d", "--timeout", "30")
            assert result.returncode == 1
            assert "did not come up" in result.stderr and "Address already in use" in result.stderr
            assert not (tmp_path / "chat.pid").exists()
            assert "stale" not in run_cli(env, "status").stderr
        finally:
            kill_master(tmp_path / "chat.pid")


# -- item 9: trust mode on a public address ------------------------------------------------------------


def test_trust_mode_on_a_public_address_logs_a_warning(tmp_path: Path) -> None:
    """WEBSOCKET_HOST=0.0.0.0 with AUTH_MODE=trust: a warning at start; 127.0.0.1: none."""
    port = free_port()
    env = base_env(WEBSOCKET_HOST="0.0.0.0", WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db")
    server = Server(port=port, env=env, log_path=tmp_path / "public.log").start()
    try:
        wait_until(lambda: "AUTH_MODE=trust on 0.0.0.0" in server.log(), 10)
    finally:
        server.stop()
    port = free_port()
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db")
    server = Server(port=port, env=env, log_path=tmp_path / "local.log").start()
    try:
        assert server.http("GET", "/healthz")[0] == 200
        assert "AUTH_MODE=trust on" not in server.log()
    finally:
        server.stop()


def test_make_run_listens_on_loopback_only(tmp_path: Path) -> None:
    """`make run` (the try-it command) binds 127.0.0.1, whatever the service's 0.0.0.0 default."""
    port = free_port()
    env = base_env(WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db")
    log = open(tmp_path / "make.log", "wb")
    proc = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def listening() -> str | None:
            text = (tmp_path / "make.log").read_text()
            return text if "Listening at" in text else None

        text = wait_until(listening, 60)
        assert f"Listening at: http://127.0.0.1:{port}" in text, text
        assert "AUTH_MODE=trust on" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()


# -- item 11: stop and status with a bad value, fast commands ------------------------------------------


def test_stop_and_status_work_while_env_holds_a_bad_value(tmp_path: Path) -> None:
    """A typo in .env after start: status shows the server and the problem, stop stops it."""
    port = free_port()
    env_file = tmp_path / "chat.env"
    env_file.write_text(f"WEBSOCKET_HOST=127.0.0.1\nWEBSOCKET_PORT={port}\n", encoding="utf-8")
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path}/c.db", GRACEFUL_TIMEOUT=3, PIDFILE=tmp_path / "c.pid",
                   LOGFILE=tmp_path / "c.log", STATE_DIR=tmp_path / "run")
    env["CHAT_ENV_FILE"] = str(env_file)
    try:
        assert run_cli(env, "start", "-d").returncode == 0
        env_file.write_text(env_file.read_text() + "HEARTBEAT_TIMEOUT=soon\n", encoding="utf-8")
        shown = run_cli(env, "status")
        assert shown.returncode == 0, shown.stderr
        assert f"on port {port} running" in shown.stdout
        assert "HEARTBEAT_TIMEOUT='soon' is not valid" in shown.stdout
        assert run_cli(env, "start", "-d").returncode == 1  # starting needs every setting
        stopped = run_cli(env, "stop")
        assert stopped.returncode == 0 and f"on port {port} stopped" in stopped.stdout, stopped.stderr
    finally:
        kill_master(tmp_path / "c.pid")


def test_stop_with_a_bad_port_names_the_running_instances(tmp_path: Path) -> None:
    """WEBSOCKET_PORT=23a46: stop cannot know which server is meant, and says which ones run."""
    port = free_port()
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db",
                   GRACEFUL_TIMEOUT=3, PIDFILE=tmp_path / "chat-{port}.pid", LOGFILE=tmp_path / "chat-{port}.log",
                   STATE_DIR=tmp_path / "run-{port}")
    try:
        assert run_cli(env, "start", "-d").returncode == 0
        refused = run_cli({**env, "WEBSOCKET_PORT": "23a46"}, "stop")
        assert refused.returncode == 1
        assert "WEBSOCKET_PORT='23a46' is not valid" in refused.stderr
        assert f"instances running: {port} (pid " in refused.stderr
        shown = run_cli({**env, "WEBSOCKET_PORT": "23a46"}, "status")
        assert shown.returncode == 0 and f"on port {port} running" in shown.stdout
        assert run_cli(env, "stop").returncode == 0
    finally:
        kill_master(tmp_path / f"chat-{port}.pid")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status"], ["stop"]])
def test_help_version_status_and_stop_import_neither_flask_sqlalchemy_nor_gevent(args: list[str]) -> None:
    """The quick commands import only what they need (they took 2-5 s importing the database stack)."""
    env = base_env()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "service", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 3), result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    heavy = {name for name in imported if name.split(".")[0] in {"flask", "sqlalchemy", "gevent", "redis",
                                                                 "alembic", "pymysql", "jwt"}}
    assert not heavy, sorted(heavy)


def test_version_is_printed() -> None:
    """`--version` names the program and the release of pyproject.toml."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run_cli(base_env(), "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"chat-service {version}"


def test_every_command_help_line_is_whole() -> None:
    """`--help` of every group lists each command's whole first paragraph (one was cut at "(e.g.")."""
    from click.testing import CliRunner

    from service.cli import LAZY_COMMANDS, cli, short_help

    groups = [((), cli)]
    while groups:
        path, group = groups.pop()
        result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, result.output
        flat = " ".join(result.output.split())
        for name in group.list_commands(None):
            command = group.get_command(None, name)
            line = LAZY_COMMANDS[name][1] if group is cli and name in LAZY_COMMANDS else short_help(command)
            assert " ".join(line.split()) in flat, (path, name)
            if hasattr(command, "list_commands"):
                groups.append(((*path, name), command))


def test_token_refuses_a_secret_the_server_would_refuse() -> None:
    """JWT_SECRET shorter than 32 bytes: `token` signs nothing and says why, as the server would refuse it."""
    result = run_cli(base_env(AUTH_MODE="jwt", JWT_SECRET="short"), "token", "7")
    assert result.returncode == 1
    assert "JWT_SECRET must be at least 32 bytes" in result.stderr and result.stdout == ""
    ok = run_cli(base_env(AUTH_MODE="jwt", JWT_SECRET="x" * 32), "token", "7")
    assert ok.returncode == 0 and ok.stdout.count(".") == 2


def test_metrics_carry_build_info_and_process_metrics_of_the_whole_server(server_factory) -> None:
    """/metrics: chat_build_info with the release, and process_* summed over master and workers."""
    import re
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    server = server_factory()
    status, text = server.http("GET", "/metrics")
    assert status == 200
    assert re.search(rf'^chat_build_info\{{python="[0-9.]+",version="{re.escape(version)}"\}} 1\.0$', text, re.M), text
    memory = float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)[1])
    master = int(Path(server.env["PIDFILE"]).read_text())
    master_rss = int(Path(f"/proc/{master}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert memory > master_rss  # the worker's memory is in it too
    assert re.search(r"^process_start_time_seconds \S+$", text, re.M)
    assert re.search(r"^process_open_fds \S+$", text, re.M)
