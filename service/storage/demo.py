"""Plausible chat traffic in bulk, for trying the reports and measuring them at volume (`demo-data`).

The shape: sessions opened over DAYS days with a daytime peak, most answered by an agent after a
log-normal first response time (median ~40 s, long tail), some abandoned (closed by the customer or the
idle sweeper with no agent reply), the newest few still open (some waiting for a reply), and M messages
shared out over the sessions, customers and agents taking turns. Rows go in with multi-row INSERTs in
batches; the database's own ids continue after what is there, so demo data can join real data.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, insert, select, text

from .models import agents_table, events_table, messages_table, sessions_table
from .progress import Progress
from .writer import hourly_upsert

BATCH = 5_000
AGENT_BASE = 900_000_000
CUSTOMER_BASE = 800_000_000
# Relative traffic per local hour: quiet nights, a morning and an evening peak.
HOUR_WEIGHTS = [1, 1, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 9, 9, 10, 10, 9, 8, 8, 8, 7, 5, 3, 2]


@dataclass(frozen=True)
class DemoSummary:
    sessions: int
    messages: int
    events: int
    agents: int
    first_day: str
    last_day: str


def generate(
    engine: Engine,
    now: datetime,
    sessions: int,
    messages: int,
    days: int = 60,
    agents: int = 20,
    seed: int = 1,
    progress: Progress | None = None,
) -> DemoSummary:
    """Insert `sessions` sessions and `messages` messages (at least one per session) ending at `now`;
    `progress` advances by the messages stored (a bar on a terminal, periodic lines otherwise)."""
    if sessions < 1 or messages < sessions:
        raise ValueError("need at least one session and at least one message per session")
    rng = random.Random(seed)
    is_mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.begin() as conn:
        if is_mysql:
            conn.execute(text("SET SESSION unique_checks = 0, foreign_key_checks = 0"))
        next_session = (conn.execute(select(func.max(sessions_table.c.id))).scalar() or 0) + 1
        agent_ids = [AGENT_BASE + i for i in range(1, agents + 1)]
        existing = select(agents_table.c.user_id).where(agents_table.c.user_id.in_(agent_ids))
        known = {r[0] for r in conn.execute(existing)}
        new_agents = [
            {"user_id": a, "display_name": f"Demo agent {a - AGENT_BASE}", "created_at": now - timedelta(days=days + 1)}
            for a in agent_ids
            if a not in known
        ]
        if new_agents:
            conn.execute(insert(agents_table), new_agents)

        counts = _message_counts(rng, sessions, messages)
        start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        span_days = days
        session_rows: list[dict] = []
        message_rows: list[dict] = []
        event_rows: list[dict] = []
        totals = {"sessions": 0, "messages": 0, "events": 0}
        hourly: Counter = Counter()

        def flush(final: bool = False) -> None:
            for table, rows, key in (
                (sessions_table, session_rows, "sessions"),
                (events_table, event_rows, "events"),
                (messages_table, message_rows, "messages"),
            ):
                if rows and (final or len(rows) >= BATCH or table is sessions_table):
                    conn.execute(insert(table), rows)
                    totals[key] += len(rows)
                    if table is messages_table:
                        if progress is not None:
                            progress.advance(len(rows))
                        for m in rows:
                            at = m["created_at"]
                            sender = m["sender_id"] if m["sender_role"] == "agent" else 0
                            hourly[(at.date(), at.hour, m["sender_role"], sender)] += 1
                    rows.clear()
            if final:
                counts = [{"day": d, "hour": h, "sender_role": r, "sender_id": s, "messages": n}
                          for (d, h, r, s), n in sorted(hourly.items())]
                for i in range(0, len(counts), BATCH):
                    conn.execute(hourly_upsert(engine.dialect.name), counts[i : i + BATCH])
            if progress is not None and final:
                progress.done()

        opened_times = sorted(_opening_time(rng, start, span_days, now) for _ in range(sessions))
        open_from = max(0, sessions - max(1, sessions // 50))  # the newest 2 % are still open
        for index, (opened, count) in enumerate(zip(opened_times, counts, strict=True)):
            session_id = next_session + index
            still_open = index >= open_from
            # Customer ids continue after earlier runs; an open session's customer has no other open one.
            number = index if still_open else rng.randrange(max(1, sessions * 7 // 10))
            customer = CUSTOMER_BASE + next_session + number
            row, msgs, events = _conversation(rng, session_id, customer, opened, count, agent_ids, still_open, now)
            session_rows.append(row)
            message_rows.extend(msgs)
            event_rows.extend(events)
            if len(session_rows) >= BATCH // 5 or len(message_rows) >= BATCH:
                flush()
        flush(final=True)
    return DemoSummary(
        sessions=totals["sessions"],
        messages=totals["messages"],
        events=totals["events"],
        agents=len(new_agents),
        first_day=opened_times[0].date().isoformat(),
        last_day=opened_times[-1].date().isoformat(),
    )


def _message_counts(rng: random.Random, sessions: int, messages: int) -> list[int]:
    """Messages per session: at least one each, skewed (a few long conversations), summing to `messages`."""
    weights = [rng.expovariate(1.0) for _ in range(sessions)]
    spare = messages - sessions
    scale = spare / sum(weights)
    counts = [1 + int(w * scale) for w in weights]
    short = messages - sum(counts)
    for i in rng.sample(range(sessions), min(short, sessions)) if short > 0 else ():
        counts[i] += 1
    counts[0] += messages - sum(counts)
    return counts


def _opening_time(rng: random.Random, start: datetime, days: int, now: datetime) -> datetime:
    while True:
        day = rng.randrange(days)
        hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
        moment = start + timedelta(days=day, hours=hour, seconds=rng.randrange(3600))
        if moment <= now - timedelta(minutes=5):
            return moment


def _seconds(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, int(rng.lognormvariate(math.log(median), sigma)))


def _conversation(
    rng: random.Random,
    session_id: int,
    customer: int,
    opened: datetime,
    count: int,
    agent_ids: list[int],
    still_open: bool,
    now: datetime,
) -> tuple[dict, list[dict], list[dict]]:
    """One session, its messages and events, consistent with each other (times only move forward)."""
    abandoned = not still_open and rng.random() < 0.07
    waiting = still_open and rng.random() < 0.3
    answered = not (abandoned or waiting)
    agent = rng.choice(agent_ids) if answered or rng.random() < 0.3 else None
    events = [{"session_id": session_id, "event": "opened", "actor_id": customer, "actor_role": "customer",
               "created_at": opened}]
    msgs: list[dict] = []
    moment = opened + timedelta(seconds=rng.randrange(1, 20))
    first_response = None
    if answered:
        first_response = opened + timedelta(seconds=_seconds(rng, 40, 1.0))
        if first_response >= now:
            first_response = now - timedelta(seconds=1)
        moment = min(moment, first_response)
        events.append({"session_id": session_id, "event": "assigned", "actor_id": agent, "actor_role": "agent",
                       "created_at": opened + (first_response - opened) / 2})
    elif agent is not None:
        events.append({"session_id": session_id, "event": "assigned", "actor_id": agent, "actor_role": "agent",
                       "created_at": moment})
    for n in range(count):
        if first_response is not None and n == 1:
            sender, role, moment = agent, "agent", max(moment, first_response)
        elif first_response is not None and n > 1 and rng.random() < 0.5:
            sender, role = agent, "agent"
        else:
            sender, role = customer, "customer"
        if first_response is not None and n == 0:
            moment = min(moment, first_response)
        msgs.append({"session_id": session_id, "sender_id": sender, "sender_role": role,
                     "content": f"demo message {n + 1} of session {session_id}", "client_msg_id": None,
                     "created_at": moment})
        if n != 0 or first_response is None:
            moment = moment + timedelta(seconds=rng.randrange(5, 90))
        if still_open:
            moment = min(moment, now)
    if first_response is not None and count == 1:
        # A one-message conversation that was answered: the one message is the agent's reply.
        msgs[0].update(sender_id=agent, sender_role="agent", created_at=first_response)
    row = {"id": session_id, "user_id": customer, "agent_id": agent, "created_at": opened,
           "first_response_at": first_response}
    if still_open:
        row.update(status="active", open_flag=1, closed_at=None, closed_by=None, close_reason=None)
    else:
        closed_at = max(moment, opened) + timedelta(seconds=rng.randrange(10, 600))
        if abandoned:
            reason = rng.choice(["customer", "idle"])
        else:
            reason = rng.choices(["agent", "customer", "backend", "idle"], [6, 2, 1, 1])[0]
        closer = {"customer": customer, "agent": agent}.get(reason)
        row.update(status="closed", open_flag=None, closed_at=closed_at, closed_by=closer, close_reason=reason)
        events.append({"session_id": session_id, "event": "closed", "actor_id": closer,
                       "actor_role": "system" if reason == "idle" else reason, "created_at": closed_at})
    return row, msgs, events

