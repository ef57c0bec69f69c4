"""yamledit on its own: text in, text out, comments and order kept; atomic, versioned writes."""
import os
import stat
from pathlib import Path

import pytest

from keypool.config import parse_config
from webui import yamledit  # noqa: E402
from webui.atomicfile import Conflict, version_of, write_atomic  # noqa: E402
from webui.yamledit import CLIENT_ORDER, KEY_ORDER, Document, EditError, secret_scalar  # noqa: E402

from uihelpers import CONFIG, ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "config" / "keys.yaml").read_text()


def comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")] + \
           [line.split("#", 1)[1].strip() for line in text.splitlines()
            if "#" in line and not line.strip().startswith("#") and "${" not in line.split("#")[0]]


def top_keys(text: str) -> list[str]:
    return [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]


@pytest.mark.parametrize("text", [EXAMPLE, CONFIG, "keys:\n- name: a\n  provider: openai\n  key: x\n",
                                  "version: 1\nkeys:\n    -   name: a\n        provider: openai\n        key: x\n"])
def test_unchanged_document_dumps_byte_for_byte(text):
    assert Document(text).dump() == text


def test_add_key_keeps_every_comment_and_the_order():
    doc = Document(EXAMPLE)
    doc.add_item("keys", {"name": "new-1", "provider": "openai", "key": "${NEW_KEY}",
                          "models": ["gpt-4o*"], "rpm": 5, "enabled": None}, KEY_ORDER)
    out = doc.dump()
    assert comments(out) == comments(EXAMPLE)
    assert top_keys(out) == top_keys(EXAMPLE)
    # the new key sits right after the last key, before the commented-out examples
    assert out.index("- name: new-1") < out.index("# Real keys look like this")
    assert out.index("key: sk-ant-demo-00000000000004") < out.index("- name: new-1")
    assert '    models: ["gpt-4o*"]\n    rpm: 5\n' in out
    cfg = parse_config(out, env={"NEW_KEY": "sk-new"})
    assert [k.name for k in cfg.keys][-1] == "new-1"


@pytest.mark.parametrize("name", ["demo-1", "demo-2", "demo-claude-1"])
def test_remove_key_keeps_the_comments_around_it(name):
    doc = Document(EXAMPLE)
    doc.remove_item("keys", name)
    out = doc.dump()
    lost = [c for c in comments(EXAMPLE) if c not in comments(out)]
    # only an end-of-line comment on the removed item itself may go
    assert lost in ([], ["gets twice the traffic of weight-1 keys"])
    assert f"name: {name}\n" not in out
    assert top_keys(out) == top_keys(EXAMPLE)
    parse_config(out)


def test_update_changes_only_the_fields_given():
    doc = Document(EXAMPLE)
    doc.update_item("keys", "demo-2", {"enabled": False, "rpm": 10, "provider": "demo"}, KEY_ORDER)
    out = doc.dump()
    before, after = EXAMPLE.splitlines(), out.splitlines()
    added = [line for line in after if line not in before]
    assert added == ["    enabled: false", "    rpm: 10"]
    assert "weight: 2                    # gets twice the traffic of weight-1 keys" in out
    assert out.index("enabled: false") < out.index("weight: 2")  # schema order


def test_update_last_field_of_last_item_keeps_following_comments_below():
    doc = Document(CONFIG)
    doc.update_item("keys", "local-1", {"rpm": 7}, KEY_ORDER)
    out = doc.dump()
    assert "    enabled: false              # parked\n    rpm: 7\n\n  # more keys go here" in out


def test_remove_optional_field():
    doc = Document(CONFIG)
    doc.update_item("keys", "openai-1", {"rpm": None}, KEY_ORDER)
    out = doc.dump()
    assert "rpm: 100" not in out and "# the main OpenAI key" in out


def test_new_clients_section_goes_before_routing():
    doc = Document(EXAMPLE)
    doc.add_item("clients", {"name": "app", "token": "kmx-0123456789"}, CLIENT_ORDER)
    out = doc.dump()
    assert out.index("# Without a clients: section") < out.index("\nclients:\n") < out.index("\nrouting:")
    assert comments(out) == comments(EXAMPLE)
    assert parse_config(out).clients[0].name == "app"


def test_empty_flow_list_becomes_a_block_list():
    doc = Document("version: 1\nkeys: []  # none yet\n")
    doc.add_item("keys", {"name": "a", "provider": "openai", "key": "x"}, KEY_ORDER)
    assert parse_config(doc.dump()).keys[0].name == "a"
    assert "  - name: a\n" in doc.dump()


def test_removing_the_last_item_leaves_an_empty_list():
    doc = Document(CONFIG)
    doc.remove_item("clients", "app")
    out = doc.dump()
    assert "clients: []" in out
    assert parse_config(out, env=ENV).clients == ()


def test_unknown_name_and_bad_yaml_are_edit_errors():
    with pytest.raises(EditError):
        Document(CONFIG).update_item("keys", "nope", {"rpm": 1}, KEY_ORDER)
    with pytest.raises(EditError, match="line"):
        Document("keys: [\n")
    with pytest.raises(EditError):
        Document("- a\n- b\n")


def test_new_provider_mapping_entry():
    doc = Document(CONFIG)
    doc.add_mapping_entry("providers", "other", {"base_url": "http://127.0.0.1:10/v1"})
    out = doc.dump()
    assert "  other:\n    base_url: http://127.0.0.1:10/v1\n\nkeys:" in out
    assert set(parse_config(out, env=ENV).providers) >= {"local", "other"}


def test_crlf_and_bom_survive():
    text = "\ufeff" + CONFIG.replace("\n", "\r\n")
    doc = Document(text)
    doc.update_item("keys", "openai-1", {"rpm": 5}, KEY_ORDER)
    out = doc.dump()
    assert out.startswith("\ufeff") and "\r\n" in out and "\n" not in out.replace("\r\n", "")


def test_secret_scalar_escapes_dollars_but_keeps_references():
    assert secret_scalar("  ${OPENAI_API_KEY_1} ") == "${OPENAI_API_KEY_1}"
    assert secret_scalar("sk-a$b${c") == "sk-a$$b$${c"
    cfg = parse_config("keys:\n  - name: a\n    provider: openai\n    key: "
                       + secret_scalar("sk-a$b${c") + "\n")
    assert cfg.keys[0].secret == "sk-a$b${c"
    assert yamledit.reference_name("${X:-sk-default}") == "${X}"


def test_write_atomic_keeps_mode_and_refuses_a_changed_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(CONFIG)
    os.chmod(path, 0o600)
    version = version_of(path.read_bytes())
    new_version = write_atomic(path, CONFIG + "# edited\n", version)
    assert path.read_text().endswith("# edited\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert new_version == version_of(path.read_bytes())
    with pytest.raises(Conflict):
        write_atomic(path, "version: 1\n", version)  # the old version: refused
    assert path.read_text().endswith("# edited\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keys.yaml.lock", "keys.yaml"]  # no temp


def test_write_atomic_writes_through_a_symlink(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(CONFIG)
    link = tmp_path / "keys.yaml"
    link.symlink_to(real)
    write_atomic(link, CONFIG + "# x\n", version_of(real.read_bytes()))
    assert link.is_symlink() and real.read_text().endswith("# x\n")
