"""The named scenarios. Each takes the parsed options and returns a list of result rows (dicts)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from argparse import Namespace
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlparse

import orjson

from .load import CpuClock, Peer, Tally, closed_loop, drain, gather_bounded, paced, per_message, percentile, perf_ns
from .profile import Recorder
from .services import (
    ROOT,
    ChatService,
    Process,
    create_mariadb_database,
    drop_mariadb_database,
    pinned,
    start_baseline,
    start_redis,
)

AGENT_ID = 900_000_001


class Target:
    """Where the load goes: a chat service we started (and stop), or one at --url."""

    def __init__(self, opts: Namespace) -> None:
        self.opts = opts
        self.service: ChatService | None = None
        self.baseline: Process | None = None
        if opts.url:
            parsed = urlparse(opts.url)
            if parsed.hostname not in ("127.0.0.1", "localhost"):
                raise SystemExit("bench: only 127.0.0.1 targets are allowed")
            self.host, self.port = "127.0.0.1", parsed.port or 80
        else:
            self.host, self.port = "127.0.0.1", 0

    def start(self) -> Target:
        if not self.opts.url:
            self.service = ChatService(database=self.opts.db, workers=self.opts.workers, redis=self.opts.redis,
                                       cpus=self.opts.server_cpus).start()
            self.port = self.service.port
            self.service.add_agent(self.opts.agent_id)
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def workers(self) -> list:
        return self.service.process.workers() if self.service is not None else []

    def open_session(self, user_id: int) -> int:
        if self.service is not None:
            return self.service.open_session(user_id)
        import urllib.request

        req = urllib.request.Request(f"http://{self.host}:{self.port}/api/sessions", method="POST",
                                     data=json.dumps({"user_id": user_id}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read())["id"]

    def label(self) -> str:
        if self.opts.url:
            return self.opts.url
        redis = "+redis" if self.opts.redis else ""
        return f"{self.opts.db}, {self.opts.workers} worker{'s' if self.opts.workers > 1 else ''}{redis}"


@asynccontextmanager
async def target(opts: Namespace):
    t = await asyncio.to_thread(lambda: Target(opts).start())
    try:
        yield t
    finally:
        await asyncio.to_thread(t.stop)


def user_base() -> int:
    return (int(time.time()) % 100_000) * 10_000 + 1


async def chat_rooms(t: Target, sessions: int, agents_per_session: int) -> tuple[list[Peer], list[Peer]]:
    """`sessions` rooms of one customer and `agents_per_session` agents, all authenticated and joined."""
    base = user_base()
    session_ids = await asyncio.to_thread(lambda: [t.open_session(base + i) for i in range(sessions)])
    customers = [Peer(i) for i in range(sessions)]
    agents = [Peer(sessions + i) for i in range(sessions * agents_per_session)]

    async def ready(peer: Peer, user_id: int, session_id: int) -> None:
        await peer.open(t.host, t.port)
        await peer.auth(user_id)
        try:
            await peer.join(session_id)
        except RuntimeError as exc:
            if user_id == t.opts.agent_id and '"forbidden"' in str(exc):
                raise SystemExit(f"bench: user {user_id} is not an agent of {t.label()}: register it there "
                                 f"(python -m service agent add {user_id}) or pass --agent-id") from exc
            raise

    jobs = [ready(c, base + i, session_ids[i]) for i, c in enumerate(customers)]
    jobs += [ready(a, t.opts.agent_id, session_ids[i // agents_per_session]) for i, a in enumerate(agents)]
    await gather_bounded(jobs)
    for i, c in enumerate(customers):
        c.room = [c, *agents[i * agents_per_session:(i + 1) * agents_per_session]]
    return customers, agents


def measure_all(peers: list[Peer], chat: bool = True) -> Tally:
    tally = Tally()
    for p in peers:
        p.measure(tally, chat)
    return tally


def median_row(rows: list[dict]) -> dict:
    """Per-key median over repeated runs (numbers); other values from the first run."""
    keys = {key: value for row in rows for key, value in row.items()}
    out = {}
    for key, value in keys.items():
        present = [r[key] for r in rows if key in r]
        if isinstance(value, int | float) and not isinstance(value, bool):
            # A run without the figure (a ramp where no step held) counts as 0.
            out[key] = round(statistics.median([*present, *[0] * (len(rows) - len(present))]), 3)
        else:
            out[key] = present[0]
    out["runs"] = len(rows)
    return out


async def repeat(opts: Namespace, once: Callable[[], Awaitable[dict]]) -> dict:
    rows = []
    for i in range(opts.runs):
        row = await once()
        row["load_avg_1m"] = round(os.getloadavg()[0], 2)
        if opts.verbose:
            print(f"  run {i + 1}: {row}", file=sys.stderr)
        rows.append(row)
    return median_row(rows)


def close_all(peers: list[Peer]) -> None:
    for p in peers:
        p.close()


# -- scenarios ----------------------------------------------------------------------------------------


async def throughput(opts: Namespace) -> list[dict]:
    """Ramp the offered rate by --factor per step until p99 > --p99-limit ms (or loss); the last rate that held."""

    async def once() -> dict:
        async with target(opts) as t:
            customers, agents = await chat_rooms(t, opts.sessions, 1)
            rate, held, last = opts.rate, None, None
            while rate <= opts.max_rate:
                tally = measure_all(customers + agents)
                cpu = CpuClock(t.workers())
                await paced(customers, rate, opts.duration, tally)
                await drain(tally, 3.0)
                step = per_message({**tally.summary(rate), **cpu.read()})
                last = step
                if opts.verbose:
                    print(f"    step {rate:.0f}/s: {step}", file=sys.stderr)
                ok = (step["p99_ms"] <= opts.p99_limit and step["lost"] == 0 and step["errors"] == 0
                      and step["sent_msg_s"] >= 0.95 * rate)
                if not ok:
                    break
                held = step
                rate *= opts.factor
            close_all(customers + agents)
            row = dict(held or {"offered_msg_s": 0.0})
            row["failed_at_msg_s"] = last["offered_msg_s"] if last is not held and last else 0.0
            row["failed_p99_ms"] = last["p99_ms"] if last is not held and last else 0.0
            return row

    return [{"scenario": "throughput", "target": Target(opts).label(), **await repeat(opts, once)}]


async def latency(opts: Namespace) -> list[dict]:
    """--sessions rooms (customer + agent) at a fixed --rate for --duration; 1 s of warm-up not counted."""

    async def once() -> dict:
        async with target(opts) as t:
            customers, agents = await chat_rooms(t, opts.sessions, 1)
            warm = measure_all(customers + agents)
            await paced(customers, opts.rate, 1.0, warm)
            await drain(warm, 3.0)
            tally = measure_all(customers + agents)
            cpu = CpuClock(t.workers())
            recorder = Recorder(opts.profile, "latency", [p.pid for p in t.workers()], opts.duration)
            await paced(customers, opts.rate, opts.duration, tally)
            await drain(tally, 5.0)
            row = per_message({**tally.summary(opts.rate), **cpu.read()})
            await asyncio.to_thread(recorder.wait)
            close_all(customers + agents)
            return row

    return [{"scenario": "latency", "target": Target(opts).label(), **await repeat(opts, once)}]


async def fanout(opts: Namespace) -> list[dict]:
    """One session, one customer sending at --rate, --agents agents receiving."""

    async def once() -> dict:
        async with target(opts) as t:
            customers, agents = await chat_rooms(t, 1, opts.agents)
            warm = measure_all(customers + agents)
            await paced(customers, opts.rate, 1.0, warm)
            await drain(warm, 5.0)
            tally = measure_all(customers + agents)
            cpu = CpuClock(t.workers())
            await paced(customers, opts.rate, opts.duration, tally)
            await drain(tally, 5.0)
            row = per_message({"agents": opts.agents, **tally.summary(opts.rate), **cpu.read()})
            close_all(customers + agents)
            return row

    return [{"scenario": "fanout", "target": Target(opts).label(), **await repeat(opts, once)}]


async def idle(opts: Namespace) -> list[dict]:
    """--connections authenticated idle connections; the worker's RSS growth per connection."""

    def rss(t: Target) -> int:
        return sum(p.memory_info().rss for p in t.workers())

    if opts.baseline:
        return await idle_baseline(opts)

    async def once() -> dict:
        async with target(opts) as t:
            base = user_base()

            async def authed(i: int) -> Peer:
                peer = await Peer(i).open(t.host, t.port)
                await peer.auth(base + i)
                peer.inbox.clear()
                return peer

            warm = await gather_bounded([authed(i) for i in range(200)])  # warm the allocator and caches
            close_all(warm)
            await asyncio.sleep(1.0)
            before = rss(t)
            started = time.monotonic()
            peers = await gather_bounded([authed(i) for i in range(opts.connections)], limit=opts.concurrency)
            opened_s = time.monotonic() - started
            await asyncio.sleep(2.0)
            after = rss(t)
            row = {
                "connections": len(peers),
                "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
                "kb_per_connection": round((after - before) / len(peers) / 1024, 2),
                "handshakes_s": round(len(peers) / opened_s, 1),
            }
            close_all(peers)
            return row

    return [{"scenario": "idle", "target": Target(opts).label(), **await repeat(opts, once)}]


