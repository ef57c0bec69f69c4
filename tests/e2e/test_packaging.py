"""`scripts/setup` stays quiet: building keymux (as pip does for `pip install .` and,
for the build_py step, `-e`) prints no setuptools "would be ignored" warning, and the
wheel still carries every package and its data (templates, static files, schema.sql)."""
import shutil
import subprocess
import sys
import zipfile

from .harness import ROOT


def test_build_has_no_ignored_package_warning_and_keeps_package_data(tmp_path):
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                          str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "would be ignored" not in text and "absent from the `packages`" not in text
    wheel = next((tmp_path / "dist").glob("keymux-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = [f.removeprefix("addons/") for f in files
               if f.startswith(("addons/keypool/", "webui/")) and (ROOT / f).is_file()]
    assert tracked and not [f for f in tracked if f not in names]
    for must in ("keypool/store/schema.sql", "webui/templates/base.html", "keypool/keylog.py"):
        assert must in names
