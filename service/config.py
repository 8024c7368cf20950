"""Typed settings: defaults, then `.env`, then `.env.local`, then the process environment, then test overrides.

One loader for every entry point (gunicorn.conf.py, the app, the CLI), so a value means the same thing
everywhere. A bad value raises `ConfigError` naming the variable and what is allowed; nothing here writes
to `os.environ`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"-?[0-9]+", raw.strip()):
            raise ValueError(f"an integer from {lo} to {hi}")
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"a number from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:
            raise ValueError(f"a number from {lo:g} to {hi:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(" or ".join(allowed))
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _timezone(raw: str) -> str:
    try:
        ZoneInfo(raw.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA time zone name such as Asia/Shanghai") from None
    return raw.strip()


def _database_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("sqlite:", "mysql+pymysql:", "mysql:", "mariadb+pymysql:")):
        raise ValueError("a sqlite:/// path or mysql+pymysql://user:pass@host:3306/db?charset=utf8mb4")
    if value.startswith("mysql:"):
        value = "mysql+pymysql:" + value[len("mysql:"):]
    return value


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("empty, or a redis:// URL such as redis://127.0.0.1:6379/0")
    return value


def _redis_prefix(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise ValueError("1 to 64 letters, digits, or _ . : -")
    return value


def _table_prefix(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_]{0,32}", value):
        raise ValueError("empty, or up to 32 letters, digits or _ such as cs_")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())


def _path(raw: str) -> str:
    value = raw.strip()
    if value and not os.path.isabs(value):
        value = str(PROJECT_ROOT / value)
    return value


def _echo_path(raw: str) -> str:
    value = raw.strip()
    if value and (not value.startswith("/") or value == "/"):
        raise ValueError("empty, or a path such as /echo (not /)")
    return value


def service_version() -> str:
    """The installed distribution's version, else pyproject.toml's (a checkout that was never installed)."""
    from importlib import metadata

    try:
        return metadata.version("chat-service")
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


def setting(env: str, default: str, parse: Callable[[str], Any], doc: str) -> Any:
    """Declare one setting: its variable name, default (as the text a user would write), parser, doc."""
    return field(metadata={"env": env, "default": default, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. The README's configuration table is generated from these docs."""

    websocket_host: str = setting("WEBSOCKET_HOST", "0.0.0.0", _text, "Address to bind.")
    websocket_port: int = setting("WEBSOCKET_PORT", "2346", _int(0, 65535), "Port for ws:// and HTTP (legacy 2346).")
    worker_count: int = setting(
        "WEBSOCKET_WORKER_COUNT", "1", _int(1, 256), "Worker processes; more than 1 needs REDIS_URL."
    )
    worker_connections: int = setting(
        "WORKER_CONNECTIONS", "10000", _int(10, 1_000_000), "Concurrent connections per worker."
    )
    database_url: str = setting(
        "DATABASE_URL", "sqlite:///var/chat.db", _database_url, "sqlite:///path (embedded) or mysql+pymysql://..."
    )
    table_prefix: str = setting(
        "TABLE_PREFIX", "", _table_prefix,
        "Prefix of every table and report view (e.g. cs_), to share a database with other apps.",
    )
    redis_url: str = setting("REDIS_URL", "", _redis_url, "Redis for cross-worker fan-out; empty = single worker.")
    redis_channel_prefix: str = setting(
        "REDIS_CHANNEL_PREFIX", "chat", _redis_prefix, "Redis channel and key prefix; one per deployment."
    )
    redis_cluster: bool = setting(
        "REDIS_CLUSTER", "false", _bool,
        "REDIS_URL names any node of a Redis Cluster (7+): sharded pub/sub, keys hash-tagged by session.",
    )
    redis_timeout: float = setting(
        "REDIS_TIMEOUT", "1", _float(0.05, 30), "Seconds a Redis command may take before it counts as failed."
    )
    presence_ttl: float = setting(
        "PRESENCE_TTL", "30", _float(1, 3600), "Seconds a crashed worker's presence entries outlive it."
    )
    auth_mode: str = setting("AUTH_MODE", "trust", _choice("trust", "jwt"), "trust (legacy user_id) or jwt.")
    app_timezone: str = setting("APP_TIMEZONE", "Asia/Shanghai", _timezone, "Zone of created_at and reports.")
    max_message_length: int = setting(
        "MAX_MESSAGE_LENGTH", "5000", _int(1, 1_000_000), "Longest message content, in characters."
    )
    heartbeat_timeout: float = setting(
        "HEARTBEAT_TIMEOUT", "60", _float(1, 86400), "Seconds a silent connection stays open."
    )
    agent_recheck_seconds: float = setting(
        "AGENT_RECHECK_SECONDS", "3", _float(0, 60),
        "Seconds an open WebSocket's agent rights may lag the agents table (0 = read it on every frame).",
    )
    backend_api_key: str = setting(
        "BACKEND_API_KEY", "", _text,
        "AUTH_MODE=trust: key the backend (HTTP calls without X-User-Id) must send; empty = none (legacy).",
    )
    jwt_secret: str = setting("JWT_SECRET", "", _text, "HS256 secret (AUTH_MODE=jwt).")
    jwt_public_key: str = setting("JWT_PUBLIC_KEY", "", _path, "PEM file for RS256/ES256 (AUTH_MODE=jwt).")
    jwt_audience: str = setting("JWT_AUDIENCE", "", _text, "Required aud claim, when set.")
    jwt_issuer: str = setting("JWT_ISSUER", "", _text, "Required iss claim, when set.")
    jwt_leeway: float = setting("JWT_LEEWAY", "30", _float(0, 600), "Clock skew allowed on exp/nbf, seconds.")
    max_frame_bytes: int = setting(
        "MAX_FRAME_BYTES", "65536", _int(1024, 64 * 1024 * 1024), "Largest WebSocket message; larger closes 1009."
    )
    max_json_depth: int = setting("MAX_JSON_DEPTH", "16", _int(2, 1000), "Deepest JSON nesting accepted.")
    rate_limit: float = setting(
        "RATE_LIMIT", "20", _float(0, 1_000_000),
        "send_message per second per connection (0 = unlimited); frames of any type get 5x this.",
    )
    rate_burst: int = setting("RATE_BURST", "40", _int(1, 1_000_000), "Messages a connection may send at once.")
    max_connections_per_ip: int = setting(
        "MAX_CONNECTIONS_PER_IP", "0", _int(0, 1_000_000),
        "WebSockets per client IP and worker (0 = unlimited); more: HTTP 429.",
    )
    handshake_timeout: float = setting(
        "HANDSHAKE_TIMEOUT", "10", _float(0.1, 3600), "Seconds to finish the HTTP request / upgrade."
    )
    allowed_origins: tuple[str, ...] = setting(
        "ALLOWED_ORIGINS", "", _origins, "Comma-separated browser origins allowed; empty = any (legacy)."
    )
    websocket_ssl: bool = setting("WEBSOCKET_SSL", "false", _bool, "Serve wss:// and https:// (legacy name).")
    websocket_ssl_cert: str = setting("WEBSOCKET_SSL_CERT", "", _path, "PEM certificate chain.")
    websocket_ssl_key: str = setting("WEBSOCKET_SSL_KEY", "", _path, "PEM private key.")
    websocket_echo_path: str = setting(
        "WEBSOCKET_ECHO_PATH", "", _echo_path, "Diagnostics echo endpoint (e.g. /echo); keep empty in production."
    )
    replay_limit: int = setting("REPLAY_LIMIT", "1000", _int(1, 100_000), "Messages replayed on join at most.")
    max_outbound_bytes: int = setting(
        "MAX_OUTBOUND_BYTES", "1048576", _int(65536, 1024 * 1024 * 1024),
        "Bytes queued for one slow connection at most; more closes it 1008 (a replay waits instead).",
    )
    typing_timeout: float = setting(
        "TYPING_TIMEOUT", "5", _float(0.1, 300), "Seconds after a typing start with no stop before the server stops it."
    )
    graceful_timeout: float = setting(
        "GRACEFUL_TIMEOUT", "10", _float(1, 3600), "Seconds a stopping worker gets to finish."
    )
    pidfile: str = setting(
        "PIDFILE", "var/chat-{port}.pid", _path, "Pid file of the daemon; {port} is WEBSOCKET_PORT."
    )
    logfile: str = setting("LOGFILE", "var/chat-{port}.log", _path, "Log file of `start -d`; {port} is WEBSOCKET_PORT.")
    state_dir: str = setting(
        "STATE_DIR", "var/run-{port}", _path, "Per-worker stats and metrics files; {port} is WEBSOCKET_PORT."
    )
    log_level: str = setting(
        "LOG_LEVEL", "info", _choice("debug", "info", "warning", "error", "critical"), "Log level."
    )
    log_format: str = setting("LOG_FORMAT", "text", _choice("text", "json"), "text or json lines.")
    writer_batch: int = setting("WRITER_BATCH", "200", _int(1, 10_000), "Messages stored per transaction at most.")
    writer_concurrency: int = setting(
        "WRITER_CONCURRENCY", "2", _int(1, 64),
        "Parallel message writers per worker; each keeps a database connection of its own.",
    )
    routing: str = setting(
        "ROUTING", "manual", _choice("manual", "auto"),
        "manual (legacy: agents pick sessions) or auto (the desk assigns waiting sessions to online agents).",
    )
    agent_capacity: int = setting(
        "AGENT_CAPACITY", "5", _int(0, 10_000), "Open sessions an agent carries at most (per-agent override).",
    )
    agent_offline_grace: float = setting(
        "AGENT_OFFLINE_GRACE", "60", _float(0.5, 86400), "Seconds with no connection before an agent is offline.",
    )
    session_idle_close: float = setting(
        "SESSION_IDLE_CLOSE", "0", _float(0, 30 * 86400),
        "Seconds with no message before a session is closed (reason idle); 0 = never.",
    )
    session_idle_warning: float = setting(
        "SESSION_IDLE_WARNING", "60", _float(0, 86400), "Seconds before an idle close that the session is warned.",
    )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.app_timezone)


