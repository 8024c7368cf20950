"""The files operators look for in deploy/: a systemd unit systemd accepts, a logrotate snippet that really
rotates a running server's log (USR1 reopen), the nginx recipes the README shows; and no broken links."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from support import IN_CI, ROOT, base_env, free_port, run_cli

DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()),
                                       None)
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (CI=true: .ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return found


@pytest.mark.parametrize("unit", ["chat-service.service", "chat-service@.service"])
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    """The unit, with /opt/chat pointing at this checkout, verifies without a warning."""
    analyze = tool("systemd-analyze")
    name = unit.replace("@.", "@2347.")
    text = (DEPLOY / unit).read_text().replace("/opt/chat", str(ROOT)).replace("User=chat", "User=root")
    (tmp_path / name).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert name not in result.stderr and "unit" not in result.stderr.lower(), result.stderr
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text  # safe now: a HUP with bad settings is refused


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose ExecStart does not exist is refused."""
    analyze = tool("systemd-analyze")
    text = (DEPLOY / "chat-service.service").read_text().replace("/opt/chat", str(tmp_path / "nowhere"))
    (tmp_path / "broken.service").write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / "broken.service")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "is not executable" in result.stderr


def test_logrotate_snippet_rotates_a_running_servers_log(tmp_path: Path) -> None:
    """logrotate -f with the snippet (paths of a temp deployment): the server writes on into the new log."""
    logrotate = tool("logrotate")
    port = free_port()
    var = tmp_path / "var"
    env = base_env(WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=port, DATABASE_URL=f"sqlite:///{tmp_path}/c.db",
                   PIDFILE=var / "chat-{port}.pid", LOGFILE=var / "chat-{port}.log", STATE_DIR=var / "run-{port}",
                   GRACEFUL_TIMEOUT=3)
    log = var / f"chat-{port}.log"
    try:
        assert run_cli(env, "start", "-d").returncode == 0
        snippet = (DEPLOY / "logrotate.conf").read_text().replace("/opt/chat", str(tmp_path))
        snippet = snippet.replace("    su chat chat\n", "")
        conf = tmp_path / "logrotate.conf"
        conf.write_text(snippet)
        conf.chmod(0o644)
        result = subprocess.run([logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert (var / f"chat-{port}.log.1").exists()

        def new_log_has_the_request() -> bool:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?after-rotate", timeout=5).read()
            return log.exists() and "after-rotate" in log.read_text()

        deadline = time.monotonic() + 15
        while not new_log_has_the_request():
            assert time.monotonic() < deadline, "the server did not reopen its log after USR1"
            time.sleep(0.2)
    finally:
        run_cli(env, "stop")


def _readme_nginx_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Behind nginx"):]
    section = section[:section.index("\n## ", 4)]
    return re.findall(r"```nginx\n(.*?)```", section, re.S)


def test_nginx_files_are_the_readmes_recipes() -> None:
    """deploy/nginx-legacy.conf and deploy/nginx.conf are the README's blocks (which tests/test_nginx.py runs)."""
    legacy, recommended = _readme_nginx_blocks()
    assert (DEPLOY / "nginx-legacy.conf").read_text() == legacy
    assert (DEPLOY / "nginx.conf").read_text() == recommended


@pytest.mark.parametrize("document", ["README.md", "docs/protocol.md", "CHANGELOG.md"])
def test_links_and_cited_paths_exist(document: str) -> None:
    """Every relative link, and every repository path a document cites in backticks, exists."""
    text = (ROOT / document).read_text()
    base = (ROOT / document).parent
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (base / target).exists(), f"{document} links to {target}, which does not exist"
    for found in re.finditer(r"(\w+ )?`((?:service|tests|deploy|docs|sql|bench|scripts|shared)/[\w./-]+\.\w+)`", text):
        if found[1] in ("add ", "create "):  # a file the reader is told to write
            continue
        assert (ROOT / found[2]).exists(), f"{document} cites {found[2]}, which is not in the repository"
