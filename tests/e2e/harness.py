"""Run the real thing: a mitmdump process with the keymux addon, on loopback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import json
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = Path(sys.executable).with_name("mitmdump")
MITMWEB = Path(sys.executable).with_name("mitmweb")
# mitmweb's UI password under the harness (tests/e2e/mitmweb.py sends it as a bearer token).
WEB_PASSWORD = "harness-mitmweb-password-4d2f"
# What `keymux run` hands its UI: opens the admin paths (reset) without making stats need it.
SIDECAR_TOKEN = "kmx-harness-sidecar-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGINT (mitmproxy shuts down cleanly), then SIGKILL if it does not within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class GatewayProcess:
    """``mitmdump -s addons/keymux.py`` exactly as a user starts it; with ``web=True``,
    ``mitmweb`` with the same script and options, its UI and HTTP API on ``web_url``
    (loopback, password ``WEB_PASSWORD``; read it with ``tests/e2e/mitmweb.MitmWeb``)."""

    def __init__(self, workdir: Path, config_text: str | None, *, env: dict | None = None,
                 args: tuple[str, ...] = (), confdir: Path | None = None,
                 script: Path | None = None, config: Path | None = None,
                 reverse: str = "https://api.openai.com", scripts: tuple[Path, ...] = (),
                 web: bool = False):
        self.workdir = workdir
        self.config = config or workdir / "keys.yaml"
        if config_text is not None:  # None: keep the file that is there (a restart)
            self.config.write_text(config_text)
        self.script = script or ROOT / "addons" / "keymux.py"
        self.log_path = workdir / "mitmdump.log"
        self.port = free_port()
        self.env = {**os.environ, "KEYMUX_SIDECAR_TOKEN": SIDECAR_TOKEN, **(env or {})}
        self.confdir = confdir or workdir / "mitmproxy"
        self.args = args
        self.reverse = reverse
        self.scripts = scripts  # more -s addons, loaded after keymux (test instruments)
        self.proc: subprocess.Popen | None = None
        self.web_port = free_port() if web else None
        self.web_password = WEB_PASSWORD

    @property
    def web_url(self) -> str:
        assert self.web_port is not None, "start the gateway with web=True"
        return f"http://127.0.0.1:{self.web_port}"

    def _web_args(self) -> list[str]:
        if self.web_port is None:
            return []
        return ["--web-host", "127.0.0.1", "--web-port", str(self.web_port),
                "--set", "web_open_browser=false", "--set", f"web_password={WEB_PASSWORD}"]

    def _up(self) -> bool:
        urllib.request.urlopen(self.url + "/health", timeout=1).read()
        if self.web_port is not None:  # the UI listens a moment after the proxy
            urllib.request.urlopen(urllib.request.Request(
                self.web_url + "/flows", headers={"Authorization": f"Bearer {WEB_PASSWORD}"}),
                timeout=1).read()
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> "GatewayProcess":
        extra = [a for s in self.scripts for a in ("-s", str(s))]
        binary = MITMDUMP if self.web_port is None else MITMWEB
        cmd = [str(binary), "-s", str(self.script), *extra,
               "--mode", f"reverse:{self.reverse}", "--listen-host", "127.0.0.1",
               "-p", str(self.port), "--set", f"keymux_config={self.config}",
               "--set", f"confdir={self.confdir}", *self._web_args(), *_no_model_lists(self.args),
               *self.args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self._up():
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mitmdump did not come up:\n{self.log()}")

    def reset(self, name: str) -> None:
        """End a key's cooldowns, as the UI's button does."""
        urllib.request.urlopen(urllib.request.Request(
            f"{self.url}/_keymux/keys/{name}/reset", method="POST",
            headers={"x-keymux-admin-token": SIDECAR_TOKEN}), timeout=5).read()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
            self._log.close()

    def kill9(self) -> None:
        """A crash: no shutdown hook runs, nothing is flushed."""
        self.proc.kill()
        self.proc.wait(5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _no_model_lists(args: tuple[str, ...]) -> list[str]:
    """The background model-list fetch (mitm/modelfetch.py) is off unless a test sets
    keymux_model_list_ttl: its GET /models would land in the mock's record of tests that
    count exactly what was forwarded (tests/e2e/test_models.py turns it on)."""
    if any(a.startswith("keymux_model_list_ttl=") for a in args):
        return []
    return ["--set", "keymux_model_list_ttl=0"]


def get(gw: "GatewayProcess", path: str) -> tuple[int, bytes]:
    """GET a path on the gateway: (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(gw.url + path, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stats(gw: "GatewayProcess") -> dict:
    """/_keymux/stats as the sidecar reads it (its admin token: needed once clients exist)."""
    req = urllib.request.Request(gw.url + "/_keymux/stats",
                                 headers={"x-keymux-admin-token": SIDECAR_TOKEN})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def health(gw: "GatewayProcess") -> dict:
    return json.loads(get(gw, "/_keymux/health")[1])


def wait_for(cond, timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
