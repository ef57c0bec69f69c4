"""The gateway's decisions, without mitmproxy: a request in, an Answer or a Plan out."""
import json

import pytest

from keypool.answers import Answer
from keypool.clock import FakeClock
from keypool.gateway import Gateway, Plan
from keypool.usage import Usage

from .helpers import client, config, key, local

TOKEN = "tok-app-123456"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def gw(keys=None, clients=None, providers=(), admin=None):
    keys = keys if keys is not None else [key("o1", secret="sk-openai-real-secret-9999")]
    return Gateway(config(keys=keys, clients=clients, providers=providers), FakeClock(),
                   admin_token=admin)


def post(g, body=BODY, path="/v1/chat/completions", **headers):
    h = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return g.handle("POST", path, h, body)


def err(answer):
    assert isinstance(answer, Answer), answer
    return answer.status, json.loads(answer.body)["error"]


def test_plan_routes_and_rewrites_headers():
    plan = post(gw(), authorization="Bearer client-token", x_keymux_provider="openai",
                x_api_key="other", api_key="azure")
    assert isinstance(plan, Plan)
    assert plan.path == "/v1/chat/completions" and plan.provider.host == "api.openai.com"
    fields = ((b"Authorization", b"Bearer client-token"), (b"X-Api-Key", b"x"), (b"api-key", b"y"),
              (b"x-goog-api-key", b"z"), (b"X-Keymux-Provider", b"openai"),
              (b"x-llm-provider", b"o"), (b"user-agent", b"sdk"))
    assert plan.rewrite_fields(fields) == (
        (b"user-agent", b"sdk"), (b"authorization", b"Bearer sk-openai-real-secret-9999"))
    assert plan.label == "key o1 (sk-…9999)"


def test_anthropic_plan_uses_x_api_key_and_version():
    g = gw(keys=[key("a1", "anthropic", secret="sk-ant-real-000011112222")])
    plan = post(g, json.dumps({"model": "claude-3-haiku", "max_tokens": 5}).encode(), "/v1/messages",
                x_api_key="client")
    assert plan.rewrite_fields(((b"x-api-key", b"client"),)) == (
        (b"anthropic-version", b"2023-06-01"), (b"x-api-key", b"sk-ant-real-000011112222"))
    # the client's own version wins
    assert plan.rewrite_fields(((b"Anthropic-Version", b"2024-01-01"),))[0] == (
        b"Anthropic-Version", b"2024-01-01")


def test_provider_path_mapping():
    g = gw(keys=[key("g1", "gemini")])
    plan = post(g, path="/v1/chat/completions?x=1", x_keymux_provider="gemini")
    assert plan.path == "/v1beta/openai/chat/completions?x=1"


def test_open_gateway_ignores_tokens_closed_one_checks_them():
    assert isinstance(post(gw(), authorization="Bearer anything"), Plan)
    g = gw(clients=(client("app", TOKEN),))
    assert err(post(g))[0] == 401
    assert err(post(g, authorization="Bearer wrong-token"))[0] == 401
    assert isinstance(post(g, authorization=f"Bearer {TOKEN}"), Plan)
    assert isinstance(post(g, x_api_key=TOKEN), Plan)  # Anthropic SDK style
    assert post(g, authorization=f"Bearer {TOKEN}").ticket.client == "app"


def test_client_model_allow_list_is_403():
    g = gw(clients=(client("app", TOKEN, models=("gpt-4o*",)),))
    body = json.dumps({"model": "o3-mini"}).encode()
    status, e = err(post(g, body, authorization=f"Bearer {TOKEN}"))
    assert status == 403 and "o3-mini" in e["message"]


def test_bad_json_is_400_and_names_the_problem():
    status, e = err(post(gw(), b"{not json"))
    assert status == 400 and "JSON" in e["message"]
    assert err(post(gw(), b"[1,2]"))[0] == 400
    assert err(post(gw(), b'{"messages": []}'))[0] == 400
    assert err(post(gw(), b'{"model": 5}'))[0] == 400


def test_unknown_model_is_404_naming_model_not_key():
    g = gw(keys=[key("o1", secret="sk-openai-real-secret-9999"), key("a1", "anthropic")])
    status, e = err(post(g, json.dumps({"model": "mystery-9"}).encode()))
    assert status == 404 and "mystery-9" in e["message"] and "sk-" not in e["message"]


