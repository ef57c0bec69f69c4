"""The gateway and the web UI give the same answer for every form of every value.

Gateway: ``keypool.config.load_config`` (PyYAML, YAML 1.1). UI: ``ConfigFile.read`` (its
validation) and the ruamel document it shows and edits (YAML 1.2). For each form, both
refuse with the same located message, or both read the same value.
"""
import time

import pytest

from keypool.config import load_config
from keypool.config_text import MAX_CONFIG_BYTES
from keypool.errors import ConfigError
from webui import live  # noqa: E402
from webui.configfile import ConfigFile  # noqa: E402
from webui.yamledit import KEY_ORDER  # noqa: E402

FORMS = ["on", "off", "Off", "YES", "no", "y", "n", "true", "False", "TRUE", "0o17", "017",
         "0x1F", "0b101", "1_000", "1:30", "12:30", "2024-01-01", "1e3", "1.5e+3", "-.5",
         ".5", "3", "+3", "2.5", ".inf", ".nan", "~", "null", '"on"', "'017'", "!!str off",
         "k-2", "=", "08"]
FIELDS = {"enabled": bool, "weight": float, "rpm": int, "name": str}


def write(tmp_path, field, form):
    fields = {"name": "k1", "provider": "openai", "key": "sk-test-000000000000", field: form}
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in fields.items())
                    + "\n")
    return path


def gateway_answer(path, field):
    try:
        config = load_config(path, env={})
    except ConfigError as e:
        return "refused", str(e)
    return "read", getattr(config.keys[0], field) if config.keys else None


def ui_answer(path, field, kind):
    snap = ConfigFile(path, environ={}).read()
    if snap.error:
        return "refused", snap.error
    item = snap.doc.items("keys")[0]
    value = item.get(field)
    if value is None:  # null or absent: the default, as the gateway's dataclass has it
        return "read", {"enabled": True, "weight": 1.0, "rpm": None}.get(field)
    if field == "enabled":  # what the dashboard shows, too
        assert live.file_keys(snap)[0]["enabled"] is value
    return "read", kind(value)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("form", FORMS)
def test_gateway_and_ui_agree(tmp_path, field, form):
    path = write(tmp_path, field, form)
    gateway = gateway_answer(path, field)
    ui = ui_answer(path, field, FIELDS[field])
    if gateway[0] == "read" and ui[0] == "read" and gateway[1] != gateway[1]:
        assert ui[1] != ui[1]  # nan is nan to both (and refused as a weight anyway)
    else:
        assert gateway == ui
    if gateway[0] == "refused":
        line = 2 if field == "name" else 5
        assert f":{line}:" in gateway[1]  # located: the line of the value


def test_what_the_ui_writes_the_gateway_reads_as_typed(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys: []\n")
    cf = ConfigFile(path, environ={})
    fields = {"name": "on", "provider": "openai", "key": "1:30-not-a-time-at-all",
              "weight": 0.00001, "models": ["017", "off"]}
    cf.save(cf.read().version, lambda doc: doc.add_item("keys", fields, KEY_ORDER))
    k = load_config(path, env={}).keys[0]
    assert (k.name, k.secret, k.weight, k.models) == ("on", "1:30-not-a-time-at-all", 0.00001,
                                                     ("017", "off"))
    assert cf.read().error is None


def test_a_huge_file_is_refused_by_both_without_parsing(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n" + "  - {name: k, provider: openai, key: sk-x}\n"
                    * (MAX_CONFIG_BYTES // 30))
    started = time.perf_counter()
    gateway = gateway_answer(path, "name")
    ui = ui_answer(path, "name", str)
    assert gateway == ui and gateway[0] == "refused" and "at most 2 MiB" in gateway[1]
    assert time.perf_counter() - started < 2.0