LOCAL_ENV_FILE = ".env.local"
# Settings whose value may name `{port}`: several instances in one folder then get files of their own.
PORT_TEMPLATED = ("PIDFILE", "LOGFILE", "STATE_DIR")
# What `stop` and `status` need: they must work while another setting in .env holds a typo.
CONTROL_SETTINGS = ("WEBSOCKET_HOST", "WEBSOCKET_PORT", "PIDFILE", "LOGFILE", "STATE_DIR", "GRACEFUL_TIMEOUT",
                    "WEBSOCKET_SSL")


def env_file_path(environ: Mapping[str, str]) -> Path:
    """`.env` beside the project, or the file CHAT_ENV_FILE names."""
    return Path(environ.get("CHAT_ENV_FILE") or PROJECT_ROOT / ".env")


def env_files(environ: Mapping[str, str]) -> list[Path]:
    """The files read, lowest priority first: the committed `.env` (defaults), then the untracked `.env.local`
    (this machine's real settings). CHAT_ENV_FILE names the one file to read instead of both."""
    if environ.get("CHAT_ENV_FILE"):
        return [Path(environ["CHAT_ENV_FILE"])]
    return [PROJECT_ROOT / ".env", PROJECT_ROOT / LOCAL_ENV_FILE]


def raw_values(environ: Mapping[str, str] | None = None,
               overrides: Mapping[str, Any] | None = None) -> dict[str, tuple[str, str]]:
    """Every setting's text before parsing, with where it came from: {variable: (text, source)}."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = []
    for path in env_files(environ):
        if path.is_file():
            layers.append((str(path), {k: v for k, v in dotenv_values(path).items() if v is not None}))
    layers.append(("the environment", environ))
    if overrides:
        layers.append(("overrides", overrides))
    out: dict[str, tuple[str, str]] = {}
    for f in fields(Settings):
        name = f.metadata["env"]
        raw: Any = f.metadata["default"]
        source = "the default"
        for where, values in layers:
            if name in values:
                raw, source = values[name], where
        if not isinstance(raw, str):
            raw = str(raw).lower() if isinstance(raw, bool) else str(raw)
        out[name] = (raw, source)
    return out


def _parse(f: Any, raw: str, source: str) -> Any:
    try:
        return f.metadata["parse"](raw)
    except ValueError as exc:
        where = f" (set in {source})" if source.startswith("/") else ""
        raise ConfigError(f"{f.metadata['env']}={raw!r} is not valid: expected {exc}{where}") from None


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from defaults < .env < .env.local < environment < overrides (keys are variable names)."""
    raw = raw_values(environ, overrides)
    values = {f.name: _parse(f, *raw[f.metadata["env"]]) for f in fields(Settings)}
    _expand_port(values)
    settings = Settings(**values)
    if settings.is_sqlite:
        object.__setattr__(settings, "database_url", _absolute_sqlite(settings.database_url))
    return settings


