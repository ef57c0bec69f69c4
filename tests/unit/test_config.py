"""keys.yaml loading: the valid shape, and every rule's message and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from keypool.config import (
    ClientSpec, Config, Cooldown, KeySpec, LoggingSpec, Routing, load_config, parse_config,
)
from keypool.envfile import BAD_REFERENCE, interpolate, parse_dotenv
from keypool.errors import ConfigError
from keypool.providers import PRESETS, ProviderSpec

EXAMPLE = """\
version: 1
providers:
  openai:
    base_url: https://api.openai.com/v1
  local:
    base_url: http://127.0.0.1:9100/v1
    auth: bearer
    models: ["mock-*"]
keys:
  - name: openai-1
    provider: openai
    key: ${OPENAI_API_KEY_1}
    enabled: true
    weight: 1
    models: ["gpt-4o*"]
    rpm: 500
    tpm: 200000
    max_in_flight: 16
clients:
  - name: my-app
    token: ${KEYMUX_TOKEN_MY_APP}
    models: ["gpt-4o*"]
    rpm: 120
routing:
  strategy: round_robin
  max_attempts: 4
  timeout_s: 120
  cooldown:
    rate_limited_s: 30
    server_error_s: 5
    max_s: 600
    auth_error_s: 3600
  queue_s: 5
  daily_reset: "00:00"
state_dir: ./state
logging:
  bodies: false
  retention_days: 14
