"""The ``keymux`` command: run the gateway, the demo, the UI, without mitmproxy flags.

    keymux run  [--config config/keys.yaml] [--port 8080] [--web] [-- extra mitmproxy args]
                [--workers N [--unshared-state]]  # N processes on one port (docs/scaling.md)
                [--host 127.0.0.1 [--allow-open-gateway]]
                [--ui-port 8787 | --no-ui]  # the web UI beside the gateway
    keymux demo [--config config/keys.yaml] [--mock-port 9100]  # + the built-in mock upstream
    keymux ui   [--config ...] [--host 127.0.0.1] [--port 8787] [--gateway http://127.0.0.1:8080]
    keymux hash-password                      # a hash for admin.password_hash
    keymux report [--since 7d] [--by key|client|provider|model] [--json]   # spend
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

DEMO_UPSTREAM_PORT = 9100
DEMO_UPSTREAM_VAR = "KEYMUX_DEMO_UPSTREAM"  # config/keys.yaml's demo base_url reads it
# The demo config's rate-limited key, as the mock upstream treats it: 3 requests per 10 s,
# and no x-ratelimit-remaining warning before its 429 + Retry-After, so keymux cannot
# hold it back in time: the newcomer sees it cool down, the request re-issued, and it
# come back once the Retry-After has passed.
DEMO_BEHAVIOURS = {"sk-demo-limited-00000003": {"rpm": 3, "window_s": 10, "warn": False}}


def entry_script() -> Path:
    """The file mitmproxy loads with ``-s``: the repo's addons/keymux.py, or the packaged one."""
    here = Path(__file__).resolve().parent
    in_tree = here.parent / "keymux.py"
    return in_tree if in_tree.exists() else here / "mitm" / "entry.py"


def mitmproxy_command(args: argparse.Namespace) -> list[str]:
    tool = "mitmweb" if args.web else "mitmdump"
    exe = Path(sys.executable).with_name(tool)
    cmd = [str(exe) if exe.exists() else (shutil.which(tool) or tool),
           "-s", str(entry_script()), "--mode", "reverse:https://api.openai.com",
           "--listen-host", args.host, "-p", str(args.port),
           "--set", f"keymux_config={Path(args.config).resolve()}"]
    if args.allow_open_gateway:
        cmd += ["--set", "keymux_allow_open_gateway=true"]
    if not args.web and not args.verbose:
        # Per-flow and per-connection lines cost ~14% of throughput; warnings still show, and
        # keymux's key recoveries (logged at mitmproxy's ALERT, one step above INFO).
        cmd += ["--set", "flow_detail=0", "--set", "termlog_verbosity=alert"]
    return cmd + list(args.mitmproxy_args)


def run_gateway(args: argparse.Namespace) -> int:
    refused = preflight(args)
    if refused is None and args.workers > 1:
        from . import workers
        refused = workers.preflight(args, fail)
    if refused is not None:
        return refused
    return launch(args)


def preflight(args: argparse.Namespace, demo: bool = False) -> int | None:
    """Say what is wrong before anything starts (exit 2), or None to go on."""
    from .config import load_config
    from .errors import ConfigError
    from .exposure import Binds, open_refusal

    if not Path(args.config).exists():
        return fail(f"no config at {args.config} (see config/keys.yaml in the repository)")
    try:
        config = load_config(args.config)
    except ConfigError as e:  # already located (path:line: message); never a traceback
        return fail(str(e))
    for warning in config.warnings:
        print(f"keymux: {warning}", file=sys.stderr)
    if not any(k.enabled for k in config.keys):
        print(f"keymux: WARNING: NO USABLE KEYS in {args.config}: every request will be refused"
              " until you add keys (or set their ${VARIABLES})", file=sys.stderr, flush=True)
    refusal = open_refusal(Binds(((args.host, args.port),), allow_open=args.allow_open_gateway),
                           config)
    if refusal is not None:
        return fail("refusing to start: " + refusal)
    ports = [(args.host, args.port, "--port")]
    if not args.no_ui:
        ports.append(("127.0.0.1", args.ui_port, "--ui-port"))
    if demo:
        ports.append(("127.0.0.1", args.mock_port, "--mock-port"))
    for host, port, flag in ports:
        if port_busy(host, port):
            what = f"choose another with {flag} N"
            return fail(f"{host or '*'}:{port} is already in use; {what}")
    return None


def fail(message: str) -> int:
    print(f"keymux: {message}", file=sys.stderr, flush=True)
    return 2


def port_busy(host: str, port: int) -> bool:
    """Would a listen on (host, port) fail? (A TIME_WAIT leftover does not count.)"""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return False  # mitmproxy will say what is wrong with the name
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return True
    return False


