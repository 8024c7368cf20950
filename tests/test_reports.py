"""Reporting: traffic with hand-computed answers -> the views, the API and the CLI give exactly those numbers."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import date, datetime, time
from pathlib import Path

import pytest
from conftest import need_mariadb
from flask import Flask
from sqlalchemy import create_engine, text

from service.config import load_settings
from service.storage import MessageWriter, NewMessage, Storage, init_storage
from service.storage.reports import VIEW_QUESTIONS, Reports, figures, group
from support import Server, base_env, create_mariadb_database, drop_mariadb_database, fresh_id, run_cli

D, D1 = date(2026, 10, 5), date(2026, 10, 6)
A1, A2 = 501, 502  # agents
C = {n: 1000 + n for n in range(1, 10)}  # customers of sessions S1..S9


class ClockStorage(Storage):
    """The real storage on the real database, with a clock the test sets (so every time is known)."""

    clock: datetime

    def now(self) -> datetime:
        return self.clock


def at(day: date, hms: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hms))


class Traffic:
    """What the hub does, step by step, at chosen times: open, join (assign), say, close."""

    def __init__(self, storage: ClockStorage) -> None:
        self.storage = storage
        self.writer = MessageWriter(storage, batch_size=50, concurrency=1)
        self.ids: dict[str, int] = {}

    def open(self, name: str, customer: int, when: datetime) -> None:
        self.storage.clock = when
        self.ids[name] = self.storage.open_session(customer)[0].id

    def join(self, name: str, agent: int, when: datetime) -> None:
        self.storage.clock = when
        self.storage.assign_agent(self.ids[name], agent)

    def say(self, name: str, user: int, when: datetime) -> None:
        role = "agent" if user in (A1, A2) else "customer"
        self.writer.store(NewMessage(self.ids[name], user, role, f"{role} at {when:%H:%M:%S}", when))
        if role == "agent":
            self.join(name, user, when)

    def close(self, name: str, by: int | None, reason: str, when: datetime) -> None:
        self.storage.clock = when
        self.storage.close_session(self.ids[name], by, reason)


def play(traffic: Traffic) -> None:
    """Sessions S1..S9. FRT = first agent message - opened; handling = closed - opened (seconds)."""
    t = traffic
    for agent, name in ((A1, "Ann"), (A2, "Bob")):
        t.storage.clock = at(D, "08:00:00")
        t.storage.add_agent(agent, name)
    # S1: A1 joins, answers after 30 s; A1 closes after 600 s.
    t.open("S1", C[1], at(D, "10:00:00"))
    t.say("S1", C[1], at(D, "10:00:05"))
    t.join("S1", A1, at(D, "10:00:20"))
    t.say("S1", A1, at(D, "10:00:30"))
    t.say("S1", C[1], at(D, "10:01:00"))
    t.say("S1", A1, at(D, "10:02:00"))
    t.close("S1", A1, "agent", at(D, "10:10:00"))
    # S2: A1 answers after 90 s (assigned by answering); the customer closes after 300 s.
    t.open("S2", C[2], at(D, "11:00:00"))
    t.say("S2", C[2], at(D, "11:00:10"))
    t.say("S2", A1, at(D, "11:01:30"))
    t.close("S2", C[2], "customer", at(D, "11:05:00"))
    # S3: no reply, the customer gives up after 180 s: abandoned.
    t.open("S3", C[3], at(D, "12:00:00"))
    t.say("S3", C[3], at(D, "12:00:05"))
    t.say("S3", C[3], at(D, "12:00:06"))
    t.close("S3", C[3], "customer", at(D, "12:03:00"))
    # S4: A2 joins, answers after 60 s; idle-closed after 1800 s.
    t.open("S4", C[4], at(D, "13:00:00"))
    t.join("S4", A2, at(D, "13:00:40"))
    t.say("S4", A2, at(D, "13:01:00"))
    t.close("S4", None, "idle", at(D, "13:30:00"))
    # S5: no reply, idle-closed after 1200 s: abandoned.
    t.open("S5", C[5], at(D, "14:00:00"))
    t.say("S5", C[5], at(D, "14:00:01"))
    t.close("S5", None, "idle", at(D, "14:20:00"))
    # S6: still open, no reply: waiting.
    t.open("S6", C[6], at(D, "15:00:00"))
    t.say("S6", C[6], at(D, "15:00:02"))
    # S7: A2 answers after 300 s; still open.
    t.open("S7", C[7], at(D, "16:00:00"))
    t.say("S7", C[7], at(D, "16:00:30"))
    t.say("S7", A2, at(D, "16:05:00"))
    # S8: no reply, closed by the backend after 600 s: not abandoned (nobody gave up).
    t.open("S8", C[8], at(D, "17:00:00"))
    t.say("S8", C[8], at(D, "17:00:03"))
    t.close("S8", None, "backend", at(D, "17:10:00"))
    # S9, the next day: A1 answers after 10 s, closes after 300 s.
    t.open("S9", C[9], at(D1, "09:00:00"))
    t.say("S9", C[9], at(D1, "09:00:02"))
    t.say("S9", A1, at(D1, "09:00:10"))
    t.close("S9", A1, "agent", at(D1, "09:05:00"))


# Hand-computed. Day D: FRT 30, 90, 60, 300 -> avg 120, median (60+90)/2 = 75; handling 600, 300, 180,
# 1800, 1200, 600 -> avg 4680/6 = 780, median 600. Messages: customers 9, agents 5.
DAY_D = {
    "day": "2026-10-05",
    "sessions_opened": 8, "sessions_answered": 4, "sessions_waiting": 1, "sessions_closed": 6,
    "sessions_abandoned": 2, "frt_avg_seconds": 120.0, "frt_median_seconds": 75.0,
    "handling_avg_seconds": 780.0, "handling_median_seconds": 600.0,
    "messages": 14, "customer_messages": 9, "agent_messages": 5,
}
DAY_D1 = {
    "day": "2026-10-06",
    "sessions_opened": 1, "sessions_answered": 1, "sessions_waiting": 0, "sessions_closed": 1,
    "sessions_abandoned": 0, "frt_avg_seconds": 10.0, "frt_median_seconds": 10.0,
    "handling_avg_seconds": 300.0, "handling_median_seconds": 300.0,
    "messages": 2, "customer_messages": 1, "agent_messages": 1,
}
# D..D1: FRT 30, 90, 60, 300, 10 -> avg 98, median 60; handling + 300 -> 4980/7 = 711.4286, median 600.
TOTALS = {
    "sessions_opened": 9, "sessions_answered": 5, "sessions_waiting": 1, "sessions_closed": 7,
    "sessions_abandoned": 2, "frt_avg_seconds": 98.0, "frt_median_seconds": 60.0,
    "handling_avg_seconds": 711.4286, "handling_median_seconds": 600.0,
    "messages": 16, "customer_messages": 10, "agent_messages": 6,
}
# D..D1 per agent. A1: S1, S2, S9 -> FRT 30, 90, 10 (avg 43.3333, median 30), handling 600, 300, 300.
# A2: S4, S7 -> FRT 60, 300, handling 1800 (S7 is open).
AGENTS = [
    {"agent_id": A1, "display_name": "Ann", "sessions_assigned": 3, "sessions_answered": 3, "sessions_waiting": 0,
     "sessions_closed": 3, "sessions_abandoned": 0, "frt_avg_seconds": 43.3333, "frt_median_seconds": 30.0,
     "handling_avg_seconds": 400.0, "handling_median_seconds": 300.0, "messages": 4, "open_sessions": 0,
     "open_unanswered": 0},
    {"agent_id": A2, "display_name": "Bob", "sessions_assigned": 2, "sessions_answered": 2, "sessions_waiting": 0,
     "sessions_closed": 1, "sessions_abandoned": 0, "frt_avg_seconds": 180.0, "frt_median_seconds": 180.0,
     "handling_avg_seconds": 1800.0, "handling_median_seconds": 1800.0, "messages": 2, "open_sessions": 1,
     "open_unanswered": 0},
]


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def known(request: pytest.FixtureRequest, tmp_path_factory, server_factory: Callable[..., Server]) -> Iterator:
    """A database holding exactly S1..S9 (written through the real storage and writer), and a server on it."""
    name = None
    if request.param == "mariadb":
        need_mariadb()
        url, name = create_mariadb_database()
    else:
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('reports')) / 'chat.db'}"
    settings = load_settings({"DATABASE_URL": url}, environ={})
    storage = init_storage(Flask("t"), settings)
    traffic = Traffic(ClockStorage(storage.engine, settings.tz))
    try:
        play(traffic)
        traffic.writer.stop()
        server = server_factory(database_url=url)
        yield request.param, url, server, traffic.ids
        server.stop()
    finally:
        storage.engine.dispose()
        if name:
            drop_mariadb_database(name)


def api(server: Server, path: str, user: int | None = A1) -> tuple[int, dict]:
    return server.http("GET", path, headers={"X-User-Id": str(user)} if user else {})


def test_summary_api_gives_the_hand_computed_figures(known) -> None:
    """GET /api/reports/summary: per-day rows and totals equal the hand-computed FRT, handling and abandoned."""
    _, _, server, _ = known
    status, body = api(server, "/api/reports/summary?from=2026-10-05&to=2026-10-06")
    assert status == 200, body
    assert body["days"] == [DAY_D, DAY_D1]
    assert body["totals"] == TOTALS
    assert body["waiting_now"]["sessions"] == 1
    assert body["waiting_now"]["oldest_created_at"] == "2026-10-05 15:00:00"
    status, one_day = api(server, "/api/reports/summary?from=2026-10-05&to=2026-10-05")
    assert one_day["days"] == [DAY_D]
    assert one_day["totals"] == {k: v for k, v in DAY_D.items() if k != "day"}


def test_agents_api_gives_the_hand_computed_figures(known) -> None:
    """GET /api/reports/agents: one row per agent with the hand-computed numbers (the backend may ask too)."""
    _, _, server, _ = known
    status, body = api(server, "/api/reports/agents?from=2026-10-05&to=2026-10-06")
    assert status == 200, body
    assert body == {"from": "2026-10-05", "to": "2026-10-06", "agents": AGENTS}
    assert api(server, "/api/reports/agents?from=2026-10-05&to=2026-10-06", user=None) == (200, body)


@pytest.mark.parametrize("path", ["/api/reports/summary", "/api/reports/agents"])
def test_reports_are_for_agents_only(known, path: str) -> None:
    """A customer gets 403 仅限客服; nothing else is said."""
    _, _, server, _ = known
    assert api(server, path, user=C[1]) == (403, {"error": "仅限客服", "code": "agents_only"})


@pytest.mark.parametrize(
    "query", ["from=2026-10-06&to=2026-10-05", "from=yesterday", "to=2026-13-01", "from=20261005", "to=2026-10-5"]
)
def test_a_bad_range_is_refused(known, query: str) -> None:
    """from/to must be YYYY-MM-DD days with from <= to: otherwise 400 参数无效."""
    _, _, server, _ = known
    assert api(server, f"/api/reports/summary?{query}") == (400, {"error": "参数无效", "code": "invalid_parameter"})


def test_report_cli_prints_the_agents_table_in_each_format(known) -> None:
    """`python -m service report` prints the same per-agent numbers as JSON, CSV and a table."""
    _, _, server, _ = known
    args = ("report", "--from", "2026-10-05", "--to", "2026-10-06")
    as_json = run_cli(server.env, *args, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["agents"] == AGENTS
    as_csv = run_cli(server.env, *args, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(int(r["agent_id"]), float(r["frt_avg_seconds"]), int(r["messages"])) for r in rows] == [
        (A1, 43.3333, 4), (A2, 180.0, 2)]
    table = run_cli(server.env, *args).stdout.splitlines()
    assert table[0] == "agents, sessions opened 2026-10-05 .. 2026-10-06 (times in seconds)"
    assert table[2].split() == ["501", "Ann", "3", "3", "0", "3", "0", "43.3", "30.0", "400.0", "300.0", "4", "0",
                                "0"]
    bad = run_cli(server.env, "report", "--from", "2026-10-07", "--to", "2026-10-06")
    assert bad.returncode == 2 and "from is after to" in bad.stderr


def test_events_are_recorded_with_each_change(known) -> None:
    """opened, assigned and closed events carry who did it; close reason and first response are on the session."""
    _, url, _, ids = known
    engine = create_engine(url)
    with engine.connect() as conn:
        events = conn.execute(text(
            "SELECT session_id, event, actor_id, actor_role, created_at FROM chat_session_events"
            " WHERE session_id IN (:s1, :s4, :s8) ORDER BY id"), {"s1": ids["S1"], "s4": ids["S4"], "s8": ids["S8"]}
        ).all()
        s2 = conn.execute(text("SELECT first_response_at, closed_by, close_reason FROM chat_sessions WHERE id = :i"),
                          {"i": ids["S2"]}).one()
    engine.dispose()
    assert [(r.session_id, r.event, r.actor_id, r.actor_role, str(r.created_at)[:19]) for r in events] == [
        (ids["S1"], "opened", C[1], "customer", "2026-10-05 10:00:00"),
        (ids["S1"], "assigned", A1, "agent", "2026-10-05 10:00:20"),
        (ids["S1"], "closed", A1, "agent", "2026-10-05 10:10:00"),
        (ids["S4"], "opened", C[4], "customer", "2026-10-05 13:00:00"),
        (ids["S4"], "assigned", A2, "agent", "2026-10-05 13:00:40"),
        (ids["S4"], "closed", None, "system", "2026-10-05 13:30:00"),
        (ids["S8"], "opened", C[8], "customer", "2026-10-05 17:00:00"),
        (ids["S8"], "closed", None, "backend", "2026-10-05 17:10:00"),
    ]
    assert (str(s2.first_response_at)[:19], s2.closed_by, s2.close_reason) == ("2026-10-05 11:01:30", C[2], "customer")


def test_views_give_the_hand_computed_figures(known) -> None:
    """MariaDB: every view answers the hand-computed numbers for day D."""
    backend, url, _, ids = known
    if backend != "mariadb":
        pytest.skip("the views are MySQL/MariaDB SQL (TIMESTAMPDIFF, HOUR): SQLite has none")
    engine = create_engine(url)

    def view(sql: str) -> list[dict]:
        with engine.connect() as conn:
            return [{k: (float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, int) else v)
                     for k, v in r._mapping.items()} for r in conn.execute(text(sql), {"d": D})]

    daily = view("SELECT * FROM report_sessions_daily WHERE day = :d")[0]
    assert {k: daily[k] for k in daily if k != "day"} == {k: v for k, v in DAY_D.items()
                                                          if k.startswith(("sessions_", "frt_", "handling_"))}
    assert view("SELECT messages, customer_messages, agent_messages FROM report_messages_daily WHERE day = :d") == [
        {"messages": 14, "customer_messages": 9, "agent_messages": 5}]
    assert view("SELECT hour, messages FROM report_messages_hourly WHERE day = :d ORDER BY hour") == [
        {"hour": h, "messages": n} for h, n in ((10, 4), (11, 2), (12, 2), (13, 1), (14, 1), (15, 1), (16, 2), (17, 1))]
    assert view("SELECT hour, sessions_opened, sessions_abandoned FROM report_sessions_hourly"
                " WHERE day = :d AND hour IN (12, 13)") == [
        {"hour": 12, "sessions_opened": 1, "sessions_abandoned": 1},
        {"hour": 13, "sessions_opened": 1, "sessions_abandoned": 0}]
    assert view("SELECT agent_id, display_name, sessions_assigned, sessions_answered, sessions_closed,"
                " sessions_abandoned, frt_avg_seconds, frt_median_seconds, handling_avg_seconds,"
                " handling_median_seconds FROM report_agent_daily WHERE day = :d ORDER BY agent_id") == [
        {"agent_id": A1, "display_name": "Ann", "sessions_assigned": 2, "sessions_answered": 2, "sessions_closed": 2,
         "sessions_abandoned": 0, "frt_avg_seconds": 60.0, "frt_median_seconds": 60.0,
         "handling_avg_seconds": 450.0, "handling_median_seconds": 450.0},
        {"agent_id": A2, "display_name": "Bob", "sessions_assigned": 2, "sessions_answered": 2, "sessions_closed": 1,
         "sessions_abandoned": 0, "frt_avg_seconds": 180.0, "frt_median_seconds": 180.0,
         "handling_avg_seconds": 1800.0, "handling_median_seconds": 1800.0}]
    assert view("SELECT day, agent_id, messages FROM report_agent_messages_daily ORDER BY day, agent_id") == [
        {"day": D, "agent_id": A1, "messages": 3}, {"day": D, "agent_id": A2, "messages": 2},
        {"day": D1, "agent_id": A1, "messages": 1}]
    assert view("SELECT session_id, frt_seconds, handling_seconds, answered, abandoned FROM report_sessions"
                " WHERE day = :d ORDER BY session_id")[:3] == [
        {"session_id": ids["S1"], "frt_seconds": 30, "handling_seconds": 600, "answered": 1, "abandoned": 0},
        {"session_id": ids["S2"], "frt_seconds": 90, "handling_seconds": 300, "answered": 1, "abandoned": 0},
        {"session_id": ids["S3"], "frt_seconds": None, "handling_seconds": 180, "answered": 0, "abandoned": 1}]
    assert view("SELECT session_id, close_reason, waited_seconds FROM report_abandoned_sessions ORDER BY session_id"
                ) == [{"session_id": ids["S3"], "close_reason": "customer", "waited_seconds": 180},
                      {"session_id": ids["S5"], "close_reason": "idle", "waited_seconds": 1200}]
    assert [r["session_id"] for r in view("SELECT session_id FROM report_waiting_sessions")] == [ids["S6"]]
    assert view("SELECT agent_id, open_sessions, open_unanswered FROM report_agent_workload ORDER BY agent_id") == [
        {"agent_id": A1, "open_sessions": 0, "open_unanswered": 0},
        {"agent_id": A2, "open_sessions": 1, "open_unanswered": 0}]
    engine.dispose()


# -- the running server records what happens -----------------------------------------------------------


def test_the_server_records_who_opened_answered_and_closed(server_factory, tmp_path) -> None:
    """Through the real server (SQLite): join assigns, an agent message sets first_response_at, closes say who."""
    server = server_factory(database_url=f"sqlite:///{tmp_path}/live.db")
    agent = server.add_agent(fresh_id())
    customers = [fresh_id() for _ in range(3)]
    sessions = [server.open_session(c) for c in customers]
    client = server.client(agent)
    client.join(sessions[0])
    client.say(sessions[0], "您好")
    client.recv_type("new_message")
    closes = [(sessions[0], {"X-User-Id": str(customers[0])}), (sessions[1], {"X-User-Id": str(agent)}),
              (sessions[2], {})]
    for session_id, headers in closes:
        status, _ = server.http("POST", f"/api/sessions/{session_id}/close", headers=headers)
        assert status == 200
    engine = create_engine(server.env["DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, agent_id, first_response_at, closed_by, close_reason FROM chat_sessions"
                                 " ORDER BY id")).all()
        events = conn.execute(text("SELECT session_id, event, actor_id, actor_role FROM chat_session_events"
                                   " ORDER BY id")).all()
        counted = conn.execute(text("SELECT SUM(messages) FROM chat_message_hourly WHERE sender_id = :a"),
                               {"a": agent}).scalar()
    engine.dispose()
    assert [(r.agent_id, r.first_response_at is not None, r.closed_by, r.close_reason) for r in rows] == [
        (agent, True, customers[0], "customer"), (None, False, agent, "agent"), (None, False, None, "backend")]
    assert [tuple(e) for e in events if e.session_id == sessions[0]] == [
        (sessions[0], "opened", customers[0], "customer"), (sessions[0], "assigned", agent, "agent"),
        (sessions[0], "closed", customers[0], "customer")]
    assert counted == 1


# -- at volume (MariaDB): the paths agree and the one-day questions use indexes --------------------------


@pytest.fixture(scope="module")
def demo_database() -> Iterator[str]:
    need_mariadb()
    url, name = create_mariadb_database()
    try:
        result = run_cli(base_env(DATABASE_URL=url), "demo-data", "--sessions", "3000", "--messages", "30000",
                         "--days", "10")
        assert result.returncode == 0, result.stderr
        yield url
    finally:
        drop_mariadb_database(name)


def test_one_day_questions_read_through_indexes(demo_database: str) -> None:
    """EXPLAIN of each view's one-day question: every base table is read through an index, chat_messages never."""
    engine = create_engine(demo_database)
    with engine.connect() as conn:
        day = conn.execute(text("SELECT MAX(day) - INTERVAL 1 DAY FROM report_sessions")).scalar()
        for name, (one_day, _) in VIEW_QUESTIONS.items():
            plan = conn.execute(text("EXPLAIN " + one_day), {"day": day}).mappings().all()
            base = [p for p in plan if not str(p["table"]).startswith("<")]
            assert "chat_messages" not in {p["table"] for p in base}, name
            for step in base:
                if name == "report_agent_workload" and step["table"] == "a":
                    continue  # every agent is listed: the agents table is read whole (tens of rows)
                assert step["key"], f"{name}: {step['table']} read without an index: {dict(step)}"
    engine.dispose()


