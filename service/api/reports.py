"""HTTP API for the reporting figures (agents and the trusted backend only); see sql/reports.sql."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..errors import Problem, Refused
from ..storage.reports import Reports, parse_range
from .sessions import caller, hub, storage_call

bp = Blueprint("reports", __name__)


def _reports_and_range():
    identity = caller()
    if not identity.is_agent:
        raise Refused(Problem.AGENTS_ONLY)
    storage = hub().storage
    try:
        first, last = parse_range(request.args.get("from"), request.args.get("to"), storage.now().date())
    except ValueError:
        raise Refused(Problem.INVALID_PARAMETER) from None
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
