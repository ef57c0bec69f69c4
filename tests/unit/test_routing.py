import pytest

from keypool.routing import RouteError, Router

from .helpers import config, key, local


def route(cfg, model=None, path="/v1/chat/completions", header=None):
    r = Router(cfg).resolve(path=path, model=model, header=header)
    return r.provider.name, r.model, r.rule


MIXED = config(
    keys=[key("o1"), key("a1", "anthropic"), key("l1", "local"), key("or1", "openrouter")],
    providers=[local()],
)


def test_header_wins_over_everything():
    assert route(MIXED, "claude-3", header="openai") == ("openai", "claude-3", 1)
    assert route(MIXED, "gpt-4o", header=" Local ") == (
        "local", "gpt-4o", 1)


def test_header_naming_unknown_provider_is_404():
    with pytest.raises(RouteError) as e:
        route(MIXED, "gpt-4o", header="evil.example.com")
    assert e.value.status == 404 and "not configured" in e.value.message


def test_prefix_is_stripped_when_it_names_a_keyed_provider():
    assert route(MIXED, "anthropic/claude-3-haiku") == ("anthropic", "claude-3-haiku", 2)


def test_prefix_of_unkeyed_provider_stays_whole():
    # deepseek has no key: "deepseek/x" is an OpenRouter-style name, not a routing prefix.
    cfg = config(keys=[key("or1", "openrouter", models=("*/*",))])
    assert route(cfg, "deepseek/deepseek-chat") == ("openrouter", "deepseek/deepseek-chat", 4)


def test_messages_path_goes_to_x_api_key_provider():
    assert route(MIXED, "gpt-4o", path="/v1/messages") == ("anthropic", "gpt-4o", 3)
    assert route(MIXED, "x", path="/v1/messages/count_tokens")[0] == "anthropic"


def test_messages_path_prefers_a_matching_custom_anthropic_provider():
    cfg = config(keys=[key("a1", "anthropic"), key("c1", "corp")],
                 providers=[local("corp", models=("claude-corp-*",), auth="x-api-key")])
    assert route(cfg, "claude-corp-1", path="/v1/messages")[0] == "corp"
    assert route(cfg, "claude-3", path="/v1/messages")[0] == "anthropic"


def test_globs_of_providers_and_keys():
    assert route(MIXED, "mock-small") == ("local", "mock-small", 4)
    cfg = config(keys=[key("o1"), key("g1", "groq", models=("llama-*",))])
    assert route(cfg, "llama-3.1-8b") == ("groq", "llama-3.1-8b", 4)


def test_globs_come_before_prefixes():
    cfg = config(keys=[key("o1"), key("l1", "local")], providers=[local(models=("gpt-oss*",))])
    assert route(cfg, "gpt-oss-20b")[0] == "local"
    assert route(cfg, "gpt-4o")[0] == "openai"


@pytest.mark.parametrize("model,provider", [
    ("gpt-4o-mini", "openai"), ("o3-mini", "openai"), ("text-embedding-3-small", "openai"),
    ("claude-sonnet-4", "anthropic"), ("gemini-2.0-flash", "gemini"),
    ("deepseek-chat", "deepseek"), ("grok-3", "xai"), ("mistral-large", "mistral"),
    ("codestral-latest", "mistral"),
])
def test_model_prefixes(model, provider):
    cfg = config(keys=[key(p, p) for p in
                       ("openai", "anthropic", "gemini", "deepseek", "xai", "mistral")])
    assert route(cfg, model) == (provider, model, 5)


def test_prefix_provider_without_keys_falls_through_to_only_provider():
    cfg = config(keys=[key("d1", "deepseek")])
    assert route(cfg, "gpt-4o") == ("deepseek", "gpt-4o", 6)


def test_only_provider_serves_requests_without_model():
    cfg = config(keys=[key("o1"), key("o2")])
    assert route(cfg, None, path="/v1/files") == ("openai", None, 6)


def test_unknown_model_with_several_providers_is_404():
    with pytest.raises(RouteError) as e:
        route(MIXED, "mystery-model")
    assert e.value.status == 404 and "mystery-model" in e.value.message


def test_no_model_no_header_several_providers_is_404():
    with pytest.raises(RouteError):
        route(MIXED, None, path="/v1/files")