async def idle_baseline(opts: Namespace) -> list[dict]:
    """The idle measurement on a baseline echo server: each connection echoes one message, then idles."""

    async def once() -> dict:
        server = await asyncio.to_thread(start_baseline, opts.baseline, opts.server_cpus)
        try:
            rss = lambda: sum(p.memory_info().rss for p in server.workers())  # noqa: E731

            async def used(i: int) -> Peer:
                peer = await Peer(i).open("127.0.0.1", server.port, "/", greeted=False)
                peer.ws.send(b"hello")
                await peer.expect(b"", timeout=30)
                return peer

            close_all(await gather_bounded([used(i) for i in range(200)]))
            await asyncio.sleep(1.0)
            before = rss()
            peers = await gather_bounded([used(i) for i in range(opts.connections)], limit=opts.concurrency)
            await asyncio.sleep(2.0)
            after = rss()
            close_all(peers)
            return {"connections": len(peers), "rss_before_mb": round(before / 2**20, 1),
                    "rss_after_mb": round(after / 2**20, 1),
                    "kb_per_connection": round((after - before) / len(peers) / 1024, 2)}
        finally:
            await asyncio.to_thread(server.stop)

    return [{"scenario": "idle", "target": f"baseline {opts.baseline} echo", **await repeat(opts, once)}]


