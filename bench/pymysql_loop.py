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
    started = time.perf_counter()
    end = started + seconds
    with conn.cursor() as cur:
        while time.perf_counter() < end:
            cur.execute(sql, (session_id, 1, "user", f"baseline {count}", None,
                              datetime.now().replace(microsecond=0)))
            conn.commit()
            count += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return {"inserts": count, "msg_s": round(count / elapsed, 1)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
