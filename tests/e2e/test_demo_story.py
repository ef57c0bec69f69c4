"""`keymux demo` tells the story it promises: demo-3 is rate-limited upstream (429 +
Retry-After, no warning before), keymux cools it, re-issues the request on another key, and
demo-3 comes back once the Retry-After has passed; the log says each step by name."""
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from .harness import ROOT, free_port, stop_process

KEYMUX = Path(sys.executable).with_name("keymux")
COOLS = re.compile(r"keymux: key demo-3 cools \d+ s for gpt-4o-mini \(429, Retry-After\)")


def test_demo_3_cools_down_and_comes_back(tmp_path, confdir):
    port, mock_port = free_port(), free_port()
    log_path = tmp_path / "demo.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(KEYMUX), "demo", "--port", str(port), "--mock-port", str(mock_port),
                             "--no-ui", "--", "--set", f"confdir={confdir}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    text = lambda: log_path.read_text(errors="replace")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any",
                               max_retries=0, timeout=10)
        ask = lambda: client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        deadline = time.monotonic() + 20
        while True:
            try:
                ask()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, text()
                time.sleep(0.2)
        # a burst: every request is answered, demo-3's 429 re-issued on another key
        for _ in range(24):
            assert ask().choices[0].message.content
            if COOLS.search(text()):
                break
        assert COOLS.search(text()), text()
        cooled = time.monotonic()
        stats = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/_keymux/stats", timeout=5).read())
        demo3 = next(k for k in stats["keys"] if k["name"] == "demo-3")
        assert demo3["cooling_models"], (demo3, text())
        assert demo3["held_back"][0]["reason"] == "cooldown"
        # ... and it comes back: after Retry-After (at most the mock's 10 s window) a request
        # probes it and succeeds
        while "key demo-3 recovered" not in text():
            assert time.monotonic() - cooled < 25, text()
            ask()
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            stop_process(proc)
        log.close()
    out = text()
    assert f"keymux demo: mock upstream on http://127.0.0.1:{mock_port}" in out
    assert "(429, Retry-After)" in out and "key demo-3: probe sent for gpt-4o-mini" in out
    assert "Where to look" in out and "sk-demo-" not in out
