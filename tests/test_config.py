"""Configuration: .env.example is complete, bad values stop gunicorn with one line, the environment wins over .env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values

from service.config import ConfigError, load_settings, settings_table
from support import ROOT, base_env, free_port

NO_ENV = str(ROOT / "tests" / "no.env")


def test_env_example_lists_every_setting_with_its_default() -> None:
    """Every setting of service/config.py is in .env.example with its default, and nothing else is."""
    example = dotenv_values(ROOT / ".env.example")
    expected = {name: default for name, default, _doc in settings_table()}
    missing = sorted(set(expected) - set(example))
    assert not missing, f"add {missing} to .env.example (regenerate it with service.config.env_example())"
    assert example == expected
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    for name, _default, doc in settings_table():
        assert f"# {doc}\n{name}=" in text, f"{name} needs its one-line comment in .env.example"


def test_env_example_loads_as_the_defaults() -> None:
    """Copying .env.example to .env changes nothing: it parses to exactly the built-in defaults."""
    assert load_settings(environ={"CHAT_ENV_FILE": str(ROOT / ".env.example")}) == load_settings(
        environ={"CHAT_ENV_FILE": NO_ENV})


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    """defaults < .env < environment: each layer overrides the one before it, variable by variable."""
    env_file = tmp_path / "chat.env"
    env_file.write_text("WEBSOCKET_PORT=4000\nMAX_MESSAGE_LENGTH=100\n", encoding="utf-8")
    settings = load_settings(environ={"CHAT_ENV_FILE": str(env_file), "WEBSOCKET_PORT": "3000"})
    assert settings.websocket_port == 3000
    assert settings.max_message_length == 100
    assert settings.heartbeat_timeout == 60
    assert load_settings(environ={"CHAT_ENV_FILE": NO_ENV}).websocket_port == 2346


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    """A bad value read from .env raises ConfigError naming the variable and what is allowed."""
    env_file = tmp_path / "chat.env"
    env_file.write_text("HEARTBEAT_TIMEOUT=soon\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"HEARTBEAT_TIMEOUT='soon' is not valid: expected a number"):
        load_settings(environ={"CHAT_ENV_FILE": str(env_file)})


def start_gunicorn(env: dict[str, str], timeout: float = 20) -> tuple[int, str, float]:
    """Run gunicorn as an operator would; (exit code, output, seconds). Stopped by process group if it serves."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"gunicorn did not refuse to start:\n{output}")
    return proc.returncode, output, time.monotonic() - started


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBSOCKET_PORT", "abc"),
        ("WEBSOCKET_PORT", "70000"),
        ("AUTH_MODE", "x"),
        ("APP_TIMEZONE", "Mars/Base"),
        ("MAX_MESSAGE_LENGTH", "0"),
        ("HEARTBEAT_TIMEOUT", "-1"),
        ("DATABASE_URL", "postgres://db/chat"),
        ("WEBSOCKET_WORKER_COUNT", "2"),
    ],
)
def test_bad_value_stops_gunicorn_with_one_line(name: str, value: str) -> None:
    """gunicorn exits non-zero at once, printing one line that names the variable, and no traceback."""
    settings = {"WEBSOCKET_HOST": "127.0.0.1", "WEBSOCKET_PORT": str(free_port()), name: value}
    code, output, seconds = start_gunicorn(base_env(**settings))
    lines = output.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("chat: ") and f"{name}=" in lines[0], output
    assert seconds < 10


def test_gunicorn_reads_env_file_and_environment_wins(tmp_path: Path) -> None:
    """A bad port in .env is overridden by the environment's; a bad AUTH_MODE in the environment is reported."""
    env_file = tmp_path / "chat.env"
    env_file.write_text("WEBSOCKET_PORT=abc\n", encoding="utf-8")
    env = base_env(WEBSOCKET_HOST="127.0.0.1")
    env["CHAT_ENV_FILE"] = str(env_file)
    code, output, _ = start_gunicorn(env)
    assert code != 0 and "WEBSOCKET_PORT='abc'" in output
    env.update(WEBSOCKET_PORT=str(free_port()), AUTH_MODE="x")
    code, output, _ = start_gunicorn(env)
    assert code != 0 and "AUTH_MODE='x'" in output and "WEBSOCKET_PORT" not in output


def test_readme_configuration_table_lists_every_setting() -> None:
    """The README's configuration table names every setting with its default, so users never miss one."""
    from service.config import settings_table

    readme = (ROOT / "README.md").read_text()
    for name, default, _doc in settings_table():
        row = f"| `{name}` | `{default}` |" if default else f"| `{name}` | (empty) |"
        assert row in readme, f"README configuration table lacks {name}"
