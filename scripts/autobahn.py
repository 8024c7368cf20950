"""Run the Autobahn|Testsuite fuzzingclient against the diagnostics echo endpoint and print its summary.

    python scripts/autobahn.py [--cases '1.*,2.*'] [--python2 /path/to/python2.7]

autobahntestsuite is a Python 2.7 package: it is installed (once) under var/autobahn with a Python 2.7
interpreter found on PATH or in pyenv. A server is started on a free port with WEBSOCKET_ECHO_PATH=/echo,
MAX_FRAME_BYTES=16 MiB (case 9.* sends up to 16 MB) and everything else at its defaults; it is stopped at the
end. Exit status 1 when any case FAILED (12.* and 13.*, permessage-deflate, are UNIMPLEMENTED by design).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = ROOT / "var" / "autobahn"
SITE = PREFIX / "lib" / "python2.7" / "site-packages"
ALLOWED = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}


def find_python2(explicit: str | None) -> str:
    candidates = [explicit] if explicit else []
    candidates += [shutil.which("python2.7"), shutil.which("python2")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv_root.glob("versions/2.7*/bin/python2.7"))
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (2, 7)"],
                                        capture_output=True).returncode == 0:
            return candidate
    sys.exit("autobahn: no Python 2.7 interpreter found (PATH or pyenv); autobahntestsuite needs one")


def install(python2: str) -> None:
    if (SITE / "autobahntestsuite").is_dir():
        return
    env = dict(os.environ, PYTHONPATH=str(SITE))
    for spec in (["setuptools<45", "wheel<0.38"], ["autobahntestsuite"]):
        print(f"autobahn: installing {' '.join(spec)} into {PREFIX}", flush=True)
        subprocess.run([python2, "-m", "pip", "install", "-q", "--prefix", str(PREFIX), *spec], env=env, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workdir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_", "DATABASE_", "AUTH_", "JWT_"))}
    env.update(CHAT_ENV_FILE=str(ROOT / "tests" / "no.env"), WEBSOCKET_HOST="127.0.0.1", WEBSOCKET_PORT=str(port),
               DATABASE_URL=f"sqlite:///{workdir}/chat.db", WEBSOCKET_ECHO_PATH="/echo",
               MAX_FRAME_BYTES=str(16 * 1024 * 1024), LOG_LEVEL="warning")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                            stdout=open(workdir / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("autobahn: the server did not start; see " + str(workdir / "server.log"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="*", help="comma-separated case patterns, e.g. '1.*,7.*'")
    parser.add_argument("--python2", help="the Python 2.7 interpreter to use")
    args = parser.parse_args()
    python2 = find_python2(args.python2)
    install(python2)
    workdir = ROOT / "var" / "autobahn-run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port = free_port()
    spec = {"outdir": str(workdir / "reports"), "servers": [{"agent": "chat", "url": f"ws://127.0.0.1:{port}/echo"}],
            "cases": args.cases.split(","), "exclude-cases": [], "exclude-agent-cases": {}}
    (workdir / "fuzzingclient.json").write_text(json.dumps(spec))
    server = start_server(port, workdir)
    try:
        code = (f"import site, sys; site.addsitedir({str(SITE)!r}); sys.argv = ['wstest'] + sys.argv[1:]; "
                "from autobahntestsuite.wstest import run; run()")
        subprocess.run([python2, "-c", code, "-m", "fuzzingclient", "-s", str(workdir / "fuzzingclient.json")],
                       cwd=workdir, stdout=open(workdir / "wstest.log", "wb"), stderr=subprocess.STDOUT, check=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    results = json.loads((workdir / "reports" / "index.json").read_text())["chat"]
    behaviour = collections.Counter(r["behavior"] for r in results.values())
    closing = collections.Counter(r["behaviorClose"] for r in results.values())
    print(f"autobahn: {len(results)} cases; behaviour {dict(behaviour)}; close behaviour {dict(closing)}")
    bad = sorted(case for case, r in results.items() if r["behavior"] not in ALLOWED
                 or r["behaviorClose"] not in ALLOWED)
    if bad:
        print("autobahn: not OK: " + ", ".join(bad))
    print(f"autobahn: report {workdir / 'reports' / 'index.html'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
