"""`import-legacy`: copy the PHP server's sessions and messages into the service's tables, keeping ids."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from . import Context, cli, pass_context


@cli.command("import-legacy")
@click.option("--sessions-table", default="chat_sessions", show_default=True, help="The legacy sessions table.")
@click.option("--messages-table", default="chat_messages", show_default=True, help="The legacy messages table.")
@click.option("--from-url", default="", metavar="URL",
              help="The legacy database, when it is not DATABASE_URL (e.g. mysql+pymysql://u:p@host/legacy).")
@pass_context
def import_legacy(ctx: Context, sessions_table: str, messages_table: str, from_url: str) -> None:
    """Copy legacy sessions and messages (id, session_id, sender_id, content, created_at) into ours.

    \b
    Ids are kept, so frontends' session and message ids stay valid. Rows already imported are skipped:
    running it again adds only what is new. Add your agents first (`agent add ID...`): a message is an
    agent's when its sender is an agent or its session's agent_id. In the same database as the legacy
    tables, set TABLE_PREFIX (e.g. cs_) so that our tables sit beside theirs. Progress goes to stderr.
    """
    from sqlalchemy import create_engine

    from ..storage.diagnostics import describe_database_error
    from ..storage.legacy import LegacyError
    from ..storage.legacy import import_legacy as run
    from ..storage.progress import Progress

    storage = ctx.storage  # creates our schema on an empty database, refuses an outdated one
    source = create_engine(from_url) if from_url else storage.engine
    try:
        summary = run(source, storage.engine, sessions_table, messages_table, storage.now(), Progress.to_stderr)
    except LegacyError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database error: {describe_database_error(exc)}") from None
    click.echo(
        f"imported {summary.sessions} sessions ({summary.sessions_skipped} already there, "
        f"{summary.sessions_closed} older open ones closed: one open session per customer) and "
        f"{summary.messages} messages ({summary.messages_skipped} already there or of unknown sessions)"
    )
