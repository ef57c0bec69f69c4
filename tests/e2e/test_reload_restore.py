"""Restoring the content that is serving clears a reload error (the undo of a typo)."""
import json
import time
import urllib.request

import pytest

from .harness import GatewayProcess

SECRET = "sk-restore-key-000000001"


def config(mock_url):
    return (f"# serving\nproviders:\n  mock:\n    base_url: {mock_url}/v1\n"
            f"keys:\n  - {{name: a, provider: mock, key: {SECRET}}}\n")


def get(gw, path):
    try:
        with urllib.request.urlopen(gw.url + path, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def health(gw):
    return json.loads(get(gw, "/_keymux/health")[1])


def reloads(gw, result):
    line = f'keymux_config_reload_total{{result="{result}"}}'
    for row in get(gw, "/metrics")[1].decode().splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


def wait_for(cond, timeout=2.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.fixture
def gw(mock, tmp_path, confdir):
    with GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir) as g:
        yield g


def typo(path, serving):
    path.write_bytes(serving.replace(b"keys:", b"kyes:"))


def delete(path, serving):
    path.unlink()


@pytest.mark.parametrize("breakit", [typo, delete])
def test_restoring_the_serving_bytes_clears_the_error(gw, breakit):
    serving = gw.config.read_bytes()
    ok_before = reloads(gw, "ok")
    breakit(gw.config, serving)
    assert wait_for(lambda: health(gw)["last_reload_error"] is not None)
    gw.config.write_bytes(serving)  # exactly what is serving
    assert wait_for(lambda: health(gw)["last_reload_error"] is None), health(gw)
    assert reloads(gw, "ok") == ok_before + 1  # counted as a good reload
    assert gw.log().count("config reloaded") >= 1
    assert health(gw)["status"] == "ok"


def test_an_unrelated_touch_does_not_reload(gw):
    ok_before = reloads(gw, "ok")
    (gw.config.parent / "notes.txt").write_text("unrelated")
    gw.config.write_bytes(gw.config.read_bytes())  # same bytes, no error pending
    time.sleep(0.6)  # nothing to wait for: the absence of a reload (> debounce)
    assert reloads(gw, "ok") == ok_before