async def echo_clients(host: str, port: int, path: str, n: int) -> list[Peer]:
    peers = [Peer(i) for i in range(n)]
    await gather_bounded([p.open(host, port, path, greeted=False) for p in peers])
    return peers


async def chat_alone(t: Target, n: int) -> list[Peer]:
    """`n` customers, each alone in its own session (its own new_message is its round trip)."""
    customers, _ = await chat_rooms(t, n, 0)
    return customers


async def closed(peers: list[Peer], chat: bool, in_flight: int, seconds: float, workers=(), profile: str | None = None,
                 label: str = "") -> dict:
    warm = measure_all(peers, chat)
    await closed_loop(peers, in_flight, 1.0, warm)
    await drain(warm, 5.0)
    tally = measure_all(peers, chat)
    cpu = CpuClock(workers)
    recorder = Recorder(profile, label, [p.pid for p in workers], seconds)
    await closed_loop(peers, in_flight, seconds, tally)
    await drain(tally, 5.0)
    row = per_message({"clients": len(peers), "in_flight": in_flight, **tally.summary(), **cpu.read()})
    await asyncio.to_thread(recorder.wait)
    return row


async def fairness(opts: Namespace) -> list[dict]:
    """--clients clients each keeping --in-flight messages outstanding: echo path and chat path; p99.9."""
    rows = []
    for path in ("echo", "chat"):

        async def once(path: str = path) -> dict:
            async with target(opts) as t:
                if path == "echo":
                    peers = await echo_clients(t.host, t.port, "/echo", opts.clients)
                else:
                    peers = await chat_alone(t, opts.clients)
                row = await closed(peers, path == "chat", opts.in_flight, opts.duration, t.workers(), opts.profile,
                                   f"fairness-{path}")
                close_all(peers)
                return row

        rows.append({"scenario": f"fairness-{path}", "target": Target(opts).label(), **await repeat(opts, once)})
    return rows


