"""POST /_keymux/keys/NAME/test through the real mitmdump: one GET /v1/models upstream with
that key, judged by the normal policy (issue 9, "test this key")."""
import json
import urllib.error
import urllib.request

import pytest

from .conftest import A1, K1, SECRETS
from .harness import SIDECAR_TOKEN, get


def call_test(gw, name, token=SIDECAR_TOKEN, method="POST"):
    req = urllib.request.Request(f"{gw.url}/_keymux/keys/{name}/test", method=method,
                                 headers={"x-keymux-admin-token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def state_of(gateway, name):
    stats = json.loads(get(gateway, "/_keymux/stats")[1])
    return next(k for k in stats["keys"] if k["name"] == name)["state"]


@pytest.fixture(autouse=True)
def _rested(gateway):
    yield
    gateway.reset("k1")


def test_a_rejected_key_is_marked_dead_and_the_error_masked(gateway, mock):
    mock.set_behavior(K1, status=401)
    status, body = call_test(gateway, "k1")
    assert status == 200, body
    assert (body["ok"], body["status"], body["outcome"], body["state"]) == (False, 401, "auth", "dead")
    assert isinstance(body["latency_ms"], int) and body["error"]
    assert state_of(gateway, "k1") == "dead"
    sent = mock.requests()
    assert len(sent) == 1 and sent[0]["method"] == "GET" and sent[0]["path"] == "/v1/models"
    assert not any(s in json.dumps(body) for s in SECRETS)


def test_a_good_key_answers_ok_and_revives_a_dead_one(gateway, mock):
    mock.set_behavior(K1, status=401)
    call_test(gateway, "k1")
    assert state_of(gateway, "k1") == "dead"
    mock.reset()  # the secret works again (fixed at the provider)
    status, body = call_test(gateway, "k1")
    assert (status, body["ok"], body["status"], body["outcome"], body["state"], body["error"]) == (
        200, True, 200, "ok", "ok", None)
    assert state_of(gateway, "k1") == "ok"


def test_an_anthropic_shaped_key_is_tested_with_its_own_auth(gateway, mock):
    status, body = call_test(gateway, "a1")
    assert (status, body["ok"], body["provider"]) == (200, True, "mockant")
    assert mock.requests()[-1]["path"] == "/v1/models" and mock.count(A1) == 1


def test_refusals(gateway, mock):
    assert call_test(gateway, "k1", token=None)[0] in (401, 403)
    assert call_test(gateway, "k1", token="wrong-token-0123456789")[0] in (401, 403)
    assert call_test(gateway, "k1", method="GET")[0] == 405
    status, body = call_test(gateway, "nope")
    assert (status, body["error"]["code"]) == (404, "key_not_found")
    assert mock.count() == 0
