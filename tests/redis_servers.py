"""Throwaway Redis servers for tests: a plain one, and a real 3-master Redis Cluster on loopback.

Each server runs in its own process group on a free port with no persistence beyond the cluster's
nodes.conf (so a master killed and started again on its port rejoins with its slots). Never the shared 6379.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import IN_CI, free_port


def need_redis_server() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if IN_CI:
            pytest.fail("redis-server / redis-cli are not installed (CI=true: these tests must run)")
        pytest.skip("redis-server is not installed")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_until_true(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # polling against the deadline
    raise RuntimeError(f"not within {timeout}s: {what}")


class RedisProcess:
    """A throwaway redis-server on a free port, in its own process group."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"),
             *self.extra],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until_true(lambda: _answers(self.port), timeout, f"redis-server on {self.port} answers")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too; both below 65536."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three masters, no replicas, every slot covered; `restart(i)` kills master i and starts it again."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [
            RedisProcess(directory / f"node{i}", cluster_port(), "--cluster-enabled", "yes", "--cluster-config-file",
                         "nodes.conf", "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no")
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        result = subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        wait_until_true(self.healthy, 30, "cluster_state:ok on every node")
        return self

    def healthy(self) -> bool:
        for node in self.nodes:
            info = subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "info"], capture_output=True,
                                  text=True, timeout=10).stdout
            if "cluster_state:ok" not in info:
                return False
        return True

    def restart(self, index: int, down_for: float) -> None:
        """SIGKILL master `index`, keep it down `down_for` seconds (traffic goes on), start it on its port."""
        self.nodes[index].stop()
        time.sleep(down_for)  # the outage itself: its length is the point of the test
        self.nodes[index].start()
        wait_until_true(self.healthy, 30, "cluster_state:ok again")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
