"""Alembic migrations of the chat schema (run them with `python -m service db upgrade`)."""
