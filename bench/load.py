"""The load: connections that speak the legacy protocol, paced or closed-loop senders, and the bookkeeping.

Every message carries its sender, a per-sender sequence number and the send time (perf_counter_ns) in its
content, so each receipt gives a latency and lets each receiver count what it lost or got twice.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from .wsclient import WsClient, connect

perf_ns = time.perf_counter_ns


def percentile(sorted_values: list[int], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest rank; 0 for none."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


@dataclass
class Tally:
    """What one measured interval saw."""

    sent: int = 0
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    reordered: int = 0  # receipts whose sender sequence went backwards at that receiver
    errors: int = 0
    latencies: list[int] = field(default_factory=list)
    started: int = 0
    stopped: int = 0  # when sending stopped
    last_receipt: int = 0

    def summary(self, offered: float | None = None) -> dict[str, float]:
        lat = sorted(self.latencies)
        seconds = max(1e-9, (self.stopped - self.started) / 1e9)
        span = max(seconds, (self.last_receipt - self.started) / 1e9) if self.last_receipt else seconds
        receivers = self.expected / self.sent if self.sent else 1
        return {
            "offered_msg_s": round(offered if offered is not None else self.sent / seconds, 1),
            "sent_msg_s": round(self.sent / seconds, 1),
            "delivered_msg_s": round(self.received / receivers / span, 1),
            "receipts_s": round(self.received / span, 1),
            "p50_ms": round(percentile(lat, 50) / 1e6, 3),
            "p95_ms": round(percentile(lat, 95) / 1e6, 3),
            "p99_ms": round(percentile(lat, 99) / 1e6, 3),
            "p999_ms": round(percentile(lat, 99.9) / 1e6, 3),
            "max_ms": round((lat[-1] if lat else 0) / 1e6, 3),
            "sent": self.sent,
            "received": self.received,
            "lost": max(0, self.expected - self.received),
            "duplicated": self.duplicates,
            "reordered": self.reordered,
            "errors": self.errors,
        }


class Peer:
    """One connection: a request/answer mode for setup, then a measurement mode that tallies receipts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.ws: WsClient | None = None
        self.inbox: deque[bytes] = deque()
        self.waiter: asyncio.Future | None = None
        self.session_id = 0
        self.room: list[Peer] = []
        self.seq = 0
        self.seen: set[int] = set()
        self.last_seq: dict[int, int] = {}  # sender index -> highest sequence received from it
        self.connection_id = ""
        self.tally: Tally | None = None
        self.on_own: Callable[[], None] | None = None  # closed loop: called when our own message comes back
        self.chat = True

    async def open(self, host: str, port: int, path: str = "/", greeted: bool = True) -> Peer:
        """Connect; the chat route greets with `connected`, echo servers say nothing first."""
        self.ws = await connect(host, port, path, self._setup_message)
        if greeted:
            self.connection_id = (await self.expect(b"connected")).get("connection_id", "")
        return self

    @property
    def node(self) -> str:
        """The worker process this connection landed on (connection ids are NODE-SEQUENCE)."""
        return self.connection_id.rsplit("-", 1)[0]

    def _setup_message(self, data: bytes) -> None:
        self.inbox.append(data)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def expect(self, kind: bytes, timeout: float = 30.0) -> dict:
        """The next frame of type `kind` (b"" = the next frame of any kind); an error frame raises."""
        marker = b'"type":"' + kind + b'"'
        deadline = time.monotonic() + timeout
        while True:
            while self.inbox:
                data = self.inbox.popleft()
                if not kind:  # any message
                    return {}
                if marker in data:
                    return orjson.loads(data)
                if b'"type":"error"' in data:
                    raise RuntimeError(f"server refused: {data.decode(errors='replace')}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind.decode()} within {timeout}s")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, left)
            except TimeoutError:
                pass

    async def request(self, obj: dict, kind: bytes) -> dict:
        self.ws.send(orjson.dumps(obj))
        return await self.expect(kind)

    async def auth(self, user_id: int) -> None:
        await self.request({"type": "auth", "user_id": user_id}, b"auth_success")

    async def join(self, session_id: int) -> None:
        await self.request({"type": "join_session", "session_id": session_id}, b"joined_session")
        self.session_id = session_id

    # -- measurement --------------------------------------------------------------------------------

    def measure(self, tally: Tally, chat: bool = True) -> None:
        self.tally = tally
        self.chat = chat
        self.ws.on_message = self._chat_receipt if chat else self._echo_receipt

    def send(self) -> None:
        """One message into our session (chat) or to the echo (echo path)."""
        self.seq += 1
        content = f"{self.index} {self.seq} {perf_ns()}"
        if self.chat:
            self.ws.send(orjson.dumps({"type": "send_message", "session_id": self.session_id, "content": content}))
        else:
            self.ws.send(content.encode())
        tally = self.tally
        tally.sent += 1
        tally.expected += len(self.room) if self.chat else 1

    def _chat_receipt(self, data: bytes) -> None:
        now = perf_ns()
        tally = self.tally
        try:
            message = orjson.loads(data)
            content = message["message"]["content"]
        except (ValueError, KeyError, TypeError):
            tally.errors += 1
            return
        self._count(content, now, tally)

    def _echo_receipt(self, data: bytes) -> None:
        self._count(data.decode(), perf_ns(), self.tally)

    def _count(self, content: str, now: int, tally: Tally) -> None:
        sender, seq, sent_at = content.split(" ")
        sender_index, number = int(sender), int(seq)
        key = sender_index << 32 | number
        if key in self.seen:
            tally.duplicates += 1
            return
        self.seen.add(key)
        if number < self.last_seq.get(sender_index, 0):
            tally.reordered += 1
        else:
            self.last_seq[sender_index] = number
        tally.received += 1
        tally.last_receipt = now
        tally.latencies.append(now - int(sent_at))
        if self.on_own is not None and int(sender) == self.index:
            self.on_own()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


