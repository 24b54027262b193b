"""The evaluation protocol (models/evaluate.py) with a stand-in translate step, and finding the datasets.

The protocol takes the translate step as a callable, so it is tested here without the service's pipeline: an
oracle that returns the truth must score perfectly, a flat output must find no beat, and every row must reach
the translate step with the rates, context and demographics the protocol promises.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.data import DATA_DIR, DatasetNotFound, dataset_root, find_dataset, found_dataset
from models.evaluate import EvalOptions, Evaluation, Methods, comparison, records_by_dataset
from operators.io.records import Recording
from operators.io.synthetic import synthesize
from operators.processing.resample import resample
from operators.translator import PPG2ECG, SR
from tests.conftest import REPO

RATE_HZ = 125.0
CONTEXT_S = 20.0


def _recording() -> Recording:
    syn = synthesize(seconds=60.0, rate_hz=RATE_HZ, seed=3)
    rates = {k: RATE_HZ for k in syn.signals}
    return Recording("syn", dict(syn.signals), rates, dict(syn.units), syn.age, syn.sex)


def test_an_oracle_scores_perfectly_a_flat_output_finds_no_beat_and_each_row_gets_its_inputs(tmp_path):
    rec = _recording()
    c = int(CONTEXT_S * RATE_HZ)
    truth = {"II": rec.signals["II"].astype(np.float64)[c:], "PLETH": rec.signals["PLETH"].astype(np.float64)[c:]}
    calls = []

    def translate(translator, task, x, rate, target_rate, signal, context=None, age=None, sex=None):
        calls.append((translator, task, rate, target_rate, signal, context is not None, age, sex))
        n = int(round(len(x) * target_rate / rate))
        if translator == "flat":
            return np.zeros(n)
        target = "II" if task == PPG2ECG else signal
        out = truth[target] if target_rate == RATE_HZ else resample(truth[target], RATE_HZ, target_rate, method="polyphase")
        return np.asarray(out[:n], np.float64)

    lines = []
    options = EvalOptions(context_s=CONTEXT_S, tasks=("ppg2ecg", "sr-ecg"), ppg_rates=("native", "25"), sr_inputs=("iir",))
    ev = Evaluation(options, Methods(clmt="oracle", classic="flat", cubic="flat"), translate, say=lines.append)
    ev.add_record("bidmc", "syn", rec)
    rows = ev.report()["overall"]

    for key in ("ppg2ecg clmt +context", "ppg2ecg@25Hz clmt no context", "sr-ecg 25->100 iir clmt",
                "sr-ecg 25->100 iir clmt +context"):
        assert rows[key]["pearson"] == pytest.approx(1.0, abs=1e-6), key
        assert rows[key]["f1_50"] == 1.0 and rows[key]["hr_mae"] == pytest.approx(0.0, abs=1e-9), key
    assert rows["ppg2ecg baseline +context"]["f1_150"] == 0.0
    assert rows["ppg2ecg clmt +context"]["windows"] == int((60.0 - CONTEXT_S) // 8)
    assert [t for t, *_ in comparison(rows)] == ["ppg2ecg +context", "ppg2ecg no context", "ppg2ecg@25Hz +context",
                                                 "ppg2ecg@25Hz no context", "sr-ecg 25->100 iir",
                                                 "sr-ecg 25->100 iir +context"]

    ppg_calls = {(tr, rate, ctx) for tr, task, rate, target, sig, ctx, *_ in calls if task == PPG2ECG}
    assert ppg_calls == {(tr, r, ctx) for tr in ("oracle", "flat") for r in (RATE_HZ, 25.0) for ctx in (True, False)}
    sr_calls = [(rate, target, sig) for _, task, rate, target, sig, *_ in calls if task == SR]
    assert set(sr_calls) == {(25.0, 100.0, "II")} and len(sr_calls) == 5  # clmt, polyphase, cubic, 2 x +context
    assert {(age, sex) for *_, age, sex in calls} == {(rec.age, rec.sex)}
    assert any(line.startswith("  ppg2ecg clmt +context ") and "f1_50=1.000" in line for line in lines)

    out = tmp_path / "e.json"
    ev.write_json(out, complete=True)
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["records"] == ["syn"] and saved["context_s"] == CONTEXT_S
    assert saved["per_record"]["bidmc/syn"]["sr-ecg 25->100 iir clmt"]["f1_150"] == 1.0


def test_a_record_whose_two_rates_differ_is_skipped_with_a_note():
    rec = _recording()
    rec.rates["PLETH"] = 62.5
    lines = []
    ev = Evaluation(EvalOptions(context_s=CONTEXT_S), Methods("a", "b", "c"),
                    lambda *a, **k: pytest.fail("translated a skipped record"), say=lines.append)
    ev.add_record("bidmc", "syn", rec)
    assert lines == ["  syn: lead II at 125 Hz, PLETH at 62.5 Hz: skipped"]
    assert ev.report()["overall"] == {}


def test_record_names_are_split_by_dataset():
    assert records_by_dataset(["bidmc03", "11", "a134s", "bidmcx"]) == {"bidmc": ["03", "11"],
                                                                         "challenge": ["a134s", "bidmcx"]}
    assert records_by_dataset(["v158s"]) == {"challenge": ["v158s"]}


def test_find_dataset_names_the_folder_and_the_option_when_its_records_are_missing(tmp_path, capsys):
    with pytest.raises(DatasetNotFound, match=r"^Challenge 2015 records not found under .* \(pass --challenge-data\)$"):
        find_dataset("challenge", tmp_path)
    assert found_dataset("bidmc", tmp_path) is None
    assert capsys.readouterr().err == f"error: BIDMC records not found under {tmp_path} (pass --data)\n"
    (tmp_path / "RECORDS").write_text("a134s\n")
    assert find_dataset("challenge", str(tmp_path)) == tmp_path
    # the default place: shared/data beside the checkout, whatever the working directory
    assert DATA_DIR == REPO.parent / "shared" / "data"
    assert dataset_root("bidmc") == DATA_DIR / "bidmc" and dataset_root("challenge") == DATA_DIR / "challenge2015"


def test_a_json_path_that_cannot_be_written_is_refused_before_any_record(tmp_path, capsys):
    """The JSON is written after every record: a missing folder failed only after the first one, with exit 1."""
    from stream.tools.evaluate import cli

    with pytest.raises(SystemExit) as exc:
        cli(["--data", str(tmp_path), "--json", str(tmp_path / "missing" / "e.json")])
    assert exc.value.code == 2
    assert f"--json {tmp_path / 'missing' / 'e.json'}: folder {tmp_path / 'missing'} does not exist" in \
        capsys.readouterr().err
