"""`report`: the per-agent table of the reporting API, for a range of days, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json

import click

from ..storage import StorageError
from . import Context, cli, pass_context

LONG_RANGE_DAYS = 31  # longer ranges show progress on stderr

HEADINGS = {
    "agent_id": "agent",
    "display_name": "name",
    "sessions_assigned": "sessions",
    "sessions_answered": "answered",
    "sessions_waiting": "waiting",
    "sessions_closed": "closed",
    "sessions_abandoned": "abandoned",
    "frt_avg_seconds": "frt_avg_s",
    "frt_median_seconds": "frt_median_s",
    "handling_avg_seconds": "handling_avg_s",
    "handling_median_seconds": "handling_median_s",
    "messages": "messages",
    "open_sessions": "open_now",
    "open_unanswered": "open_unanswered",
}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


@cli.command("report")
@click.option("--from", "first", metavar="YYYY-MM-DD", help="First day (default: 6 days before --to).")
@click.option("--to", "last", metavar="YYYY-MM-DD", help="Last day, inclusive (default: today in APP_TIMEZONE).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--desk", is_flag=True, help="The agent desk instead: time in queue, transfers, idle closes, load.")
@pass_context
def report(ctx: Context, first: str | None, last: str | None, fmt: str, desk: bool) -> None:
    """Per-agent figures for sessions opened from --from to --to (the numbers of GET /api/reports/agents).

    Over more than 31 days, progress goes to stderr (a bar on a terminal, plain lines otherwise).
    """
    from ..storage.progress import Progress
    from ..storage.reports import AGENT_COLUMNS, AGENT_QUERIES, Reports, parse_range

    storage = ctx.storage
    try:
        day_from, day_to = parse_range(first, last, storage.now().date())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from/--to") from None
    if desk:
        desk_report(storage, day_from, day_to, fmt)
        return
    try:
        days = (day_to - day_from).days + 1
        long_range = days > LONG_RANGE_DAYS
        progress = Progress.to_stderr(f"report over {days} days: queries", AGENT_QUERIES) if long_range else None
        result = Reports(storage).agents(day_from, day_to, progress=progress)
    except StorageError as exc:
        raise click.ClickException(f"database unavailable: {exc}") from None
    rows = result["agents"]
    if fmt == "json":
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(AGENT_COLUMNS)
        writer.writerows([["" if row[c] is None else row[c] for c in AGENT_COLUMNS] for row in rows])
        click.echo(out.getvalue(), nl=False)
    else:
        table = [[HEADINGS[c] for c in AGENT_COLUMNS]] + [[_cell(row[c]) for c in AGENT_COLUMNS] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(AGENT_COLUMNS))]
        click.echo(f"agents, sessions opened {result['from']} .. {result['to']} (times in seconds)")
        for line in table:
            click.echo("  ".join(cell.rjust(width) if i != 1 else cell.ljust(width)
                                 for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip())


def desk_report(storage, day_from, day_to, fmt: str) -> None:
    """`report --desk`: the numbers of GET /api/reports/desk, per day and in total."""
    from ..storage.desk_reports import DESK_FIGURES, DeskReports

    try:
        result = DeskReports(storage).desk(day_from, day_to)
    except StorageError as exc:
        raise click.ClickException(f"database unavailable: {exc}") from None
    if fmt == "json":
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    columns = ("day", *DESK_FIGURES)
    rows = [*result["days"], {"day": "total", **result["totals"]}]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if row[c] is None else row[c] for c in columns] for row in rows])
        click.echo(out.getvalue(), nl=False)
        return
    table = [list(columns)] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    click.echo(f"agent desk, sessions opened {result['from']} .. {result['to']} (times in seconds)")
    for line in table:
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    if result["agents"]:
        click.echo("")
        click.echo("agent load (samples per minute): agent  samples  online  load_avg  load_max")
        for agent in result["agents"]:
            click.echo(f"  {agent['agent_id']}  {agent['samples']}  {agent['online_samples']}  "
                       f"{_cell(agent['load_avg'])}  {agent['load_max']}")
