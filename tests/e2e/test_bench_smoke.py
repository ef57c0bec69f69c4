"""The benchmark scripts still run: each once, with the smallest settings, checking only that
it finishes and prints its table with no failed request. No figure is asserted: benchmarks
measure, tests do not time (docs/benchmarks.md has the figures)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redisserver import needs_redis

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rows(out: str, first: str) -> list[list[str]]:
    """The table's rows whose first cell is one of the target names in ``first``."""
    return [line.split() for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in first.split()]


@needs_redis
def test_bench_streams_runs_each_target_without_failures():
    out = run("bench_streams.py", "--conc", "4", "--seconds", "0.5", "--rounds", "1",
              "--chunks", "3", "--gap-ms", "10", "--targets", "plain", "keymux", "keymux-2w",
              "plain-planned")
    got = rows(out, "plain keymux keymux-2w plain-planned")
    assert sorted(r[0] for r in got) == ["keymux", "keymux-2w", "plain", "plain-planned"], out
    assert all(int(r[2]) > 0 and r[3] == "0" for r in got), out  # streams done, none failed
    assert "harness" in out and "keymux-2w/keymux streams completed" in out


def test_bench_streams_demo_mock_still_serves():
    out = run("bench_streams.py", "--conc", "2", "--seconds", "0.3", "--rounds", "1",
              "--chunks", "2", "--gap-ms", "5", "--targets", "plain", "--mock", "demo")
    assert rows(out, "plain")[0][3] == "0", out


@needs_redis
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs Debian's wrk")
def test_bench_overhead_prints_every_row_and_the_redis_round_trip():
    out = run("bench_overhead.py", "--seconds", "1", "--rounds", "1", timeout=180)
    got = rows(out, "direct mitmdump keymux mitmdump-planned keymux-mitmhooks keymux-2w "
                    "keymux-redis")
    assert len(got) == 14 and all(r[-1] == "0" for r in got), out  # no non-2xx answer
    assert re.search(r"Redis round trip .* added p50 [+-][\d.]+ ms", out), out
    assert re.search(r"keymux/mitmdump-planned, median of per-round ratios: req/s [\d.]+", out)


@needs_redis
def test_bench_shared_prints_the_reservation_and_the_added_p50():
    out = run("bench_shared.py", "--requests", "20", "--rounds", "1", "--calls", "250")
    assert re.search(r"shared reservation .* p50 [\d.]+ ms", out), out
    assert re.search(r"PooledLane .* CPU [\d.]+ us a call", out), out
    assert re.search(r"^redis: added p50 [+-][\d.]+ ms", out, re.M), out
