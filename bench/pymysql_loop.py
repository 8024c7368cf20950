"""Baseline (a): one PyMySQL connection, one INSERT + COMMIT per message, into the service's chat_messages.

This is the legacy design's ceiling (one blocking write per message). Prints one JSON line.

    python -m bench.pymysql_loop DATABASE SESSION_ID SECONDS
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

import pymysql


def main(database: str, session_id: int, seconds: float) -> dict[str, float]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=database,
                           charset="utf8mb4", autocommit=False)
    sql = ("INSERT INTO chat_messages (session_id, sender_id, sender_role, content, client_msg_id, created_at) "
           "VALUES (%s, %s, %s, %s, %s, %s)")
    count = 0
    durations: list[float] = []
    started = time.perf_counter()
    end = started + seconds
    with conn.cursor() as cur:
        while (t0 := time.perf_counter()) < end:
            cur.execute(sql, (session_id, 1, "user", f"baseline {count}", None,
                              datetime.now().replace(microsecond=0)))
            conn.commit()
            durations.append(time.perf_counter() - t0)
            count += 1
    elapsed = time.perf_counter() - started
    conn.close()
    durations.sort()

    def pct(q: float) -> float:  # one INSERT + COMMIT: the floor under store-before-broadcast latency
        return round(1000 * durations[min(len(durations) - 1, int(q / 100 * len(durations)))], 3)

    return {"inserts": count, "msg_s": round(count / elapsed, 1), "commit_p50_ms": pct(50),
            "commit_p99_ms": pct(99), "commit_max_ms": round(1000 * durations[-1], 3)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
