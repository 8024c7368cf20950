"""`python -m bench suite [--runs N] [--quick] [--out FILE]`: every scenario and baseline, side by side in one run,
then `python -m bench report FILE` turns the JSON lines into the tables of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RAMP = ["--rate", "2000", "--factor", "1.15"]

SUITE: list[tuple[str, list[str]]] = [
    ("generator ceiling", ["stack", "--servers", "trivial"]),
    ("echo stack vs baselines (b), (c)", ["stack", "--servers", "service,gevent,websockets"]),
    ("fairness 100 x 4 (echo, chat) on SQLite", ["fairness", "--db", "sqlite"]),
    ("baseline (a)", ["insert-baseline"]),
    ("message writer alone, MariaDB", ["writer", "--db", "mariadb"]),
    ("throughput MariaDB", ["throughput", "--db", "mariadb", "--sessions", "200", *RAMP]),
    ("throughput SQLite", ["throughput", "--db", "sqlite", "--sessions", "200", *RAMP]),
    ("latency MariaDB", ["latency", "--db", "mariadb"]),
    ("latency SQLite", ["latency", "--db", "sqlite"]),
    ("fairness 100 x 4 (echo, chat) on MariaDB", ["fairness", "--db", "mariadb"]),
    ("fanout SQLite", ["fanout", "--db", "sqlite"]),
    ("fanout MariaDB", ["fanout", "--db", "mariadb"]),
    ("idle", ["idle"]),
    ("idle baseline (b)", ["idle", "--baseline", "gevent"]),
    ("idle baseline (c)", ["idle", "--baseline", "websockets"]),
    ("throughput 2 workers + Redis", ["throughput", "--db", "mariadb", "--sessions", "200", "--workers", "2",
                                      "--redis", "--server-cpus", "0,1", "--max-rate", "20000"]),
    ("latency 2 workers + Redis", ["latency", "--db", "mariadb", "--workers", "2", "--redis", "--server-cpus", "0,1"]),
]

QUICK = ["--duration", "2", "--connections", "2000"]


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def run_suite(argv: list[str]) -> int:
    from .__main__ import main

    p = argparse.ArgumentParser(prog="python -m bench suite")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=f"var/bench-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    p.add_argument("--quick", action="store_true", help="short intervals, 2,000 idle connections (a smoke run)")
    p.add_argument("--only", help="run the steps whose name contains this text")
    opts = p.parse_args(argv)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    with open(opts.out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"scenario": "machine", **machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime())}) + "\n")
    for name, args in SUITE:
        if opts.only and opts.only not in name:
            continue
        print(f"== {name}: python -m bench {' '.join(args)} --runs {opts.runs}", flush=True)
        extra = QUICK if opts.quick else []
        try:
            main([*args, "--runs", str(opts.runs), "--json", opts.out, *extra])
        except Exception as exc:  # one failed step must not lose the others; it is reported
            print(f"   failed: {exc!r}", flush=True)
            with open(opts.out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"scenario": name, "failed": repr(exc)[:500]}) + "\n")
    with open(opts.out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"scenario": "machine-end", **machine()}) + "\n")
    print(f"results: {opts.out}\n")
    print(report(opts.out))
    return 0


COLUMNS = [
    ("scenario", "scenario"), ("target", "target"), ("offered_msg_s", "offered/s"),
    ("delivered_msg_s", "delivered msg/s"),
    ("receipts_s", "receipts/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"),
    ("max_ms", "max ms"), ("lost", "lost"), ("duplicated", "dup"), ("errors", "err"),
    ("server_us_per_msg", "server µs/msg"), ("worker0_cpu_pct", "worker CPU %"), ("generator_cpu_pct", "gen CPU %"),
    ("failed_at_msg_s", "failed at/s"), ("load_avg_1m", "load"),
]


def report(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        if row.get("scenario", "").startswith("machine"):
            out.append(f"- {row['scenario']}: nproc {row['nproc']}, {row['cpu']}, Python {row['python']}, "
                       f"load average {row['load_avg']}")
    table = [r for r in rows if not r.get("scenario", "").startswith("machine")]
    if not table:
        return "\n".join(out)
    out.append("")
    out.append("| " + " | ".join(title for _key, title in COLUMNS) + " | other |")
    out.append("|" + "---|" * (len(COLUMNS) + 1))
    known = {key for key, _title in COLUMNS} | {"sent", "received", "sent_msg_s", "date", "runs", "server_cpu_s",
                                                 "p95_ms", "failed_p99_ms", "clients", "in_flight"}
    for r in table:
        cells = [str(r.get(key, "")) for key, _title in COLUMNS]
        other = ", ".join(f"{k}={v}" for k, v in r.items() if k not in known)
        out.append("| " + " | ".join(cells) + f" | {other} |")
    return "\n".join(out)
