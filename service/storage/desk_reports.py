"""The agent desk's report figures (API and CLI), the same definitions as the views report_desk_daily and
report_agent_load_hourly in sql/reports.sql, computed with portable SQL so SQLite answers them too.

- Time in queue: first assignment (chat_sessions.assigned_at) minus opening, for sessions opened in the range.
- Transfers and requeues: chat_session_events of those kinds that happened in the range.
- Idle closes: sessions opened in the range and closed by the idle sweeper (close_reason 'idle').
- Load over time: chat_agent_load samples (one per agent and minute) in the range, per agent and hour.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, select

from .models import agent_load_table, agents_table, events_table, sessions_table
from .queries import Storage
from .reports import average

DESK_FIGURES = ("sessions_opened", "sessions_assigned", "queue_avg_seconds", "queue_max_seconds", "transfers",
                "requeued", "idle_closes")


def _bounds(first: date, last: date) -> tuple[datetime, datetime]:
    return datetime.combine(first, time.min), datetime.combine(last + timedelta(days=1), time.min)


class DeskReports:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def desk(self, first: date, last: date) -> dict[str, Any]:
        """Per day and in total: queue times, transfers, requeues, idle closes; per agent: load over time."""
        start, end = _bounds(first, last)
        s, e, lt, a = sessions_table.c, events_table.c, agent_load_table.c, agents_table.c
        with self.storage.connect() as conn:
            sessions = conn.execute(select(s.created_at, s.assigned_at, s.close_reason).where(
                and_(s.created_at >= start, s.created_at < end))).all()
            events = conn.execute(select(e.created_at, e.event).where(
                and_(e.event.in_(("transferred", "requeued")), e.created_at >= start, e.created_at < end))).all()
            samples = conn.execute(select(lt.sampled_at, lt.agent_id, lt.status, lt.load, lt.capacity).where(
                and_(lt.sampled_at >= start, lt.sampled_at < end))).all()
            names = dict(conn.execute(select(a.user_id, a.display_name)).all())
        days: dict[date, dict[str, list]] = defaultdict(lambda: {"opened": [], "waits": [], "idle": [],
                                                                  "transferred": [], "requeued": []})
        for created_at, assigned_at, reason in sessions:
            bucket = days[created_at.date()]
            bucket["opened"].append(1)
            if assigned_at is not None:
                bucket["waits"].append(max(0, int((assigned_at - created_at).total_seconds())))
            if reason == "idle":
                bucket["idle"].append(1)
        for created_at, event in events:
            days[created_at.date()][event].append(1)

        def figures(buckets: list[dict[str, list]]) -> dict[str, Any]:
            waits = [w for b in buckets for w in b["waits"]]
            return {"sessions_opened": sum(len(b["opened"]) for b in buckets), "sessions_assigned": len(waits),
                    "queue_avg_seconds": average(waits), "queue_max_seconds": max(waits) if waits else None,
                    "transfers": sum(len(b["transferred"]) for b in buckets),
                    "requeued": sum(len(b["requeued"]) for b in buckets),
                    "idle_closes": sum(len(b["idle"]) for b in buckets)}

        hourly: dict[tuple[date, int, int], list] = defaultdict(list)
        for sampled_at, agent_id, status, load, capacity in samples:
            hourly[(sampled_at.date(), sampled_at.hour, agent_id)].append((status, load, capacity))
        load = [{"day": day.isoformat(), "hour": hour, "agent_id": agent_id, "display_name": names.get(agent_id),
                 "samples": len(rows), "online_samples": sum(1 for r in rows if r[0] == "online"),
                 "load_avg": average([r[1] for r in rows]), "load_max": max(r[1] for r in rows),
                 "capacity": max(r[2] for r in rows)}
                for (day, hour, agent_id), rows in sorted(hourly.items())]
        per_agent: dict[int, list] = defaultdict(list)
        for _sampled_at, agent_id, status, value, _capacity in samples:
            per_agent[agent_id].append((status, value))
        agents = [{"agent_id": agent_id, "display_name": names.get(agent_id), "samples": len(rows),
                   "online_samples": sum(1 for r in rows if r[0] == "online"),
                   "load_avg": average([r[1] for r in rows]), "load_max": max(r[1] for r in rows)}
                  for agent_id, rows in sorted(per_agent.items())]
        return {"from": first.isoformat(), "to": last.isoformat(),
                "days": [{"day": day.isoformat(), **figures([days[day]])} for day in sorted(days)],
                "totals": figures(list(days.values())), "agents": agents, "load": load}


