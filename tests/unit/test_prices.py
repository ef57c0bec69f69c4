"""Cost per request: genai-prices' own figure, price: overrides, unknown prices."""
import datetime as dt
import time
from decimal import Decimal

import pytest
from genai_prices import Usage as GUsage, calc_price

from keypool import prices
from keypool.config import parse_config
from keypool.errors import ConfigError
from keypool.prices import Pricer, Rates
from keypool.usage import Usage, usage_of_body

WALL = 1_780_000_000.0  # 2026-05-28


def pricer(providers=None):
    return Pricer(providers or {}, lambda: WALL)


def theirs(model, provider_id, wall=WALL, **usage):
    return float(calc_price(GUsage(**usage), model, provider_id=provider_id,
                            genai_request_timestamp=dt.datetime.fromtimestamp(wall, dt.UTC)
                            ).total_price)


@pytest.mark.parametrize("provider,pid,model", [
    ("openai", "openai", "gpt-4o"), ("openai", "openai", "gpt-4o-mini"),
    ("anthropic", "anthropic", "claude-3-5-sonnet-latest"), ("gemini", "google", "gemini-2.0-flash"),
    ("deepseek", "deepseek", "deepseek-chat"), ("xai", "x-ai", "grok-3"),
    ("groq", "groq", "llama-3.3-70b-versatile"), ("mistral", "mistral", "mistral-large-latest"),
    ("openrouter", "openrouter", "openai/gpt-4o"),
])
def test_a_known_usage_costs_what_genai_prices_says(provider, pid, model):
    u = Usage(input=1234, output=567, seen=True)
    assert pricer().cost(provider, model, u) == pytest.approx(
        theirs(model, pid, input_tokens=1234, output_tokens=567), rel=1e-12)


