"""The command line: one module per command group, all reading the same configuration as the server.

Command modules are imported when their command runs (or `--help` lists one this file does not know), so
`--help`, `--version`, `status` and `stop` start without importing Flask, SQLAlchemy or gevent.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from ..config import ConfigError, ControlSettings, Settings, load_control_settings, load_settings, service_version

# Command name -> (module under service.cli, one-line help shown by --help without importing the module).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("agent", "Manage customer-service agents."),
    "token": ("token", "Print a signed token whose subject is USER_ID (AUTH_MODE=jwt)."),
    "db": ("db", "Schema versions (migrations) and report views."),
    "report": ("report", "Per-agent figures for sessions opened from --from to --to."),
    "demo-data": ("demo", "Fill the configured database with demo traffic (never on a production database)."),
    "import-legacy": ("legacy", "Copy legacy sessions and messages (id, session_id, sender_id, content, created_at) "
                      "into ours."),
}
EAGER_MODULES = {"server"}


class Context:
    """Lazily built settings and storage, so `--help` and server control never touch the database."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._control: ControlSettings | None = None
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
    def control(self) -> ControlSettings:
        """The settings `stop` and `status` need, read even when another value in .env is bad."""
        if self._control is None:
            self._control = load_control_settings()
        return self._control

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


def short_help(command: click.Command) -> str:
    """The first paragraph of the docstring, whole: click's own cut stops at the first ". " ("(e.g.")."""
    if command.short_help:
        return command.short_help
    return " ".join((command.help or "").split("\n\n")[0].split()).rstrip()


class ChatGroup(click.Group):
    """A group whose subcommands' modules are imported on use, and whose listing shows whole help lines."""

    group_class = type  # subgroups (`db`, `agent`) are ChatGroups too

    def list_commands(self, ctx: click.Context) -> list[str]:
        if self is cli:
            _import_unknown_modules()
            return sorted(set(self.commands) | set(LAZY_COMMANDS))
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if self is cli and name not in self.commands:
            if name in LAZY_COMMANDS:
                importlib.import_module(f"{__name__}.{LAZY_COMMANDS[name][0]}")
            else:
                _import_unknown_modules()
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            if self is cli and name in LAZY_COMMANDS:  # the same line whether or not the module is loaded
                rows.append((name, LAZY_COMMANDS[name][1]))
            elif loaded is not None and not loaded.hidden:
                rows.append((name, short_help(loaded)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _import_unknown_modules() -> None:
    """A command module this file does not list yet is still found (at the cost of importing it)."""
    known = EAGER_MODULES | {module for module, _help in LAZY_COMMANDS.values()}
    for info in pkgutil.iter_modules(__path__):
        if info.name not in known:
            importlib.import_module(f"{__name__}.{info.name}")


@click.group(cls=ChatGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 118})
@click.version_option(service_version(), "-V", "--version", prog_name="chat-service",
                      message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Customer-service chat server (the legacy Workerman protocol on gunicorn).

    Settings come from .env (committed defaults), .env.local (this machine's values, untracked) and the
    environment, which wins. `COMMAND --help` tells more.
    """
    ctx.ensure_object(Context)


def main() -> None:
    from . import server  # noqa: F401  (start, stop, restart, reload, status)

    try:
        cli(standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(1)
