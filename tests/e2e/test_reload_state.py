"""Hot reload of keys.yaml and durable state (issue 4), through a real mitmdump."""
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.request

import openai
import pytest

from . import harness
from .harness import ROOT, GatewayProcess, get, health

SECRETS = {n: f"sk-{n}-reload-key-{i:06d}" for i, n in enumerate(("a", "b", "c", "x"))}


def config(mock_url, keys=("a", "b"), extra=""):
    lines = "\n".join(f"  - {{name: {n}, provider: mock, key: {SECRETS[n]}}}" for n in keys)
    return (f"# a comment the gateway does not care about\nproviders:\n  mock:\n"
            f"    base_url: {mock_url}/v1\nkeys:\n{lines}\n{extra}")


def stats(gw):
    return {k["name"]: k for k in json.loads(get(gw, "/_keymux/stats")[1])["keys"]}


def ask(gw, timeout=20):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0,
                         timeout=timeout).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def wait_for(cond, timeout=1.0):
    """The reload promise: visible within 1 s of the write."""
    return harness.wait_for(cond, timeout)


@pytest.fixture
def gw(mock, tmp_path, confdir):
    with GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir) as g:
        yield g


def write_in_place(path, text):
    path.write_text(text)


def write_atomic_rename(path, text):  # what editors and the web UI do
    tmp = path.with_name(".keys.yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_cp(path, text):
    src = path.with_name("new.yaml.src")
    src.write_text(text)
    subprocess.run(["cp", str(src), str(path)], check=True)


def write_truncate_then_write(path, text):  # echo > file, then the content a bit later
    subprocess.run(f": > {path}", shell=True, check=True)
    time.sleep(0.3)
    path.write_text(text)


@pytest.mark.parametrize("write", [write_in_place, write_atomic_rename, write_cp,
                                   write_truncate_then_write])
def test_each_way_of_writing_reloads_within_a_second(gw, mock, write):
    write(gw.config, config(mock.base_url, keys=("a", "b", "c")))
    assert wait_for(lambda: "c" in stats(gw), timeout=1.5)
    for _ in range(3):
        ask(gw)
    assert mock.count(SECRETS["c"]) == 1


def test_configmap_symlink_swap(mock, tmp_path, confdir):
    # Kubernetes mounts keys.yaml -> ..data/keys.yaml, ..data -> ..<timestamp>/
    def publish(version, text):
        d = tmp_path / f"..v{version}"
        d.mkdir()
        (d / "keys.yaml").write_text(text)
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(d.name)
        os.replace(tmp_link, tmp_path / "..data")

    publish(1, config(mock.base_url))
    (tmp_path / "keys.yaml").symlink_to("..data/keys.yaml")
    with GatewayProcess(tmp_path, None, confdir=confdir) as g:
        assert set(stats(g)) == {"a", "b"}
        publish(2, config(mock.base_url, keys=("a", "c")))
        assert wait_for(lambda: set(stats(g)) == {"a", "c"}, timeout=1.5)


@pytest.mark.parametrize("bad,line,words", [
    ("keys: [\n", 2, "YAML"),
    ("keys:\n  - {name: a, provider: openai, key: k, rpm: lots}\n", 2, "rpm"),
    ("keys: []\nroutnig: {}\n", 2, "unknown field 'routnig'"),
    ("", None, "empty"),
], ids=["yaml", "type", "unknown-field", "empty"])
def test_a_broken_file_is_rejected_and_the_old_config_serves(gw, mock, bad, line, words):
    gw.config.write_text(bad)
    assert wait_for(lambda: health(gw)["last_reload_error"] is not None, timeout=1.5)
    err = health(gw)["last_reload_error"]
    assert words in err and (line is None or f":{line}:" in err)
    assert set(stats(gw)) == {"a", "b"} and ask(gw).choices  # still serving
    assert b'keymux_config_reload_total{result="error"} 1.0' in get(gw, "/metrics")[1]
    assert "config not reloaded" in gw.log()
    gw.config.write_text(config(mock.base_url, keys=("a", "b", "c")))  # the next valid write
    assert wait_for(lambda: "c" in stats(gw), timeout=1.5)
    assert health(gw)["last_reload_error"] is None


def test_unset_variable_skips_that_key_and_applies_the_rest(gw, mock):
    text = config(mock.base_url, keys=("a",)) + "  - {name: v, provider: mock, key: \"${NOT_SET_X}\"}\n"
    gw.config.write_text(text)
    assert wait_for(lambda: set(stats(gw)) == {"a"}, timeout=1.5)
    assert any("NOT_SET_X" in w for w in health(gw)["warnings"])


def test_reload_under_load_fails_no_request(gw, mock):
    errors, done = [], threading.Event()

    def load():
        while not done.is_set():
            try:
                ask(gw)
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(8):
        keys = ("a", "b", "c") if i % 2 else ("a", "c")
        write_atomic_rename(gw.config, config(mock.base_url, keys=keys))
        time.sleep(0.35)
    done.set()
    for t in threads:
        t.join()
    assert errors == [] and mock.count() > 20


def test_state_carries_resets_and_drains(gw, mock):
    mock.set_behavior(SECRETS["a"], status=429, headers={"Retry-After": "60"}, times=1)
    for _ in range(3):
        ask(gw)
    assert stats(gw)["a"]["cooling_models"]  # a 429 cools the model, not the key
    requests_b = stats(gw)["b"]["requests"]
    # b keeps its state; a keeps its cooldown; x is added
    gw.config.write_text(config(mock.base_url, keys=("a", "b", "x")))
    assert wait_for(lambda: "x" in stats(gw), timeout=1.5)
    s = stats(gw)
    assert s["a"]["cooling_models"] and s["b"]["requests"] == requests_b
    # a new secret for b: b starts fresh
    gw.config.write_text(config(mock.base_url, keys=("a", "b", "x")).replace(
        SECRETS["b"], "sk-b-rotated-secret-000099"))
    assert wait_for(lambda: stats(gw)["b"]["requests"] == 0, timeout=1.5)
    # x is removed while a request on it is in flight: that request still succeeds
    mock.set_behavior(SECRETS["x"], delay_ms=1200)
    mock.set_behavior(SECRETS["a"], status=500)
    mock.set_behavior("sk-b-rotated-secret-000099", status=500)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=ask(gw)))
    t.start()
    time.sleep(0.4)
    gw.config.write_text(config(mock.base_url, keys=("a", "b")))
    assert wait_for(lambda: "x" not in stats(gw), timeout=1.5)
    t.join()
    assert result["r"].choices[0].message.content
    assert mock.requests()[-1]["key"] == SECRETS["x"] or mock.count(SECRETS["x"]) == 1


