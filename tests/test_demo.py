"""`wavebridge demo` end to end (real Tansu broker + worker subprocess) on the embedded synthetic recording."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.io.synthetic import synthesize, write_wfdb
from stream.tools.demo import PROBE_OFF_SPAN, probe_off_span_s
from stream.tools.tables import chunks_to_table
from stream.wire import Chunk

REPO = Path(__file__).resolve().parents[1]
SECONDS = 20
RATE = 125.0


@pytest.fixture(scope="module")
def synthetic_record(tmp_path_factory) -> Path:
    return write_wfdb(synthesize(seconds=60, seed=3), tmp_path_factory.mktemp("rec"), "synthetic")


def _demo_cmd(record: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stream.tools.cli", "demo", "--record", str(record), "--seconds", str(SECONDS),
            "--beds", "2", "--out", str(out), "--timeout", "150", *extra]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of an already-reaped child cannot be signalled; anything else counts as alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _port_open(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _started(stdout: str) -> tuple[int, str]:
    pid = int(re.search(r"worker started \(pid (\d+)", stdout).group(1))
    bootstrap = re.search(r"broker \(Tansu\) on (\S+)", stdout).group(1)
    return pid, bootstrap


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_end_to_end_writes_parquet_and_png(synthetic_record, tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run(_demo_cmd(synthetic_record, out), cwd=REPO, capture_output=True, text=True, timeout=220)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    assert "[demo] done" in res.stdout

    # Clean-up: the worker process and the broker are gone once the demo has returned.
    pid, bootstrap = _started(res.stdout)
    assert not _alive(pid), "worker still running after the demo exited"
    assert not _port_open(bootstrap), "broker still listening after the demo exited"

    inp = pq.read_table(out / "input.parquet").to_pandas()
    syn = pq.read_table(out / "ecg_synth.parquet").to_pandas()
    sr = pq.read_table(out / "sr.parquet").to_pandas()

    # Inputs: two full-rate beds with II + PLETH, one bed whose II and PLETH are down-sampled to 25 Hz, one whose
    # PPG probe comes off.
    counts = inp.groupby(["bed", "signal"]).size().to_dict()
    n = int(SECONDS * RATE)
    assert counts == {("bed-001", "II"): n, ("bed-001", "PLETH"): n, ("bed-002", "II"): n,
                      ("bed-002", "PLETH"): n, ("lowres-001", "II"): SECONDS * 25, ("lowres-001", "PLETH"): SECONDS * 25,
                      ("probeoff-001", "II"): n, ("probeoff-001", "PLETH"): n}

    for name, df in (("input", inp), ("synth", syn), ("sr", sr)):
        assert len(df), f"{name} is empty"
        assert np.isfinite(df["value"]).all(), name
        for (bed, sig), g in df.groupby(["bed", "signal"]):
            t = g["time"].astype("int64").to_numpy()
            dt = np.diff(t)
            assert (dt > 0).all(), f"{name} {bed}/{sig}: timestamps not strictly increasing"
            # Spacing is one sample period throughout: no gaps (but the probe-off bed's withheld span), overlaps or
            # re-sent stretches.
            rate = float(g["rate_hz"].iloc[0])
            regular = np.isclose(dt, 1e9 / rate, atol=1.0)
            if name == "synth" and bed.startswith("probeoff"):
                assert (~regular).sum() == 1 and dt[~regular][0] > 1e9 * (PROBE_OFF_SPAN[1] - PROBE_OFF_SPAN[0]) * SECONDS
            else:
                assert regular.all(), f"{name} {bed}/{sig}: irregular spacing"

    # Synthesized ECG for every bed with PPG, over (nearly) the whole replayed span.
    assert set(syn["signal"]) == {"II_SYNTH"}
    assert set(syn["bed"]) == {"bed-001", "bed-002", "lowres-001", "probeoff-001"}
    t_in = inp[(inp.bed == "bed-001") & (inp.signal == "PLETH")]["time"]
    t_out = syn[syn.bed == "bed-001"]["time"]
    assert t_out.min() >= t_in.min() and t_out.max() <= t_in.max()
    assert len(t_out) >= 0.9 * n
    assert syn[syn.bed == "bed-001"]["value"].std() > 0
    # quality next to the outputs: every published sample says how good its window was and that it is synthetic
    assert syn["quality"].between(0, 1).all() and set(syn["quality_flag"]) <= {"good", "degraded"}
    assert syn["synthetic"].all() and not sr["synthetic"].any() and syn["confidence"].between(0, 1).all()
    ev = pq.read_table(out / "events.parquet").to_pandas()
    assert (ev["type"] == "rpeaks").any() and ev[ev.type == "rpeaks"]["quality_flag"].notna().all()

    # Super-resolution only for the 25 Hz bed, at 100 Hz, and on the true time axis: it must match the full-rate
    # signals of bed-001 (same recording, same start time) sampled at its timestamps. Lead II is the model's work
    # (PLETH from 16 Hz up is a polyphase resample): it must restore QRS detail the polyphase resample of the same
    # 25 Hz input does not (measured on this record: Pearson 0.967 against 0.856).
    from operators.processing.resample import resample

    assert set(zip(sr.bed, sr.signal)) == {("lowres-001", "II_SR"), ("lowres-001", "PLETH_SR")}
    assert (sr["rate_hz"] == 100).all()
    for sig, at_least in (("II", 0.93), ("PLETH", 0.9)):
        out_sig = sr[sr.signal == f"{sig}_SR"]
        assert len(out_sig) >= 0.9 * SECONDS * 100, sig
        t = out_sig["time"].astype("int64").to_numpy()
        ref = inp[(inp.bed == "bed-001") & (inp.signal == sig)]
        expect = np.interp(t, ref["time"].astype("int64"), ref["value"])
        r_out = np.corrcoef(expect, out_sig["value"])[0, 1]
        assert r_out > at_least, (sig, r_out)
        low = inp[(inp.bed == "lowres-001") & (inp.signal == sig)]
        poly = resample(low["value"].to_numpy(), 25.0, 100.0, method="polyphase")
        t_poly = low["time"].astype("int64").to_numpy()[0] + np.arange(len(poly)) * 10_000_000
        r_poly = np.corrcoef(expect, np.interp(t, t_poly, poly))[0, 1]
        if sig == "II":
            assert r_out > r_poly + 0.05, (r_out, r_poly)

    # The probe-off bed: its flat PLETH span is withheld (source_unusable, probe_off), not drawn as a flat ECG; its
    # II_SYNTH runs before and after it.
    t_in = inp[(inp.bed == "probeoff-001") & (inp.signal == "PLETH")]["time"].astype("int64")
    a, b = (int(t_in.min()) + int(t * 1e9) for t in probe_off_span_s(SECONDS))
    t_syn = syn[syn.bed == "probeoff-001"]["time"].astype("int64")
    assert not ((t_syn >= a) & (t_syn < b)).any()  # windows are judged on what they emit +- 1 s
    assert (t_syn < a).sum() > 2 * RATE and (t_syn >= b).sum() > 2 * RATE
    off = ev[(ev.bed == "probeoff-001") & (ev.type == "source_unusable")]
    assert set(off["reason"]) == {"probe_off"}
    assert off["time"].astype("int64").min() <= a + 1e9 and off["end"].astype("int64").max() >= b
    assert not ((ev.bed == "probeoff-001") & (ev.type == "rpeaks") & (ev["time"].astype("int64") >= a)
                & (ev["end"].astype("int64") <= b)).any()
    assert re.search(r"probe off +probeoff-001: PLETH flat for \d+ s, [\d.]+ s of it withheld \(probe_off\), 0 II_SYNTH",
                     res.stdout), res.stdout[-2000:]

    png = out / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05  # not a blank canvas
    assert "samples in      16000" in res.stdout

    # One monitor alarm verified end to end: an asystole alarm on a beating heart is judged false.
    import json

    (verdict,) = json.loads((out / "verdicts.json").read_text())
    assert verdict["bed_id"] == "bed-001" and verdict["alarm_type"] == "asystole"
    assert verdict["verdict"] == "false" and verdict["keep_alarm"] is True  # an asystole is a person's to silence
    assert {"II", "PLETH"} <= {c["name"] for c in verdict["channels"]}
    assert "alarm verdict   asystole on bed-001: false" in res.stdout


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_interrupt_stops_worker_and_broker(synthetic_record, tmp_path):
    # Real time speed keeps the demo busy long enough to interrupt it mid-run.
    proc = subprocess.Popen(_demo_cmd(synthetic_record, tmp_path / "demo", "--speed", "1"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "replaying" in line:
                break
        pid, bootstrap = _started("".join(lines))
        assert _alive(pid) and _port_open(bootstrap)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not _alive(pid), "worker survived Ctrl-C"
    assert not _port_open(bootstrap), "broker survived Ctrl-C"


def test_chunks_to_table_orders_dedups_and_timestamps():
    c = lambda seq, start_s, vals: Chunk("bed-1", "II_SYNTH", 4.0, int(start_s * 1e9), seq,
                                         np.asarray(vals, dtype=np.float32))
    # Out of order, with the second chunk delivered twice (a re-sent output after a worker restart).
    table = chunks_to_table([c(1, 1.0, [5, 6, 7, 8]), c(0, 0.0, [1, 2, 3, 4]), c(1, 1.0, [5, 6, 7, 8])])
    t = table["time"].cast("int64").to_numpy()
    assert table.num_rows == 8
    assert (np.diff(t) == 250_000_000).all()
    assert table["value"].to_pylist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert str(table.schema.field("time").type) == "timestamp[ns, tz=UTC]"
    assert chunks_to_table([]).num_rows == 0


def test_default_input_falls_back_to_synthetic_recording(tmp_path, monkeypatch):
    from operators.io.records import read_recording
    from stream.tools import demo

    monkeypatch.setattr(demo, "DEFAULT_RECORD", tmp_path / "absent" / "bidmc01")
    path, desc = demo.resolve_record(None, tmp_path / "work")
    assert "synthetic" in desc
    rec = read_recording(path, ["II", "PLETH"])
    assert rec.rates == {"II": 125.0, "PLETH": 125.0}
    assert rec.duration_s("II") >= 120  # "a few minutes"
    assert (rec.age, rec.sex) == (64.0, "F")  # header comment in BIDMC style is parsed back


def test_synthetic_recording_is_deterministic_and_physiological():
    from scipy.signal import find_peaks

    a, b, c = synthesize(seconds=120, seed=5), synthesize(seconds=120, seed=5), synthesize(seconds=120, seed=6)
    assert all(np.array_equal(a.signals[k], b.signals[k]) for k in ("II", "PLETH"))
    assert not np.array_equal(a.signals["II"], c.signals["II"])

    rr = np.diff(a.r_peaks) / a.rate_hz
    assert 55 < 60 / rr.mean() < 90  # resting adult heart rate
    assert 0.01 < rr.std() < 0.1  # variability present, but no arrhythmia
    # R peaks are where the ECG is: the largest sample near each annotated beat.
    ecg = a.signals["II"]
    assert all(abs(int(np.argmax(ecg[max(r - 5, 0):r + 6])) - min(r, 5)) <= 1 for r in a.r_peaks[1:-1])
    # Each PPG systolic peak follows its R peak by PAT + rise time (~0.3-0.4 s), never precedes it.
    ppg_peaks, _ = find_peaks(a.signals["PLETH"], distance=int(0.4 * a.rate_hz), prominence=0.2)
    delays = []
    for r in a.r_peaks[:-1]:
        later = ppg_peaks[ppg_peaks > r]
        if len(later):
            delays.append((later[0] - r) / a.rate_hz)
    delays = np.array(delays)
    assert len(delays) > 0.9 * (len(a.r_peaks) - 1)
    assert 0.25 < np.median(delays) < 0.45
    assert delays.std() > 0.002  # the delay breathes with respiration


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_writes_to_influxdb_when_asked(synthetic_record, tmp_path, influx):
    db = "demo_influx"
    influx.create_database(db)
    res = subprocess.run(
        _demo_cmd(synthetic_record, tmp_path / "demo", "--no-sr-bed", "--influx-url", influx.url,
                  "--influx-bucket", db, "--influx-token", influx.token, "--influx-org", influx.org),
        cwd=REPO, capture_output=True, text=True, timeout=220)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    syn = pq.read_table(tmp_path / "demo" / "ecg_synth.parquet").to_pandas()
    rows = influx.query("SELECT count(value) FROM waveform WHERE kind='synth' GROUP BY bed", db)
    counts = {r["bed"]: r["count"] for r in rows}
    # Every synthesized sample the demo collected from Kafka is also a point in InfluxDB.
    assert counts == syn.groupby("bed").size().to_dict()


def test_outputs_are_not_complete_before_any_pleth_input_was_read():
    """The demo stops waiting once every PLETH stream has its output; lead II chunks alone are not 'every'."""
    import threading

    from stream.tools.collector import Collected
    from stream.tools.demo import _outputs_complete

    class Seen:
        lock = threading.Lock()
        data = Collected()

    def chunk(bed, signal, end_ns):
        return SimpleNamespace(bed_id=bed, signal=signal, end_ns=lambda: end_ns)

    seen = Seen()
    seen.data.chunks["input"].append(chunk("bed-001", "II", 10**9))
    assert not _outputs_complete(seen)
    seen.data.chunks["input"].append(chunk("bed-001", "PLETH", 10**9))
    assert not _outputs_complete(seen)
    seen.data.chunks["synth"].append(chunk("bed-001", "II_SYNTH", 10**9))
    assert _outputs_complete(seen)
    # the 25 Hz bed's lead II waits for its super-resolved copy (and its PLETH for II_SYNTH and PLETH_SR)
    seen.data.chunks["input"].append(chunk("lowres-001", "II", 10**9))
    assert not _outputs_complete(seen)
    seen.data.chunks["sr"].append(chunk("lowres-001", "II_SR", 10**9))
    assert _outputs_complete(seen)
    seen.data.chunks["input"].append(chunk("lowres-001", "PLETH", 10**9))
    seen.data.chunks["synth"].append(chunk("lowres-001", "II_SYNTH", 10**9))
    assert not _outputs_complete(seen)
    seen.data.chunks["sr"].append(chunk("lowres-001", "PLETH_SR", 10**9))
    assert _outputs_complete(seen)


def test_probe_off_bed_is_flat_over_its_span_within_what_is_replayed(tmp_path):
    from operators.io.records import read_recording
    from stream.tools.demo import probe_off_recording

    rec = synthesize(seconds=30, seed=3)
    path = write_wfdb(rec, tmp_path, "rec")
    flat, span = probe_off_recording(path, 20.0)
    assert span == probe_off_span_s(20.0)
    fs = rec.rate_hz
    a, b = (int(round(t * fs)) for t in span)
    ppg = flat.signals["PLETH"]
    assert np.ptp(ppg[a:b]) == 0 and np.ptp(ppg[b:b + int(fs)]) > 0 and np.ptp(ppg[a - int(fs):a]) > 0
    orig = read_recording(path, None)
    assert np.array_equal(flat.signals["II"], orig.signals["II"])
    # --seconds past the record's end: the span lies within the record
    _, span = probe_off_recording(path, 1000.0)
    assert span == probe_off_span_s(30.0)
    # no PLETH: no probe-off bed
    only_ii = tmp_path / "ii.parquet"
    pq.write_table(pa.table({"time_s": np.arange(len(rec.signals["II"])) / rec.rate_hz, "II": rec.signals["II"]}),
                   only_ii)
    assert probe_off_recording(only_ii, 20.0) is None


def test_probe_off_summary_counts_the_withheld_part_of_the_span_once():
    from stream.tools.collector import Collected
    from stream.tools.demo import _probe_off_summary

    s = 10**9
    data = Collected()
    data.events += [{"bed": "p", "type": "source_unusable", "time_ns": 9 * s, "end_ns": 13 * s, "reason": "probe_off"},
                    {"bed": "p", "type": "source_unusable", "time_ns": 12 * s, "end_ns": 16 * s, "reason": "probe_off"},
                    {"bed": "p", "type": "source_unusable", "time_ns": 30 * s, "end_ns": 31 * s, "reason": "noise"},
                    {"bed": "q", "type": "source_unusable", "time_ns": 10 * s, "end_ns": 20 * s, "reason": "flat"}]
    data.chunks["synth"].append(Chunk("p", "II_SYNTH", 10.0, 18 * s, 0, np.zeros(30, np.float32)))  # 18-21 s
    got = _probe_off_summary(data, "p", [10 * s, 20 * s])
    assert got == {"bed": "p", "span_s": 10.0, "withheld_s": 6.0, "reasons": ["probe_off"], "synth_samples_in_span": 20}


def test_withheld_spans_are_per_output_and_merged():
    """The picture shades on an output's panel only what was withheld from that output, one label per span."""
    import json

    import pandas as pd

    from stream.tools.demo_plot import _withheld_spans

    def ev(a, b, reason, outputs, bed="lowres-001"):
        e = {"bed": bed, "type": "source_unusable", "reason": reason, "outputs": outputs}
        return {"bed": bed, "type": "source_unusable", "time": pd.Timestamp(int(a * 1e9), tz="UTC"),
                "end": pd.Timestamp(int(b * 1e9), tz="UTC"), "reason": reason, "json": json.dumps(e)}

    events = pd.DataFrame([ev(10, 12, "probe_off", ["II_SYNTH", "PLETH_SR"]), ev(12, 14, "probe_off", ["II_SYNTH", "PLETH_SR"]),
                           ev(13, 15, "motion", ["II_SYNTH", "PLETH_SR"]), ev(20, 22, "noise", ["II_SR"]),
                           ev(30, 32, "flat", ["II_SYNTH"], bed="bed-001")])
    assert _withheld_spans(events, "lowres-001", "II_SYNTH") == [(10.0, 15.0, ["motion", "probe_off"])]
    assert _withheld_spans(events, "lowres-001", "II_SR") == [(20.0, 22.0, ["noise"])]
    assert _withheld_spans(events, "bed-001", "II_SR") == [] and _withheld_spans(None, "bed-001", "II_SYNTH") == []
