"""The service's message writer alone: SENDERS greenlets each storing messages one after another.

It measures the storage half of the chat path without sockets: group commit, the writer's own connections
and (on MariaDB) the one-query batch. Runs in a process of its own, monkey-patched like a worker, and
prints one JSON line.

    python -m bench.writer_loop DATABASE_URL SENDERS SECONDS
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from flask import Flask  # noqa: E402

from service.config import load_settings  # noqa: E402
from service.storage import MessageWriter, NewMessage, init_storage  # noqa: E402

WARM_UP = 1.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(database_url: str, senders: int, seconds: float) -> dict[str, float]:
    settings = load_settings({"DATABASE_URL": database_url}, environ={})
    storage = init_storage(Flask("bench-writer"), settings)
    writer = MessageWriter(storage, settings.writer_batch, settings.writer_concurrency)
    base = int(time.time() * 1000) % 10**9 * 1000
    sessions = [storage.open_session(base + n)[0] for n in range(senders)]
    stored = [0]
    running = [True]

    def sender(n: int) -> None:
        session = sessions[n]
        role = "agent" if n % 2 else "customer"  # half of them answer: first responses and agent counts too
        while running[0]:
            writer.store(NewMessage(session.id, session.user_id, role, f"message {stored[0]} 你好", storage.now()))
            stored[0] += 1

    greenlets = [gevent.spawn(sender, n) for n in range(senders)]
    gevent.sleep(WARM_UP)
    count0, cpu0, wall0 = stored[0], cpu_seconds(), time.perf_counter()
    gevent.sleep(seconds)
    count1, cpu1, wall1 = stored[0], cpu_seconds(), time.perf_counter()
    running[0] = False
    gevent.joinall(greenlets, timeout=10)
    writer.stop()
    n = count1 - count0
    return {"senders": senders, "msg_s": round(n / (wall1 - wall0), 1),
            "cpu_pct": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
            "us_per_msg": round(1e6 * (cpu1 - cpu0) / max(1, n), 1)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