def test_a_rename_keeps_the_keys_counters_and_cooldowns(gw, mock):
    """The web UI's rename rewrites only the name: the gateway carries the state over."""
    mock.set_behavior(SECRETS["a"], status=429, headers={"Retry-After": "60"}, times=1)
    for _ in range(4):
        ask(gw)
    before = stats(gw)["a"]
    assert before["requests"] >= 1 and before["cooling_models"]
    write_atomic_rename(gw.config, config(mock.base_url).replace("name: a,", "name: a-renamed,"))
    assert wait_for(lambda: "a-renamed" in stats(gw), timeout=1.5)
    after = stats(gw)
    assert "a" not in after
    assert after["a-renamed"]["requests"] == before["requests"]
    assert after["a-renamed"]["failures_by_class"] == before["failures_by_class"]
    assert after["a-renamed"]["cooling_models"]


def test_kill9_and_restart_restores_cooldowns_and_counters(mock, tmp_path, confdir):
    g = GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir).start()
    try:
        mock.set_behavior(SECRETS["a"], status=429, headers={"Retry-After": "120"}, times=1)
        for _ in range(6):
            ask(g)
        before = stats(g)
        time.sleep(1.5)  # one flush interval (plus margin)
    finally:
        g.kill9()
    db = tmp_path / "state" / "keymux.db"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with GatewayProcess(tmp_path, None, confdir=confdir) as g2:
        after = stats(g2)
        assert after["a"]["cooling_models"]
        assert 100 < after["a"]["cooldown_s"] <= 120
        for name in ("a", "b"):
            assert after[name]["requests"] == before[name]["requests"]
            assert after[name]["tokens_out"] == before[name]["tokens_out"]
        rows = sqlite3.connect(db).execute("SELECT count(*) FROM requests").fetchone()[0]
        assert rows == 6
        assert "restored cooldowns and counters of 2 keys" in g2.log()


def test_request_log_rows_tell_the_attempts(gw, mock):
    mock.set_behavior(SECRETS["a"], status=503, times=1)
    mock.set_behavior(SECRETS["b"], status=503, times=1)
    with pytest.raises(openai.APIStatusError):
        ask(gw)  # both keys fail once: the provider's outage, 503
    for name in ("a", "b"):
        gw.reset(name)
    ask(gw)
    time.sleep(1.3)
    db = gw.config.parent / "state" / "keymux.db"
    rows = sqlite3.connect(db).execute(
        "SELECT status, key, attempts, tokens_out FROM requests ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [503, 200]
    assert [a["status"] for a in json.loads(rows[0][2])] == [503, 503]
    assert rows[1][1] in ("a", "b") and rows[1][3] > 0
    text = db.read_bytes() + (db.parent / "keymux.db-wal").read_bytes()
    assert not any(s.encode() in text for s in SECRETS.values())


def test_script_reload_keeps_state(mock, tmp_path, confdir):
    script = tmp_path / "keymux_entry.py"
    shutil.copy(ROOT / "addons" / "keymux.py", script)
    with GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir, script=script) as g:
        mock.set_behavior(SECRETS["a"], status=429, headers={"Retry-After": "60"}, times=1)
        for _ in range(4):
            ask(g)
        before = stats(g)
        script.write_text(script.read_text() + "\n# touched\n")
        assert wait_for(lambda: g.log().count("Loading script") >= 2, timeout=5)
        time.sleep(0.5)
        after = stats(g)
        assert after["a"]["cooling_models"] and after["a"]["requests"] == before["a"]["requests"]
        assert ask(g).choices
        # the new addon instance watches the config and flushes the store as the old did
        g.config.write_text(config(mock.base_url, keys=("a", "b", "c")))
        assert wait_for(lambda: "c" in stats(g), timeout=3)
        assert "Error" not in g.log() and "Traceback" not in g.log()


def test_a_script_that_fails_to_reload_forwards_nothing(mock, tmp_path, confdir):
    script = tmp_path / "keymux_entry.py"
    good = (ROOT / "addons" / "keymux.py").read_text()
    script.write_text(good)
    with GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir, script=script) as g:
        assert ask(g).choices
        script.write_text(good + "\nthis is not python\n")
        assert wait_for(lambda: "error in script" in g.log().lower(), timeout=5)
        with pytest.raises(openai.APIStatusError) as e:
            openai.OpenAI(base_url=g.url + "/v1", api_key="sk-client-must-not-leak", max_retries=0,
                          timeout=10).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and "not loaded" in e.value.message
        assert mock.count() == 1  # nothing was forwarded anywhere
        script.write_text(good)  # fixed: keymux serves again, with its state
        assert wait_for(lambda: get(g, "/health")[0] == 200 and _serves(g), timeout=5)


def _serves(g):
    try:
        return bool(ask(g, timeout=3).choices)
    except openai.APIStatusError:
        return False
