"""Spend through a real mitmdump: the cost of a known usage is genai-prices' figure in
/_keymux/stats, /metrics and the request log; it survives a restart; `keymux report` has it."""
import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest
from genai_prices import Usage as GUsage, calc_price

from .harness import SIDECAR_TOKEN, GatewayProcess, wait_for

KO, KA, KL = "sk-spend-openai-0000001", "sk-spend-anthro-0000002", "sk-spend-local-00000003"
KM = "sk-spend-mock-000000004"
TOKEN = "kmx-spend-client-token-0001"
KEYMUX = Path(sys.executable).with_name("keymux")


def config(mock_url):
    return f"""
providers:
  openai: {{base_url: "{mock_url}/v1", models: ["gpt-*"]}}
  anthropic: {{base_url: "{mock_url}/v1"}}
  local:
    base_url: {mock_url}/v1
    models: ["mock-*"]
    price: {{"mock-cheap": {{input: 1, output: 2}}}}
keys:
  - {{name: ko, provider: openai, key: {KO}}}
  - {{name: ka, provider: anthropic, key: {KA}}}
  - {{name: kl, provider: local, key: {KL}}}
clients:
  - {{name: app, token: {TOKEN}}}
routing: {{daily_reset: "00:00", timezone: "UTC"}}
"""


def admin_get(gw, path):
    req = urllib.request.Request(gw.url + path, headers={"x-keymux-admin-token": SIDECAR_TOKEN})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def stats(gw):
    return json.loads(admin_get(gw, "/_keymux/stats"))


def genai(model, provider_id, tokens_in, tokens_out):
    return float(calc_price(GUsage(input_tokens=tokens_in, output_tokens=tokens_out), model,
                            provider_id=provider_id).total_price)


def traffic(gw):
    """Known usages; returns what each key should have spent (None: unknown)."""
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0, timeout=20)
    r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    spent_o = genai("gpt-4o", "openai", r.usage.prompt_tokens, r.usage.completion_tokens)
    chunks = list(oa.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a longer question"}]))
    u = chunks[-1].usage
    spent_o += genai("gpt-4o-mini", "openai", u.prompt_tokens, u.completion_tokens)
    an = anthropic.Anthropic(base_url=gw.url, api_key=TOKEN, max_retries=0, timeout=20)
    m = an.messages.create(model="claude-3-5-sonnet-latest", max_tokens=10,
                           messages=[{"role": "user", "content": "hi"}])
    spent_a = genai("claude-3-5-sonnet-latest", "anthropic", m.usage.input_tokens,
                    m.usage.output_tokens)
    r = oa.chat.completions.create(model="mock-cheap", messages=[{"role": "user", "content": "x"}])
    spent_l = (r.usage.prompt_tokens * 1 + r.usage.completion_tokens * 2) / 1e6
    oa.chat.completions.create(model="mock-unpriced", messages=[{"role": "user", "content": "x"}])
    return {"ko": spent_o, "ka": spent_a, "kl": spent_l}


def metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return None


@pytest.fixture
def gw(mock, tmp_path, confdir):
    with GatewayProcess(tmp_path, config(mock.base_url), confdir=confdir) as g:
        yield g


def test_spend_everywhere_and_across_a_restart(gw, mock, tmp_path, confdir):
    want = traffic(gw)
    s = stats(gw)
    keys = {k["name"]: k for k in s["keys"]}
    for name, usd in want.items():
        assert keys[name]["spend_today_usd"] == pytest.approx(usd, rel=1e-9), name
        assert keys[name]["spend_month_usd"] == pytest.approx(usd, rel=1e-9), name
    today = s["spend"]["today"]
    assert today["by_client"]["app"]["usd"] == pytest.approx(sum(want.values()), rel=1e-9)
    assert today["by_model"]["mock-unpriced"]["unknown"] == 1
    assert today["by_model"]["mock-unpriced"]["usd"] == 0
    assert today["total"]["requests"] == 5 and today["total"]["unknown"] == 1
    assert s["spend"]["timezone"] == "UTC" and s["spend"]["daily_reset"] == "00:00"

    text = admin_get(gw, "/metrics").decode()
    series = [l for l in text.splitlines() if l.startswith("keymux_spend_usd_total{")]
    for name, usd in want.items():
        assert sum(float(l.split()[-1]) for l in series if f'key="{name}"' in l) == \
            pytest.approx(usd, rel=1e-9), name
    assert metric(text, "keymux_spend_usd_total", provider="openai", model="gpt-4o", key="ko",
                  client="app") > 0  # a configured model glob: its own label
    assert not any("mock-unpriced" in l for l in series)  # unknown is not 0 USD

    db = tmp_path / "state" / "keymux.db"

    def logged():
        try:
            with sqlite3.connect(db) as c:
                return c.execute("SELECT key, model, cost_usd FROM requests ORDER BY id").fetchall()
        except sqlite3.Error:
            return []
    assert wait_for(lambda: len(logged()) == 5, 10), logged()
    rows = logged()
    assert sum(c for k, _, c in rows if k == "ko") == pytest.approx(want["ko"], rel=1e-9)
    assert [c for _, m, c in rows if m == "mock-unpriced"] == [None]

    gw.stop()  # a clean stop flushes the store; a new process restores the spend
    with GatewayProcess(tmp_path, None, confdir=confdir) as again:
        keys = {k["name"]: k for k in stats(again)["keys"]}
        for name, usd in want.items():
            assert keys[name]["spend_today_usd"] == pytest.approx(usd, rel=1e-9), name
    out = subprocess.run([str(KEYMUX), "report", "--since", "7d", "--by", "key", "--json",
                          "--config", str(gw.config)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    data = json.loads(out)
    by = {r["name"]: r for r in data["rows"]}
    for name, usd in want.items():
        assert by[name]["usd"] == pytest.approx(usd, rel=1e-9), name
    assert by["kl"]["unknown"] == 1 and data["total"]["requests"] == 5
    table = subprocess.run([str(KEYMUX), "report", "--by", "model", "--config", str(gw.config)],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    assert "mock-unpriced" in table and "unknown" in table
