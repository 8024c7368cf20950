"""`python -m bench <scenario> [options]`: run a scenario and print one result row per line (and --json).

`python -m bench suite` runs every scenario and baseline in one go; `python -m bench report FILE` tabulates.

The generator pins itself to --client-cpus (core 1), the servers it starts run under taskset on
--server-cpus (core 0); every socket is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import uvloop

from .scenarios import AGENT_ID, SCENARIOS
from .services import pin_self

DEFAULTS = {  # per scenario: sessions, rate, duration
    "throughput": {"sessions": 200, "rate": 1000, "duration": 3.0},
    "latency": {"sessions": 200, "rate": 1000, "duration": 10.0},
    "fanout": {"sessions": 1, "rate": 20, "duration": 5.0},
    "fairness": {"duration": 5.0},
    "stack": {"duration": 5.0},
    "idle": {},
    "insert-baseline": {"duration": 3.0},
    "writer": {"sessions": 400, "duration": 5.0},
    "replay": {"sessions": 1000, "duration": 6.0},
    "routing": {"sessions": 50, "rate": 2000, "duration": 5.0},
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--url", help="target a running service (ws://127.0.0.1:PORT) instead of starting one")
    p.add_argument("--agent-id", type=int, default=AGENT_ID,
                   help="the agent user the sessions' agents sign in as (started services register it; with --url "
                        "register it on the target first: python -m service agent add ID)")
    p.add_argument("--db", choices=("sqlite", "mariadb"), default="sqlite", help="database of the started service")
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers of the started service")
    p.add_argument("--redis", action="store_true", help="give the started service REDIS_URL (cross-worker fan-out)")
    p.add_argument("--server-cpus", default="0", help="taskset CPU list for servers we start (default 0)")
    p.add_argument("--client-cpus", default="1", help="CPU list this generator pins itself to (default 1)")
    p.add_argument("--sessions", type=int, help="sessions (customer + agent each); replay: messages replayed")
    p.add_argument("--rate", type=float, help="offered messages/s (start rate of the throughput ramp)")
    p.add_argument("--duration", type=float, help="seconds measured (per step for throughput)")
    p.add_argument("--runs", type=int, default=1, help="repeat and report the median of each figure")
    p.add_argument("--factor", type=float, default=1.25, help="throughput: rate multiplier per step")
    p.add_argument("--max-rate", type=float, default=200_000, help="throughput: stop ramping here")
    p.add_argument("--p99-limit", type=float, default=50.0, help="throughput: a step holds while p99 <= this (ms)")
    p.add_argument("--agents", type=int, default=500, help="fanout: agents in the one session")
    p.add_argument("--connections", type=int, default=10_000, help="idle: connections to open")
    p.add_argument("--baseline", choices=("gevent", "websockets"), help="idle: measure a baseline echo server instead")
    p.add_argument("--concurrency", type=int, default=200, help="idle: handshakes in flight")
    p.add_argument("--clients", type=int, default=100, help="fairness/stack: clients")
    p.add_argument("--in-flight", type=int, help="fairness/stack: messages each client keeps outstanding")
    p.add_argument("--servers", default="service,gevent,websockets,trivial",
                   help="stack: comma list of service, gevent (b), websockets (c), trivial (generator ceiling)")
    p.add_argument("--hostile", type=int, default=5, help="replay: sockets that never read and ask for replays")
    p.add_argument("--replays", type=int, default=3, help="replay: replays each hostile socket asks for")
    p.add_argument("--content-chars", type=int, default=5000, help="replay: emoji per replayed message")
    p.add_argument("--worker-counts", default="1,2,4", help="routing: worker counts of the table")
    p.add_argument("--compare", default="",
                   help="routing: comma list of other checkouts (e.g. /work/main) measured side by side")
    p.add_argument("--no-bystander", dest="bystander", action="store_false",
                   help="routing: skip the bystander measurement")
    p.add_argument("--profile", metavar="DIR", help="py-spy the workers during the measured interval into DIR")
    p.add_argument("--json", help="append result rows to this JSON-lines file")
    p.add_argument("-v", "--verbose", action="store_true", help="print every run and ramp step")
    opts = p.parse_args(argv)
    for key, value in DEFAULTS[opts.scenario].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.sessions = opts.sessions or 100
    opts.rate = opts.rate or 1000.0
    opts.duration = opts.duration or 5.0
    opts.in_flight = opts.in_flight or {"fairness": 4, "routing": 2}.get(opts.scenario, 1)
    if opts.scenario == "routing" and opts.connections == 10_000:
        opts.connections = 1000  # the bystander's idle connections
    opts.servers = [s for s in opts.servers.split(",") if s]
    if opts.workers > 1 and not opts.redis and not opts.url:
        p.error("--workers > 1 needs --redis (the service refuses to start otherwise)")
    return opts


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["suite"]:
        from .suite import run_suite

        return run_suite(argv[1:])
    if argv[:1] == ["report"]:
        from .suite import report

        print(report(argv[1]))
        return 0
    opts = parse(argv)
    pin_self(opts.client_cpus)
    raise_nofile()
    started = time.time()
    rows = uvloop.run(SCENARIOS[opts.scenario](opts))
    for row in rows:
        row["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        print(json.dumps(row, ensure_ascii=False))
    if opts.json:
        with open(opts.json, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