def test_no_key_for_model_is_404():
    g = gw(keys=[key("o1", models=("gpt-4o",))])
    status, e = err(post(g))
    assert status == 404 and e["code"] == "no_key_available"


def test_all_keys_cooling_is_429_with_retry_after():
    g = gw()
    g.pool.cool_down(g.pool.by_name["o1"], "", 12.2, "server")
    a = post(g)
    assert err(a)[0] == 429 and a.headers["retry-after"] == "13"
    assert a.reason == "Too Many Requests"


def test_prefix_strip_rewrites_model_only():
    g = gw(keys=[key("o1"), key("a1", "anthropic")])
    body = json.dumps({"model": "openai/gpt-4o", "messages": [{"content": "héllo"}]}).encode()
    plan = post(g, body)
    assert json.loads(plan.ticket.body) == {"model": "gpt-4o", "messages": [{"content": "héllo"}]}


def test_stream_usage_is_requested_and_marked_for_stripping():
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": []}).encode()
    plan = post(gw(), body)
    assert plan.ticket.stream and plan.ticket.strip_usage
    fields = plan.rewrite_fields(((b"Accept-Encoding", b"gzip, deflate"),))
    assert (b"accept-encoding", b"identity") in fields and len(fields) == 2
    assert json.loads(plan.ticket.body)["stream_options"] == {"include_usage": True}
    body = json.dumps({"model": "gpt-4o", "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    plan = post(gw(), body)
    assert plan.ticket.body == body and not plan.ticket.strip_usage
    body = json.dumps({"model": "gpt-4o", "stream": True, "stream_options": {"x": 1}}).encode()
    assert json.loads(post(gw(), body).ticket.body)["stream_options"] == {"x": 1, "include_usage": True}


def test_no_stream_usage_injection_where_provider_does_not_support_it():
    g = gw(keys=[key("m1", "mistral")])
    body = json.dumps({"model": "mistral-small", "stream": True}).encode()
    plan = post(g, body)
    assert plan.ticket.body == body and not plan.ticket.strip_usage


def test_models_list_union_of_configured_models():
    g = gw(keys=[key("o1", models=("gpt-4o", "gpt-4o-mini")), key("l1", "local"),
                 key("a1", "anthropic")], providers=[local()])
    a = g.handle("GET", "/v1/models", {}, None)
    data = json.loads(a.body)
    assert data["object"] == "list"
    ids = {m["id"]: m["owned_by"] for m in data["data"]}
    # before any list is fetched: the config's non-glob names only (keypool/modellist.py)
    assert ids == {"gpt-4o": "openai", "gpt-4o-mini": "openai"}
    one = json.loads(g.handle("GET", "/v1/models/gpt-4o", {}, None).body)
    assert one["id"] == "gpt-4o"
    assert g.handle("GET", "/v1/models/nope", {}, None).status == 404
    anth = json.loads(g.handle("GET", "/v1/models", {"anthropic-version": "2023-06-01"}, None).body)
    assert anth["has_more"] is False and anth["data"] == []  # anthropic: nothing named yet


def test_reserved_paths_and_admin_token():
    g = gw(admin="adm-secret")
    assert g.handle("GET", "/health", {}, None).status == 200
    assert g.handle("GET", "/_keymux/health", {}, None).status == 200
    assert g.handle("GET", "/_keymux/stats", {}, None).status == 401
    ok = g.handle("GET", "/_keymux/stats", {"authorization": "Bearer adm-secret"}, None)
    stats = json.loads(ok.body)
    assert stats["keys"][0]["key"] == "sk-…9999" and "real-secret" not in ok.body.decode()
    metrics = g.handle("GET", "/metrics", {}, None)
    assert b"keymux_key_state" in metrics.body and b"real-secret" not in metrics.body
    assert g.handle("GET", "/elsewhere", {}, None).status == 404


def test_readiness_is_503_without_usable_keys():
    g = gw(keys=[key("o1", enabled=False)])
    assert g.handle("GET", "/_keymux/health", {}, None).status == 503


def test_finish_accounts_once_and_feeds_metrics():
    g = gw(keys=[key("o1", models=("gpt-4o*",))])
    plan = post(g)
    g.clock.advance(0.2)
    g.first_byte(plan)
    g.clock.advance(0.3)
    g.finish(plan, 200, Usage(input=5, output=7, seen=True))
    g.finish(plan, 200, Usage(input=5, output=7, seen=True))
    k = g.pool.by_name["o1"]
    assert (k.in_flight, k.successes, k.tokens_out) == (0, 1, 7)
    text = g.metrics.render().decode()
    assert 'keymux_tokens_total{direction="output",key="o1",model="gpt-4o-mini",provider="openai"} 7.0' in text
    assert 'keymux_requests_total{key="o1",provider="openai",status_class="2xx"} 1.0' in text


def test_client_invented_models_do_not_become_labels():
    g = gw()  # no globs configured: every model is "other"
    plan = post(g, json.dumps({"model": "gpt-" + "x" * 50}).encode())
    g.finish(plan, 200, Usage(input=1, output=1, seen=True))
    assert 'model="other"' in g.metrics.render().decode()


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_anthropic_paths_get_anthropic_compatible_errors(path):
    g = gw(clients=(client("app", TOKEN),))
    a = g.handle("POST", path, {}, b"{}")
    body = json.loads(a.body)
    assert a.status == 401 and body["type"] == "error" and body["error"]["message"]


def test_reset_key_endpoint_needs_post_and_admin():
    g = gw(admin="adm-secret")
    g.pool.cool_down(g.pool.by_name["o1"], "", 60, "auth")
    auth = {"authorization": "Bearer adm-secret"}
    assert g.handle("GET", "/_keymux/keys/o1/reset", auth, None).status == 405
    assert g.handle("POST", "/_keymux/keys/o1/reset", {}, None).status == 401
    assert g.handle("POST", "/_keymux/keys/nope/reset", auth, None).status == 404
    assert g.pool.snapshot()[0]["state"] == "dead"
    assert g.handle("POST", "/_keymux/keys/o1/reset", auth, None).status == 200
    assert g.pool.snapshot()[0]["state"] == "ok"


def test_request_log_rows_and_redacted_bodies():
    from keypool.config import LoggingSpec
    import dataclasses
    g = gw()
    plan = post(g, json.dumps({"model": "gpt-4o", "messages": [
        {"content": "my key is sk-openai-real-secret-9999, auth Bearer abcdefghijklmnop"}]}).encode())
    g.finish(plan, 200, Usage(input=2, output=3, seen=True))
    g.complete(plan.ticket, 200, plan, Usage(input=2, output=3, seen=True), b'{"ok":1}')
    row = g.recorder.drain([]).requests[0]
    assert row["key"] == "o1" and row["status"] == 200 and row["tokens_out"] == 3
    assert "request_body" not in row  # logging.bodies is off by default
    g.update(dataclasses.replace(g.config, logging=LoggingSpec(bodies=True)))
    plan = post(g, json.dumps({"model": "gpt-4o", "messages": [
        {"content": "my key is sk-openai-real-secret-9999, auth Bearer abcdefghijklmnop"}]}).encode())
    g.complete(plan.ticket, 200, plan, None, b'{"echo":"sk-openai-real-secret-9999"}')
    row = g.recorder.drain([]).requests[0]
    assert "sk-openai-real-secret-9999" not in row["request_body"] + row["response_body"]
    assert "abcdefghijklmnop" not in row["request_body"] and "sk-…9999" in row["request_body"]


def test_masker_covers_every_key_and_those_of_the_previous_config():
    a, b, c = "sk-first-secret-0001", "sk-second-secret-0002", "sk-third-secret-0003"
    g = gw(keys=[key("a", secret=a), key("b", secret=b)])
    assert g.masker.masked(f"{a} {b}".encode()) == b"sk-\xe2\x80\xa60001 sk-\xe2\x80\xa60002"
    assert g.max_response_bytes == 64 << 20
    g.update(config(keys=[key("c", secret=c)]))
    assert a.encode() not in g.masker.masked(a.encode())  # a request sent before the reload
    assert c.encode() not in g.masker.masked(c.encode())
    g.update(config(keys=[key("c", secret=c)]))
    assert g.masker.masked(a.encode()) == a.encode()  # one generation only: no growth
