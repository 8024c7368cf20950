"""`demo-data`: fill the configured database with plausible chat traffic (to try and measure the reports)."""

from __future__ import annotations

import time

import click
from sqlalchemy.exc import SQLAlchemyError

from ..storage import StorageError
from . import Context, cli, pass_context


@cli.command("demo-data")
@click.option("--sessions", type=click.IntRange(1, 10_000_000), default=1000, show_default=True)
@click.option("--messages", type=click.IntRange(1, 100_000_000), default=20_000, show_default=True)
@click.option("--days", type=click.IntRange(1, 3650), default=60, show_default=True, help="Days of traffic.")
@click.option("--agents", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same traffic.")
@pass_context
def demo_data(ctx: Context, sessions: int, messages: int, days: int, agents: int, seed: int) -> None:
    """Add SESSIONS sessions and MESSAGES messages over the last DAYS days (never on a production database).

    Progress goes to stderr: a bar with counts and rate on a terminal, a line every 5 s otherwise.
    """
    from ..storage.demo import generate
    from ..storage.progress import Progress

    if messages < sessions:
        raise click.BadParameter("must be at least --sessions (every session has a message)", param_hint="--messages")
    storage = ctx.storage
    started = time.perf_counter()
    try:
        summary = generate(storage.engine, storage.now(), sessions, messages, days, agents, seed,
                           progress=Progress.to_stderr("demo-data: messages", messages))
    except (SQLAlchemyError, StorageError) as exc:
        first_line = str(exc).splitlines()[0][:300]
        raise click.ClickException(f"database error: {exc.__class__.__name__}: {first_line}") from None
    click.echo(
        f"added {summary.sessions} sessions, {summary.messages} messages, {summary.events} events, "
        f"{summary.agents} new agents ({summary.first_day} .. {summary.last_day}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
