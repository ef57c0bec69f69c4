"""Serving the UI: ``keymux ui`` and ``keymux hash-password``.

The UI binds 127.0.0.1 by default. A bind to any other address is refused (exit 2) unless a
strong admin credential is configured: ``KEYMUX_ADMIN_TOKEN`` of at least 24 characters, or
``admin.password_hash`` (with no shorter token beside it): an open or guessable UI can rewrite
keys.yaml. A blank (whitespace) token is refused on every bind; a short one on loopback is
only warned about. On a loopback bind only loopback host names are accepted in ``Host``, so
a web page cannot reach the UI through DNS rebinding.
"""
from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from . import DEFAULT_GATEWAY, create_app
from .configfile import ConfigFile

DEFAULT_PORT = 8787
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
MIN_PASSWORD_LEN = 8
MIN_TOKEN_LEN = 24


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _how() -> str:
    return (" Make a password hash with `keymux hash-password` and put it in keys.yaml"
            " (admin: password_hash: ...), or a token with"
            " `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            f" (for example, made just now: KEYMUX_ADMIN_TOKEN={secrets.token_urlsafe(32)}).")


def _env_token(environ: dict | None) -> str | None:
    return (os.environ if environ is None else environ).get("KEYMUX_ADMIN_TOKEN")


def bind_refusal(host: str, config: str | Path, environ: dict | None = None) -> str | None:
    """Why the UI must not listen on ``host`` (None: it may)."""
    raw = _env_token(environ)
    if raw is not None and raw and not raw.strip():
        return "keymux ui: KEYMUX_ADMIN_TOKEN is blank (only whitespace); refusing to start." + _how()
    if is_loopback(host):
        return None
    creds = ConfigFile(config, environ=environ).credentials()
    if creds.token and len(creds.token) < MIN_TOKEN_LEN:
        return (f"keymux ui: refusing to listen on {host}: KEYMUX_ADMIN_TOKEN has"
                f" {len(creds.token)} characters, and a token on a network needs at least"
                f" {MIN_TOKEN_LEN}." + _how())
    if creds.token or creds.password_hash:
        return None
    return (f"keymux ui: refusing to listen on {host}: anyone who can reach it could read and"
            " change your keys. Set KEYMUX_ADMIN_TOKEN (at least"
            f" {MIN_TOKEN_LEN} characters) or admin.password_hash, or bind 127.0.0.1." + _how())


def bind_warning(host: str, environ: dict | None = None) -> str | None:
    """A weak but tolerated setting: a short token on a loopback bind."""
    raw = _env_token(environ)
    if raw and raw.strip() and len(raw) < MIN_TOKEN_LEN and is_loopback(host):
        return (f"KEYMUX_ADMIN_TOKEN has {len(raw)} characters; use at least {MIN_TOKEN_LEN}"
                " (a bind to a network address would refuse it)")
    return None


def trusted_hosts(host: str) -> list[str] | None:
    if not is_loopback(host) or ":" in host:
        return None
    return sorted({*LOOPBACK_NAMES, host})


def serve(config: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          gateway: str = DEFAULT_GATEWAY) -> int:
    refusal = bind_refusal(host, config)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    warning = bind_warning(host)
    if warning:
        logging.getLogger(__name__).warning("%s", warning)
    if not Path(config).exists():
        print(f"keymux ui: no config at {config}", file=sys.stderr)
        return 2
    app = create_app(config, gateway_url=gateway)
    app.config["TRUSTED_HOSTS"] = trusted_hosts(host)
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as e:
        print(f"keymux ui: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    open_ui = not ConfigFile(config).credentials().required
    print(f"keymux ui: http://{host}:{server.port} (config {config}, gateway {gateway})"
          + (" -- no admin token or password set: the UI is open to this machine" if open_ui else ""),
          flush=True)

    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: a normal stop
    finally:
        server.server_close()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("KEYMUX_CONFIG", "config/keys.yaml"))
    p.add_argument("--host", default="127.0.0.1", help="UI address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"UI port (default {DEFAULT_PORT})")
    p.add_argument("--gateway", default=DEFAULT_GATEWAY,
                   help=f"the gateway to read live stats from (default {DEFAULT_GATEWAY})")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")


def ui_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not getattr(args, "verbose", False):  # one line per request, a poll every 2 s: too much
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return serve(args.config, args.host, args.port, args.gateway)


def hash_password_main(_args: argparse.Namespace | None = None) -> int:
    """Print a werkzeug hash of a password typed twice (or one line on standard input)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password for the keymux UI: ")
        if password != getpass.getpass("Again: "):
            print("keymux hash-password: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_LEN:
        print(f"keymux hash-password: use at least {MIN_PASSWORD_LEN} characters", file=sys.stderr)
        return 1
    digest = generate_password_hash(password)
    print(digest)
    print(f'In keys.yaml:\nadmin:\n  password_hash: "{digest}"', file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webui", description="keymux web UI")
    add_arguments(p)
    return ui_main(p.parse_args(argv))