async def stack(opts: Namespace) -> list[dict]:
    """Echo round trips, --clients x --in-flight, on the service's echo path and the baselines (b) and (c)."""
    rows = []
    for kind in opts.servers:

        async def once(kind: str = kind) -> dict:
            if kind == "service":
                async with target(opts) as t:
                    peers = await echo_clients(t.host, t.port, "/echo", opts.clients)
                    row = await closed(peers, False, opts.in_flight, opts.duration, t.workers(), opts.profile, "stack")
            else:
                server = await asyncio.to_thread(start_baseline, kind, opts.server_cpus)
                # The ceiling is measured with a deep pipeline, so that the generator, not the round trip, limits.
                in_flight = max(opts.in_flight, 16) if kind == "trivial" else opts.in_flight
                try:
                    peers = await echo_clients("127.0.0.1", server.port, "/", opts.clients)
                    row = await closed(peers, False, in_flight, opts.duration, server.workers())
                finally:
                    await asyncio.to_thread(server.stop)
            close_all(peers)
            return row

        name = {"service": "service /echo", "gevent": "(b) gevent-websocket echo",
                "websockets": "(c) websockets+uvloop echo", "trivial": "generator ceiling (trivial echo)"}[kind]
        rows.append({"scenario": f"echo-{opts.clients}x{opts.in_flight}", "target": name,
                     **await repeat(opts, once)})
    return rows


async def pymysql_baseline(opts: Namespace) -> list[dict]:
    """Baseline (a): one PyMySQL connection, INSERT + COMMIT per message, into a fresh service database."""

    async def once() -> dict:
        service = await asyncio.to_thread(lambda: ChatService(database="mariadb", cpus=opts.server_cpus).start())
        try:
            session_id = await asyncio.to_thread(service.open_session, 1)
            argv = pinned(opts.server_cpus, [sys.executable, "-m", "bench.pymysql_loop", service.db_name,
                                             str(session_id), str(opts.duration)])
            out = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
            if out.returncode:
                raise RuntimeError(out.stderr)
            return json.loads(out.stdout)
        finally:
            await asyncio.to_thread(service.stop)

    return [{"scenario": "insert-loop", "target": "(a) PyMySQL INSERT+COMMIT", **await repeat(opts, once)}]


async def writer(opts: Namespace) -> list[dict]:
    """The message writer alone (storage half of the chat path): --sessions senders storing back to back."""

    async def once() -> dict:
        service = ChatService(database=opts.db)
        if opts.db == "mariadb":
            service.db_name = await asyncio.to_thread(create_mariadb_database)
        try:
            argv = pinned(opts.server_cpus, [sys.executable, "-m", "bench.writer_loop", service.database_url,
                                             str(opts.sessions), str(opts.duration)])
            out = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
            if out.returncode:
                raise RuntimeError(out.stderr[-2000:])
            return json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            await asyncio.to_thread(service.stop)

    return [{"scenario": "writer", "target": f"{opts.db}, in-process", **await repeat(opts, once)}]


async def pings(peer: Peer, seconds: float) -> list[int]:
    """Ping round trips (ns, sorted) of `peer`, one every 20 ms for `seconds`."""
    rtts = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = perf_ns()
        await peer.request({"type": "ping"}, b"pong")
        rtts.append(perf_ns() - sent)
        await asyncio.sleep(0.02)
    return sorted(rtts)


