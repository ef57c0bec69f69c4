"""Spend in the web UI: the dashboard's totals, tables and chart data, each key's spend and
budget hold (dashboard and keys page), the usage page's spend table, the export's cost."""
import csv
import datetime as dt
import io
import json
import sqlite3
import time

import pytest

import ui_seed
from ui_stub_gateway import entry, spend_section
from uihelpers import AuthActions, make_app
from webui import spend  # noqa: E402
from webui.store import Store  # noqa: E402

KEYS = [{"name": "openai-1", "provider": "openai", "state": "ok", "requests": 3, "successes": 3,
         "failures": 0, "spend_today_usd": 0.0123, "spend_month_usd": 12.34,
         "held_back": [{"reason": "budget", "detail": "monthly_usd 12.00", "model": "",
                        "seconds_left": 3 * 86400 + 5}]},
        {"name": "claude-1", "provider": "anthropic", "state": "ok", "requests": 1,
         "successes": 1, "failures": 0, "held_back": []}]
SPEND = spend_section(
    today={"total": entry(0.0123, 4, unknown=1),
           "by_key": {"openai-1": entry(0.0123, 3), "claude-1": entry(None, 1)},
           "by_client": {"app": entry(0.0123, 3, unknown=1), "-": entry(None, 1)}},
    month={"total": entry(13.5, 40, unknown=2),
           "by_key": {"openai-1": entry(12.34, 30), "claude-1": entry(1.16, 10, unknown=2)},
           "by_client": {"app": entry(13.5, 39, unknown=1), "-": entry(None, 1)}})


