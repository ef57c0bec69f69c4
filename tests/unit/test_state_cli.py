"""``keymux state export|import`` (keypool.cli): a bad file is refused and changes nothing."""
import json

import pytest

from keypool import cli


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nproviders: {{}}\nkeys: []\n")
    return path


def test_export_then_import_round_trips(conf, tmp_path, capsys):
    out = tmp_path / "state.json"
    assert cli.main(["state", "export", "--config", str(conf), "-o", str(out)]) == 0
    assert set(json.loads(out.read_text())) >= {"key_state", "requests", "spend_day"}
    assert cli.main(["state", "import", "--config", str(conf), str(out)]) == 0


@pytest.mark.parametrize("text", ["not json", "[]", '{"requests": [{"nope": 1}]}'])
def test_a_bad_file_is_refused_with_exit_2(conf, tmp_path, capsys, text):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert cli.main(["state", "import", "--config", str(conf), str(bad)]) == 2
    assert "cannot import" in capsys.readouterr().err


def test_the_file_may_come_before_or_after_the_options(conf, tmp_path):
    out = tmp_path / "state.json"
    assert cli.main(["state", "export", str(out), "--config", str(conf)]) == 0
    assert cli.main(["state", "import", str(out), "--config", str(conf)]) == 0
    with pytest.raises(SystemExit):  # two files: argparse's own error, exit 2
        cli.main(["state", "import", "--config", str(conf), str(out), str(out)])
