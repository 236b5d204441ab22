"""``scripts/bench.py`` runs end to end and writes its JSON (a smoke run: the performance targets are the benchmark's
to print, not a test's to assert, since timings on a shared CI machine are noise)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_quick_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    # one torch thread: with two on a shared 2-core machine a step can take 100x longer (OpenMP threads stall)
    args = ["--quick", "--threads", "1", "--batch-sizes", "32", "--only", "clfw-naive,plain-naive"]
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), *args]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    measured = {(r["variant"], r["batch"]) for r in result["runs"] if r.get("ms_per_step", 0) > 0 and r["steps"] > 0}
    assert measured == {(v, b) for v in ("clfw-naive", "plain-naive") for b in (32,)}
    assert result["meta"]["args"]["quick"] is True and result["meta"]["commit"]
    assert all(r["peak_rss_mib"] > 0 for r in result["runs"])
    assert {t["name"] for t in result["targets"]} >= {"clfw Naive / bare Lightning without self.log"}
    assert "| Naive |" in proc.stdout  # the table