def launch(args: argparse.Namespace) -> int:
    """Start the gateway (and the UI) and wait; Ctrl-C or SIGTERM stops both, once, exit 0."""
    print(f"keymux: gateway on http://{args.host}:{args.port} (config {args.config})", flush=True)
    # The UI presents this to the gateway's admin paths when the user set no admin token;
    # it never leaves the two children's environments.
    env = {**os.environ, "KEYMUX_SIDECAR_TOKEN": secrets.token_urlsafe(32)}
    if getattr(args, "workers", 1) > 1:
        from .workers import run_fleet
        return run_fleet(args, mitmproxy_command(args), None if args.no_ui else ui_command(args),
                         env)
    # Own sessions: a terminal's Ctrl-C reaches only this process, which stops each child
    # exactly once (a second SIGINT makes mitmproxy exit 130 mid-shutdown).
    proc = subprocess.Popen(mitmproxy_command(args), env=env, start_new_session=True)
    ui = None if args.no_ui else subprocess.Popen(ui_command(args), env=env,
                                                  start_new_session=True)
    stopping = []

    def stop(*_):
        if not stopping:
            stopping.append(True)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            if ui is not None and ui.poll() is None:
                ui.terminate()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        code = proc.wait()
    finally:
        stop_ui(ui)
    if stopping and code in (0, 130, -signal.SIGINT):
        return 0
    return code


# -- the web UI (webui/), a second process beside the gateway ---------------------------

def ui_command(args: argparse.Namespace) -> list[str]:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    host = f"[{host}]" if ":" in host else host
    return [sys.executable, "-m", "webui", "--config", str(Path(args.config).resolve()),
            "--port", str(args.ui_port), "--gateway", f"http://{host}:{args.port}"]


def stop_ui(ui: subprocess.Popen | None) -> None:
    if ui is None or ui.poll() is not None:
        return
    ui.terminate()
    try:
        ui.wait(10)
    except subprocess.TimeoutExpired:
        ui.kill()
        ui.wait(5)


def run_ui(args: argparse.Namespace) -> int:
    from webui.serve import ui_main
    return ui_main(args)


def hash_password(args: argparse.Namespace) -> int:
    from webui.serve import hash_password_main
    return hash_password_main(args)


def run_demo(args: argparse.Namespace) -> int:
    from .demo.mock_upstream import MockUpstream

    # the gateway (a child process) and preflight's config check both read it
    os.environ[DEMO_UPSTREAM_VAR] = f"http://127.0.0.1:{args.mock_port}"
    refused = preflight(args, demo=True)
    if refused is not None:
        return refused
    mock = MockUpstream(port=args.mock_port)
    try:
        mock.start()
    except OSError as e:
        return fail(f"demo: cannot listen on 127.0.0.1:{args.mock_port}: {e}")
    for secret, behaviour in DEMO_BEHAVIOURS.items():
        mock.set_behavior(secret, **behaviour)
    ui = "off (--no-ui)" if args.no_ui else f"http://127.0.0.1:{args.ui_port}"
    flows = ("mitmweb (every flow, the re-issued one too): the address mitmweb prints"
             if args.web else "to see every flow: add --web (mitmweb)")
    print(DEMO_HELLO.format(port=args.port, upstream=mock.base_url, ui=ui, flows=flows),
          flush=True)
    try:
        return launch(args)
    finally:
        mock.stop()


DEMO_HELLO = """\
keymux demo: mock upstream on {upstream}, gateway on http://127.0.0.1:{port}
Try it from another terminal:
  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}}'
  curl -s http://127.0.0.1:{port}/_keymux/stats        # which key served what
  OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 OPENAI_API_KEY=any python your_app.py
Key demo-3 is rate-limited upstream (3 requests per 10 s, then 429 + Retry-After). Send a
burst to watch it cool down, the request go to another key, and demo-3 come back:
  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' \\
       http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}}'; done
Where to look:
  this terminal: "keymux: key demo-3 cools ... (429, Retry-After)", then "... recovered"
  the web UI's dashboard (key states, why a key is held back): {ui}
  {flows}
  curl -s http://127.0.0.1:{port}/_keymux/stats   # per key: state, held_back, cooling_models
Stop with Ctrl-C."""