def test_api_paths_agree_with_the_views_on_generated_traffic(demo_database: str) -> None:
    """On generated traffic, the views, the SQL range figures and the SQLite path (Python) give the same numbers."""
    settings = load_settings({"DATABASE_URL": demo_database}, environ={})
    storage = init_storage(Flask("t"), settings)
    reports = Reports(storage)
    engine = storage.engine
    with engine.connect() as conn:
        last = conn.execute(text("SELECT MAX(day) FROM report_sessions")).scalar()
    first = date.fromordinal(last.toordinal() - 9)
    facts = reports.session_facts(first, last)
    summary = reports.summary(first, last)
    by_day = {d["day"]: {k: d[k] for k in figures([])} for d in summary["days"]}
    assert by_day == {d.isoformat(): f for d, f in group(facts, lambda r: r.day).items()}
    assert {k: summary["totals"][k] for k in figures([])} == figures(facts)
    assert reports.range_figures(first, last, by_agent=True) == group(
        [f for f in facts if f.agent_id is not None], lambda r: r.agent_id)
    one_day = reports.agents(last, last)["agents"]
    with engine.connect() as conn:
        daily = {r.agent_id: r for r in conn.execute(text(
            "SELECT d.*, m.messages FROM report_agent_daily d LEFT JOIN report_agent_messages_daily m"
            " ON m.day = d.day AND m.agent_id = d.agent_id WHERE d.day = :d"), {"d": last})}
    assert daily
    for row in one_day:
        view = daily.get(row["agent_id"])
        if view is None:
            assert row["sessions_assigned"] == 0
            continue
        for name in ("sessions_assigned", "sessions_answered", "sessions_closed", "sessions_abandoned",
                     "frt_avg_seconds", "frt_median_seconds", "handling_avg_seconds", "handling_median_seconds",
                     "messages"):
            expected = getattr(view, name)
            assert row[name] == (None if expected is None else type(row[name])(expected)), (name, row, view)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_a_batch_sets_each_sessions_first_response_and_counts_its_hour(backend: str, tmp_path: Path) -> None:
    """One batch of many sessions' messages: each session gets its earliest agent message, counts add up."""
    import gevent

    name = None
    if backend == "mariadb":
        need_mariadb()
        url, name = create_mariadb_database()
    else:
        url = f"sqlite:///{tmp_path}/batch.db"
    settings = load_settings({"DATABASE_URL": url}, environ={})
    storage = init_storage(Flask("t"), settings)
    try:
        clock = ClockStorage(storage.engine, settings.tz)
        clock.clock = at(D, "09:00:00")
        sessions = [clock.open_session(2000 + n)[0].id for n in range(6)]
        writer = MessageWriter(clock, batch_size=100, concurrency=1)
        batches: list[int] = []
        writer.observe = lambda _seconds, rows: batches.append(rows)
        answered_at = {sid: at(D, f"09:{10 + i:02d}:00") for i, sid in enumerate(sessions[:4])}
        plan = []
        for i, sid in enumerate(sessions):
            plan.append(NewMessage(sid, 2000 + i, "customer", "hi", at(D, "09:05:00")))
            if sid in answered_at:
                later = answered_at[sid].replace(minute=answered_at[sid].minute + 20)
                plan.append(NewMessage(sid, A1, "agent", "second", later))
                plan.append(NewMessage(sid, A2 if i % 2 else A1, "agent", "first", answered_at[sid]))
        gevent.joinall([gevent.spawn(writer.store, m) for m in plan], raise_error=True)
        writer.stop()
        assert max(batches) > 1  # they went in together
        with storage.engine.connect() as conn:
            got = dict(conn.execute(text("SELECT id, first_response_at FROM chat_sessions")).all())
            hourly = conn.execute(text("SELECT hour, sender_role, sender_id, messages FROM chat_message_hourly"
                                       " ORDER BY hour, sender_role, sender_id")).all()
        assert {sid: (str(v)[:19] if v else None) for sid, v in got.items()} == {
            sid: (str(answered_at[sid]) if sid in answered_at else None) for sid in sessions}
        assert [tuple(r) for r in hourly] == [(9, "agent", A1, 6), (9, "agent", A2, 2), (9, "customer", 0, 6)]
    finally:
        storage.engine.dispose()
        if name:
            drop_mariadb_database(name)
