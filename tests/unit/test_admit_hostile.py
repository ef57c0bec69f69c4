"""Admission of hostile requests: decided on the canonical form, refused with a clear 4xx."""
import gzip
import json

import pytest

from keypool.answers import Answer
from keypool.clock import FakeClock
from keypool.config import Config, Routing
from keypool.gateway import Gateway, Plan
from keypool.providers import PRESETS

from .helpers import client, key

TOKEN = "tok-app-123456"
SECRET = "sk-openai-real-secret-9999"


def gw(clients=None, max_body_mb=32.0):
    cfg = Config(providers=dict(PRESETS), keys=(key("o1", secret=SECRET),), clients=clients,
                 routing=Routing(max_body_mb=max_body_mb))
    return Gateway(cfg, FakeClock())


def limited():
    return gw(clients=(client("app", TOKEN, models=("gpt-4o-mini",)),))


def post(g, body, path="/v1/chat/completions", **headers):
    h = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}",
         **{k.replace("_", "-"): v for k, v in headers.items()}}
    return g.handle("POST", path, h, body if isinstance(body, bytes) else json.dumps(body).encode())


def refusal(answer):
    assert isinstance(answer, Answer), answer
    return answer.status, json.loads(answer.body)["error"]["code"]


FORBIDDEN = {"model": "gpt-4o", "messages": []}


@pytest.mark.parametrize("path", [
    "/v1/./chat/completions", "/x/../v1/chat/completions", "//v1//chat/completions",
    "/v1/%63hat/completions", "/v1/chat/completions/", "/v1/chat/completions?x=1",
])
def test_allow_list_holds_whatever_the_spelling(path):
    assert refusal(post(limited(), FORBIDDEN, path)) == (403, "model_not_allowed")
    plan = post(limited(), {"model": "gpt-4o-mini", "stream": True}, path)
    assert isinstance(plan, Plan)
    assert plan.path.partition("?")[0] == "/v1/chat/completions"
    assert plan.ticket.stream and plan.ticket.strip_usage  # stream + usage detected too


@pytest.mark.parametrize("path, status", [
    ("/v1/../../../internal/admin", 400), ("/v1/chat/completions#x", 400),
    ("/v1/chat%2fcompletions", 400), ("/v1/" + "a" * 9000, 414),
])
def test_bad_paths_are_refused_before_anything(path, status):
    assert refusal(post(gw(), FORBIDDEN, path))[0] == status


def test_reserved_paths_are_canonical_too():
    g = gw()
    assert g.handle("GET", "/./health", {}, None).status == 200
    assert g.handle("GET", "/_keymux/../_keymux/health", {}, None).status == 200


@pytest.mark.parametrize("ctype", ["Application/JSON; charset=utf-8", "text/plain", ""])
def test_model_path_body_is_read_whatever_the_content_type(ctype):
    assert refusal(post(limited(), FORBIDDEN, content_type=ctype)) == (403, "model_not_allowed")


@pytest.mark.parametrize("body, code", [
    (json.dumps(FORBIDDEN).encode("utf-16"), "invalid_json"),
    (json.dumps(FORBIDDEN).encode("utf-32"), "invalid_json"),
    (b'{"model": "gpt-4o-mini", "x": "\xc3"}', "invalid_json"),
    (b'{"model":"gpt-4o-mini","x":' + b"[" * 2000 + b"]" * 2000 + b"}", "invalid_json"),
    (b'{"model":"gpt-4o-mini","x":' + b"[" * 70 + b"]" * 70 + b"}", "invalid_json"),
    (b"not json", "invalid_json"),
    (b'{"model": "gpt-4o-mini", "model": "gpt-4o"}', "invalid_json"),
    (b"", "invalid_json"),
    (b"[1]", "invalid_json"),
    (b'{"model": ["gpt-4o-mini"]}', "invalid_model"),
    (b'{"model": "gpt-4o-mini\\u0000"}', "invalid_model"),
    (b'{"model": "openai/\\ud800"}', "invalid_model"),
    (json.dumps({"model": "g" * 300}).encode(), "invalid_model"),
    (b'{"messages": []}', "missing_model"),
    (json.dumps({"model": "gpt-4o-mini", "api_base": "http://evil"}).encode(), "unsupported_field"),
    (json.dumps({"model": "gpt-4o-mini", "base_url": "http://evil"}).encode(), "unsupported_field"),
    (json.dumps({"model": "gpt-4o-mini", "api_key": "sk-x"}).encode(), "unsupported_field"),
])
def test_unreadable_bodies_are_400(body, code):
    assert refusal(post(limited(), body)) == (400, code)


def test_lone_surrogate_elsewhere_survives_a_model_rewrite():
    body = b'{"model": "openai/gpt-4o-mini", "messages": [{"content": "\\ud800"}]}'
    plan = post(limited(), body)
    assert isinstance(plan, Plan)
    assert json.loads(plan.ticket.body)["model"] == "gpt-4o-mini"
    assert b"\\ud800" in plan.ticket.body


def test_stream_options_null_gets_no_duplicate_key():
    body = b'{"model": "gpt-4o-mini", "stream": true, "stream_options": null}'
    plan = post(gw(), body)
    assert plan.ticket.body.count(b"stream_options") == 1
    assert json.loads(plan.ticket.body)["stream_options"] == {"include_usage": True}
    # absent: the cheap splice, still one key
    plan = post(gw(), b'{"model": "gpt-4o-mini", "stream": true}')
    assert plan.ticket.body.count(b"stream_options") == 1


def test_compressed_body_inflated_only_after_auth():
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))
    g = gw(clients=(client("app", TOKEN),), max_body_mb=1)
    h = {"content-encoding": "gzip", "content-type": "application/json"}
    assert refusal(g.handle("POST", "/v1/chat/completions", h, bomb)) == (401, "invalid_client_token")
    h["authorization"] = f"Bearer {TOKEN}"
    assert refusal(g.handle("POST", "/v1/chat/completions", h, bomb)) == (413, "request_too_large")
    plan = g.handle("POST", "/v1/chat/completions", h, gzip.compress(json.dumps(
        {"model": "gpt-4o-mini"}).encode()))
    assert isinstance(plan, Plan) and json.loads(plan.ticket.body) == {"model": "gpt-4o-mini"}
    h["content-encoding"] = "lzma"
    assert refusal(g.handle("POST", "/v1/chat/completions", h, b"x")) == (415, "unsupported_encoding")


def test_plain_body_over_the_limit_is_413():
    g = gw(max_body_mb=0.001)
    assert refusal(post(g, b"x" * 2000)) == (413, "request_too_large")


def test_screen_counts_and_answers_openai_json():
    g = gw()
    a = g.screen("CONNECT", "evil:443", "evil:443", [])
    assert refusal(a) == (405, "method_not_allowed")
    a = g.screen("POST", "/v1/chat/completions", "", [(b"Content-Length", b"%d" % (33 * 2**20))])
    assert refusal(a) == (413, "request_too_large")
    assert g.screen("POST", "/v1/chat/completions", "", [(b"content-length", b"10")]) is None
