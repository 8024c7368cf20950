"""Time every report view on the configured database: a one-day question and the whole range, best of N.

    DATABASE_URL=mysql+pymysql://root@127.0.0.1/chat_bench_reports .venv/bin/python scripts/report_timings.py

Prints, per view: rows and seconds for `WHERE day = <busiest day>` and for the whole view, and the indexes
EXPLAIN shows for the one-day question. "mysql" is the wall time of the `mysql` command-line client running
the query to /dev/null (process start included, ~10 ms), "python" fetches every row into Python objects
with PyMySQL (slow for 100k rows: that is PyMySQL's decoding, not the database).
Fill the database first with `python -m service demo-data`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from service.config import load_settings  # noqa: E402
from service.storage.reports import VIEW_QUESTIONS  # noqa: E402


def best_of(conn, sql: str, params: dict, runs: int) -> tuple[int, float, float]:
    """(rows, best seconds with the mysql client, best seconds with PyMySQL)."""
    url = conn.engine.url
    literal = sql.replace(":day", f"'{params['day']}'") if params else sql
    command = ["mysql", "-h", url.host or "127.0.0.1", "-P", str(url.port or 3306), "-u", url.username or "root",
               url.database, "-e", literal]
    env = dict(os.environ, MYSQL_PWD=url.password or "")
    best_cli = best_python = float("inf")
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        best_cli = min(best_cli, time.perf_counter() - started)
        started = time.perf_counter()
        rows = len(conn.execute(text(sql), params).all())
        best_python = min(best_python, time.perf_counter() - started)
    return rows, best_cli, best_python


def main(runs: int = 3) -> None:
    engine = create_engine(load_settings().database_url)
    with engine.connect() as conn:
        sessions = conn.execute(text("SELECT COUNT(*) FROM chat_sessions")).scalar()
        messages = conn.execute(text("SELECT COUNT(*) FROM chat_messages")).scalar()
        day = conn.execute(
            text("SELECT day FROM report_messages_daily ORDER BY messages DESC LIMIT 1")
        ).scalar()
        print(f"{sessions} sessions, {messages} messages; one-day question on the busiest day {day}; best of {runs}")
        print(f"{'view':28} {'one day: rows mysql python':>28} {'whole: rows mysql python':>33}  index (one day)")
        for name, (one_day, whole) in VIEW_QUESTIONS.items():
            params = {"day": day} if ":day" in one_day else {}
            rows_day, s_day, c_day = best_of(conn, one_day, params, runs)
            rows_all, s_all, c_all = best_of(conn, whole, {}, runs)
            plan = conn.execute(text("EXPLAIN " + one_day), params).mappings().all()
            keys = sorted({f"{p['table']}:{p['key']}" for p in plan if p["key"]})
            print(f"{name:28} {rows_day:10} {s_day:7.3f}s {c_day:6.3f}s {rows_all:12} {s_all:7.3f}s {c_all:6.3f}s"
                  f"  {', '.join(keys)}")


if __name__ == "__main__":
    main()