def today_utc(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()


@pytest.fixture
def live_client(config_path, stub):
    stub.stats = {"uptime_s": 1.0, "totals": {}, "keys": KEYS, "spend": SPEND}
    c = make_app(config_path, stub.url).test_client()
    AuthActions(c, config_path).login()
    return c


@pytest.mark.parametrize("usd,shown", [(12.345, "$12.35"), (1234.5, "$1,234.50"), (0.0123, "$0.0123"),
                                       (0.5, "$0.50"), (0.00125, "$0.00125"), (0.1, "$0.10"), (0.461, "$0.46"),
                                       (0.05, "$0.05"),
                                       (0.0, "$0.00"), (None, "–"), (1e-9, "<$0.000001")])
def test_money(usd, shown):
    assert spend.money(usd) == shown


def test_an_entry_with_no_priced_request_is_unknown_never_zero():
    assert spend.entry("k", {"usd": 0.0, "requests": 2, "unknown": 2})["usd"] is None
    assert spend.entry("k", {"usd": 0.5, "requests": 2, "unknown": 1})["usd"] == 0.5
    assert spend.entry("k", None)["usd"] == 0.0  # no request at all: nothing spent
    rows = spend.ranked({"a": entry(None, 5), "b": entry(0.2), "c": entry(1.0)})
    assert [r["name"] for r in rows] == ["c", "b", "a"]


def test_dashboard_json_has_spend_from_the_gateway(live_client):
    data = live_client.get("/api/stats").json
    s = data["spend"]
    assert s["source"] == "gateway" and s["day"] == "2026-11-30" and s["month"] == "2026-11"
    assert s["today"]["total"]["usd"] == 0.0123 and s["today"]["total"]["unknown"] == 1
    assert s["this_month"]["total"]["usd"] == 13.5
    # sorted by spend today, then this month; an unknown-only client stays "unknown"
    assert [r["name"] for r in s["keys"]] == ["openai-1", "claude-1"]
    assert s["keys"][1]["today"]["usd"] is None and s["keys"][1]["month"]["usd"] == 1.16
    assert [r["name"] for r in s["clients"]] == ["app", "-"]
    assert s["clients"][1]["month"]["usd"] is None
    rows = {r["name"]: r for r in data["keys"]}
    assert rows["openai-1"]["spend_today"]["usd"] == 0.0123
    assert rows["openai-1"]["spend_month"]["usd"] == 12.34
    assert rows["openai-1"]["budget_hold"]["seconds_left"] > 3 * 86400
    assert rows["claude-1"]["budget_hold"] is None and rows["claude-1"]["spend_today"]["usd"] is None
    assert rows["local-1"]["spend_today"]["usd"] == 0.0 and rows["local-1"]["spend_today"]["requests"] == 0


def test_dashboard_page_has_the_spend_panel(live_client):
    page = live_client.get("/").get_data(as_text=True)
    for text in ('id="s-today"', 'id="spend-keys"', 'id="spend-clients"', 'id="chart-spend"',
                 "Spend per day, last 30 days", "spend.js"):
        assert text in page
    live_client.set_cookie("lang", "zh")
    zh = live_client.get("/").get_data(as_text=True)
    assert "今日花费" in zh and "最近 30 天每日花费" in zh


def test_without_the_gateway_spend_comes_from_the_store(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    ui_seed.create(db)
    now = time.time()
    day = today_utc(now)
    ui_seed.add_spend(db, day, "openai-1", 0.25, requests=2)
    ui_seed.add_spend(db, day, "claude-1", 0.0, client="-", provider="anthropic", requests=3,
                      unknown=3)
    ui_seed.add_spend(db, day[:7] + "-01" if day[8:] != "01" else day, "openai-1", 1.0)
    ui_seed.add_spend(db, "1999-01-01", "openai-1", 100.0)  # another month: not counted
    s = client.get("/api/stats").json["spend"]
    assert s["source"] == "store" and s["day"] == day
    assert s["today"]["total"]["requests"] == 5 and s["today"]["total"]["unknown"] == 3
    assert s["today"]["total"]["usd"] == pytest.approx(0.25 + (1.0 if day[8:] == "01" else 0))
    assert s["this_month"]["total"]["usd"] == pytest.approx(1.25)
    keys = {r["name"]: r for r in s["keys"]}
    assert keys["claude-1"]["today"]["usd"] is None  # unknown, never $0
    assert [r["name"] for r in s["clients"]] == ["app", "-"]


def test_daily_spend_for_the_chart(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    now = time.time()
    ui_seed.synthetic_spend(db, now, [("openai-1", "openai"), ("claude-1", "anthropic")], days=40)
    data = client.get("/api/spend/daily?by=provider").json
    assert len(data["days"]) == 30 and data["days"][-1] == today_utc(now)
    assert {s["name"] for s in data["series"]} == {"openai", "anthropic"}
    assert all(len(s["usd"]) == 30 for s in data["series"])
    with sqlite3.connect(db) as conn:  # the 30 days shown, no more
        want = conn.execute("SELECT SUM(usd), SUM(unknown) FROM spend_day WHERE day >= ?",
                            (data["days"][0],)).fetchone()
    assert data["total"] == pytest.approx(want[0]) and sum(data["unknown"]) == want[1]
    by_key = client.get("/api/spend/daily?by=key").json
    assert by_key["by"] == "key" and {s["name"] for s in by_key["series"]} == {"openai-1", "claude-1"}
    assert client.get("/api/spend/daily?by=nonsense").json["by"] == "provider"


def test_many_names_fold_into_other(tmp_path):
    db = tmp_path / "keymux.db"
    ui_seed.create(db)
    now = time.time()
    for i in range(12):
        ui_seed.add_spend(db, today_utc(now), f"k{i:02d}", 1.0 + i)
    data = spend.daily(Store(db), spend.Periods(), now, "key")
    names = [s["name"] for s in data["series"]]
    assert len(names) == spend.CHART_SERIES + 1 and names[0] == "k11" and names[-1] == "other"
    assert data["series"][-1]["usd"][-1] == pytest.approx(1 + 2 + 3 + 4)


def test_no_store_no_spend(signed_in, client):
    data = client.get("/api/spend/daily").json
    assert data["total"] == 0 and data["series"] == [] and len(data["days"]) == 30
    assert client.get("/api/stats").json["spend"]["today"]["total"]["usd"] == 0.0


def test_keys_page_shows_spend_and_the_budget_hold(live_client):
    page = live_client.get("/keys/").get_data(as_text=True)
    row = page.split('data-key="openai-1"')[1].split("</tr>")[0]
    assert "$0.0123" in row and "$12.34" in row
    assert "held back: budget reached · 4 d left" in row and 'title="monthly_usd 12.00"' in row
    claude = page.split('data-key="claude-1"')[1].split("</tr>")[0]
    assert "unknown" in claude and "held back" not in claude and "$1.16" in claude
    live_client.set_cookie("lang", "zh")
    zh = live_client.get("/keys/").get_data(as_text=True)
    assert "剩余 4 天" in zh and "今日 / 本月花费" in zh


def test_usage_page_spend_by_dimension_and_period(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    ui_seed.create(db)
    now = time.time()
    day = today_utc(now)
    ui_seed.add_spend(db, day, "openai-1", 0.04, model="gpt-4o", requests=2, tokens=(300, 100))
    ui_seed.add_spend(db, day, "openai-1", 0.0, model="local-llama", requests=1, unknown=1)
    ui_seed.add_spend(db, "2000-01-01", "openai-1", 9.0, model="gpt-4o")
    page = client.get("/usage/?by=model").get_data(as_text=True)
    table = page.split('id="spend-table"')[1].split("</table>")[0]
    gpt = table.split('data-name="gpt-4o"')[1].split("</tr>")[0]
    assert "$0.04" in gpt and ">2<" in gpt and ">300<" in gpt
    llama = table.split('data-name="local-llama"')[1].split("</tr>")[0]
    assert "unknown" in llama and "$0" not in llama
    assert table.index("gpt-4o") < table.index("local-llama")  # the most spent first
    assert "$9" not in table
    provider = client.get("/usage/?by=provider&period=30d").get_data(as_text=True)
    assert 'data-name="openai"' in provider.split('id="spend-table"')[1]
    empty = client.get("/usage/?by=client&period=bogus")
    assert empty.status_code == 200 and 'data-name="app"' in empty.get_data(as_text=True)


def test_the_export_has_the_cost(signed_in, client, config_path):
    db = config_path.parent / "state" / "keymux.db"
    ui_seed.create(db)
    now = time.time()
    ui_seed.add_request(db, now - 20, "openai-1", 200, client="app")
    ui_seed.add_request(db, now - 10, "openai-1", 200, client="app")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE requests SET cost_usd = 0.00125 WHERE ts = ?", (now - 10,))
    rows = list(csv.DictReader(io.StringIO(client.get("/requests/export.csv").get_data(as_text=True))))
    assert [r["cost_usd"] for r in rows] == ["0.00125", ""]  # unknown: empty, never 0
    items = [json.loads(x) for x in client.get("/requests/export.jsonl").get_data(as_text=True).splitlines()]
    assert [i["cost_usd"] for i in items] == [0.00125, None]


def test_spend_data_needs_a_login(client):
    assert client.get("/api/spend/daily").status_code == 401
