"""benchmarks/alarm_eval.py: the evidence cache is keyed by every module that computes the evidence."""
from __future__ import annotations

import shutil

from tests.conftest import REPO, benchmark


def test_evidence_cache_key_changes_with_any_module_the_evidence_uses(tmp_path, monkeypatch):
    """The verifier imports filters and resample, and the classic translator synthesises the ECG it judges: an edit
    to any of them must not serve the evidence cached before it."""
    ae = benchmark("alarm_eval")
    for pkg in ("operators", "models"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    monkeypatch.setattr(ae, "ROOT", tmp_path)
    key = ae.code_key("classic", 10.0)
    assert ae.code_key("classic", 10.0) == key and ae.code_key("clmt", 10.0) != key
    for rel in ("operators/classic.py", "operators/processing/filters.py", "operators/processing/resample.py"):
        path = tmp_path / rel
        path.write_text(path.read_text() + "\n# edited\n")
        assert ae.code_key("classic", 10.0) != key, rel
        key = ae.code_key("classic", 10.0)