def _expand_port(values: dict[str, Any]) -> None:
    for f in fields(Settings):
        if f.metadata["env"] in PORT_TEMPLATED:
            values[f.name] = values[f.name].replace("{port}", str(values["websocket_port"]))


@dataclass(frozen=True)
class ControlSettings:
    """The few settings `stop` and `status` need, and what is wrong with the rest (they still work)."""

    websocket_host: str
    websocket_port: int | None
    pidfile: str | None
    logfile: str | None
    state_dir: str | None
    graceful_timeout: float
    websocket_ssl: bool
    templates: dict[str, str]  # PIDFILE, STATE_DIR as written, {port} unexpanded: where to look for instances
    problem: str | None  # the first bad value of any setting, or None


def load_control_settings(environ: Mapping[str, str] | None = None) -> ControlSettings:
    """Parse only the control settings; a bad value elsewhere is reported in `problem`, not raised."""
    raw = raw_values(environ)
    by_env = {f.metadata["env"]: f for f in fields(Settings)}
    problem = None
    parsed: dict[str, Any] = {}
    for name, f in by_env.items():
        try:
            value = _parse(f, *raw[name])
        except ConfigError as exc:
            problem = problem or str(exc)
            value = None
        if name in CONTROL_SETTINGS:
            parsed[name] = value
    port = parsed["WEBSOCKET_PORT"]

    def templated(name: str) -> str | None:
        value = parsed[name]
        if value is None or (port is None and "{port}" in value):
            return None
        return value.replace("{port}", str(port))

    return ControlSettings(
        websocket_host=parsed["WEBSOCKET_HOST"] or "0.0.0.0",
        websocket_port=port,
        pidfile=templated("PIDFILE"),
        logfile=templated("LOGFILE"),
        state_dir=templated("STATE_DIR"),
        graceful_timeout=parsed["GRACEFUL_TIMEOUT"] or 10.0,
        websocket_ssl=bool(parsed["WEBSOCKET_SSL"]),
        templates={name: _path(raw[name][0]) for name in PORT_TEMPLATED},
        problem=problem,
    )


