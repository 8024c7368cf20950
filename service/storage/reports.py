"""The figures of sql/reports.sql for the API and the CLI, for a range of days (opening day of a session).

Per-day rows are read from the views on MySQL/MariaDB, so they are the views' numbers by construction.
Totals over a range and the per-agent table need medians over the whole range, which daily rows cannot give:
they come from one row per session in the range (the columns of `report_sessions`), aggregated here with
the views' definitions (in SQL on MySQL/MariaDB); on SQLite (no views: they are MySQL SQL, TIMESTAMPDIFF and
all) the per-day rows come from the same aggregation in Python. Averages are rounded like MariaDB's AVG
(4 decimals, half up), medians are the middle value or the mean of the two middle ones, so both paths give
identical numbers (tests/test_reports.py).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Integer, and_, case, cast, func, literal_column, select, text

from . import naming
from .models import agents_table, message_hourly_table, sessions_table
from .queries import Storage

ABANDON_REASONS = ("customer", "idle")
FIGURES = (
    "sessions_opened",
    "sessions_answered",
    "sessions_waiting",
    "sessions_closed",
    "sessions_abandoned",
    "frt_avg_seconds",
    "frt_median_seconds",
    "handling_avg_seconds",
    "handling_median_seconds",
)
MESSAGE_FIGURES = ("messages", "customer_messages", "agent_messages")


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """One row of `report_sessions` (the columns the aggregates need)."""

    day: date
    agent_id: int | None
    status: str
    frt_seconds: int | None
    handling_seconds: int | None
    abandoned: bool


def average(values: list[int]) -> float | None:
    """MariaDB's AVG over integers: 4 decimals, rounded half up."""
    if not values:
        return None
    return float((Decimal(sum(values)) / Decimal(len(values))).quantize(Decimal("0.0001"), ROUND_HALF_UP))


