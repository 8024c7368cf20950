"""HTTP API for the reporting figures (agents and the trusted backend only); see sql/reports.sql."""

from __future__ import annotations

from datetime import date

from flask import Blueprint, jsonify, request

from ..errors import Problem, Refused
from ..storage.reports import Reports, parse_range
from .sessions import caller, hub, storage_call

bp = Blueprint("reports", __name__)

FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)  # the days a report may cover

_SECONDS = {"type": "number", "nullable": True, "description": "seconds; null when there is nothing to measure"}
_COUNT = {"type": "integer"}
_FIGURES = {
    **{name: _COUNT for name in ("sessions_opened", "sessions_answered", "sessions_waiting", "sessions_closed",
                                 "sessions_abandoned", "messages", "customer_messages", "agent_messages")},
    **{name: _SECONDS for name in ("frt_avg_seconds", "frt_median_seconds", "handling_avg_seconds",
                                   "handling_median_seconds")},
}
_RANGE = [
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "First day (opening day of sessions), default 6 days before `to`"},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"},
     "description": "Last day, inclusive, default today in APP_TIMEZONE"},
]
_ERRORS = {
    status: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for status, text in (("400", "Bad from/to (days from 1970-01-01 to 9998-12-31)"),
                         ("403", "Customers may not read reports (仅限客服)"),
                         ("503", "Storage unavailable"))
}
OPENAPI_PATHS = {
    "/api/reports/summary": {"get": {
        "summary": "Sessions, first response, handling, abandoned and messages per day, totals, waiting now (agents)",
        "parameters": _RANGE,
        "responses": {"200": {"description": "The figures of report_sessions_daily + report_messages_daily",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Summary"}}}},
                      **_ERRORS},
    }},
    "/api/reports/agents": {"get": {
        "summary": "One row per agent over the range: sessions, FRT, handling, messages, open now (agents)",
        "parameters": _RANGE,
        "responses": {"200": {"description": "The figures of report_agent_daily over the range",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Agents"}}}},
                      **_ERRORS},
    }},
}
OPENAPI_SCHEMAS = {
    "Summary": {"type": "object", "properties": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "days": {"type": "array", "items": {"type": "object", "properties": {
            "day": {"type": "string", "format": "date"}, **_FIGURES}}},
        "totals": {"type": "object", "properties": _FIGURES},
        "waiting_now": {"type": "object", "properties": {
            "sessions": _COUNT, "oldest_created_at": {"type": "string", "nullable": True},
            "longest_wait_seconds": {"type": "integer", "nullable": True}}},
    }},
    "Agents": {"type": "object", "properties": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "agents": {"type": "array", "items": {"type": "object", "properties": {
            "agent_id": {"type": "integer"}, "display_name": {"type": "string", "nullable": True},
            "sessions_assigned": _COUNT,
            **{k: v for k, v in _FIGURES.items() if k.startswith(("sessions_", "frt_", "handling_"))
               and k != "sessions_opened"},
            "messages": _COUNT, "open_sessions": _COUNT, "open_unanswered": _COUNT}}},
    }},
}


def _reports_and_range():
    identity = caller()
    if not identity.is_agent:
        raise Refused(Problem.AGENTS_ONLY)
    storage = hub().storage
    if any(request.args.get(name) == "" for name in ("from", "to")):
        raise Refused(Problem.INVALID_PARAMETER)  # an empty bound is a mistake, not "the default"
    try:
        first, last = parse_range(request.args.get("from"), request.args.get("to"), storage.now().date())
    except (ValueError, OverflowError):  # OverflowError: a default `from` before year 1 (to=0001-01-03)
        raise Refused(Problem.INVALID_PARAMETER) from None
    if first < FIRST_DAY or last > LAST_DAY:
        raise Refused(Problem.INVALID_PARAMETER)  # the queries step a day past the range; keep clear of the ends
    return Reports(storage), first, last


@bp.get("/reports/summary")
def summary():
    """Sessions, first response, handling, abandoned and messages per day of [from, to], totals, waiting now."""
    reports, first, last = _reports_and_range()
    return jsonify(storage_call(reports.summary, first, last))


@bp.get("/reports/agents")
def agents():
    """One row per agent over [from, to]: sessions, FRT and handling (avg, median), messages, open now."""
    reports, first, last = _reports_and_range()
    return jsonify(storage_call(reports.agents, first, last))


@bp.get("/reports/desk")
def desk():
    """The agent desk over [from, to]: time in queue, transfers, requeues, idle closes; agent load over time."""
    from ..storage.desk_reports import DeskReports

    reports, first, last = _reports_and_range()
    return jsonify(storage_call(DeskReports(reports.storage).desk, first, last))


_DESK_FIGURES = {**{name: _COUNT for name in ("sessions_opened", "sessions_assigned", "transfers", "requeued",
                                              "idle_closes")},
                 "queue_avg_seconds": _SECONDS, "queue_max_seconds": _SECONDS}
_LOAD = {"agent_id": _COUNT, "display_name": {"type": "string", "nullable": True}, "samples": _COUNT,
         "online_samples": _COUNT, "load_avg": {"type": "number", "nullable": True}, "load_max": _COUNT}
OPENAPI_PATHS["/api/reports/desk"] = {"get": {
    "summary": "The agent desk per day and in total (time in queue, transfers, requeues, idle closes), agent load",
    "parameters": _RANGE,
    "responses": {"200": {"description": "The figures of report_desk_daily and report_agent_load_hourly",
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Desk"}}}},
                  **_ERRORS},
}}
OPENAPI_SCHEMAS["Desk"] = {"type": "object", "properties": {
    "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
    "days": {"type": "array", "items": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, **_DESK_FIGURES}}},
    "totals": {"type": "object", "properties": _DESK_FIGURES},
    "agents": {"type": "array", "items": {"type": "object", "properties": _LOAD}},
    "load": {"type": "array", "items": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, "hour": _COUNT, **_LOAD, "capacity": _COUNT}}},
}}
