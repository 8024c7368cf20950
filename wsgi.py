"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

gevent patches the standard library first, before anything that opens sockets is imported. Under
gunicorn's GeventWebSocketWorker the worker has already patched, and this is a no-op.
"""

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import logging  # noqa: E402
import sys  # noqa: E402

from service import create_app  # noqa: E402
from service.storage import SchemaError  # noqa: E402

try:
    app = create_app()
except SchemaError as exc:
    # One line says what to do; exit code 3 is gunicorn's "Worker failed to boot": the master stops instead of
    # respawning a worker that cannot serve (a traceback would only repeat the message).
    logging.getLogger("gunicorn.error").error("cannot serve: %s", exc)
    sys.exit(3)
