"""`keymux ui` and `keymux run` (the UI beside the gateway) as a user starts them."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from uihelpers import CONFIG, ENV
from e2e.harness import free_port

KEYMUX = Path(sys.executable).with_name("keymux")


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_keymux_ui_serves_loopback_only(tmp_path):
    config = tmp_path / "keys.yaml"
    config.write_text(CONFIG)
    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, **ENV}
    env.pop("KEYMUX_ADMIN_TOKEN", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(KEYMUX), "ui", "--config", str(config), "--port", str(port),
                                 "--gateway", "http://127.0.0.1:9"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/login", proc, log)
        status, body = get(url + "/api/stats")
        assert status == 200 and not json.loads(body)["gateway"]["reachable"]
        assert get(url + "/", {"Host": "evil.example"})[0] == 400  # DNS rebinding refused
    finally:
        stop(proc)
    assert proc.returncode == 0
    text = log.read_text()
    assert "keymux ui: http://127.0.0.1:" in text and "the UI is open" in text
    assert "Traceback" not in text


@pytest.mark.skipif(not Path(sys.executable).with_name("mitmdump").exists(), reason="needs mitmdump")
def test_keymux_run_starts_the_ui_beside_the_gateway(tmp_path):
    config = tmp_path / "keys.yaml"
    config.write_text(CONFIG)
    gw_port, ui_port = free_port(), free_port()
    log = tmp_path / "run.log"
    env = {**os.environ, **ENV, "KEYMUX_ADMIN_TOKEN": "run-admin-token-123456"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(KEYMUX), "run", "--config", str(config), "--port", str(gw_port),
                                 "--ui-port", str(ui_port), "--", "--set",
                                 f"confdir={tmp_path / 'mitmproxy'}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        ui = f"http://127.0.0.1:{ui_port}"
        wait_for(f"http://127.0.0.1:{gw_port}/health", proc, log)
        wait_for(ui + "/login", proc, log)
        assert get(ui + "/api/stats")[0] == 401  # the token is set: sign in first
    finally:
        stop(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the UI went down with it
        try:
            get(f"http://127.0.0.1:{ui_port}/login")
            time.sleep(0.2)
        except OSError:
            break
    else:
        raise AssertionError("the UI outlived `keymux run`")
    assert "run-admin-token-123456" not in log.read_text()


def test_keymux_run_no_ui(tmp_path):
    from keypool import cli
    args = cli.parser().parse_args(["run", "--no-ui", "--port", "8081", "--ui-port", "9999"])
    assert args.no_ui and args.ui_port == 9999
    cmd = cli.ui_command(cli.parser().parse_args(["run", "--host", "0.0.0.0", "--port", "8081",
                                                   "--ui-port", "9999"]))
    assert cmd[1:3] == ["-m", "webui"] and cmd[-1] == "http://127.0.0.1:8081"
    assert cmd[cmd.index("--port") + 1] == "9999"
