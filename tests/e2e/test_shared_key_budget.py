"""Two real gateway processes through a real redis-server: a key's budget (daily_usd) holds
across both: parallel requests split across the two reach the upstream within the bound one
process keeps (the attempts' holds checked and taken in the one reserve call per attempt,
keypool.shared_lua), and their holds released once they are over."""
import json
import os

import pytest

from keypool.budgets import estimate

from tests.redisserver import RedisServer, needs_redis

from .harness import GatewayProcess, health, wait_for
from .test_shared_counts import body, chat, parallel

pytestmark = needs_redis

KB = "sk-key-budget-key-000001"
APP = "kmx-key-budget-app-token1"
USD_PER_TOKEN = 1.0  # priced at 1e6 USD per million tokens: an estimate is its tokens in USD


def est_usd(model: str) -> float:
    tin, tout = estimate(json.loads(body(model)), len(body(model)))
    return (tin + tout) * USD_PER_TOKEN


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    per_m = USD_PER_TOKEN * 1e6
    return f"""
version: 1
state: {{backend: redis, url: {redis_url}, prefix: {prefix}, reservation_ttl_s: 2}}
routing: {{queue_s: 2}}
providers:
  pkb: {{base_url: "{mock_url}/v1", models: ["kb-*"], price: {{"kb-*": {{input: {per_m}, output: {per_m}}}}}}}
clients:
  - {{name: app, token: {APP}}}
keys:
  - {{name: kb, provider: pkb, key: {KB}, budget: {{daily_usd: {5 * est_usd("kb-1") - 0.5}}}}}
"""


@pytest.fixture(scope="module")
def pair(mock, tmp_path_factory, confdir):
    with RedisServer() as server:
        text = yaml(mock.base_url, server.url, f"kb{os.getpid()}")
        with GatewayProcess(tmp_path_factory.mktemp("gwa"), text, confdir=confdir) as a, \
                GatewayProcess(tmp_path_factory.mktemp("gwb"), text, confdir=confdir) as b:
            assert wait_for(lambda: all(health(g).get("shared_state", {}).get("ok")
                                        for g in (a, b)))
            yield a, b


def test_parallel_requests_on_both_stay_within_a_keys_budget(pair, mock):
    a, b = pair
    mock.set_behavior(KB, delay_ms=3000)  # every attempt is admitted or refused while held
    got = parallel([(gw, "kb-1", APP) for _ in range(10) for gw in (a, b)])
    # committed (holds) < 5 estimates admits a 5th, not a 6th, whichever process asks;
    # without sharing, each process alone would send 5
    assert got.count((200, "")) == 5, got
    assert mock.count(KB) == 5
    assert all(g[0] == 429 for g in got if g[0] != 200)
    mock.set_behavior(KB)
    # the answers cost far less than their estimates: once their holds are released (after
    # their spend was written), the key serves again in both
    assert wait_for(lambda: chat(a, "kb-1", APP) == (200, ""), timeout=10)
    assert chat(b, "kb-1", APP) == (200, "")
