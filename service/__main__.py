"""`python -m service ...` and the `chat-service` console script: the command line (see `--help`).

Commands that use the database or Redis run under gevent (patched before anything opens a socket); server
control (`start`, `stop`, `status`...), `--help` and `--version` do not need it, and start faster without.
"""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec
from pathlib import Path

VENV = Path(__file__).resolve().parent.parent / ".venv"
NEEDED = ("click", "dotenv", "gevent", "gunicorn", "flask", "sqlalchemy")
UNPATCHED = {"start", "stop", "restart", "reload", "status", "--help", "-h", "--version", "-V"}


def use_project_venv() -> None:
    """`python -m service` with an interpreter that lacks the dependencies (the system's python3 on a fresh
    clone): run the same command with the project's venv (`make install`), or say how to get one."""
    if all(find_spec(name) is not None for name in NEEDED):
        return
    python = VENV / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(python), [str(python), "-m", "service", *sys.argv[1:]])
    missing = ", ".join(name for name in NEEDED if find_spec(name) is None)
    sys.exit(f"chat-service: {missing} not installed for {sys.executable}; run `make install` (it creates .venv), "
             "then .venv/bin/chat-service")


def main() -> None:
    use_project_venv()
    args = sys.argv[1:]
    if not args or args[0] not in UNPATCHED and "--help" not in args and "-h" not in args:
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            monkey.patch_all()
    from service.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
