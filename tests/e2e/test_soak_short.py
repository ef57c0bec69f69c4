"""scripts/soak.py, short: mixed faulty traffic through a real mitmdump loses nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_20s_loses_nothing(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "20",
                          "--clients", "6", "--json", str(out)],
                         capture_output=True, text=True, timeout=150,
                         env={**os.environ, "TMPDIR": str(tmp_path)})  # its work directory lands here
    assert out.exists(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["lost"] == 0, report["lost_by_how"]
    assert report["requests_sent"] > 100 and report["succeeded"] > 0
    assert report["answered"] == report["requests_sent"]
    assert report["in_flight_after"] == 0
    assert any("rejected" in e for e in report["config_rewrites"]), report["config_rewrites"]
    assert all("loaded" in e or "rejected" in e for e in report["config_rewrites"])
    assert run.returncode == 0, run.stderr
