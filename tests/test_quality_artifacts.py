"""benchmarks/quality_artifacts.py: the SR confidence fitted on saved windows and checked on others."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import benchmark

qa = benchmark("quality_artifacts")


def _saved(path, rng, n, right_above, features=True):
    """--json of a `--parts sr --fit` run: windows whose nRMSE is small where the shape grade is high."""
    rows = []
    for _ in range(n):
        shape, ecg = float(rng.uniform()), float(rng.integers(0, 2))
        good = shape > right_above + 0.1 * rng.standard_normal()
        row = {"record": "r", "signal": "II" if ecg else "PLETH", "kind": "clean", "confidence": 0.5, "flag": "good",
               "nrmse": 0.1 if good else 0.6}
        if features:
            row["features"] = [0.9, shape, 1.5, 0.0, 0.0, ecg]
        rows.append(row)
    path.write_text(json.dumps({"sr": rows}))
    return path


def test_the_sr_fit_on_one_set_is_scored_on_another(tmp_path, capsys):
    rng = np.random.default_rng(0)
    fit_on = _saved(tmp_path / "a.json", rng, 400, 0.5)
    check = _saved(tmp_path / "b.json", rng, 300, 0.5)
    assert qa.main(["--sr-rows", str(fit_on), "--sr-check", str(check)]) == 0
    out = capsys.readouterr().out
    assert "fitted on 400 windows" in out and f"that fit scored on {check}" in out and "(300 windows" in out
    coefs = [float(v) for v in out.split("CONFIDENCE_COEFS['sr'] = (")[1].split(")")[0].split(",")]
    assert coefs[2] > 0  # shape: the feature that decides rightness here
    assert coefs[1] == 0.0 and coefs[4] == 0.0 and coefs[5] == 0.0  # score, hf_frac and context: not in the SR model
    check_report = out.split("that fit scored on")[1]
    rho = float(check_report.split("Spearman rho(confidence, normalised RMSE) = ")[1].split()[0])
    assert rho < -0.5  # the fitted confidence ranks the other set's errors
    # scored with the new fit, not the shipped coefficients (which put every lead II window far below 0.95)
    assert "| [0.95, 1.00) |" in check_report.split("II only")[1]


def test_saved_windows_without_features_are_refused(tmp_path):
    path = _saved(tmp_path / "a.json", np.random.default_rng(1), 50, 0.5, features=False)
    with pytest.raises(SystemExit, match="no sr windows with features"):
        qa.main(["--sr-rows", str(path)])
