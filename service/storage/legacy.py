"""Copy the PHP server's sessions and messages into our tables, keeping their ids (`import-legacy`).

The legacy document defines a message as id, session_id, sender_id, content, created_at; its sessions have
an id, the customer's user_id and created_at, and may have agent_id, status and closed_at (used when there).
Ids are kept, so every reference a frontend holds (session ids in URLs, message ids for replay) stays valid;
our AUTO_INCREMENT counters continue after the highest imported id. A row whose id we already have is
skipped, so the import can be run again (e.g. once for a trial, once at the switch-over) and adds only what
is new. A message's sender_role is `agent` when its sender is in our agents table (run `agent add` first)
or is its session's agent_id, `customer` otherwise. Imported sessions get first_response_at from their
first agent message and their messages are added to the hourly counts, as if the service had stored them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, MetaData, Table, and_, func, insert, inspect, select, update

from .models import agents_table, messages_table, sessions_table
from .progress import Progress
from .writer import hourly_upsert

BATCH = 2_000
ACTIVE = ("active", "open", "0", "")  # legacy status values meaning "still open" (closed_at NULL too)


class LegacyError(ValueError):
    """The legacy tables are not where or what the import expects; the message says what is missing."""


@dataclass(frozen=True)
class ImportSummary:
    sessions: int
    sessions_skipped: int
    sessions_closed: int  # older open sessions of a customer with several (we allow one open per customer)
    messages: int
    messages_skipped: int


def _legacy_table(source: Engine, name: str, required: tuple[str, ...]) -> Table:
    if not inspect(source).has_table(name):
        raise LegacyError(f"no table {name!r} in the legacy database (name it with --sessions-table/--messages-table)")
    table = Table(name, MetaData(), autoload_with=source)
    missing = [c for c in required if c not in table.c]
    if missing:
        raise LegacyError(f"legacy table {name!r} has no column {', '.join(missing)}")
    return table


def import_legacy(
    source: Engine, target: Engine, sessions_name: str, messages_name: str, now: datetime,
    progress: type[Progress] | None = None,
) -> ImportSummary:
    """Copy legacy sessions then messages into our tables (same or another database)."""
    if source.url == target.url and sessions_name == sessions_table.name:
        raise LegacyError(f"the legacy tables have our names ({sessions_name}): set TABLE_PREFIX (e.g. cs_) so our "
                          "tables are created beside them, then import")
    legacy_sessions = _legacy_table(source, sessions_name, ("id", "user_id", "created_at"))
    legacy_messages = _legacy_table(source, messages_name, ("id", "session_id", "sender_id", "content", "created_at"))
    report = progress or Progress.silent
    s, m = legacy_sessions.c, legacy_messages.c
    with source.connect() as src:
        total_sessions = src.execute(select(func.count()).select_from(legacy_sessions)).scalar() or 0
        total_messages = src.execute(select(func.count()).select_from(legacy_messages)).scalar() or 0
    with target.begin() as dst:
        agents = {r[0] for r in dst.execute(select(agents_table.c.user_id))}
        have = {r[0] for r in dst.execute(select(sessions_table.c.id))}
        open_now = select(sessions_table.c.user_id).where(sessions_table.c.open_flag == 1)
        open_users = {r[0] for r in dst.execute(open_now)}
    columns = [s.id, s.user_id, s.created_at] + [getattr(s, c) for c in ("agent_id", "status", "closed_at") if c in s]
    session_agent: dict[int, int | None] = {}
    imported = skipped = closed = 0
    bar = report("import-legacy: sessions", total_sessions)
    rows: list[dict] = []
    with source.connect() as src, target.begin() as dst:
        # Newest first, so each customer's newest open session is the one that stays open.
        for r in src.execute(select(*columns).order_by(s.created_at.desc(), s.id.desc())):
            legacy = r._mapping
            session_agent[legacy["id"]] = legacy.get("agent_id")
            bar.advance()
            if legacy["id"] in have:
                skipped += 1
                continue
            is_open = legacy.get("closed_at") is None and str(legacy.get("status", "active") or "").lower() in ACTIVE
            if is_open and legacy["user_id"] in open_users:
                is_open, closed = False, closed + 1
            if is_open:
                open_users.add(legacy["user_id"])
            rows.append({
                "id": legacy["id"], "user_id": legacy["user_id"], "agent_id": legacy.get("agent_id"),
                "status": "active" if is_open else "closed", "open_flag": 1 if is_open else None,
                "created_at": legacy["created_at"],
                "closed_at": None if is_open else (legacy.get("closed_at") or now),
            })
            if len(rows) >= BATCH:
                dst.execute(insert(sessions_table), rows)
                imported += len(rows)
                rows.clear()
        if rows:
            dst.execute(insert(sessions_table), rows)
            imported += len(rows)
    bar.done()

    with target.connect() as dst:
        have_messages = {r[0] for r in dst.execute(select(messages_table.c.id))}
        known_sessions = {r[0] for r in dst.execute(select(sessions_table.c.id))}
    stored = skipped_messages = 0
    hourly: Counter = Counter()
    first_reply: dict[int, datetime] = {}
    bar = report("import-legacy: messages", total_messages)
    with source.connect() as src, target.begin() as dst:
        batch: list[dict] = []
        for r in src.execute(select(m.id, m.session_id, m.sender_id, m.content, m.created_at).order_by(m.id)):
            bar.advance()
            if r.id in have_messages or r.session_id not in known_sessions:
                skipped_messages += 1
                continue
            at = r.created_at if isinstance(r.created_at, datetime) else datetime.fromisoformat(str(r.created_at))
            role = "agent" if r.sender_id in agents or r.sender_id == session_agent.get(r.session_id) else "customer"
            batch.append({"id": r.id, "session_id": r.session_id, "sender_id": r.sender_id, "sender_role": role,
                          "content": r.content, "client_msg_id": None, "created_at": at})
            hourly[(at.date(), at.hour, role, r.sender_id if role == "agent" else 0)] += 1
            if role == "agent" and (r.session_id not in first_reply or at < first_reply[r.session_id]):
                first_reply[r.session_id] = at
            if len(batch) >= BATCH:
                dst.execute(insert(messages_table), batch)
                stored += len(batch)
                batch.clear()
        if batch:
            dst.execute(insert(messages_table), batch)
            stored += len(batch)
        counts = [{"day": d, "hour": h, "sender_role": role, "sender_id": sender, "shard": 0, "messages": n}
                  for (d, h, role, sender), n in sorted(hourly.items())]
        for i in range(0, len(counts), BATCH):
            dst.execute(hourly_upsert(target.dialect.name), counts[i : i + BATCH])
        column = sessions_table.c.first_response_at
        for session_id, at in first_reply.items():
            dst.execute(update(sessions_table).where(and_(sessions_table.c.id == session_id, column.is_(None)))
                        .values(first_response_at=at))
    bar.done()
    return ImportSummary(imported, skipped, closed, stored, skipped_messages)
