"""Faults under load (issue 8, item 10): keys.yaml rewritten 50 times a second, and
``kill -9`` in the middle of traffic. No request may fail because of a reload, and a
killed gateway restarts on a sound database."""
import os
import sqlite3
import threading

import openai

from .harness import GatewayProcess
from .test_reload_state import config, health, wait_for


def load(gw, stop: threading.Event, results: list, errors: list) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=20)
    while not stop.is_set():
        try:
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "hi"}])
            results.append(1)
        except Exception as e:  # noqa: BLE001 - every kind of failure is counted
            errors.append(repr(e)[:200])


def rewrite(path, mock_url, stop: threading.Event, count: list) -> None:
    """50 writes a second, alternating in-place writes (a reader may see a torn file) and
    atomic renames, between two valid configs."""
    variants = [config(mock_url, keys=("a", "b")), config(mock_url, keys=("a", "b", "c"))]
    while not stop.is_set():
        text = variants[len(count) % 2]
        if len(count) % 3:
            path.write_text(text)
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        count.append(1)
        stop.wait(0.02)


def test_keys_yaml_rewritten_50_times_a_second_under_load_fails_no_request(mock, tmp_path,
                                                                            confdir):
    with GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir) as gw:
        stop, results, errors, writes = threading.Event(), [], [], []
        threads = [threading.Thread(target=load, args=(gw, stop, results, errors))
                   for _ in range(4)]
        threads.append(threading.Thread(target=rewrite,
                                        args=(gw.config, mock.base_url, stop, writes)))
        for t in threads:
            t.start()
        wait_for(lambda: len(writes) >= 150, timeout=10)  # about 3 s of rewriting
        stop.set()
        for t in threads:
            t.join(30)
        assert len(writes) >= 100 and len(results) >= 20, (len(writes), len(results))
        assert errors == [], errors[:5]
        gw.config.write_text(config(mock.base_url, keys=("a", "b", "c")))
        assert wait_for(lambda: health(gw)["keys"]["total"] == 3 and
                        health(gw)["last_reload_error"] is None, timeout=5)


def test_kill9_under_load_restarts_on_a_sound_database(mock, tmp_path, confdir):
    gw = GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir).start()
    stop, results, errors = threading.Event(), [], []
    threads = [threading.Thread(target=load, args=(gw, stop, results, errors))
               for _ in range(4)]
    try:
        for t in threads:
            t.start()
        assert wait_for(lambda: len(results) >= 40, timeout=20)
    finally:
        gw.kill9()
        stop.set()
        for t in threads:
            t.join(30)
    db = tmp_path / "state" / "keymux.db"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with GatewayProcess(tmp_path, None, confdir=confdir) as again:
        openai.OpenAI(base_url=again.url + "/v1", api_key="x", max_retries=0,
                      timeout=20).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert health(again)["status"] == "ok"
