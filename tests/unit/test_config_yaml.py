"""One meaning for keys.yaml: YAML 1.1 (the gateway's PyYAML) and 1.2 (the UI's ruamel)
forms that disagree are refused with their line; what is accepted reads the same to both."""
from __future__ import annotations

import time

import pytest
import yaml
from ruamel.yaml import YAML

from keypool.config import load_config, parse_config
from keypool.config_text import MAX_CONFIG_BYTES
from keypool.errors import ConfigError
from keypool.yamlrules import ambiguity

HEAD = "keys:\n  - name: k1\n    provider: openai\n    key: sk-test-000000000000\n"

# form -> words the refusal must say (what to write instead)
REFUSED = {
    "on": "true or false", "off": "true or false", "Off": "true or false",
    "YES": "true or false", "no": "true or false", "y": "true or false", "N": "true or false",
    "0o17": "decimal", "0x1F": "decimal", "0b101": "decimal",
    "017": "leading zero", "08": "leading zero", "007": "leading zero",
    "1:30": "base-60", "1:30:00": "base-60", "-1:30": "base-60", "190:20:30.15": "base-60",
    "1_000": "without _", "1_000.5": "without _",
    "1e3": "plain decimal", "1.5e3": "plain decimal", "1e+3": "plain decimal",
    "-.5": "-0.5", "+.5": "-0.5",
    "2024-01-01": "quote it", "2024-01-01T10:00:00Z": "quote it", "=": "quote it",
}


def refusal(text):
    with pytest.raises(ConfigError) as e:
        parse_config(text, env={})
    return e.value


@pytest.mark.parametrize("form", REFUSED)
def test_ambiguous_forms_are_refused_with_their_line_and_what_to_write(form):
    err = refusal(HEAD + f"    enabled: {form}\n")
    assert err.line == 5 and "keys[0].enabled" in err.message
    assert REFUSED[form] in err.message and "quote it" in err.message


FIELDS = {"name": "k1", "provider": "openai", "weight": "1", "rpm": "5", "models": "[a]"}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("form", ["on", "017", "1:30", "0o17", "2024-01-01"])
def test_every_field_refuses_them(field, form):
    fields = {**FIELDS, field: f"[{form}]" if field == "models" else form}
    lines = ["keys:", "  - key: sk-test-000000000000"]
    lines += [f"    {name}: {value}" for name, value in fields.items()]
    err = refusal("\n".join(lines) + "\n")
    assert err.line == 3 + list(FIELDS).index(field) and "quote it" in err.message


def test_a_secret_is_refused_without_being_echoed():
    err = refusal("keys:\n  - name: k1\n    provider: openai\n    key: 0o1234567\n")
    assert err.line == 4 and "0o1234567" not in str(err) and "quote it" in err.message


def test_names_that_yaml_reads_as_numbers_or_booleans_must_be_quoted():
    for name in ("017", "true", "1:30", "on", "12"):
        err = refusal(f"providers:\n  {name}:\n    base_url: http://127.0.0.1:1/v1\n")
        assert err.line == 2 and "quote" in err.message, name
    ok = parse_config('providers:\n  "017":\n    base_url: http://127.0.0.1:1/v1\n', env={})
    assert "017" in ok.providers


def test_quoted_or_tagged_forms_are_text():
    cfg = parse_config("keys:\n  - name: \"on\"\n    provider: openai\n    key: '0o17abcdefgh'\n"
                       "    models: [\"1:30\", !!str off]\n", env={})
    assert cfg.keys[0].name == "on" and cfg.keys[0].models == ("1:30", "off")


def test_unambiguous_forms_still_read():
    cfg = parse_config(HEAD + "    enabled: False\n    weight: 0.5\n    rpm: +12\n"
                       "routing: {timeout_s: 1.5e+2, daily_reset: 12:30}\n", env={})
    k = cfg.keys[0]
    assert (k.enabled, k.weight, k.rpm) == (False, 0.5, 12)
    assert cfg.routing.timeout_s == 150.0 and cfg.routing.daily_reset == "12:30"
    assert parse_config("routing: {daily_reset: 00:00}\n", env={}).routing.daily_reset == "00:00"
    err = refusal("routing:\n  daily_reset: 1:30:00\n")
    assert err.line == 2


def test_inf_and_nan_where_a_number_is_expected_are_located():
    for form in (".inf", "-.inf", ".nan"):
        err = refusal(HEAD + f"    weight: {form}\n")
        assert err.line == 5 and "positive number" in err.message


def test_a_variable_is_read_by_the_same_rules():
    text = HEAD + "    rpm: ${RPM}\n"
    assert parse_config(text, env={"RPM": "60"}).keys[0].rpm == 60
    for value in ("017", "on", "1:30"):
        with pytest.raises(ConfigError) as e:
            parse_config(text, env={"RPM": value})
        assert e.value.line == 5 and "${RPM}" in e.value.message


def _both(form):
    a = yaml.safe_load(f"v: {form}")["v"]
    b = YAML(typ="rt").load(f"v: {form}")["v"]
    for t in (bool, int, float, str):
        if isinstance(b, t):
            b = t(b)
            break
    return a, b


CORPUS = ("on off On OFF yes no y n true True TRUE tRUE false False FALSE 0o17 017 0x1F 0X1F"
          " 0b101 1_000 1_000.5 1:30 1:30:00 12:30 00:00 2024-01-01 2024-01-01T10:00:00Z"
          " .inf -.inf +.inf .Inf .nan .NaN ~ null Null NULL nULL 1e3 1E3 1.5e3 1.5e+3 1e+3"
          " 1.0e-3 -.5 +.5 .5 1. . +5 -0 +0 0 00 0.0 007 08 09 0o8 1__0 _1 1_ 0x_1 3. -3.0"
          " .5e3 .5e+3 1.e+3 5 12 100 0.25 -1 -1.5 1.e3 0.0e+0 +1_0 1.5_0 12:60 1:3 onn oN"
          " 1e 1e-3 2024-1-1 0.5.5 1.2.3 + -. 1:2:3.4 1_2:30 gpt-4o sk-abc 00:00:00").split()


@pytest.mark.parametrize("form", CORPUS)
def test_what_is_not_refused_reads_the_same_in_yaml_1_1_and_1_2(form):
    if ambiguity(form) is None:
        a, b = _both(form)
        assert type(a) is type(b) and (a == b or (a != a and b != b)), (form, a, b)


def test_a_huge_config_is_refused_by_size_before_it_is_parsed(tmp_path):
    huge = HEAD + "# " + "x" * MAX_CONFIG_BYTES + "\n"
    started = time.perf_counter()
    err = refusal(huge)
    assert err.line == 1 and "at most 2 MiB" in err.message
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n" + "  - {name: k, provider: openai, key: sk-x}\n" * 1_200_000)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert "MiB" in e.value.message and e.value.path == str(path)
    (tmp_path / ".env").write_text("A=" + "b" * (MAX_CONFIG_BYTES + 10))
    path.write_text(HEAD)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.path == str(tmp_path / ".env")
    assert time.perf_counter() - started < 2.0  # nothing of that was parsed
