"""benchmarks/stream_bench.py: the rig's CPU accounting, and one short step with a separate InfluxDB sink."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from operators.io.synthetic import synthesize, write_wfdb
from tests.conftest import benchmark, require_influxd

REPO = Path(__file__).resolve().parents[1]
stream_bench = benchmark("stream_bench")


def test_proc_stat_parsing_counts_a_process_threads_and_the_hosts_working_time():
    tick = stream_bench._TICK
    # a command name with a space and a parenthesis; utime 250 and stime 50 ticks are fields 14 and 15
    line = "4242 (wave (bridge) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 7 3 20 0 12 0 100 0 0"
    assert stream_bench.proc_cpu_s(line) == 300 / tick
    # user nice system idle iowait irq softirq steal guest guest_nice: busy = user + nice + system + irq + softirq
    host = "cpu  1000 20 300 9000 400 10 30 500 600 7\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert stream_bench.host_busy_s(host) == 1360 / tick


def test_rig_cpu_counts_each_process_and_the_host_between_snapshots():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"])
    try:
        rig = stream_bench.RigCpu({"busy child": [child.pid], "gone": [None], "me": [os.getpid()]})
        before = rig.snapshot()
        time.sleep(1.5)  # the child burns 0.6 s of CPU, then sleeps
        after = rig.snapshot()
    finally:
        child.kill()
        child.wait()
    used = stream_bench.RigCpu.delta(before, after)
    assert 0.2 <= used["busy child"] <= 1.0
    assert used["me"] < 0.3  # this process slept
    assert used["host"] >= used["busy child"] - 0.05  # the host's count holds every process's
    assert math.isnan(used["gone"])  # a role without a process is NaN, never 0
    line = stream_bench.RigCpu.line(used, 1.0)
    assert line.startswith("host CPU ") and "busy child" in line and f"({os.cpu_count()} cores)" in line


def test_latency_growth_tells_a_rig_falling_behind_from_a_hop_sawtooth():
    t = 1.8e9 + np.arange(0.0, 30.0, 0.01)  # produce times (s) over a 30 s step
    sawtooth = 1.0 + (t - t[0]) % 1.0  # each window's chunks wait up to one hop (1 s) for it to fill
    assert abs(stream_bench.latency_growth(t, sawtooth)) < 0.01
    behind = sawtooth + 0.1 * (t - t[0])  # 10 % behind: 3 s more latency by the end, p99 still under 5 s
    assert np.percentile(behind, 99) < 5.0
    assert stream_bench.latency_growth(t, behind) == pytest.approx(0.1, abs=0.01)
    assert math.isnan(stream_bench.latency_growth([t[0]], [1.0]))
    args = stream_bench.build_parser().parse_args([])
    assert stream_bench.step_problems(10, 10, 20.0, 4.0, 0.01, 0.1, args) == []
    assert stream_bench.step_problems(10, 10, 20.0, 4.0, 0.1, 0.1, args) == ["falling behind: latency grew 0.10 s per s"]
    assert len(stream_bench.step_problems(9, 10, 20.0, float("nan"), float("nan"), 3.0, args)) == 3


@pytest.mark.parametrize("capacity, steps, found", [
    (300, [64, 128, 256, 512, 384, 320], 256),  # both halvings fail
    (350, [64, 128, 256, 512, 384, 320], 320),
    (500, [64, 128, 256, 512, 384, 448], 448),
    (10, [64, 32], 0),  # the first step fails: the gap below it is halved (bisect 1)
])
def test_the_ramp_halves_the_gap_after_the_first_failing_step(capacity, steps, found):
    ran, results = [], []

    def step(n):
        ran.append(n)
        results.append(stream_bench.StepResult("t", n, 1.0, float(n), 1, 1, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, n <= capacity))
        return n <= capacity

    stream_bench.ramp(step, [64, 128, 256, 512, 1024], bisect=2 if capacity > 10 else 1)
    assert ran == steps
    assert stream_bench.sustained(results) == found


@pytest.mark.integration
@pytest.mark.slow
def test_one_step_with_a_separate_sink_delivers_every_message_and_influxdb_catches_up(tmp_path):
    require_influxd()
    record = write_wfdb(synthesize(seconds=40), tmp_path, "synthetic")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stream_bench.py"), "--record", str(record),
                           "--translator", "passthrough", "--baseline", "", "--beds", "2", "--speed", "4",
                           "--duration", "24", "--influx-sink", "separate", "--memory-beds", "2", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    step = json.loads((out / "stream_bench.json").read_text())["steps"]["passthrough"][0]
    assert step["sent"] > 0 and step["written"] == step["sent"]
    assert set(step["rig"]) == {"workers", "sink", "broker", "influxd+proxy", "replay (bench)", "host"}
    assert step["rig"]["workers"] > 0 and step["rig"]["sink"] > 0 and step["rig"]["host"] >= step["rig"]["workers"]
    # CPU while the replay offered load: a part of the step's, measured over the replay's own seconds
    assert set(step["rig_load"]) == set(step["rig"]) and 0 < step["rig_load"]["workers"] <= step["rig"]["workers"]
    assert 0 < step["load_s"] < step["wall_s"] and 0 < step["cpu"]["process_cpu_load"] <= step["cpu"]["process_cpu"]
    assert step["cpu"].get("influx_write", 0.0) == 0.0  # the worker wrote no InfluxDB itself
    # the sink wrote the step's samples (2 beds x 24 s of 125 Hz II_SYNTH at least) and then had nothing left
    assert step["influx_points"] >= 2 * 24 * 125 * 0.8 and step["influx_catchup_s"] is not None
    assert "InfluxDB: " in proc.stdout and "caught up" in proc.stdout
