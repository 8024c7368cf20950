"""Real nginx (Debian package) in front of three real instances, with the configurations the README shows.

The legacy block sends `Connection: upgrade` on every request, plain HTTP included: the WebSocket chat must
work across instances through it, and a JSON POST must be answered at once, not when a timeout fires.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from traffic import clients_per_node, exchange, node_of, split_pairs, stop_all

from support import IN_CI, ROOT, Client, Server, free_port, fresh_id

LEGACY_PORTS = ("2346", "2347", "2348")


def doc_configs() -> dict[str, str]:
    """The ```nginx blocks of the README's nginx section: the legacy one first, the recommended one second."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Behind nginx"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```nginx\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the README's nginx section should hold the legacy and the recommended configuration"
    return {"legacy": blocks[0], "recommended": blocks[1]}


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        if IN_CI:
            pytest.fail("nginx is not installed (CI=true: .ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    return found


def configure(block: str, upstream_ports: list[int], listen_port: int, directory: Path) -> str:
    """The documented block with test ports, inside a foreground, unprivileged, self-contained nginx.conf."""
    for legacy, port in zip(LEGACY_PORTS, upstream_ports, strict=True):
        assert block.count(f"server 127.0.0.1:{legacy};") == 1
        block = block.replace(f"server 127.0.0.1:{legacy};", f"server 127.0.0.1:{port};")
    assert block.count("listen 80;") == 1
    block = block.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process off;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory / 'access.log'};
{temp}
{block}
}}
"""


@pytest.fixture(scope="module")
def instances(server_factory: Callable[..., Server], mariadb_url: str, redis_url: str) -> Iterator[list[Server]]:
    """Three instances of one deployment, as in the legacy layout (ports 2346-2348, here free ones)."""
    settings = {"REDIS_URL": redis_url, "REDIS_CHANNEL_PREFIX": f"test-{uuid.uuid4().hex[:8]}", "RATE_LIMIT": 0}
    servers = [server_factory(database_url=mariadb_url, **settings) for _ in range(3)]
    yield servers
    stop_all(servers)


@pytest.fixture(scope="module")
def agent_id(instances: list[Server]) -> int:
    return instances[0].add_agent(fresh_id())


@pytest.fixture(scope="module", params=["legacy", "recommended"])
def front(request: pytest.FixtureRequest, instances: list[Server], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[int]:
    """nginx on a free port with one of the documented configurations; yields its port."""
    binary = nginx_binary()
    directory = tmp_path_factory.mktemp(f"nginx-{request.param}")
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(configure(doc_configs()[request.param], [s.port for s in instances], port, directory))
    proc = subprocess.Popen([binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if request_json(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)  # polling against the deadline
        else:
            raise RuntimeError("nginx did not answer")
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def request_json(port: int, method: str, path: str, body: object = None, timeout: float = 5.0
                 ) -> tuple[int, object, float]:
    """(status, JSON or text, seconds) of one request through nginx, on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    try:
        return response.status, json.loads(raw), elapsed
    except ValueError:
        return response.status, raw.decode("utf-8", "replace"), elapsed


def open_session(port: int, customer_id: int) -> int:
    status, body, _ = request_json(port, "POST", "/api/sessions", {"user_id": customer_id})
    assert status in (200, 201), body
    assert isinstance(body, dict)
    return body["id"]


def test_websocket_chat_crosses_instances_through_nginx(front: int, agent_id: int) -> None:
    """Customers and agents on different instances behind nginx get every message once, in order."""
    by_node = clients_per_node(lambda: Client(f"ws://127.0.0.1:{front}/"), nodes=2, per_node=4)
    pairs = split_pairs(lambda cid: open_session(front, cid), agent_id, by_node)
    try:
        result = exchange(pairs, 10)
        print(f"\nnginx: {result.line()}")
        assert result.perfect, result.line()
    finally:
        for pair in pairs:
            for client in pair.clients:
                client.close()


def test_json_post_through_nginx_answers_at_once_and_reaches_every_instance(front: int, agent_id: int) -> None:
    """A POST with a JSON body through nginx is answered in well under a second, and delivered everywhere."""
    by_node = clients_per_node(lambda: Client(f"ws://127.0.0.1:{front}/"), nodes=2, per_node=1)
    (pair,) = split_pairs(lambda cid: open_session(front, cid), agent_id, by_node)
    try:
        assert node_of(pair.customer.connection_id) != node_of(pair.agent.connection_id)
        ids = []
        for n in range(5):
            status, body, elapsed = request_json(front, "POST", f"/api/sessions/{pair.session_id}/messages",
                                                 {"sender_id": agent_id, "content": f"通过 nginx {n}"})
            assert status == 201, body
            assert elapsed < 1.0, f"POST through nginx took {elapsed:.2f}s"
            assert isinstance(body, dict)
            ids.append(body["id"])
        for client in pair.clients:
            assert [client.recv_type("new_message")["message"]["id"] for _ in ids] == ids
            assert client.barrier() == []
        status, body, elapsed = request_json(front, "GET", f"/api/sessions/{pair.session_id}/messages")
        assert status == 200 and elapsed < 1.0
        assert isinstance(body, dict) and [m["id"] for m in body["messages"]] == ids
    finally:
        for client in pair.clients:
            client.close()