def test_openai_cached_tokens_are_priced_at_the_cache_rate():
    u = usage_of_body(b'{"usage": {"prompt_tokens": 1000, "completion_tokens": 500,'
                      b' "prompt_tokens_details": {"cached_tokens": 200}}}')
    assert (u.input, u.cache_read, u.input_total) == (1000, 200, 1000)
    want = theirs("gpt-4o", "openai", input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    assert pricer().cost("openai", "gpt-4o", u) == pytest.approx(want, rel=1e-12)
    assert want < theirs("gpt-4o", "openai", input_tokens=1000, output_tokens=500)


def test_anthropic_cache_reads_and_writes():
    u = usage_of_body(b'{"usage": {"input_tokens": 700, "output_tokens": 500,'
                      b' "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100}}')
    assert (u.input, u.cache_read, u.cache_write, u.input_total) == (800, 200, 100, 1000)
    want = theirs("claude-3-5-sonnet-latest", "anthropic", input_tokens=1000, output_tokens=500,
                  cache_read_tokens=200, cache_write_tokens=100)
    assert pricer().cost("anthropic", "claude-3-5-sonnet-latest", u) == pytest.approx(want, rel=1e-12)


def test_unknown_is_none_never_zero():
    u = Usage(input=10, output=10, seen=True)
    p = pricer()
    assert p.cost("openai", "no-such-model-xyz", u) is None
    assert p.cost("local", "llama-3", u) is None      # a custom provider without price:
    assert p.cost("openai", None, u) is None


def test_overrides_flat_and_globs_first_match_wins():
    cfg = parse_config("""
providers:
  local:
    base_url: http://127.0.0.1:9100/v1
    price: {input: 0.15, output: 0.60, cached_input: 0.075, cache_write: 0.3}
  other:
    base_url: http://127.0.0.1:9101/v1
    price:
      "llama-*": {input: 1, output: 2}
      "*": {input: 0.1, output: 0.2}
  openai:
    price: {"gpt-4o": {input: 100, output: 100}}
""", env={})
    p = pricer({n: s.price for n, s in cfg.providers.items()})
    u = Usage(input=1_000_000, output=1_000_000, seen=True, cache_read=500_000)
    assert p.cost("local", "anything", u) == pytest.approx(0.5 * 0.15 + 0.5 * 0.075 + 0.60)
    assert p.cost("other", "llama-3", Usage(input=10**6, output=10**6, seen=True)) == pytest.approx(3)
    assert p.cost("other", "qwen", Usage(input=10**6, output=10**6, seen=True)) == pytest.approx(0.3)
    assert p.cost("openai", "gpt-4o", Usage(input=10**6, seen=True)) == pytest.approx(100)
    # a model the override does not match falls through to genai-prices
    assert p.cost("openai", "gpt-4o-mini", Usage(input=10**6, seen=True)) == pytest.approx(
        theirs("gpt-4o-mini", "openai", input_tokens=10**6))


def test_zero_price_is_a_price():
    cfg = parse_config("providers:\n  local:\n    base_url: http://127.0.0.1:9/v1\n"
                       "    price: {input: 0, output: 0}\n", env={})
    assert Pricer({"local": cfg.providers["local"].price}, lambda: WALL).cost(
        "local", "m", Usage(input=5, output=5, seen=True)) == 0.0


@pytest.mark.parametrize("price,line,message", [
    ("{input: 1}", 4, "providers.local.price: missing required field 'output'"),
    ("{input: -1, output: 1}", 4, "providers.local.price.input: expected a number >= 0"),
    ("{input: 1, output: 1, cheap: 2}", 4, "providers.local.price: unknown field 'cheap'"),
    ("{}", 4, "providers.local.price: expected rates"),
    ("{'llama-*': {input: 1, output: x}}", 4, "providers.local.price.llama-*.output"),
    ("{'llama-*': {input: 1, output: 1, extra: 1}}", 4, "unknown field 'extra'"),
    ("5", 4, "providers.local.price: expected a mapping"),
])
def test_bad_price_is_a_located_config_error(price, line, message):
    text = f"providers:\n  local:\n    base_url: http://127.0.0.1:9/v1\n    price: {price}\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, env={})
    assert e.value.line == line and message in str(e.value), str(e.value)


def test_the_lookup_is_cached_and_cheap():
    p = pricer()
    u = Usage(input=1000, output=200, seen=True, cache_read=100)
    p.cost("openai", "gpt-4o", u)
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        p.cost("openai", "gpt-4o", u)
    per_call = (time.perf_counter() - t) / n
    print(f"Pricer.cost: {per_call * 1e6:.2f} us per call")
    assert per_call < 20e-6  # genai-prices' calc_price takes ~120 us


@pytest.mark.parametrize("hour", [1, 12, 17, 23])
def test_prices_that_change_within_the_day_follow_the_clock(hour):
    wall = dt.datetime(2026, 5, 28, hour, 30, tzinfo=dt.UTC).timestamp()
    p = Pricer({}, lambda: wall)
    u = Usage(input=1000, output=1000, seen=True)
    assert p.cost("deepseek", "deepseek-chat", u) == pytest.approx(
        theirs("deepseek-chat", "deepseek", wall, input_tokens=1000, output_tokens=1000), rel=1e-12)


def test_tiered_prices_use_genai_prices_itself():
    from genai_prices import types
    tiered = types.ModelPrice(input_mtok=types.TieredPrices(
        base=Decimal("1"), tiers=[types.Tier(start=1000, price=Decimal("2"))]),
        output_mtok=Decimal("3"))
    u = Usage(input=2000, output=1000, seen=True)
    assert prices._genai_cost(tiered, u) == pytest.approx(2000 * 2e-6 + 1000 * 3e-6)


def test_rates_never_price_cached_tokens_twice():
    r = Rates.per_million(1, 1, 0.5, 2)
    assert r.cost(Usage(input=100, cache_read=100, seen=True)) == pytest.approx(100 * 0.5e-6)


def test_stream_usage_with_cached_tokens():
    from keypool.usage import SseTap
    tap = SseTap()
    tap(b'data: {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 5,'
        b' "prompt_tokens_details": {"cached_tokens": 32}}}\n\n')
    assert (tap.usage.input_total, tap.usage.cache_read) == (50, 32)
    ant = SseTap()
    ant(b'event: message_start\ndata: {"type": "message_start", "message": {"usage":'
        b' {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 5,'
        b' "output_tokens": 1}}}\n\n')
    ant(b'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": 7}}\n\n')
    u = ant.usage
    assert (u.input_total, u.cache_read, u.cache_write, u.output) == (105, 90, 5, 7)


def test_pricing_never_reaches_for_the_network():
    from genai_prices import data_snapshot
    pricer().cost("openai", "gpt-4o", Usage(input=1, output=1, seen=True))
    assert data_snapshot._custom_snapshot is None  # no UpdatePrices snapshot: bundled data
    assert data_snapshot.get_snapshot().from_auto_update is False