async def replay(opts: Namespace) -> list[dict]:
    """Bystander ping round trips and the worker's memory while --hostile sockets that never read each ask for
    --replays replays of a session of REPLAY_LIMIT messages of --content-chars emoji (issue 13, item 5)."""

    def rss(t: Target) -> int:
        return sum(p.memory_info().rss for p in t.workers())

    async def once() -> dict:
        async with target(opts) as t:
            owner = user_base()
            session_id = await asyncio.to_thread(t.open_session, owner)
            seeder = await Peer(0).open(t.host, t.port)
            await seeder.auth(owner)
            content = "\U0001F600" * opts.content_chars
            messages = opts.sessions  # --sessions: messages in the replayed session
            seeder.ws.send_many([orjson.dumps({"type": "send_message", "session_id": session_id, "content": content})
                                 for _ in range(messages)])
            for _ in range(messages):
                await seeder.expect(b"new_message", timeout=120)
            seeder.close()
            bystander = await Peer(1).open(t.host, t.port)
            await bystander.auth(owner + 1)
            hostiles = []
            for i in range(opts.hostile):
                peer = await Peer(2 + i).open(t.host, t.port)
                await peer.auth(owner)
                peer.ws.transport.pause_reading()  # never reads again: the server's socket buffer fills
                hostiles.append(peer)
            await asyncio.sleep(1.0)
            quiet = await pings(bystander, 2.0)  # the same pings with nothing else going on: this machine's noise
            before = peak = rss(t)
            cpu = CpuClock(t.workers())
            rtts: list[int] = []
            join = orjson.dumps({"type": "join_session", "session_id": session_id, "last_message_id": 0})
            started = time.monotonic()
            next_replay = started
            asked = 0
            while time.monotonic() - started < opts.duration:
                now = time.monotonic()
                if asked < opts.replays and now >= next_replay:
                    for peer in hostiles:
                        if not peer.ws.transport.is_closing():
                            peer.ws.send(join)
                    asked += 1
                    next_replay = now + opts.duration / (opts.replays + 1)
                sent = perf_ns()
                await bystander.request({"type": "ping"}, b"pong")
                rtts.append(perf_ns() - sent)
                peak = max(peak, rss(t))
                await asyncio.sleep(0.02)
            figures = cpu.read()
            hostile_open = sum(not p.ws.closed.done() for p in hostiles)
            close_all(hostiles + [bystander])
            rtts.sort()
            return {
                "hostile": opts.hostile, "replays_each": opts.replays, "messages": messages,
                "content_chars": opts.content_chars, "pings": len(rtts),
                "quiet_ping_p50_ms": round(percentile(quiet, 50) / 1e6, 3),
                "quiet_ping_p99_ms": round(percentile(quiet, 99) / 1e6, 3),
                "ping_p50_ms": round(percentile(rtts, 50) / 1e6, 3),
                "ping_p99_ms": round(percentile(rtts, 99) / 1e6, 3),
                "ping_max_ms": round(rtts[-1] / 1e6, 3) if rtts else 0.0,
                "rss_before_mb": round(before / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1),
                "mb_per_hostile": round((peak - before) / max(1, opts.hostile) / 2**20, 2),
                "hostile_still_open": hostile_open,
                "worker_cpu_s": figures.get("server_cpu_s", 0.0),
            }

    return [{"scenario": "replay", "target": Target(opts).label(), **await repeat(opts, once)}]

# -- routing: the cost of a message as workers are added, and a bystander --------------------------------------


async def placed(host: str, port: int, quotas: dict[int, int], workers: int, attempts: int = 4000
                 ) -> dict[int, list[Peer]]:
    """Connections spread so that worker slot k (0..workers-1) holds quotas[k] of them.

    Workers share one listening socket and the kernel picks who accepts: connect in small batches, keep
    what fills a slot (slots are given to worker processes in the order they first show up), close the rest.
    """
    slots: dict[str, int] = {}
    out: dict[int, list[Peer]] = {k: [] for k in range(workers)}
    spare: list[Peer] = []
    index = 0
    while any(len(out[k]) < quotas[k] for k in out) and index < attempts:
        batch = [Peer(10_000 + index + i) for i in range(20)]
        index += 20
        await gather_bounded([p.open(host, port) for p in batch])
        for peer in batch:
            slot = slots.get(peer.node)
            if slot is None and len(slots) < workers:
                slot = slots[peer.node] = len(slots)
            if slot is not None and len(out[slot]) < quotas[slot]:
                out[slot].append(peer)
            else:
                spare.append(peer)
    close_all(spare)
    if any(len(out[k]) < quotas[k] for k in out):
        raise RuntimeError(f"could not place connections on {workers} workers: {[len(v) for v in out.values()]}")
    return out