def median(values: list[int]) -> float | None:
    """The middle value, or the mean of the two middle ones (PERCENTILE_CONT(0.5))."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def number(value: Any) -> Any:
    """Decimals from the database as JSON numbers."""
    return float(value) if isinstance(value, Decimal) else value


def figures(rows: Iterable[SessionFacts]) -> dict[str, Any]:
    """The session figures of report_sessions_daily for any group of sessions."""
    rows = list(rows)
    frt = [r.frt_seconds for r in rows if r.frt_seconds is not None]
    handling = [r.handling_seconds for r in rows if r.handling_seconds is not None]
    return {
        "sessions_opened": len(rows),
        "sessions_answered": len(frt),
        "sessions_waiting": sum(1 for r in rows if r.status == "active" and r.frt_seconds is None),
        "sessions_closed": sum(1 for r in rows if r.status == "closed"),
        "sessions_abandoned": sum(1 for r in rows if r.abandoned),
        "frt_avg_seconds": average(frt),
        "frt_median_seconds": median(frt),
        "handling_avg_seconds": average(handling),
        "handling_median_seconds": median(handling),
    }


def group(rows: Iterable[SessionFacts], key: Callable[[SessionFacts], Hashable]) -> dict[Hashable, dict[str, Any]]:
    groups: dict[Hashable, list[SessionFacts]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return {k: figures(v) for k, v in groups.items()}


class Reports:
    """Read-only report queries over the service's engine."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.mysql = storage.engine.dialect.name in ("mysql", "mariadb")

    def _seconds(self, start, end):
        if self.mysql:
            return func.timestampdiff(literal_column("SECOND"), start, end)
        return cast(func.strftime("%s", end), Integer) - cast(func.strftime("%s", start), Integer)

    def _in_range(self, column, first: date, last: date):
        return and_(column >= first, column <= last)

    # -- the raw material ----------------------------------------------------------------------------------

    def session_facts(self, first: date, last: date) -> list[SessionFacts]:
        s = sessions_table.c
        query = select(
            s.created_day,
            s.agent_id,
            s.status,
            self._seconds(s.created_at, s.first_response_at).label("frt"),
            self._seconds(s.created_at, s.closed_at).label("handling"),
            s.close_reason,
            s.first_response_at,
        ).where(self._in_range(s.created_day, first, last))
        with self.storage.connect() as conn:
            rows = conn.execute(query).all()
        return [
            SessionFacts(
                day=_day(r.created_day),
                agent_id=r.agent_id,
                status=r.status,
                frt_seconds=None if r.frt is None else int(r.frt),
                handling_seconds=None if r.handling is None else int(r.handling),
                abandoned=r.close_reason in ABANDON_REASONS and r.first_response_at is None,
            )
            for r in rows
        ]

    def message_counts(self, first: date, last: date) -> list[tuple[date, str, int, int]]:
        """(day, sender_role, sender_id, messages) for the range, from chat_message_hourly."""
        h = message_hourly_table.c
        query = (
            select(h.day, h.sender_role, h.sender_id, func.sum(h.messages))
            .where(self._in_range(h.day, first, last))
            .group_by(h.day, h.sender_role, h.sender_id)
        )
        with self.storage.connect() as conn:
            return [(_day(d), role, sender, int(n)) for d, role, sender, n in conn.execute(query).all()]

    def range_figures(self, first: date, last: date, by_agent: bool) -> dict[Any, dict[str, Any]]:
        """The figures of report_sessions_daily over a whole range (key None), or per agent (key agent_id).

        MySQL/MariaDB: one query on report_sessions (medians with ROW_NUMBER/COUNT windows). SQLite:
        the same definitions applied in Python to one row per session.
        """
        if not self.mysql:
            facts = self.session_facts(first, last)
            if by_agent:
                return group([r for r in facts if r.agent_id is not None], lambda r: r.agent_id)
            return {None: figures(facts)}
        key = "r.agent_id" if by_agent else "NULL"
        part = "PARTITION BY r.agent_id" if by_agent else ""
        sql = f"""
            SELECT x.k AS k,
                COUNT(*) AS sessions_opened,
                COALESCE(SUM(x.answered), 0) AS sessions_answered,
                COALESCE(SUM(CASE WHEN x.status = 'active' AND x.answered = 0 THEN 1 ELSE 0 END), 0)
                    AS sessions_waiting,
                COALESCE(SUM(CASE WHEN x.status = 'closed' THEN 1 ELSE 0 END), 0) AS sessions_closed,
                COALESCE(SUM(x.abandoned), 0) AS sessions_abandoned,
                AVG(x.frt_seconds) AS frt_avg_seconds,
                AVG(CASE WHEN x.frt_rank IN (FLOOR((x.frt_count + 1) / 2), CEIL((x.frt_count + 1) / 2))
                    THEN x.frt_seconds END) AS frt_median_seconds,
                AVG(x.handling_seconds) AS handling_avg_seconds,
                AVG(CASE WHEN x.handling_rank IN (FLOOR((x.handling_count + 1) / 2), CEIL((x.handling_count + 1) / 2))
                    THEN x.handling_seconds END) AS handling_median_seconds
            FROM (
                SELECT {key} AS k, r.status, r.answered, r.abandoned, r.frt_seconds, r.handling_seconds,
                    ROW_NUMBER() OVER ({part} ORDER BY r.frt_seconds IS NULL, r.frt_seconds) AS frt_rank,
                    COUNT(r.frt_seconds) OVER ({part}) AS frt_count,
                    ROW_NUMBER() OVER ({part} ORDER BY r.handling_seconds IS NULL, r.handling_seconds) AS handling_rank,
                    COUNT(r.handling_seconds) OVER ({part}) AS handling_count
                FROM {naming.name('report_sessions')} r
                WHERE r.day BETWEEN :first AND :last {"AND r.agent_id IS NOT NULL" if by_agent else ""}
            ) x
            GROUP BY x.k"""
        rows = self._view(sql, first=first, last=last)
        result = {row.pop("k"): {name: _integral(name, row[name]) for name in FIGURES} for row in rows}
        if not by_agent and None not in result:
            result[None] = figures([])
        return result

    def _view(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.storage.connect() as conn:
            return [{k: number(v) for k, v in row._mapping.items()} for row in conn.execute(text(sql), params)]

    # -- what the API and the CLI show ---------------------------------------------------------------------

    def summary(self, first: date, last: date) -> dict[str, Any]:
        """Per-day rows (report_sessions_daily + report_messages_daily), range totals, sessions waiting now."""
        counts = self.message_counts(first, last)
        messages: dict[date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(MESSAGE_FIGURES, 0))
        for day, role, _sender, n in counts:
            messages[day]["messages"] += n
            if role in ("customer", "agent"):
                messages[day][f"{role}_messages"] += n
        if self.mysql:
            sessions = {
                _day(row.pop("day")): {name: _integral(name, row[name]) for name in FIGURES}
                for row in self._view(
                    f"SELECT * FROM {naming.name('report_sessions_daily')} WHERE day BETWEEN :first AND :last",
                    first=first, last=last,
                )
            }
            from_views = self._view(
                f"SELECT * FROM {naming.name('report_messages_daily')} WHERE day BETWEEN :first AND :last",
                first=first, last=last,
            )
            messages = {_day(row.pop("day")): {n: int(row[n]) for n in MESSAGE_FIGURES} for row in from_views}
        else:
            sessions = group(self.session_facts(first, last), lambda r: r.day)  # type: ignore[assignment]
        days = []
        for day in sorted(set(sessions) | set(messages)):
            row = {"day": day.isoformat()}
            row.update(sessions.get(day) or figures([]))
            row.update(messages.get(day) or dict.fromkeys(MESSAGE_FIGURES, 0))
            days.append(row)
        totals = self.range_figures(first, last, by_agent=False)[None]
        for name in MESSAGE_FIGURES:
            totals[name] = sum(d[name] for d in days)
        return {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "days": days,
            "totals": totals,
            "waiting_now": self.waiting_now(),
        }

    def waiting_now(self) -> dict[str, Any]:
        """Open sessions with no agent reply, on any day (report_waiting_sessions), and the longest wait."""
        s = sessions_table.c
        query = select(func.count(), func.min(s.created_at)).where(
            and_(s.status == "active", s.first_response_at.is_(None))
        )
        with self.storage.connect() as conn:
            count, oldest = conn.execute(query).one()
        longest = int((self.storage.now() - oldest).total_seconds()) if oldest is not None else None
        return {
            "sessions": count,
            "oldest_created_at": oldest.strftime("%Y-%m-%d %H:%M:%S") if oldest else None,
            "longest_wait_seconds": longest,
        }

    def agents(self, first: date, last: date, progress: Any = None) -> dict[str, Any]:
        """One row per agent for the range: report_agent_daily's figures over the range, messages, open now.

        `progress` (service.storage.progress.Progress over AGENT_QUERIES steps) advances after each query."""
        step = progress.advance if progress is not None else (lambda n=1: None)
        by_agent = self.range_figures(first, last, by_agent=True)
        step()
        sent: dict[int, int] = defaultdict(int)
        counts = self.message_counts(first, last)
        step()
        for _, role, sender, n in counts:
            if role == "agent":
                sent[sender] += n
        a, s = agents_table.c, sessions_table.c
        with self.storage.connect() as conn:
            names = {r.user_id: r.display_name for r in conn.execute(select(a.user_id, a.display_name)).all()}
            step()
            open_now = {
                r.agent_id: (r.open_sessions, int(r.open_unanswered or 0))
                for r in conn.execute(
                    select(
                        s.agent_id,
                        func.count().label("open_sessions"),
                        func.sum(case((s.first_response_at.is_(None), 1), else_=0)).label("open_unanswered"),
                    )
                    .where(and_(s.status == "active", s.agent_id.is_not(None)))
                    .group_by(s.agent_id)
                ).all()
            }
            step()
        if progress is not None:
            progress.done()
        rows = []
        for agent_id in sorted(set(names) | set(by_agent) | set(sent)):
            row: dict[str, Any] = {"agent_id": agent_id, "display_name": names.get(agent_id)}
            row.update(
                {k: v for k, v in (by_agent.get(agent_id) or figures([])).items() if k != "sessions_opened"}
            )
            row["sessions_assigned"] = (by_agent.get(agent_id) or {}).get("sessions_opened", 0)
            row["messages"] = sent.get(agent_id, 0)
            row["open_sessions"], row["open_unanswered"] = open_now.get(agent_id, (0, 0))
            rows.append({k: row[k] for k in AGENT_COLUMNS})
        return {"from": first.isoformat(), "to": last.isoformat(), "agents": rows}


# The question each view is checked with (EXPLAIN in tests, timings in the README, "Reporting"): one day, then all.
VIEW_QUESTIONS = {
    name: (f"SELECT * FROM {name} WHERE day = :day", f"SELECT * FROM {name}")
    for name in (
        "report_sessions",
        "report_sessions_daily",
        "report_sessions_hourly",
        "report_messages_daily",
        "report_messages_hourly",
        "report_agent_daily",
        "report_agent_messages_daily",
        "report_waiting_sessions",
        "report_abandoned_sessions",
    )
}
VIEW_QUESTIONS["report_agent_workload"] = ("SELECT * FROM report_agent_workload",) * 2

AGENT_QUERIES = 4  # the queries of Reports.agents, for its progress

AGENT_COLUMNS = (
    "agent_id",
    "display_name",
    "sessions_assigned",
    "sessions_answered",
    "sessions_waiting",
    "sessions_closed",
    "sessions_abandoned",
    "frt_avg_seconds",
    "frt_median_seconds",
    "handling_avg_seconds",
    "handling_median_seconds",
    "messages",
    "open_sessions",
    "open_unanswered",
)


def _integral(name: str, value: Any) -> Any:
    """Counts as ints (MariaDB's SUM is DECIMAL), times as floats or None."""
    if value is None:
        return None
    return int(value) if name.startswith("sessions_") else float(value)


def _day(value: Any) -> date:
    """created_day as a date (SQLite hands back text for a generated column)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def parse_range(raw_from: str | None, raw_to: str | None, today: date, default_days: int = 7) -> tuple[date, date]:
    """from/to as YYYY-MM-DD (inclusive); defaults: the last `default_days` days up to today. ValueError if bad."""
    last = _iso_day(raw_to) if raw_to else today
    first = _iso_day(raw_from) if raw_from else last - timedelta(days=default_days - 1)
    if first > last:
        raise ValueError("from is after to")
    if (last - first).days > 3660:
        raise ValueError("range longer than ten years")
    return first, last


_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_day(raw: str) -> date:
    if not _ISO_DAY.fullmatch(raw):
        raise ValueError(f"{raw!r} is not a day (YYYY-MM-DD)")
    return date.fromisoformat(raw)