def _absolute_sqlite(url: str) -> str:
    """Relative sqlite paths are relative to the project, whatever the working directory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix or url.startswith(prefix + "/") or ":memory:" in url:
        return url
    return prefix + str(PROJECT_ROOT / url[len(prefix):])


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows, for the README and `python -m service config`."""
    return [(f.metadata["env"], f.metadata["default"], f.metadata["doc"]) for f in fields(Settings)]


def _looks_like_public_pem(path: str) -> bool:
    """A cheap look (no crypto import in the gunicorn master); the worker parses the key for real."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return b"-----BEGIN PUBLIC KEY-----" in head or b"-----BEGIN RSA PUBLIC KEY-----" in head \
        or b"-----BEGIN CERTIFICATE-----" in head


def jwt_secret_problem(secret: str) -> str | None:
    """Why the server would refuse this HS256 secret (`token` refuses to sign with it too), or None."""
    if secret and len(secret.encode()) < 32:
        return "JWT_SECRET must be at least 32 bytes for HS256 (RFC 7518 3.2); e.g. `openssl rand -hex 32`."
    return None


def serving_problems(settings: Settings) -> list[str]:
    """Reasons the server must not start with these settings (checked before the port is bound)."""
    problems = []
    if settings.worker_count > 1 and not settings.redis_url:
        problems.append(
            f"WEBSOCKET_WORKER_COUNT={settings.worker_count} needs REDIS_URL: without it a customer and an agent on "
            "different workers never see each other's messages. Set REDIS_URL=redis://host:6379/0 or use 1 worker."
        )
    if settings.auth_mode == "jwt" and not (settings.jwt_secret or settings.jwt_public_key):
        problems.append("AUTH_MODE=jwt needs JWT_SECRET (HS256) or JWT_PUBLIC_KEY (a PEM file for RS256/ES256).")
    if settings.auth_mode == "jwt" and jwt_secret_problem(settings.jwt_secret):
        problems.append(jwt_secret_problem(settings.jwt_secret))
    if settings.jwt_public_key:
        if not os.access(settings.jwt_public_key, os.R_OK):
            problems.append(f"JWT_PUBLIC_KEY={settings.jwt_public_key} is not a readable file.")
        elif not _looks_like_public_pem(settings.jwt_public_key):
            problems.append(f"JWT_PUBLIC_KEY={settings.jwt_public_key} is not a PEM public key or certificate.")
    if settings.websocket_ssl:
        for name, path in (("WEBSOCKET_SSL_CERT", settings.websocket_ssl_cert),
                           ("WEBSOCKET_SSL_KEY", settings.websocket_ssl_key)):
            if not path:
                problems.append(f"WEBSOCKET_SSL=true needs {name} (a PEM file).")
            elif not os.access(path, os.R_OK):
                problems.append(f"{name}={path} is not a readable file.")
        if not problems and settings.websocket_ssl_cert and settings.websocket_ssl_key:
            problem = _tls_problem(settings.websocket_ssl_cert, settings.websocket_ssl_key)
            if problem:
                problems.append(problem)
    return problems


def _tls_problem(cert: str, key: str) -> str | None:
    """Load the pair as the workers will; a bad pair would otherwise fail in every worker after the bind."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return (f"WEBSOCKET_SSL_CERT={cert} and WEBSOCKET_SSL_KEY={key} are not a usable PEM certificate "
                f"and key ({reason}).")
    return None


def env_example() -> str:
    """The text of `.env.example`: every setting with its default and meaning (regenerate when adding one)."""
    lines = [
        "# Every setting of the chat service, with its default. Put the ones you change in .env.local (not tracked",
        "# by git; it wins over the committed .env), or in the environment, which wins over both.",
        "# Generated from service/config.py:",
        '#   python -c "from service.config import env_example; print(env_example(), end=\'\')" > .env.example',
        "",
    ]
    for name, default, doc in settings_table():
        lines += [f"# {doc}", f"{name}={default}", ""]
    return "\n".join(lines)