async def split_rooms(service: ChatService, sessions: int, workers: int, agent_id: int
                      ) -> tuple[list[Peer], list[Peer]]:
    """`sessions` rooms whose customer is on worker i % N and agent on worker (i + 1) % N."""
    per = {k: 0 for k in range(workers)}
    for i in range(sessions):
        per[i % workers] += 1
        per[(i + 1) % workers] += 1
    pools = await placed("127.0.0.1", service.port, per, workers)
    base = user_base()
    session_ids = await asyncio.to_thread(lambda: [service.open_session(base + i) for i in range(sessions)])
    customers, agents = [], []
    for i in range(sessions):
        customer, agent = pools[i % workers].pop(), pools[(i + 1) % workers].pop()
        customer.index, agent.index = i, sessions + i
        customers.append(customer)
        agents.append(agent)

    async def ready(peer: Peer, user_id: int, session_id: int) -> None:
        await peer.auth(user_id)
        await peer.join(session_id)

    await gather_bounded([ready(c, base + i, session_ids[i]) for i, c in enumerate(customers)]
                         + [ready(a, agent_id, session_ids[i]) for i, a in enumerate(agents)])
    for c, a in zip(customers, agents, strict=True):
        c.room = [c, a]
    return customers, agents


def _tree_label(root: Path) -> str:
    return "this tree" if root == ROOT else str(root)


async def routing(opts: Namespace) -> list[dict]:
    """CPU per stored and delivered message for 1, 2, 4 workers (all workers + Redis, one core), closed loop
    of --sessions x --in-flight with customer and agent on different workers, MariaDB; then a bystander
    worker with --connections idle authenticated connections while two others carry --rate msg/s."""
    trees = [ROOT, *(Path(t) for t in opts.compare.split(",") if t)] if opts.compare else [ROOT]
    counts = [int(n) for n in opts.worker_counts.split(",")]
    redis = await asyncio.to_thread(start_redis, opts.server_cpus)
    redis_proc = redis.workers()
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    rows: list[dict] = []
    try:
        for workers in counts:  # side by side: each count for every tree before the next count
            for root in trees:

                async def once(workers: int = workers, root: Path = root) -> dict:
                    service = ChatService(database="mariadb", workers=workers, redis=workers > 1,
                                          redis_url=redis_url, cpus=opts.server_cpus, root=root)
                    await asyncio.to_thread(service.start)
                    try:
                        await asyncio.to_thread(service.add_agent, opts.agent_id)
                        customers, agents = await split_rooms(service, opts.sessions, workers, opts.agent_id)
                        peers = customers + agents
                        warm = measure_all(peers)
                        await closed_loop(customers, opts.in_flight, 1.0, warm)
                        await drain(warm, 5.0)
                        tally = measure_all(peers)
                        cpu = CpuClock([*service.process.workers(), *(redis_proc if workers > 1 else [])])
                        recorder = Recorder(opts.profile, f"routing-{workers}", [p.pid for p in
                                                                                 service.process.workers()],
                                            opts.duration)
                        await closed_loop(customers, opts.in_flight, opts.duration, tally)
                        await drain(tally, 10.0)
                        row = per_message({**tally.summary(), **cpu.read()})
                        await asyncio.to_thread(recorder.wait)
                        close_all(peers)
                        return row
                    finally:
                        await asyncio.to_thread(service.stop)

                rows.append({"scenario": "routing", "workers": workers, "tree": _tree_label(root),
                             **await repeat(opts, once)})
        if opts.bystander:
            for root in trees:
                rows.append(await bystander(opts, redis, root))
    finally:
        await asyncio.to_thread(redis.stop)
    print(routing_table(rows), file=sys.stderr)
    return rows


