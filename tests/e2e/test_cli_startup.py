"""`keymux run` start-up a user can read: located config errors, refusals, busy ports, Ctrl-C."""
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import K2, pool_yaml
from .harness import GatewayProcess, free_port

KEYMUX = Path(sys.executable).with_name("keymux")
ENV = {k: v for k, v in os.environ.items()
       if k not in ("KEYMUX_ADMIN_TOKEN", "KEYMUX_SIDECAR_TOKEN")}


def keymux(*args, timeout=30):
    return subprocess.run([str(KEYMUX), *args], capture_output=True, text=True, timeout=timeout,
                          env={**ENV, "MOCK_KEY_2": K2})


def test_a_config_error_is_one_located_line_and_exit_2(tmp_path):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text("keys:\n  - name: a\n    provider: nope\n    key: sk-cli-secret-000000001\n")
    r = keymux("run", "--config", str(cfg), "--port", str(free_port()))
    assert r.returncode == 2
    assert f"{cfg}:3: keys[0].provider: unknown provider 'nope'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "gateway on" not in r.stdout
    assert "sk-cli-secret" not in r.stderr


def test_no_keys_warn_loudly_and_an_open_wide_bind_is_refused(tmp_path):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text("keys: []\n")
    r = keymux("run", "--config", str(cfg), "--host", "0.0.0.0", "--port", str(free_port()),
               "--no-ui")
    assert r.returncode == 2 and "gateway on" not in r.stdout
    assert "NO USABLE KEYS" in r.stderr
    assert "refusing to start" in r.stderr and "--allow-open-gateway" in r.stderr


def test_the_addon_log_warns_about_zero_keys(tmp_path, confdir):
    with GatewayProcess(tmp_path, "keys: []\n", confdir=confdir) as gw:
        assert "NO USABLE KEYS" in gw.log()


@pytest.mark.parametrize("flag", ["--port", "--ui-port"])
def test_a_busy_port_names_the_keymux_flag(tmp_path, mock, flag):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text(pool_yaml(mock.base_url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--ui-port": str(free_port()), flag: str(busy)}
        r = keymux("run", "--config", str(cfg), *[x for kv in ports.items() for x in kv])
    assert r.returncode == 2
    assert f"127.0.0.1:{busy} is already in use; choose another with {flag}" in r.stderr
    assert "Traceback" not in r.stderr and "gateway on" not in r.stdout


def wait_for(url, deadline, opener=None):
    while True:
        try:
            return (opener or urllib.request.build_opener()).open(url, timeout=2).read()
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.2)


def test_run_serves_the_ui_with_reset_and_ctrl_c_exits_0(tmp_path, mock, confdir):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text(pool_yaml(mock.base_url))
    port, ui_port = free_port(), free_port()
    log = open(tmp_path / "run.log", "wb")
    # its own session, as a terminal's process group: Ctrl-C goes to the whole group
    proc = subprocess.Popen([str(KEYMUX), "run", "--config", str(cfg), "--port", str(port),
                             "--ui-port", str(ui_port), "--", "--set", f"confdir={confdir}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**ENV, "MOCK_KEY_2": K2})
    try:
        deadline = time.monotonic() + 30
        wait_for(f"http://127.0.0.1:{port}/health", deadline)
        jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
            http.cookiejar.CookieJar()), urllib.request.ProxyHandler({}))
        page = wait_for(f"http://127.0.0.1:{ui_port}/", deadline, jar).decode()
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
        # no admin token set by the user: the UI still resets through the cli's sidecar token
        reset = jar.open(urllib.request.Request(
            f"http://127.0.0.1:{ui_port}/api/keys/k1/reset", method="POST", data=b"",
            headers={"X-CSRF-Token": csrf}), timeout=5)
        assert reset.status == 200 and b'"ok":true' in reset.read().replace(b" ", b"")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    with socket.socket() as s:  # both children are gone with it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
