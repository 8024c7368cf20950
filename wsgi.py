"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

gevent patches the standard library first, before anything that opens sockets is imported. Under
gunicorn's GeventWebSocketWorker the worker has already patched, and this is a no-op.
"""

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

from service import create_app  # noqa: E402

app = create_app()
