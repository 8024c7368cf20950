"""gunicorn settings, all derived from the service's configuration (environment > .env > defaults).

Only `service.config` is imported here: the master must not import database, Redis or socket libraries
before the workers fork and monkey-patch. A bad setting stops start-up here, with one line, before the
port is bound.
"""

import resource
import sys

from service.config import ConfigError, load_settings, serving_problems

try:
    _settings = load_settings()
except ConfigError as exc:
    sys.exit(f"chat: configuration error: {exc}")
for _problem in serving_problems(_settings):
    sys.exit(f"chat: refusing to start: {_problem}")

bind = [f"{_settings.websocket_host}:{_settings.websocket_port}"]
workers = _settings.worker_count
worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
worker_connections = _settings.worker_connections
graceful_timeout = int(_settings.graceful_timeout)
timeout = 30
keepalive = 5
# gunicorn 27's control socket is one path per host: two instances (tests, the 2346-2348 nginx layout)
# would fight over it.
control_socket_disable = True
loglevel = _settings.log_level
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
proc_name = "chat-service"

if _settings.websocket_ssl:
    certfile = _settings.websocket_ssl_cert
    keyfile = _settings.websocket_ssl_key


def on_starting(server):
    """Raise the open-file limit to the hard limit: each WebSocket is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            server.log.warning("could not raise the open-file limit above %s", soft)


def post_worker_init(worker):
    """In the worker, after the app loaded: our handler (handshake policy, RFC 6455 framing) and shutdown."""
    from service.realtime.worker import install

    install(worker)
