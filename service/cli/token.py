"""`token USER_ID [--agent] [--ttl S]`: mint an HS256 token with the configured JWT_SECRET (tests, backends)."""

from __future__ import annotations

import click

from ..auth import mint_token, parse_id
from ..config import ConfigError, jwt_secret_problem
from ..errors import Problem, Refused
from . import Context, cli, pass_context


@cli.command("token")
@click.argument("user_id")
@click.option("--agent", is_flag=True, help="Add the claim role=agent (may join and answer every session).")
@click.option("--ttl", type=click.IntRange(1, 10 * 365 * 86400), default=3600, show_default=True,
              help="Seconds until the token expires.")
@pass_context
def token(ctx: Context, user_id: str, agent: bool, ttl: int) -> None:
    """Print a signed token whose subject is USER_ID (JWT_AUDIENCE/JWT_ISSUER added when set)."""
    try:
        uid = parse_id(user_id, Problem.MISSING_USER_ID, Problem.INVALID_USER_ID)
    except Refused:
        raise click.BadParameter(f"{user_id!r} is not a user id (a positive integer)") from None
    problem = jwt_secret_problem(ctx.settings.jwt_secret)
    if problem:  # a token the server would never accept is worse than none
        raise click.ClickException(f"not signing: {problem}")
    try:
        click.echo(mint_token(ctx.settings, uid, agent=agent, ttl=ttl))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
