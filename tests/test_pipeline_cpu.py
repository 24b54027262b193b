"""benchmarks/pipeline_cpu.py runs the worker's pipeline per spec and reports CPU against passthrough."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from operators.io.synthetic import synthesize, write_wfdb

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_cpu_runs_each_spec_on_the_same_windows_with_passthrough_as_baseline(tmp_path):
    record = write_wfdb(synthesize(seconds=30), tmp_path, "synthetic")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline_cpu.py"), "--record", str(record),
                          "--beds", "2", "--seconds", "24", "--rounds", "1", "--specs", "classic"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    runs = [line.split() for line in out.splitlines() if line.startswith("round 1 ")]
    assert [r[2] for r in runs] == ["passthrough", "classic"]  # the baseline always runs, first
    windows = {r[2]: r[-2].lstrip("(") for r in runs}
    assert windows["passthrough"] == windows["classic"] and int(windows["classic"]) > 0
    table = {line.split()[0]: line.split() for line in out.splitlines()[-2:]}
    assert table["passthrough"][2] == "1.00" and float(table["classic"][1]) > 0
