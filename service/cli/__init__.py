"""The command line: one module per command group, all reading the same configuration as the server."""

from __future__ import annotations

import sys

import click

from ..config import ConfigError, Settings, load_settings


class Context:
    """Lazily built settings and storage, so `--help` and server control never touch the database."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._storage = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as exc:
                raise click.ClickException(f"configuration error: {exc}") from None
        return self._settings

    @property
    def storage(self):
        if self._storage is None:
            from flask import Flask

            from ..storage import SchemaError, init_storage

            try:
                self._storage = init_storage(Flask("service-cli"), self.settings)
            except SchemaError as exc:
                raise click.ClickException(str(exc)) from None
        return self._storage


pass_context = click.make_pass_decorator(Context, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Customer-service chat server."""
    ctx.ensure_object(Context)


def main() -> None:
    from . import agent, db, demo, legacy, report, server, token  # noqa: F401  (register their commands)

    try:
        cli(standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(1)