"""
ENV = {"OPENAI_API_KEY_1": "sk-one-0123456789", "KEYMUX_TOKEN_MY_APP": "tok-my-app-secret"}
KNOWN = "anthropic, deepseek, gemini, groq, mistral, openai, openrouter, xai"
NAME_RULE = ("is not a valid name (up to 64 letters, digits and _ . : -, starting with a letter"
             " or digit)")
CLOCK_RULE = 'expected a time of day as "HH:MM" (24-hour)'

# A key entry that is valid on its own (3 lines), for tests that break one other thing.
KEY = "  - name: {name}\n    provider: openai\n    key: sk-{name}-secret\n"


def key_with(extra: str) -> str:
    """One valid key plus ``extra``, which lands on line 5."""
    return "keys:\n" + KEY.format(name="a") + f"    {extra}\n"


def parse(text: str, env: dict[str, str] | None = None, **kw) -> Config:
    return parse_config(text, source="keys.yaml", env={} if env is None else env, **kw)


def error(text: str, env: dict[str, str] | None = None, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, env, **kw)
    assert info.value.path == "keys.yaml"
    return info.value


# -- valid configs ---------------------------------------------------------------------

def test_example_parses_to_the_expected_config(tmp_path: Path) -> None:
    config = parse(EXAMPLE, ENV, base_dir=tmp_path)
    assert config.keys == (
        KeySpec("openai-1", "openai", "sk-one-0123456789", enabled=True, weight=1.0,
                models=("gpt-4o*",), rpm=500, tpm=200000, max_in_flight=16, line=10),
    )
    assert config.clients == (
        ClientSpec("my-app", "tok-my-app-secret", models=("gpt-4o*",), rpm=120, line=20),
    )
    assert config.routing == Routing("round_robin", 4, 120.0, Cooldown(30.0, 5.0, 600.0, 3600.0),
                                     5.0, "00:00")
    assert config.state_dir == tmp_path / "state"
    assert config.logging == LoggingSpec(bodies=False, retention_days=14)
    assert (config.version, config.source, config.warnings) == (1, "keys.yaml", ())
    assert config.providers["local"] == ProviderSpec("local", "http://127.0.0.1:9100/v1",
                                                     models=("mock-*",))
    assert config.providers["openai"] == PRESETS["openai"]
    assert set(PRESETS) < set(config.providers)
    assert isinstance(config.keys[0].weight, float) and isinstance(config.routing.timeout_s, float)
    assert "sk-one-0123456789" not in repr(config) and "tok-my-app-secret" not in repr(config)


def test_minimal_config_takes_every_default() -> None:
    config = parse("keys: []\n")
    assert (config.keys, config.clients, config.routing, config.logging, config.state_dir) == (
        (), None, Routing(), LoggingSpec(), Path("state"))
    assert dict(config.providers) == PRESETS


@pytest.mark.parametrize("text", ["version: 1\n", "clients:\n", "clients: null\nkeys:\n"])
def test_absent_or_null_clients_section_is_none(text: str) -> None:
    assert parse(text).clients is None


def test_empty_clients_list_is_an_empty_tuple() -> None:
    assert parse("clients: []\n").clients == ()


def test_key_defaults_and_lines() -> None:
    a, b = parse("keys:\n" + KEY.format(name="a") + KEY.format(name="b") + "    weight: 2.5\n").keys
    assert a == KeySpec("a", "openai", "sk-a-secret", line=2)
    assert (a.enabled, a.weight, a.models, a.rpm, a.tpm, a.max_in_flight) == (
        True, 1.0, (), None, None, None)
    assert (b.line, b.weight) == (5, 2.5)


def test_disabled_key_on_a_custom_provider() -> None:
    config = parse('providers:\n  local: {base_url: "http://127.0.0.1:9100/v1"}\n'
                   "keys:\n  - {name: 'l:1', provider: local, key: mock-key, enabled: false}\n")
    assert (config.keys[0].provider, config.keys[0].enabled) == ("local", False)


def test_key_name_of_64_characters_is_fine() -> None:
    assert parse("keys:\n" + KEY.format(name="k" * 64)).keys[0].name == "k" * 64


def test_clients_parse_with_lines() -> None:
    config = parse("clients:\n  - name: a\n    token: token-aaaa\n  - name: b\n"
                   "    token: ${B_TOKEN}\n    models: [gpt-*]\n    rpm: 10\n",
                   {"B_TOKEN": "token-bbbb"})
    assert config.clients == (ClientSpec("a", "token-aaaa", line=2),
                              ClientSpec("b", "token-bbbb", ("gpt-*",), 10, line=4))


def test_routing_values() -> None:
    config = parse("routing:\n  strategy: least_busy\n  max_attempts: 1\n  timeout_s: 0.5\n"
                   "  queue_s: 0\n  daily_reset: '7:05'\n"
                   "  cooldown: {rate_limited_s: 0, server_error_s: 2.5}\n")
    assert config.routing == Routing("least_busy", 1, 0.5, Cooldown(0.0, 2.5, 600.0, 3600.0),
                                     0.0, "07:05")


def test_max_response_mb() -> None:
    assert parse("keys: []\n").routing.max_response_mb == 64.0
    assert parse("routing:\n  max_response_mb: 0.5\n").routing.max_response_mb == 0.5
    with pytest.raises(ConfigError, match="max_response_mb"):
        parse("routing:\n  max_response_mb: 0\n")


def test_max_body_mb() -> None:
    assert parse("version: 1\n").routing.max_body_mb == 32
    assert parse("routing:\n  max_body_mb: 0.5\n").routing.max_body_mb == 0.5


def test_unquoted_time_is_read_as_written() -> None:
    # YAML 1.1 would make 12:30 the base-60 integer 750.
    assert parse("routing:\n  daily_reset: 12:30\n").routing.daily_reset == "12:30"


def test_state_dir_relative_to_base_dir(tmp_path: Path) -> None:
    assert parse("state_dir: data/st\n", base_dir=tmp_path).state_dir == tmp_path / "data/st"
    assert parse("state_dir: data\n").state_dir == Path("data")
    assert parse("keys: []\n", base_dir=tmp_path).state_dir == tmp_path / "state"
    absolute = tmp_path / "elsewhere"
    assert parse(f"state_dir: {absolute}\n", base_dir=Path("/x")).state_dir == absolute


def test_logging_values() -> None:
    assert parse("logging:\n  bodies: true\n  retention_days: 3\n").logging == LoggingSpec(True, 3)


# -- providers -------------------------------------------------------------------------

def test_preset_override_keeps_the_other_preset_fields() -> None:
    config = parse("providers:\n  anthropic:\n    models: ['claude-*']\n"
                   "  openai:\n    base_url: https://proxy.example.com/openai/v1\n")
    anthropic, preset = config.providers["anthropic"], PRESETS["anthropic"]
    assert anthropic == ProviderSpec("anthropic", preset.base_url, "x-api-key", ("claude-*",),
                                     preset.headers, False)
    openai = config.providers["openai"]
    assert (openai.host, openai.base_path, openai.stream_usage) == (
        "proxy.example.com", "/openai/v1", True)


def test_preset_headers_are_extended_not_replaced() -> None:
    config = parse("providers:\n  anthropic:\n    headers:\n      Anthropic-Beta: tools\n")
    assert dict(config.providers["anthropic"].headers) == {
        "anthropic-version": "2023-06-01", "anthropic-beta": "tools"}


def test_null_preset_entry_changes_nothing() -> None:
    assert parse("providers:\n  openai:\n").providers["openai"] == PRESETS["openai"]


def test_custom_provider() -> None:
    config = parse("providers:\n  my.llm-1:\n    base_url: https://llm.internal:8443/api/\n"
                   "    auth: x-goog-api-key\n    stream_usage: true\n")
    spec = config.providers["my.llm-1"]
    assert (spec.auth, spec.stream_usage, spec.port, spec.base_path) == (
        "x-goog-api-key", True, 8443, "/api")
    plain = parse("providers:\n  p:\n    base_url: http://p/v1\n").providers["p"]
    assert (plain.auth, plain.stream_usage, plain.models, plain.headers) == (
        "bearer", False, (), ())


# -- interpolation ---------------------------------------------------------------------

def test_default_value_used_when_variable_unset_or_empty() -> None:
    text = "providers:\n  local:\n    base_url: ${LOCAL_URL:-http://127.0.0.1:9100/v1}\n"
    assert parse(text).providers["local"].port == 9100
    assert parse(text, {"LOCAL_URL": ""}).providers["local"].port == 9100
    assert parse(text, {"LOCAL_URL": "http://h:1/v1"}).providers["local"].port == 1


def test_double_dollar_is_a_literal_dollar() -> None:
    config = parse("keys:\n  - name: a\n    provider: openai\n    key: sk-$$abc$${X}\n")
    assert config.keys[0].secret == "sk-$abc${X}"


def test_interpolation_inside_strings_lists_and_headers() -> None:
    config = parse("providers:\n  local:\n    base_url: http://${HOST}:${PORT}/v1\n"
                   "    models: ['${PREFIX}-*']\n    headers: {x-team: 'team-${TEAM}'}\n",
                   {"HOST": "10.0.0.1", "PORT": "8000", "PREFIX": "mock", "TEAM": "blue"})
    local = config.providers["local"]
    assert (local.host, local.port, local.models, local.headers) == (
        "10.0.0.1", 8000, ("mock-*",), (("x-team", "team-blue"),))


def test_unquoted_variable_in_a_number_field_reads_as_a_number() -> None:
    config = parse(key_with("rpm: ${RPM}") + "    weight: ${W:-2.5}\n", {"RPM": "60"})
    assert (config.keys[0].rpm, config.keys[0].weight) == (60, 2.5)


def test_quoted_variable_in_a_number_field_stays_a_string() -> None:
    err = error(key_with('rpm: "${RPM}"'), {"RPM": "60"})
    assert (err.message, err.line) == ("keys[0].rpm: expected a positive integer, got '60'", 5)


def test_interpolate_helper() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("x${A}y$$z", env) == ("x1y$z", [])
    assert interpolate("${B}-${C:-d}", env) == ("-d", ["B"])
    assert interpolate("${E}", env) == ("", [])
    assert interpolate("${E}", env, empty_is_unset=True) == ("", ["E"])
    assert interpolate("$HOME and $", env) == ("$HOME and $", [])


# -- skipped keys and clients ----------------------------------------------------------

SKIPPABLE = """\
keys:
  - name: openai-1
    provider: openai
    key: ${OPENAI_API_KEY_1}
  - name: openai-2
    provider: openai
    key: ${OPENAI_API_KEY_2}