def run_state(args: argparse.Namespace) -> int:
    """Export or import the state store named by the config's state_dir."""
    import json
    import sqlite3

    from .config import load_config
    from .errors import ConfigError
    from .store import DB_NAME, SQLiteStore

    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as e:
        print(f"keymux: {e}", file=sys.stderr)
        return 2
    store = SQLiteStore(config.state_dir / DB_NAME)
    try:
        if args.action == "export":
            text = json.dumps(store.export(), indent=1)
            if args.file in (None, "-"):
                print(text)
            else:
                Path(args.file).write_text(text)
        else:
            try:
                store.import_(json.loads(Path(args.file).read_text()))
            except (OSError, ValueError, sqlite3.Error) as e:  # nothing was changed
                print(f"keymux: cannot import {args.file}: {e}", file=sys.stderr)
                return 2
            print(f"keymux: imported {args.file} into {store.path}")
    finally:
        store.close()
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Spend per key, client, provider or model from the state store (keypool.report)."""
    import sqlite3
    import time

    from . import report
    from .config import load_config
    from .errors import ConfigError
    from .periods import Periods
    from .store import DB_NAME

    try:
        config = load_config(args.config)
        periods = Periods.of(config.routing)
        now = time.time()
        first = report.since_day(args.since, periods, now)
        rows = report.read(config.state_dir / DB_NAME, first, args.by)
    except (ConfigError, OSError, ValueError, sqlite3.Error) as e:
        print(f"keymux: {e}", file=sys.stderr)
        return 2
    render = report.as_json if args.json else report.as_table
    print(render(rows, first, periods.day_of(now), args.by))
    return 0


def workers_count(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keymux", description="LLM key-pool gateway (mitmproxy addon)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run the gateway"),
                        ("demo", "run the gateway in front of the built-in mock upstream")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", default=os.environ.get("KEYMUX_CONFIG", "config/keys.yaml"))
        s.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
        s.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
        s.add_argument("--web", action="store_true", help="use mitmweb, to inspect flows")
        s.add_argument("-v", "--verbose", action="store_true", help="log every flow")
        s.add_argument("--ui-port", type=int, default=8787, help="web UI port (default 8787)")
        s.add_argument("--no-ui", action="store_true", help="do not start the web UI")
        s.add_argument("--allow-open-gateway", action="store_true",
                       help="serve a --host beyond loopback without a clients: section"
                            " (anyone who reaches it spends your keys)")
        if name == "run":
            s.add_argument("--workers", type=workers_count, default=1,
                           help="gateway processes sharing the port (default 1; docs/scaling.md)")
            s.add_argument("--unshared-state", action="store_true",
                           help="allow --workers N > 1 without a shared (redis) state backend")
        if name == "demo":
            s.add_argument("--mock-port", type=int, default=DEMO_UPSTREAM_PORT,
                           help=f"the demo upstream's port (default {DEMO_UPSTREAM_PORT})")
        s.add_argument("mitmproxy_args", nargs=argparse.REMAINDER,
                       help="after --: passed to mitmdump/mitmweb as they are")
    s = sub.add_parser("ui", help="run the web UI (stats, keys, clients)")
    s.add_argument("--config", default=os.environ.get("KEYMUX_CONFIG", "config/keys.yaml"))
    s.add_argument("--host", default="127.0.0.1", help="UI address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8787, help="UI port (default 8787)")
    s.add_argument("--gateway", default="http://127.0.0.1:8080",
                   help="the gateway to read live stats from (default http://127.0.0.1:8080)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every request")
    sub.add_parser("hash-password", help="print a password hash for admin.password_hash")
    s = sub.add_parser("state", help="export or import the state store (cooldowns, counters, "
                                     "request log); import with the gateway stopped")
    s.add_argument("action", choices=("export", "import"))
    s.add_argument("file", nargs="?", help="export: output file (default stdout); import: input")
    s.add_argument("-o", dest="out", help="export: output file")
    s.add_argument("--config", default=os.environ.get("KEYMUX_CONFIG", "config/keys.yaml"))
    s = sub.add_parser("report", help="spend per key, client, provider or model (state store)")
    s.add_argument("--since", default="7d", help="7d, 24h, 2w or a date 2026-11-01 (default 7d)")
    s.add_argument("--by", default="key", choices=("key", "client", "provider", "model"))
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.add_argument("--config", default=os.environ.get("KEYMUX_CONFIG", "config/keys.yaml"))
    return p


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if args.command == "state" and args.file is None and len(extra) == 1 \
            and not extra[0].startswith("-"):
        # `state import --config X FILE`: argparse gives the optional positional up before
        # the option, so the file comes back as an extra argument
        args.file, extra = extra[0], []
    if extra:
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "state":
        args.file = args.out or args.file
        if args.action == "import" and not args.file:
            parser().error("state import needs a file")
    if getattr(args, "mitmproxy_args", None) and args.mitmproxy_args[0] == "--":
        args.mitmproxy_args = args.mitmproxy_args[1:]
    return {"run": run_gateway, "demo": run_demo, "ui": run_ui, "state": run_state,
            "hash-password": hash_password, "report": run_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
