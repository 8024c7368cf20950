"""Database errors described for people: one line an operator can act on, never the URL (it holds the password)."""

from __future__ import annotations


def describe_database_error(exc: BaseException) -> str:
    """The driver's error class, code and text (`OperationalError 1049: Unknown database 'chat'`), for logs,
    /readyz, start-up refusals and the CLI."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{type(exc).__name__} {args[0]}: {str(args[1]).splitlines()[0][:300]}"
    text = str(orig).splitlines()[0][:300] if str(orig) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
