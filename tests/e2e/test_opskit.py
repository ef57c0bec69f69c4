"""The operations kit (config/prometheus, config/grafana) against a real gateway's /metrics.

promtool (Debian's ``prometheus`` package, installed by .ci/run) checks the scrape config,
the alert rules and their unit tests, and lints a real scrape of mitmdump + keymux after
traffic that makes most series exist (a 429 failover, a dead key, a failing provider, a
gateway refusal). The dashboard may name only series that scrape has, plus the spend and
budget series other parts of the gateway export.
"""
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import openai
import pytest

from .conftest import A1, ALT1, CLIENT_TOKEN, K1, K2, pool_yaml
from .harness import ROOT, GatewayProcess

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run does)")

PROM = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "keymux.json"
# Series a default gateway may not export yet: spend and budgets until something is spent
# or a budget is set, the shared-state gauge only with state.backend: redis.
SPEND_SERIES = {"keymux_spend_usd_total", "keymux_budget_used_ratio", "keymux_shared_state_up"}
ADMIN_TOKEN = "kmx-opskit-admin-token-0123456789abcdef"
# Grafana's variables, replaced by what they stand for so that promtool can parse the query.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "6h", "$provider": ".*"}


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)


def ok(result: subprocess.CompletedProcess) -> str:
    out = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, out
    return out


def ask(gw, model: str) -> None:
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0, timeout=10)
    try:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError:
        pass  # the failures are the point: they make the error series


@pytest.fixture(scope="module")
def scrape(mock, tmp_path_factory, confdir) -> bytes:
    work = tmp_path_factory.mktemp("opskit")
    with GatewayProcess(work, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as gw:
        mock.set_behavior(K1, status=429, headers={"Retry-After": "30"})
        mock.set_behavior(A1, status=401)
        mock.set_behavior(ALT1, status=500)
        for _ in range(6):  # round-robin reaches k1 within two requests; k2 answers after it
            ask(gw, "gpt-4o-mini")
        ask(gw, "claude-3-5-haiku")   # a1 dies
        ask(gw, "alt-model")          # a 5xx upstream, then the gateway's own 502
        ask(gw, "no-such-model-here")  # the gateway's own 404
        assert mock.count(K1) >= 1 and mock.count(A1) == 1, "the traffic did not happen"
        with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
            return r.read()


def series_names(text: bytes) -> set[str]:
    return {re.match(r"[a-zA-Z_:][\w:]*", line).group(0)
            for line in text.decode().splitlines() if line and not line.startswith("#")}


def named(expr: str) -> set[str]:
    return set(re.findall(r"keymux_\w+", expr))


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    import yaml
    doc = yaml.safe_load((PROM / "keymux-alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


# -- Prometheus ---------------------------------------------------------------------------

@needs_promtool
def test_scrape_config_and_its_rules_are_valid():
    out = ok(promtool("check", "config", str(PROM / "prometheus.yml")))
    assert "SUCCESS" in out and "rules found" in out


@needs_promtool
def test_the_commented_admin_token_variant_is_valid(tmp_path):
    """server.metrics: admin: uncomment the authorization block as the comment says."""
    text = (PROM / "prometheus.yml").read_text()
    block = re.search(r"    # authorization:\n.*credentials_file: \S+\n", text, re.S).group(0)
    token = tmp_path / "keymux-admin-token"
    token.write_text(ADMIN_TOKEN)
    live = re.sub(r"(?m)^    # ", "    ", block).replace("/etc/prometheus/keymux-admin-token",
                                                        str(token))
    (tmp_path / "prometheus.yml").write_text(text.replace(block, live))
    shutil.copy(PROM / "keymux-alerts.yml", tmp_path)
    ok(promtool("check", "config", str(tmp_path / "prometheus.yml")))
    assert "credentials_file" in live and "#" not in live


@needs_promtool
def test_alert_rules_are_valid_and_their_unit_tests_pass():
    assert "SUCCESS" in ok(promtool("check", "rules", str(PROM / "keymux-alerts.yml")))
    assert "SUCCESS" in ok(promtool("test", "rules", str(PROM / "keymux-alerts.test.yml")))


def test_every_alert_has_for_severity_and_a_summary():
    import yaml
    doc = yaml.safe_load((PROM / "keymux-alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    tested = (PROM / "keymux-alerts.test.yml").read_text()
    for r in rules:
        assert "for" in r and r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert f"alertname: {r['alert']}\n        exp_alerts:\n          -" in tested, (
            f"{r['alert']} is never shown firing in keymux-alerts.test.yml")


@needs_promtool
def test_a_real_scrape_passes_promtool_lint(scrape):
    result = promtool("check", "metrics", stdin=scrape)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout.decode()


def test_the_scrape_has_the_series_of_the_traffic(scrape):
    text = scrape.decode()
    assert 'keymux_requests_total{key="k1",provider="mock",status_class="4xx"}' in text
    assert 'keymux_key_state{key="a1",provider="mockant",state="dead"} 1.0' in text
    assert 'status_class="5xx"' in text and 'keymux_gateway_answers_total{code="' in text
    assert 'keymux_config_reload_total{result="error"} 0.0' in text
    assert "keymux_config_last_reload_successful 1.0" in text
    assert 'keymux_reissues_total{outcome="rate_limited",provider="mock"}' in text
    assert 'keymux_reissues_total{outcome="auth"' not in text  # a1 had no other key to try


def test_alert_rules_name_only_real_series(scrape):
    known = series_names(scrape) | SPEND_SERIES
    for expr in rule_exprs():
        assert named(expr) <= known, f"unknown series in {expr!r}: {named(expr) - known}"


def test_metrics_admin_takes_the_token_prometheus_sends(mock, tmp_path, confdir):
    extra = f"server:\n  metrics: admin\nclients:\n  - name: app\n    token: {CLIENT_TOKEN}\n"
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, extra), confdir=confdir,
                        env={"MOCK_KEY_2": K2, "KEYMUX_ADMIN_TOKEN": ADMIN_TOKEN}) as gw:
        def status(auth: str | None) -> int:
            req = urllib.request.Request(gw.url + "/metrics",
                                         headers={"Authorization": auth} if auth else {})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        assert status(None) == 401 and status(f"Bearer {CLIENT_TOKEN}") == 401
        assert status(f"Bearer {ADMIN_TOKEN}") == 200  # authorization: type Bearer


# -- Grafana ------------------------------------------------------------------------------

def test_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "keymux"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            assert p["targets"], p["title"]


def test_dashboard_names_only_real_series(scrape):
    known = series_names(scrape) | SPEND_SERIES
    exprs = dashboard_exprs()
    used = set().union(*map(named, exprs))
    assert used <= known, f"the dashboard names series keymux does not export: {used - known}"
    for must in ("keymux_requests_total", "keymux_time_to_first_byte_seconds_bucket",
                 "keymux_key_state", "keymux_spend_usd_total", "keymux_budget_used_ratio",
                 "keymux_config_reload_total", "keymux_provider_outage", "keymux_tokens_total",
                 "keymux_gateway_answers_total", "keymux_key_in_flight",
                 "keymux_reissues_total", "keymux_overhead_seconds_bucket"):
        assert must in used, must


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path):
    """Every query, Grafana's variables filled in, as a recording rule promtool parses."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in ok(promtool("check", "rules", str(path)))
