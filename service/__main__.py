"""`python -m service ...` and the `chat-service` console script: the command line (see `--help`).

Commands that use the database or Redis run under gevent (patched before anything opens a socket); server
control (`start`, `stop`, `status`...), `--help` and `--version` do not need it, and start faster without.
"""

from __future__ import annotations

import sys

UNPATCHED = {"start", "stop", "restart", "reload", "status", "--help", "-h", "--version", "-V"}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in UNPATCHED and "--help" not in args and "-h" not in args:
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            monkey.patch_all()
    from service.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
