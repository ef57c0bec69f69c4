"""The newcomer's path: `keymux demo` with the example config, driven by the SDK."""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from .harness import ROOT, free_port

KEYMUX = Path(sys.executable).with_name("keymux")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not port_free(9100), reason="the demo upstream's port 9100 is taken")
def test_demo_serves_the_example_config(tmp_path, confdir):
    port = free_port()
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([str(KEYMUX), "demo", "--port", str(port), "--",
                             "--set", f"confdir={confdir}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any",
                               max_retries=0, timeout=10)
        deadline = time.monotonic() + 20
        while True:
            try:
                r = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
                time.sleep(0.2)
        assert r.choices[0].message.content
        ids = {m.id for m in client.models.list()}  # the demo upstream's own list
        assert ids >= {"gpt-4o-mini", "claude-haiku-4-5"} and not any("*" in m for m in ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    text = (tmp_path / "demo.log").read_text()
    assert "keymux demo: mock upstream on http://127.0.0.1:9100" in text
    assert "sk-demo-" not in text  # no demo secret in the output either


def test_state_export_import_round_trip(tmp_path):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text("keys: [{name: a, provider: openai, key: sk-state-cli-000000001}]\n")
    out = tmp_path / "state.json"
    run = lambda *a: subprocess.run([str(KEYMUX), "state", *a, "--config", str(cfg)],
                                    capture_output=True, text=True, check=True)
    run("export", "-o", str(out))
    data = json.loads(out.read_text())
    assert set(data) == {"key_state", "usage_minute", "requests", "spend_day"}
    data["requests"].append({"id": 7, "ts": 1.0, "status": 200, "attempts": "[]",
                             "tokens_in": 0, "tokens_out": 0, "stream": 0})
    out.write_text(json.dumps(data))
    assert "imported" in run("import", str(out)).stdout
    assert json.loads(run("export").stdout)["requests"][0]["id"] == 7
    assert "sk-state-cli" not in out.read_text()
