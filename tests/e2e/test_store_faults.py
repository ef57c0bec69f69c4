"""A state store that cannot write, for real: the gateway says so, keeps the rows, catches up.

Two ways to make SQLite fail under a running mitmdump: a file-size limit set on the
process (``prlimit``: writes past it fail with EFBIG; always available on Linux, root or
not), and a full tmpfs under ``state_dir`` (needs ``mount``; skipped where not permitted).
"""
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import time
import urllib.request

import pytest

from . import harness
from .harness import GatewayProcess, get, health

SECRET = "sk-store-fault-key-000001"
BODY_TEXT = "x" * 20_000  # with logging.bodies each row is ~20 KB: the store fills fast


def config(mock_url, state_dir):
    return (f"providers:\n  mock:\n    base_url: {mock_url}/v1\n"
            f"keys:\n  - {{name: a, provider: mock, key: {SECRET}}}\n"
            f"state_dir: {state_dir}\nlogging: {{bodies: true}}\n")


def ask(gw):
    body = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": BODY_TEXT}]}).encode()
    req = urllib.request.Request(gw.url + "/v1/chat/completions", body,
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.status == 200
        r.read()


def wait_for(cond, timeout):
    return harness.wait_for(cond, timeout, step=0.1)


def rows_in(db):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT count(*) FROM requests").fetchone()[0]
    except sqlite3.Error:
        return -1


def scenario(gw, db, break_store, heal_store):
    """Rows written; the store breaks; requests go on (degraded); it heals; every row lands."""
    sent = 0
    for _ in range(3):
        ask(gw)
        sent += 1
    assert wait_for(lambda: rows_in(db) == sent, 10)
    assert health(gw)["status"] == "ok"

    break_store()
    deadline = time.monotonic() + 60
    while health(gw)["status"] != "degraded":  # bounded: a few hundred KB of rows at most
        assert time.monotonic() < deadline, gw.log()[-3000:]
        ask(gw)
        sent += 1
        time.sleep(0.05)
    for _ in range(5):  # and a few more while it is failing
        ask(gw)
        sent += 1
    h = health(gw)
    assert h["store"]["ok"] is False and h["store"]["last_error"]
    assert h["store"]["errors"] >= 1 and h["store"]["dropped_rows"] == 0
    assert wait_for(lambda: health(gw)["store"]["pending_rows"] > 0, 5)
    metrics = get(gw, "/metrics")[1].decode()
    errors = [line for line in metrics.splitlines() if line.startswith("keymux_store_errors_total")]
    assert errors and float(errors[0].split()[-1]) >= 1

    heal_store()
    assert wait_for(lambda: health(gw)["status"] == "ok", 10), health(gw)
    assert wait_for(lambda: rows_in(db) == sent, 10), (rows_in(db), sent)  # nothing lost
    h = health(gw)["store"]
    assert h["ok"] and h["pending_rows"] == 0 and h["dropped_rows"] == 0
    log = gw.log()
    assert log.count("the state store cannot write") == 1
    assert log.count("the state store writes again") == 1
    assert SECRET not in log


def test_file_size_limit_makes_writes_fail_then_recover(mock, tmp_path, confdir):
    state = tmp_path / "state"
    with GatewayProcess(tmp_path, config(mock.base_url, state), confdir=confdir) as gw:
        db = state / "keymux.db"
        soft, hard = resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE)

        def break_store():
            biggest = max(p.stat().st_size for p in (db, db.with_name("keymux.db-wal"),
                                                     gw.log_path) if p.exists())
            resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (biggest + 200_000, hard))

        def heal_store():
            resource.prlimit(gw.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))

        scenario(gw, db, break_store, heal_store)


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "tmpfs"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_under_state_dir(mock, tmp_path, confdir, tmpfs):
    with GatewayProcess(tmp_path, config(mock.base_url, tmpfs), confdir=confdir) as gw:
        filler = tmpfs / "filler"

        def break_store():
            st = os.statvfs(tmpfs)
            room = st.f_bavail * st.f_frsize
            with open(filler, "wb") as f:  # leave about 100 KB: a few batches, then full
                f.write(b"\0" * max(0, room - 100_000))

        scenario(gw, tmpfs / "keymux.db", break_store, filler.unlink)
