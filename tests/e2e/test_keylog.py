"""Through the real mitmdump: the log names the key that failed, and stats say why it rests."""
import json

import openai

from .conftest import K1, K2, SECRETS
from .harness import GatewayProcess, get, wait_for

CONFIG = """
version: 1
providers:
  mock:
    base_url: {url}/v1
    models: ["gpt-*"]
keys:
  - {{name: k1, provider: mock, key: {k1}}}
  - {{name: k2, provider: mock, key: {k2}}}
routing: {{strategy: round_robin, max_attempts: 2}}
"""


def test_log_names_the_401_key_and_the_429_key(mock, tmp_path, confdir):
    mock.set_behavior(K1, status=401)
    mock.set_behavior(K2, status=429, headers={"retry-after": "30"}, times=1)
    with GatewayProcess(tmp_path, CONFIG.format(url=mock.base_url, k1=K1, k2=K2),
                        confdir=confdir) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0, timeout=10)
        try:
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError:
            pass  # both keys failed: the client's answer is not what this test is about
        assert mock.count(K1, 401) == 1 and mock.count(K2, 429) == 1
        assert wait_for(lambda: "key k2 cools" in gw.log(), timeout=5), gw.log()
        stats = json.loads(get(gw, "/_keymux/stats")[1])
        rows = {k["name"]: k for k in stats["keys"]}
        log = gw.log()
    assert "keymux: key k1 is dead (401, its key was rejected)" in log
    assert "keymux: key k2 cools 30 s for gpt-4o-mini (429, Retry-After)" in log
    assert not any(s in log for s in SECRETS)
    k1, k2 = rows["k1"]["held_back"][0], rows["k2"]["held_back"][0]
    assert (k1["reason"], k1["detail"]) == ("cooldown", "auth") and k1["seconds_left"] > 3000
    assert (k2["reason"], k2["detail"], k2["model"]) == ("cooldown", "rate_limited", "gpt-4o-mini")
    assert 25 < k2["seconds_left"] <= 30
