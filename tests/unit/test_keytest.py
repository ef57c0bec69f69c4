"""POST /_keymux/keys/NAME/test: admission, the one-key attempt, and its judgement."""
import json

from keypool.answers import Answer
from keypool.clock import FakeClock
from keypool.gateway import Gateway
from keypool.keytest import KeyTest, message_of, plan, settle

from .helpers import config, key

SECRET = "sk-openai-real-secret-9999"
AUTH = {"authorization": "Bearer adm-secret"}


def gw(**kw):
    keys = [key("o1", secret=SECRET, **kw), key("o2", secret="sk-other-secret-0000000")]
    return Gateway(config(keys=keys), FakeClock(), admin_token="adm-secret")


def admit(g, name="o1", method="POST", headers=AUTH):
    return g.admit(method, f"/_keymux/keys/{name}/test", headers, None)


def summary(answer):
    assert isinstance(answer, Answer) and answer.status == 200, answer
    return json.loads(answer.body)


def test_admission_needs_post_the_admin_token_and_a_known_key():
    g = gw()
    assert admit(g, method="GET").status == 405
    assert admit(g, headers={}).status == 401
    assert admit(g, headers={"authorization": "Bearer wrong"}).status == 401
    assert admit(g, name="nope").status == 404
    t = admit(g)
    assert isinstance(t, KeyTest) and t.key_name == "o1" and t.path == "/v1/models"
    assert t.route.provider.name == "openai" and t.body is None


def test_the_attempt_goes_to_the_named_key_with_its_secret_whatever_its_state():
    g = gw(enabled=False)
    o1 = g.pool.by_name["o1"]
    g.pool.cool_down(o1, "", 3600, "auth")
    p = plan(g, admit(g))
    assert p.key is o1 and o1.in_flight == 1
    assert p.url == "https://api.openai.com:443/v1/models"
    fields = dict(p.rewrite_fields(((b"accept", b"application/json"),)))
    assert fields[b"authorization"] == f"Bearer {SECRET}".encode()


def test_a_401_marks_the_key_dead_and_the_message_is_masked():
    g = gw()
    p = plan(g, admit(g))
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}",
                                 "code": "invalid_api_key"}}).encode()
    s = summary(settle(g, p, 401, {}, body))
    assert (s["ok"], s["status"], s["outcome"], s["state"]) == (False, 401, "auth", "dead")
    assert SECRET not in s["error"] and "sk-…9999" in s["error"]
    k = g.pool.by_name["o1"]
    assert k.in_flight == 0 and k.failures == 1


def test_a_success_revives_a_dead_key_but_keeps_a_models_rate_limit():
    g = gw()
    k = g.pool.by_name["o1"]
    g.pool.cool_down(k, "", 3600, "auth")
    g.pool.cool_down(k, "gpt-4o", 30, "rate_limited")
    g.clock.advance(0.25)
    p = plan(g, admit(g))
    g.clock.advance(0.1)
    s = summary(settle(g, p, 200, {}, None))
    assert (s["ok"], s["outcome"], s["latency_ms"], s["error"]) == (True, "ok", 100, None)
    assert "" not in k.cool and "gpt-4o" in k.cool and k.in_flight == 0 and k.successes == 1
    assert s["state"] == "ok"  # serving: the model's cooldown is listed beside it
    assert k.blocked_until("gpt-4o", g.clock.monotonic()) > g.clock.monotonic()


def test_no_answer_is_judged_like_any_attempt():
    g = gw()
    s = summary(settle(g, plan(g, admit(g)), None, {}, None, error="cannot connect: refused"))
    assert (s["ok"], s["status"], s["outcome"], s["error"]) == (
        False, None, "server", "cannot connect: refused")
    assert g.pool.by_name["o1"].in_flight == 0


def test_a_key_removed_before_the_attempt_is_a_404():
    g = gw()
    t = admit(g)
    g.update(config(keys=[key("o2", secret="sk-other-secret-0000000")]))
    assert plan(g, t).status == 404


def test_message_of_reads_both_error_shapes_and_plain_text():
    assert message_of(b'{"error": {"message": "bad key"}}') == "bad key"
    assert message_of(b'{"type": "error", "error": {"type": "x", "message": "m"}}') == "m"
    assert message_of(b"<html>\n oops </html>") == "<html> oops </html>"
    assert message_of(None) == ""