clients:
  - name: app
    token: ${APP_TOKEN}
"""


@pytest.mark.parametrize("env,warning", [
    ({}, "key 'openai-2' skipped: ${OPENAI_API_KEY_2} is not set"),
    ({"OPENAI_API_KEY_2": ""}, "key 'openai-2' skipped: ${OPENAI_API_KEY_2} is empty"),
])
def test_key_with_unset_or_empty_variable_is_skipped(env: dict[str, str], warning: str) -> None:
    config = parse(SKIPPABLE, {"OPENAI_API_KEY_1": "sk-1111", "APP_TOKEN": "tok-12345678", **env})
    assert [k.name for k in config.keys] == ["openai-1"]
    assert config.warnings == (warning,)


def test_key_emptied_by_a_default_is_skipped() -> None:
    config = parse("keys:\n  - name: a\n    provider: openai\n    key: ${K:-}\n")
    assert (config.keys, config.warnings) == ((), ("key 'a' skipped: its key is empty",))


def test_client_with_unset_token_is_skipped_leaving_an_empty_tuple() -> None:
    config = parse(SKIPPABLE, {"OPENAI_API_KEY_1": "sk-1", "OPENAI_API_KEY_2": "sk-2"})
    assert config.clients == ()
    assert config.warnings == ("client 'app' skipped: ${APP_TOKEN} is not set",)


# -- every rule's message and line -----------------------------------------------------

ERRORS = [
    # YAML itself
    ("", 1, "the file is empty"),
    ("# only a comment\n\n# another\n", 1, "the file is empty"),
    ("version: 1\nrouting:\n  queue_s: 1\n    strategy: random\n", 4,
     "invalid YAML: mapping values are not allowed here"),
    ("keys:\n  - name: a\n   provider: openai\n", 3, "invalid YAML: while parsing a block"
     " collection on line 2: expected <block end>, but found '<block mapping start>'"),
    ("version: 1\nstate_dir: a\x01b\n", 2, "invalid YAML: special characters are not allowed"
     " (#x0001)"),
    ("version: 1\n---\nkeys: []\n", 2, "invalid YAML: expected a single document in the stream"
     " on line 1: but found another document"),
    ("- a\n- b\n", 1, "the top level must be a mapping (version:, providers:, keys:, ...)"),
    ("# c\n\njust text\n", 3, "the top level must be a mapping (version:, providers:, keys:, ...)"),
    ("version: 1\nkeys: []\nversion: 1\n", 3, "duplicate field 'version' (first on line 1)"),
    ("routing:\n  queue_s: 1\n  queue_s: 2\n", 3,
     "routing: duplicate field 'queue_s' (first on line 2)"),
    ("providers:\n  local: {base_url: 'http://a/v1'}\n  local: {base_url: 'http://b/v1'}\n", 3,
     "providers: duplicate field 'local' (first on line 2)"),
    # unknown fields, everywhere
    ("version: 1\nkey: []\n", 2, "unknown field 'key' (did you mean 'keys'?)"),
    ("xyz: 1\n", 1, "unknown field 'xyz' (known fields: version, providers, keys, clients,"
                    " routing, state_dir, logging, admin, server, state)"),
    ("providers:\n  local:\n    base_ur: http://a/v1\n", 3,
     "providers.local: unknown field 'base_ur' (did you mean 'base_url'?)"),
    (key_with("wieght: 2"), 5, "keys[0]: unknown field 'wieght' (did you mean 'weight'?)"),
    ("clients:\n  - name: c\n    token: abcdefghij\n    rmp: 1\n", 4,
     "clients[0]: unknown field 'rmp' (did you mean 'rpm'?)"),
    ("routing:\n  stratgy: random\n", 2,
     "routing: unknown field 'stratgy' (did you mean 'strategy'?)"),
    ("routing:\n  cooldown:\n    max: 5\n", 3,
     "routing.cooldown: unknown field 'max' (did you mean 'max_s'?)"),
    ("logging:\n  body: true\n", 2, "logging: unknown field 'body' (did you mean 'bodies'?)"),
    # version
    ("keys: []\nversion: 2\n", 2, "version: only version 1 is supported, got 2"),
    ("keys: []\nversion: '1'\n", 2, "version: only version 1 is supported, got '1'"),
    ("keys: []\nversion: true\n", 2, "version: only version 1 is supported, got true"),
    ("keys: []\nversion: 1.0\n", 2, "version: only version 1 is supported, got 1.0"),
    # interpolation
    ("version: 1\nproviders:\n  local:\n    base_url: ${LOCAL_URL}\n", 4,
     "providers.local.base_url: ${LOCAL_URL} is not set"),
    ("state_dir: '${1BAD}'\n", 1, f"state_dir: {BAD_REFERENCE}"),
    ("state_dir: '${A-B}'\n", 1, f"state_dir: {BAD_REFERENCE}"),
    ("state_dir: '${}'\n", 1, f"state_dir: {BAD_REFERENCE}"),
    ("state_dir: x${OPEN\n", 1, f"state_dir: {BAD_REFERENCE}"),
    # providers
    ("providers:\n  local:\n    auth: bearer\n", 3, "providers.local: missing required field"
     " 'base_url' (only the presets openai, anthropic, gemini, deepseek, xai, groq, mistral,"
     " openrouter have one built in)"),
    ("providers:\n  local:\n    base_url: ftp://x/v1\n", 3,
     "providers.local.base_url: base_url must start with http:// or https://, got 'ftp://x/v1'"),
    ("providers:\n  local:\n    base_url: http://x:99999/v1\n", 3,
     "providers.local.base_url: base_url has a bad port: 'http://x:99999/v1'"),
    ("providers:\n  local:\n    base_url: 8080\n", 3,
     "providers.local.base_url: expected a string, got 8080"),
    ("providers:\n  openai:\n    auth: basic\n", 3,
     "providers.openai.auth: expected one of bearer, x-api-key, x-goog-api-key, got 'basic'"),
    ("providers:\n  openai:\n    models: gpt-*\n", 3,
     "providers.openai.models: expected a list, got 'gpt-*'"),
    ("providers:\n  openai:\n    models:\n      - gpt-*\n      - ''\n", 5,
     "providers.openai.models[1]: a model name must not be empty"),
    ("providers:\n  openai:\n    models: [1]\n", 3,
     "providers.openai.models[0]: expected a string, got 1"),
    ("providers:\n  openai:\n    headers: [a]\n", 3,
     "providers.openai.headers: expected a mapping, got a list"),
    ("providers:\n  openai:\n    headers:\n      x-n: 5\n", 4,
     "providers.openai.headers.x-n: expected a string, got 5"),
    ("providers:\n  openai:\n    headers:\n      'bad header': x\n", 4,
     "providers.openai.headers: 'bad header' is not a valid header name"),
    ('providers:\n  openai:\n    headers:\n      x-a: "a\\r\\nx-b: b"\n', 4,
     "providers.openai.headers.x-a: a header value must be a single line"),
    ("providers:\n  openai:\n    stream_usage: 1\n", 3,
     "providers.openai.stream_usage: expected true or false, got 1"),
    ("providers:\n  Local:\n    base_url: http://x/v1\n", 2, "providers: 'Local' is not a valid"
     " provider name (lowercase letters, digits and _ . -, starting with a letter or digit)"),
    ("providers:\n  openai: https://x/v1\n", 2,
     "providers.openai: expected a mapping, got 'https://x/v1'"),
    ("providers: [openai]\n", 1, "providers: expected a mapping, got a list"),
    # keys: required fields, names, providers
    ("keys:\n  - provider: openai\n    key: sk-x\n", 2, "keys[0]: missing required field 'name'"),
    ("keys:\n  - name: a\n    key: sk-x\n", 2, "keys[0]: missing required field 'provider'"),
    ("keys:\n  - name: a\n    provider: openai\n", 2, "keys[0]: missing required field 'key'"),
    ("keys:\n  - name: a\n    provider: openai\n    key:\n", 4,
     "keys[0]: missing required field 'key'"),
    ("keys:\n  - name: -a\n    provider: openai\n    key: sk-x\n", 2,
     f"keys[0].name: '-a' {NAME_RULE}"),
    ("keys:\n" + KEY.format(name="k" * 65), 2, f"keys[0].name: '{'k' * 65}' {NAME_RULE}"),
    ("keys:\n  - name: 42\n    provider: openai\n    key: sk-x\n", 2,
     "keys[0].name: expected a string, got 42"),
    ("keys:\n" + KEY.format(name="a") + KEY.format(name="b") + KEY.format(name="a"), 8,
     "keys[2].name: duplicate key name 'a' (lines 2 and 8)"),
    ("keys:\n  - name: a\n    provider: opnai\n    key: sk-x\n", 3,
     f"keys[0].provider: unknown provider 'opnai'; known providers: {KNOWN}"),
    # a key that would be skipped is still validated
    ("keys:\n  - name: a\n    provider: nope\n    key: ${UNSET}\n", 3,
     f"keys[0].provider: unknown provider 'nope'; known providers: {KNOWN}"),
    ('keys:\n  - name: a\n    provider: openai\n    key: ""\n', 4,
     "keys[0].key: must not be empty"),
    ("keys:\n  - sk-abc\n", 2, "keys[0]: expected a mapping, got 'sk-abc'"),
    ("version: 1\nkeys:\n  name: a\n", 3, "keys: expected a list, got a mapping"),
    # keys: strict types
    (key_with("rpm: true"), 5, "keys[0].rpm: expected a positive integer, got true"),
    (key_with("rpm: 0"), 5, "keys[0].rpm: expected a positive integer, got 0"),
    (key_with("tpm: 1.5"), 5, "keys[0].tpm: expected a positive integer, got 1.5"),
    (key_with("max_in_flight: -1"), 5,
     "keys[0].max_in_flight: expected a positive integer, got -1"),
    (key_with("max_in_flight: [1]"), 5,
     "keys[0].max_in_flight: expected a positive integer, got a list"),
    (key_with("weight: 0"), 5, "keys[0].weight: expected a positive number, got 0"),
    (key_with("weight: '2'"), 5, "keys[0].weight: expected a positive number, got '2'"),
    (key_with("weight: false"), 5, "keys[0].weight: expected a positive number, got false"),
    (key_with("weight: .inf"), 5, "keys[0].weight: expected a positive number, got inf"),
    (key_with("enabled: 'yes'"), 5, "keys[0].enabled: expected true or false, got 'yes'"),
    (key_with("enabled: 1"), 5, "keys[0].enabled: expected true or false, got 1"),
    (key_with("models: [gpt-4o, 3]"), 5, "keys[0].models[1]: expected a string, got 3"),
    # clients
    ("clients:\n  - name: a\n    token: token-aaaa\n  - name: a\n    token: token-bbbb\n", 4,
     "clients[1].name: duplicate client name 'a' (lines 2 and 4)"),
    ("clients:\n  - token: token-aaaa\n", 2, "clients[0]: missing required field 'name'"),
    ("clients:\n  - name: a\n", 2, "clients[0]: missing required field 'token'"),
    ('clients:\n  - name: a\n    token: ""\n', 3, "clients[0].token: must not be empty"),
    ("clients:\n  - name: a b\n    token: token-aaaa\n", 2,
     f"clients[0].name: 'a b' {NAME_RULE}"),
    ("clients:\n  - name: a\n    token: token-aaaa\n    rpm: '5'\n", 4,
     "clients[0].rpm: expected a positive integer, got '5'"),
    ("clients:\n  - name: a\n    token: token-aaaa\n    models: [[x]]\n", 4,
     "clients[0].models[0]: expected a string, got a list"),
    ("clients: open\n", 1, "clients: expected a list, got 'open'"),
    # routing
    ("routing:\n  strategy: fastest\n", 2, "routing.strategy: expected one of round_robin,"
     " weighted, least_used, least_busy, random, got 'fastest'"),
    ("routing:\n  max_attempts: 0\n", 2,
     "routing.max_attempts: expected a positive integer, got 0"),
    ("routing:\n  max_attempts: 2.0\n", 2,
     "routing.max_attempts: expected a positive integer, got 2.0"),
    ("routing:\n  timeout_s: 0\n", 2, "routing.timeout_s: expected a positive number, got 0"),
    ("routing:\n  timeout_s: '30'\n", 2,
     "routing.timeout_s: expected a positive number, got '30'"),
    ("routing:\n  queue_s: -1\n", 2, "routing.queue_s: expected a number >= 0, got -1"),
    ("routing:\n  max_body_mb: 0\n", 2, "routing.max_body_mb: expected a positive number, got 0"),
    ("routing:\n  queue_s: true\n", 2, "routing.queue_s: expected a number >= 0, got true"),
    ("routing:\n  daily_reset: '24:00'\n", 2, f"routing.daily_reset: {CLOCK_RULE}, got '24:00'"),
    ("routing:\n  daily_reset: '12:60'\n", 2, f"routing.daily_reset: {CLOCK_RULE}, got '12:60'"),
    ("routing:\n  daily_reset: noon\n", 2, f"routing.daily_reset: {CLOCK_RULE}, got 'noon'"),
    ("routing:\n  daily_reset: 0\n", 2, "routing.daily_reset: expected a string, got 0"),
    ("routing:\n  cooldown:\n    auth_error_s: -5\n", 3,
     "routing.cooldown.auth_error_s: expected a number >= 0, got -5"),
    ("routing:\n  cooldown:\n    rate_limited_s: 'x'\n", 3,
     "routing.cooldown.rate_limited_s: expected a number >= 0, got 'x'"),
    ("routing:\n  cooldown:\n    server_error_s: 10\n    max_s: 5\n", 4,
     "routing.cooldown: max_s (5) must be at least server_error_s (10)"),
    ("routing:\n  cooldown:\n    server_error_s: 700\n", 3,
     "routing.cooldown: max_s (600) must be at least server_error_s (700)"),
    ("routing:\n  cooldown: 30\n", 2, "routing.cooldown: expected a mapping, got 30"),
    ("routing: round_robin\n", 1, "routing: expected a mapping, got 'round_robin'"),
    # state_dir and logging
    ("state_dir: 5\n", 1, "state_dir: expected a string, got 5"),
    ("state_dir: ''\n", 1, "state_dir: must not be empty"),
    ("logging:\n  bodies: 0\n", 2, "logging.bodies: expected true or false, got 0"),
    ("logging:\n  retention_days: 0\n", 2,
     "logging.retention_days: expected a positive integer, got 0"),
    ("logging:\n  retention_days: 7.5\n", 2,
     "logging.retention_days: expected a positive integer, got 7.5"),
]


@pytest.mark.parametrize("text,line,message", ERRORS)
def test_errors_name_the_field_and_line(text: str, line: int, message: str) -> None:
    err = error(text)
    assert (err.message, err.line) == (message, line)
    assert str(err) == f"keys.yaml:{line}: {message}"


def test_rpm_string_error_matches_the_contract() -> None:
    text = "keys:\n" + KEY.format(name="a") + KEY.format(name="b") + KEY.format(name="c")
    err = error(text + "    rpm: abc\n")
    assert str(err) == "keys.yaml:11: keys[2].rpm: expected a positive integer, got 'abc'"


# -- secrets never leak into messages --------------------------------------------------

CLIENT = "clients:\n  - name: a\n    token: {}\n"
SECRET_ERRORS = [
    ("keys:\n  - name: a\n    provider: openai\n    key: 123456789\n", {}, 4,
     "keys[0].key: must be a string (quote it)", "123456789"),
    ("keys:\n  - name: a\n    provider: openai\n    key: [sk-listed-secret]\n", {}, 4,
     "keys[0].key: must be a string, got a list", "sk-listed-secret"),
    ("keys:\n  - name: a\n    provider: openai\n    key: {sk-mapped-secret: 1}\n", {}, 4,
     "keys[0].key: must be a string, got a mapping", "sk-mapped-secret"),
    ("keys:\n  - name: a\n    provider: openai\n    key: sk-abc${defg\n", {}, 4,
     f"keys[0].key: {BAD_REFERENCE}", "defg"),
    ("keys:\n  - key: 'sk-live-unterminated-4242\n", {}, 3, "invalid YAML: while scanning a"
     " quoted scalar on line 2: found unexpected end of stream", "sk-live-unterminated-4242"),
    (CLIENT.format("987654321012"), {}, 3, "clients[0].token: must be a string (quote it)",
     "987654321012"),
    (CLIENT.format("${T}"), {"T": "short1"}, 3, "clients[0].token: must be at least 8 characters",
     "short1"),
    (CLIENT.format("shared-token-1") + "  - name: b\n    token: shared-token-1\n", {}, 5,
     "clients[1].token: same token as client 'a' (line 2); every client needs its own",
     "shared-token-1"),
]


@pytest.mark.parametrize("text,env,line,message,secret", SECRET_ERRORS)
def test_secrets_are_never_echoed(text: str, env: dict, line: int, message: str,
                                  secret: str) -> None:
    err = error(text, env)
    assert (err.message, err.line) == (message, line)
    assert secret not in str(err)


# -- .env and load_config --------------------------------------------------------------

def test_parse_dotenv() -> None:
    text = ("# a comment\n\nPLAIN=value\nexport EXPORTED = spaced value\n"
            "SQ='  kept # not a comment  '\nDQ=\"line\\nbreak \\\"q\\\"\"\nLITERAL='a\\nb'\n"
            "HASHED=abc#def\nCOMMENTED=abc # trailing comment\nEMPTY=\nEQUALS=a=b=c\n")
    assert parse_dotenv(text) == {
        "PLAIN": "value", "EXPORTED": "spaced value", "SQ": "  kept # not a comment  ",
        "DQ": 'line\nbreak "q"', "LITERAL": "a\\nb", "HASHED": "abc#def", "COMMENTED": "abc",
        "EMPTY": "", "EQUALS": "a=b=c",
    }


@pytest.mark.parametrize("text,line", [("A=1\nnot an assignment\n", 2), ('A="open\n', 1),
                                       ("1A=x\n", 1)])
def test_parse_dotenv_errors(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dotenv(text)
    assert info.value.line == line


def write(tmp_path: Path, yaml_text: str, dotenv: str | None = None) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv, encoding="utf-8")
    return path


def test_load_config_reads_dotenv_beside_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE, "OPENAI_API_KEY_1=sk-from-dotenv\n"
                                    "export KEYMUX_TOKEN_MY_APP='tok-from-dotenv'\n")
    config = load_config(path, env={})
    assert config.keys[0].secret == "sk-from-dotenv"
    assert config.clients[0].token == "tok-from-dotenv"
    assert (config.source, config.state_dir) == (str(path), tmp_path / "state")


def test_load_config_env_wins_over_dotenv(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE, "OPENAI_API_KEY_1=sk-from-dotenv\n")
    config = load_config(str(path), env={"OPENAI_API_KEY_1": "sk-from-env",
                                         "KEYMUX_TOKEN_MY_APP": "tok-from-env"})
    assert (config.keys[0].secret, config.clients[0].token) == ("sk-from-env", "tok-from-env")


def test_load_config_defaults_to_os_environ(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY_1", "sk-from-process")
    monkeypatch.delenv("KEYMUX_TOKEN_MY_APP", raising=False)
    config = load_config(write(tmp_path, EXAMPLE))
    assert (config.keys[0].secret, config.clients) == ("sk-from-process", ())
    assert config.warnings == ("client 'my-app' skipped: ${KEYMUX_TOKEN_MY_APP} is not set",)


def test_load_config_without_dotenv_skips_unset_secrets(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE), env={})
    assert (config.keys, config.clients, len(config.warnings)) == ((), (), 2)


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value


def test_load_config_errors_carry_the_file_path(tmp_path: Path) -> None:
    path = write(tmp_path, "keys: []\nbogus: 1\n")
    assert (load_error(path).path, load_error(path).line) == (str(path), 2)


def test_load_config_bad_dotenv_names_the_dotenv_file(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "keys: []\n", "A=1\nsk-not-an-assignment\n"))
    assert (err.path, err.line, err.message) == (str(tmp_path / ".env"), 2, "expected KEY=VALUE")


def test_load_config_missing_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.yaml")
    assert err.message.startswith("cannot read the file")
    assert err.path == str(tmp_path / "nope.yaml")


def test_load_config_rejects_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_bytes(b"state_dir: \xff\xfe\n")
    assert load_error(path).message == "the file is not valid UTF-8"


def test_admin_password_hash_section():
    cfg = parse_config('admin:\n  password_hash: "scrypt:32768:8:1$abc$def"\n')
    assert cfg.admin.password_hash.startswith("scrypt:")
    assert "scrypt" not in repr(cfg.admin)
    assert parse_config("keys: []\n").admin.password_hash is None
    with pytest.raises(ConfigError, match="unknown field"):
        parse_config("admin:\n  password: x\n")


def test_state_defaults_to_sqlite_and_reads_a_redis_backend():
    assert parse("keys: []\n").state.backend == "sqlite"
    s = parse("state:\n  backend: redis\n  url: redis://127.0.0.1:6379/0\n"
              "  prefix: team-a\n  reservation_ttl_s: 5\n").state
    assert (s.backend, s.url, s.prefix, s.reservation_ttl_s) == (
        "redis", "redis://127.0.0.1:6379/0", "team-a", 5.0)


@pytest.mark.parametrize("text, message", [
    ("state:\n  backend: redis\n", "state.url: backend redis needs a url"),
    ("state:\n  backend: redis\n  url: http://x\n", "state.url: backend redis needs a url"),
    ("state:\n  backend: memcached\n", "state.backend"),
    ("state:\n  url: redis://h:1/0\n", "state.url: only for backend redis"),
    ("state:\n  backend: redis\n  url: redis://h:1/0\n  prefix: 'a b'\n", "state.prefix"),
    ("state:\n  backend: redis\n  url: redis://h:1/0\n  reservation_ttl_s: 0\n",
     "reservation_ttl_s"),
    ("state:\n  backnd: redis\n", "unknown field 'backnd'"),
])
def test_state_section_is_validated(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text)
