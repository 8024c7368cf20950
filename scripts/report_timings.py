"""Time every report view on the configured database: a one-day question and the whole range, best of N.

    DATABASE_URL=mysql+pymysql://root@127.0.0.1/chat_bench_reports .venv/bin/python scripts/report_timings.py

Prints, per view: rows and seconds for `WHERE day = <busiest day>` and for the whole view, and the indexes
EXPLAIN shows for the one-day question. Fill the database first with `python -m service demo-data`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from service.config import load_settings  # noqa: E402
from service.storage.reports import VIEW_QUESTIONS  # noqa: E402


def best_of(conn, sql: str, params: dict, runs: int) -> tuple[int, float]:
    best = float("inf")
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = len(conn.execute(text(sql), params).all())
        best = min(best, time.perf_counter() - started)
    return rows, best


def main(runs: int = 3) -> None:
    engine = create_engine(load_settings().database_url)
    with engine.connect() as conn:
        sessions = conn.execute(text("SELECT COUNT(*) FROM chat_sessions")).scalar()
        messages = conn.execute(text("SELECT COUNT(*) FROM chat_messages")).scalar()
        day = conn.execute(
            text("SELECT day FROM report_messages_daily ORDER BY messages DESC LIMIT 1")
        ).scalar()
        print(f"{sessions} sessions, {messages} messages; one-day question on the busiest day {day}; best of {runs}")
        print(f"{'view':30} {'one day':>18} {'whole range':>20}  indexes (one day)")
        for name, (one_day, whole) in VIEW_QUESTIONS.items():
            params = {"day": day} if ":day" in one_day else {}
            rows_day, t_day = best_of(conn, one_day, params, runs)
            rows_all, t_all = best_of(conn, whole, {}, runs)
            plan = conn.execute(text("EXPLAIN " + one_day), params).mappings().all()
            keys = sorted({f"{p['table']}:{p['key']}" for p in plan if p["key"]})
            print(f"{name:30} {rows_day:6} rows {t_day:6.3f}s {rows_all:8} rows {t_all:6.3f}s  {', '.join(keys)}")


if __name__ == "__main__":
    main()