async def gather_bounded(coros, limit: int = 200) -> list:
    """Run coroutines with at most `limit` at once (handshakes), in order."""
    sem = asyncio.Semaphore(limit)

    async def one(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def drain(tally: Tally, timeout: float) -> None:
    """Wait until every expected receipt arrived, or `timeout`."""
    deadline = time.monotonic() + timeout
    while tally.received < tally.expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def paced(senders: list[Peer], rate: float, seconds: float, tally: Tally) -> None:
    """Send at `rate` messages/s in total, round robin over `senders`, for `seconds` (open loop)."""
    n = len(senders)
    i = 0
    tally.started = start = perf_ns()
    end = start + int(seconds * 1e9)
    while True:
        now = perf_ns()
        if now >= end:
            break
        due = int(rate * (now - start) / 1e9) - tally.sent
        for _ in range(due):
            senders[i].send()
            i = i + 1 if i + 1 < n else 0
        await asyncio.sleep(0.001)
    tally.stopped = perf_ns()


async def closed_loop(peers: list[Peer], in_flight: int, seconds: float, tally: Tally) -> None:
    """Each peer keeps `in_flight` of its own messages outstanding, for `seconds`."""
    tally.started = perf_ns()
    stop = [False]

    def make_next(peer: Peer) -> Callable[[], None]:
        def next_message() -> None:
            if not stop[0]:
                peer.send()

        return next_message

    for peer in peers:
        peer.on_own = make_next(peer)
    for peer in peers:
        for _ in range(in_flight):
            peer.send()
    await asyncio.sleep(seconds)
    stop[0] = True
    tally.stopped = perf_ns()
    for peer in peers:
        peer.on_own = None


class CpuClock:
    """CPU seconds of this process (the generator) and of given processes over an interval."""

    def __init__(self, processes=()) -> None:
        self.processes = list(processes)
        self.t0 = time.monotonic()
        self.self0 = self._self()
        self.others0 = [self._cpu(p) for p in self.processes]

    @staticmethod
    def _self() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def _cpu(p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except Exception:
            return 0.0

    def read(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        out = {"generator_cpu_pct": round(100 * (self._self() - self.self0) / wall, 1)}
        total = 0.0
        for i, p in enumerate(self.processes):
            used = self._cpu(p) - self.others0[i]
            total += used
            out[f"worker{i}_cpu_pct"] = round(100 * used / wall, 1)
        out["server_cpu_s"] = round(total, 3)
        return out


def per_message(row: dict) -> dict:
    """Server CPU microseconds per message sent: steadier than msg/s on a shared machine."""
    if row.get("sent") and "server_cpu_s" in row:
        row["server_us_per_msg"] = round(row["server_cpu_s"] * 1e6 / row["sent"], 1)
    return row
