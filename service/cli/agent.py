"""`agent add|list|remove`: who is a customer-service agent (the agents table)."""

from __future__ import annotations

import click

from ..auth import parse_id
from ..errors import Problem, Refused
from ..storage import StorageError
from . import Context, cli, pass_context


def _user_id(raw: str) -> int:
    try:
        return parse_id(raw, Problem.MISSING_USER_ID, Problem.INVALID_USER_ID)
    except Refused:
        raise click.BadParameter(f"{raw!r} is not a user id (a positive integer)") from None


@cli.group()
def agent() -> None:
    """Manage customer-service agents."""


@agent.command("add")
@click.argument("user_ids", metavar="USER_ID...", nargs=-1, required=True)
@click.option("--name", "display_name", help="Display name shown to reporting (one USER_ID only).")
@click.option("--capacity", type=click.IntRange(0, 10_000), default=None,
              help="Open sessions each agent carries at most (default: AGENT_CAPACITY).")
@pass_context
def add(ctx: Context, user_ids: tuple[str, ...], display_name: str | None, capacity: int | None) -> None:
    """Make each USER_ID an agent (may join and answer every session)."""
    uids = [_user_id(raw) for raw in user_ids]  # every id checked before any is stored
    if display_name is not None and len(uids) > 1:
        raise click.BadParameter("names one agent: give a single USER_ID with it", param_hint="--name")
    desk = None
    if capacity is not None:
        from ..storage.desk import DeskStorage

        desk = DeskStorage(ctx.storage, ctx.settings.agent_capacity)
    for uid in uids:
        try:
            record, created = ctx.storage.add_agent(uid, display_name)
            if desk is not None:
                desk.set_capacity(uid, capacity)
        except StorageError as exc:
            raise click.ClickException(f"database unavailable: {exc}") from None
        click.echo(f"{'added' if created else 'updated'} agent {record.user_id}"
                   + (f" ({record.display_name})" if record.display_name else ""))


@agent.command("remove")
@click.argument("user_ids", metavar="USER_ID...", nargs=-1, required=True)
@pass_context
def remove(ctx: Context, user_ids: tuple[str, ...]) -> None:
    """Remove each USER_ID from the agents; exit 1 when one of them was not an agent (the others are removed)."""
    uids = [_user_id(raw) for raw in user_ids]
    missing = []
    for uid in uids:
        try:
            removed = ctx.storage.remove_agent(uid)
        except StorageError as exc:
            raise click.ClickException(f"database unavailable: {exc}") from None
        if removed:
            click.echo(f"removed agent {uid}")
        else:
            missing.append(uid)
    if missing:
        raise click.ClickException(f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} "
                                   "not an agent")


@agent.command("list")
@pass_context
def list_agents(ctx: Context) -> None:
    """List agents: user id, created at, name."""
    try:
        agents = ctx.storage.list_agents()
    except StorageError as exc:
        raise click.ClickException(f"database unavailable: {exc}") from None
    for record in agents:
        click.echo(f"{record.user_id}\t{record.created_at:%Y-%m-%d %H:%M:%S}\t{record.display_name or ''}")
