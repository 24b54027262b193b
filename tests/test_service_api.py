"""`stream` exports the service's public API, and importing it loads none of the heavy dependencies."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_import_stream_is_light_and_every_export_resolves():
    code = ("import json, sys\n"
            "import stream\n"
            "light = sorted(m for m in ('faust', 'kafka', 'aiokafka', 'torch', 'influxdb_client') if m in sys.modules)\n"
            "missing = [n for n in stream.__all__ if getattr(stream, n, None) is None]\n"
            "print(json.dumps([light, missing, stream.__all__]))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    light, missing, exported = json.loads(res.stdout.splitlines()[-1])
    assert light == [] and missing == []
    assert {"Settings", "Pipeline", "OutputSeries", "PipelineEvent", "BatchResult", "Worker", "run_service"} <= set(exported)


def test_an_unknown_name_is_an_attribute_error():
    import pytest

    import stream

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stream.nope  # noqa: B018
