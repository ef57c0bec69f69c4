"""A key's health over the last day: the strip of ten-minute cells and its state changes."""
import sqlite3
import time

import ui_seed
from webui import health

NOW = 1_700_000_000.0  # a minute boundary + 20 s: minute 28333333
M = int(NOW // 60)


def row(minute, requests, successes, rate_limited=0, auth=0, server=0):
    return (minute, requests, successes, rate_limited, auth, server)


def test_cells_cover_a_day_and_end_with_now():
    cells = health.timeline([], NOW)
    assert len(cells) == health.POINTS and all(c.state == "idle" for c in cells)
    assert cells[-1].t <= NOW < cells[-1].t + 600 and cells[0].t == cells[-1].t - 143 * 600


def test_cell_states_and_causes():
    start = health.start_minute(NOW)
    rows = [row(start, 5, 5),                         # ok
            row(start + 10, 4, 3, rate_limited=1),    # degraded, rate limited
            row(start + 20, 3, 0, auth=3),            # down, auth
            row(start + 21, 1, 0, server=1),          # same cell: auth is still the most
            row(start + 30, 2, 2),                    # client errors count as answered
            row(start - 1, 9, 0, server=9)]           # before the strip: ignored
    cells = health.timeline(rows, NOW)
    got = [(c.state, c.attempts, c.failures, c.cause) for c in cells[:5]]
    assert got == [("ok", 5, 0, None), ("degraded", 4, 1, "rate_limited"),
                   ("down", 4, 4, "auth_errors"), ("ok", 2, 0, None), ("idle", 0, 0, None)]
    assert health.summary(cells) == {"attempts": 15, "failures": 5, "success_rate": 66.7}


def test_changes_skip_idle_stretches_and_come_newest_first():
    start = health.start_minute(NOW)
    rows = [row(start, 1, 1), row(start + 50, 1, 1), row(start + 60, 2, 0, auth=2),
            row(start + 70, 2, 0, auth=2), row(start + 200, 1, 1)]
    ch = health.changes(health.timeline(rows, NOW))
    assert [(c["from"], c["to"], c["cause"]) for c in ch] == [
        ("down", "ok", None), ("ok", "down", "auth_errors")]
    assert ch[0]["t"] == (start + 200) * 60


def seed(db, rows):
    ui_seed.create(db)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO usage_minute (key, minute, provider, requests, successes, rate_limited,"
            " auth_errors, server_errors) VALUES (?,?,?,?,?,?,?,?)", rows)


def test_the_health_page(signed_in, client, config_path):
    m = int(time.time() // 60)
    seed(config_path.parent / "state" / "keymux.db",
         [("openai-1", m - 120, "openai", 10, 10, 0, 0, 0),
          ("openai-1", m - 60, "openai", 4, 0, 0, 4, 0),
          ("claude-1", m - 60, "anthropic", 7, 7, 0, 0, 0)])
    page = client.get("/keys/openai-1/health").get_data(as_text=True)
    assert "Health of openai-1" in page and "14 attempts, 4 failed (71.4% succeeded)." in page
    assert page.count('class="cell h-') == health.POINTS + 4  # the strip and the legend
    assert page.count("h-down") == 2 and "auth or quota" in page
    assert "State changes" in page and "sk-test-openai" not in page
    assert 'href="/keys/openai-1/health"' in client.get("/keys/").get_data(as_text=True)


def test_the_health_page_without_a_store_or_a_key(signed_in, client):
    assert "No attempts with this key in the last day." in client.get(
        "/keys/claude-1/health").get_data(as_text=True)
    assert client.get("/keys/nope/health").status_code == 404


def test_a_renamed_key_keeps_its_health(signed_in, client, config_path):
    from keypool.pool import fingerprint
    from uihelpers import KEY_OPENAI
    m = int(time.time() // 60)
    db = config_path.parent / "state" / "keymux.db"
    seed(db, [("openai-old", m - 90, "openai", 5, 0, 0, 5, 0)])
    with sqlite3.connect(db) as conn:  # the gateway saved state under the former name
        conn.execute("INSERT INTO key_state (key, fingerprint, updated) VALUES (?,?,?)",
                     ("openai-old", fingerprint(KEY_OPENAI), time.time()))
    page = client.get("/keys/openai-1/health").get_data(as_text=True)
    assert "5 attempts, 5 failed (0.0% succeeded)." in page
    assert "No attempts" in client.get("/keys/claude-1/health").get_data(as_text=True)
