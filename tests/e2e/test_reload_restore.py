"""Restoring the content that is serving clears a reload error (the undo of a typo)."""
import json
import time
import urllib.request

import pytest

from . import harness
from .harness import GatewayProcess, get, health

SECRET = "sk-restore-key-000000001"


def config(mock_url):
    return (f"# serving\nproviders:\n  mock:\n    base_url: {mock_url}/v1\n"
            f"keys:\n  - {{name: a, provider: mock, key: {SECRET}}}\n")


def reloads(gw, result):
    line = f'keymux_config_reload_total{{result="{result}"}}'
    for row in get(gw, "/metrics")[1].decode().splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0


def wait_for(cond, timeout=2.0):
    return harness.wait_for(cond, timeout)


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


def test_a_huge_config_is_refused_by_size_and_never_stalls_serving(gw):
    serving = gw.config.read_bytes()
    huge = gw.config.with_name(".huge.tmp")
    with open(huge, "wb") as f:  # 40 MB of valid-looking YAML: parsing it took > 10 s
        f.write(serving)
        line = b"  - {name: k, provider: mock, key: sk-huge-000000000000}\n"
        f.write(line * (40_000_000 // len(line)))
    worst = 0.0
    huge.replace(gw.config)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        started = time.monotonic()
        assert get(gw, "/health")[0] == 200
        worst = max(worst, time.monotonic() - started)
        error = health(gw)["last_reload_error"]
        if error and "MiB" in error:
            break
        time.sleep(0.02)
    assert error and "at most 2 MiB" in error and ":1:" in error
    assert worst < 1.0  # a loaded 2-core machine; the stall this prevents was > 10 s
    gw.config.write_bytes(serving)
    assert wait_for(lambda: health(gw)["last_reload_error"] is None)