async def bystander(opts: Namespace, redis: Process, root: Path = ROOT) -> dict:
    """Three one-worker instances of one deployment: customers on A, agents on B at --rate msg/s, and C holding
    --connections idle authenticated connections and no member of those sessions. C's CPU is the figure."""
    db = await asyncio.to_thread(create_mariadb_database)
    prefix = f"chat-bench-{uuid.uuid4().hex[:10]}"
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    services = [ChatService(database="mariadb", redis=True, redis_url=redis_url, cpus=opts.server_cpus,
                            shared_db=db, redis_prefix=prefix, root=root) for _ in range(3)]
    try:
        for service in services:
            await asyncio.to_thread(service.start)
        await asyncio.to_thread(services[0].add_agent, opts.agent_id)
        a, b, c = services
        base = user_base()
        idle = await gather_bounded([Peer(50_000 + i).open("127.0.0.1", c.port) for i in range(opts.connections)])
        await gather_bounded([p.auth(base + 500_000 + i) for i, p in enumerate(idle)])
        session_ids = await asyncio.to_thread(lambda: [a.open_session(base + i) for i in range(opts.sessions)])
        customers = [await Peer(i).open("127.0.0.1", a.port) for i in range(opts.sessions)]
        agents = [await Peer(opts.sessions + i).open("127.0.0.1", b.port) for i in range(opts.sessions)]
        for i, (customer, agent) in enumerate(zip(customers, agents, strict=True)):
            await customer.auth(base + i)
            await customer.join(session_ids[i])
            await agent.auth(opts.agent_id)
            await agent.join(session_ids[i])
            customer.room = [customer, agent]
        peers = customers + agents
        warm = measure_all(peers)
        await paced(customers, opts.rate, 1.0, warm)
        await drain(warm, 5.0)
        tally = measure_all(peers)
        cpu = CpuClock([*a.process.workers(), *b.process.workers(), *c.process.workers()])
        await paced(customers, opts.rate, opts.duration, tally)
        await drain(tally, 10.0)
        row = {**tally.summary(opts.rate), **cpu.read()}
        close_all(peers + idle)
        return {"scenario": "routing-bystander", "tree": _tree_label(root), "idle_connections": len(idle),
                "bystander_cpu_pct": row.pop("worker2_cpu_pct"), "busy_a_cpu_pct": row.pop("worker0_cpu_pct"),
                "busy_b_cpu_pct": row.pop("worker1_cpu_pct"), **row}
    finally:
        for service in services:
            await asyncio.to_thread(service.stop)
        await asyncio.to_thread(drop_mariadb_database, db)


def routing_table(rows: list[dict]) -> str:
    """The issue's table: workers, msg/s, CPU µs per message (workers + Redis), ratio to one worker, losses."""
    lines = ["| workers | tree | msg/s | CPU µs per message | vs 1 worker | lost | duplicated | reordered |",
             "|---|---|---|---|---|---|---|---|"]
    one = {r["tree"]: r.get("server_us_per_msg", 0) for r in rows if r.get("workers") == 1}
    for r in rows:
        if r["scenario"] != "routing":
            continue
        base = one.get(r["tree"]) or 0
        ratio = f"{r['server_us_per_msg'] / base:.2f}x" if base else "-"
        redis = " + Redis" if r["workers"] > 1 else ""
        lines.append(f"| {r['workers']}{redis} | {r['tree']} | {r['delivered_msg_s']:,.0f} | "
                     f"{r['server_us_per_msg']:.0f} | {ratio} | {r['lost']} | {r['duplicated']} | "
                     f"{r['reordered']} |")
    for r in rows:
        if r["scenario"] == "routing-bystander":
            lines.append(f"\n{r['tree']}: bystander worker with {r['idle_connections']} idle authenticated "
                         f"connections: {r['bystander_cpu_pct']}% of a core while the two busy workers carried "
                         f"{r['delivered_msg_s']:,.0f} msg/s (offered {r['offered_msg_s']:,.0f}; lost {r['lost']}, "
                         f"duplicated {r['duplicated']}, reordered {r['reordered']}; busy workers "
                         f"{r['busy_a_cpu_pct']}% and {r['busy_b_cpu_pct']}%)")
    return "\n".join(lines)


SCENARIOS = {
    "throughput": throughput,
    "latency": latency,
    "idle": idle,
    "fanout": fanout,
    "fairness": fairness,
    "stack": stack,
    "insert-baseline": pymysql_baseline,
    "writer": writer,
    "replay": replay,
    "routing": routing,
}
