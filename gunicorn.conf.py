"""gunicorn settings, all derived from the service's configuration (environment > .env > defaults).

Only `service.config` and standard-library helpers of the service (`service.logs`, `service.ops.state`)
are imported here: the master must not import database, Redis or socket libraries before the workers fork
and monkey-patch. A bad setting stops start-up here, with one line, before the port is bound; a HUP checks
the settings before gunicorn re-reads this file, and a bad one is refused (the running workers keep serving).

`python -m service start -d` adds `--daemon --error-logfile LOGFILE --capture-output` on the command line;
everything else is the same for `gunicorn -c gunicorn.conf.py wsgi:app`.
"""

import atexit
import ipaddress
import os
import resource
import sys
import time

from service.config import ConfigError, load_settings, serving_problems
from service.logs import gunicorn_logconfig
from service.ops import state

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
pidfile = _settings.pidfile
loglevel = _settings.log_level
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
logconfig_dict = gunicorn_logconfig(_settings.log_format, _settings.log_level)
proc_name = "chat-service"

if _settings.websocket_ssl:
    certfile = _settings.websocket_ssl_cert
    keyfile = _settings.websocket_ssl_key


# gunicorn writes the pid file before any hook runs (and refuses to start when it names a live master).
for _directory in (os.path.dirname(_settings.pidfile), os.path.dirname(_settings.logfile), _settings.state_dir):
    if _directory:
        os.makedirs(_directory, exist_ok=True)


def on_starting(server):
    """After the pid file, before the port: fresh metrics files, the open-file limit raised, a guarded HUP."""
    _guard_reload(server)
    # gunicorn removes its pid file on a normal exit only: a port in use ends start-up with sys.exit.
    atexit.register(_remove_own_pidfile, server)
    if not server.master_pid:  # not a USR2 re-exec, whose old master still uses the metrics files
        # prometheus-client reads this in every worker, which inherits it from the master.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(state.prepare_state_dir(_settings.state_dir))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            server.log.warning("could not raise the open-file limit above %s", soft)


def _guard_reload(server):
    """A HUP re-reads this file, whose refusal of a bad setting would end the running master ("Parent changed,
    shutting down" in every worker). Check the settings first; refuse the reload (one line) when they are bad,
    so the running workers keep serving with the settings they started with."""
    reload = server.reload

    def guarded_reload():
        try:
            problems = serving_problems(load_settings())
        except ConfigError as exc:
            problems = [f"configuration error: {exc}"]
        if problems:
            server.log.error("reload refused, still serving with the previous settings: %s", problems[0])
            return
        reload()

    server.reload = guarded_reload


def _remove_own_pidfile(server):
    if server.pidfile is not None and os.getpid() == server.pid:
        server.pidfile.unlink()  # only when the file still names this master


def when_ready(server):
    """The port is bound: record this instance for `status`, warn when trust mode listens beyond this host."""
    _record_instance(server)
    host = _settings.websocket_host
    if _settings.auth_mode == "trust" and not _is_loopback(host):
        server.log.warning(
            "AUTH_MODE=trust on %s: anyone who reaches port %s can act as any user; set AUTH_MODE=jwt, or "
            "WEBSOCKET_HOST=127.0.0.1 behind a proxy that authenticates", host, _settings.websocket_port)


def on_reload(server):
    """After a HUP's new settings: the instance record follows them (pid file, address)."""
    _record_instance(server)


def _record_instance(server):
    state.write_instance(_settings.state_dir, {
        "pid": server.pid,
        "port": _settings.websocket_port,
        "workers": _settings.worker_count,
        "listen": [str(listener) for listener in server.LISTENERS],
        "pidfile": _settings.pidfile,
        "logfile": _settings.logfile,
        "ssl": _settings.websocket_ssl,
        "recorded_at": time.time(),
    })


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def post_worker_init(worker):
    """In the worker, after the app loaded: our handler (handshake policy, RFC 6455 framing), stats, shutdown."""
    from service.realtime.worker import install

    install(worker)


def worker_int(worker):
    """INT/QUIT is gunicorn's quick stop: still close WebSockets with 1001 (within a second) before exiting."""
    from service.realtime.worker import quick_shutdown

    quick_shutdown(worker)


def child_exit(server, worker):
    """In the master, for every worker that ended (crashes too): drop its stats and live metrics."""
    state.forget_worker(_settings.state_dir, worker.pid)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
