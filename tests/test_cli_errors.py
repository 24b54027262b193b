"""Every `wavebridge` error is one line on stderr and a non-zero exit, never a traceback; every --help shows defaults.

Before (issue 18): `evaluate --records bidmc03` and `evaluate --data /nope` ended in tracebacks, `replay --broker
127.0.0.1:9999` in `KafkaTimeoutError: KafkaTimeoutError`, an empty `.hea` in `IndexError: list index out of
range`; argparse errors printed a usage block; `--help` of replay/translate/train showed no defaults.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.tools.cli import COMMANDS
from tests.conftest import REPO


def run(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WAVEBRIDGE_")}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "stream.tools.cli", *args], cwd=cwd or REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_every_subcommand_help_shows_its_defaults():
    # One child process for every command: torch and faust are imported once.
    code = (
        "import contextlib, io, json\n"
        "from stream.tools.cli import COMMANDS, main\n"
        "out = {}\n"
        "for name in COMMANDS:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        rc = main([name, '--help'])\n"
        "    out[name] = [rc, buf.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    helps = json.loads(res.stdout.splitlines()[-1])
    assert set(helps) == set(COMMANDS)
    for name, (rc, text) in helps.items():
        assert rc == 0, name
        if name in ("worker", "sink"):  # configured by variables: the table of them with their defaults
            assert "WAVEBRIDGE_WINDOW_S" in text and "8.0" in text and "WAVEBRIDGE_CREATE_TOPICS" in text, name
            continue
        options = [ln for ln in text.splitlines() if ln.lstrip().startswith("--")]
        assert options and "(default:" in text, f"{name} --help shows no defaults:\n{text}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "empty.hea").write_text("")
    csv = d / "rec.csv"
    csv.write_text("PLETH,II\n" + "".join(f"{i % 7 / 7:.3f},{i % 5 / 5:.3f}\n" for i in range(500)))
    return d


BAD = [  # (id, args, env); "{d}" is the test's folder
    ("unknown-command", ["frobnicate"], None),
    ("evaluate-missing-data-folder", ["evaluate", "--data", "/nope"], None),
    ("evaluate-missing-record", ["evaluate", "--records", "bidmc99", "--data", "{d}"], None),
    ("evaluate-bad-task", ["evaluate", "--tasks", "denoise"], None),
    ("replay-unreachable-broker", ["replay", "--broker", "127.0.0.1:9", "{d}/rec.csv", "--rate-hz", "125",
                                   "--connect-timeout-s", "1", "--no-progress"], None),
    ("replay-bad-port", ["replay", "--broker", "127.0.0.1:9092x", "{d}/rec.csv"], None),
    ("replay-empty-header", ["replay", "--broker", "127.0.0.1:9", "{d}/empty"], None),
    ("replay-missing-args", ["replay"], None),
    ("translate-empty-header", ["translate", "--task", "sr", "--out", "{d}/o.parquet", "{d}/empty"], None),
    ("translate-missing-record", ["translate", "--task", "sr", "--out", "{d}/o.parquet", "/nope/rec"], None),
    ("alarm-check-missing-record", ["alarm-check", "/nope/v100s"], None),
    ("bench-model-bad-number", ["bench-model", "--batch", "many"], None),
    ("train-unknown-option", ["train", "--stepz", "3"], None),
    ("broker-bad-port", ["broker", "--port", "x"], None),
    ("demo-bad-number", ["demo", "--beds", "x"], None),
    ("worker-unknown-translator", ["worker"], {"WAVEBRIDGE_TRANSLATOR": "foo"}),
    ("worker-typo", ["worker"], {"WAVEBRIDGE_WINDOWS_S": "4"}),
    ("worker-empty-broker-host", ["worker"], {"WAVEBRIDGE_BROKER": "kafka://"}),
    ("sink-bad-port", ["sink"], {"WAVEBRIDGE_BROKER": "127.0.0.1:9092x"}),
]


@pytest.mark.parametrize("args, env", [pytest.param(a, e, id=i) for i, a, e in BAD])
def test_bad_invocations_end_in_one_line_and_a_non_zero_exit(files, args, env):
    res = run(*[a.replace("{d}", str(files)) for a in args], env=env, cwd=files)
    err = res.stderr.strip().splitlines()
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("wavebridge"), res.stderr[-3000:]


def test_train_without_bidmc_records_gives_the_reason_once(tmp_path):
    """A missing BIDMC folder refuses the run with its one-line reason, printed once, before any work."""
    res = run("train", "--data", str(tmp_path / "nope"), "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: BIDMC records not found under {tmp_path / 'nope'} (pass --data)"]
    assert not (tmp_path / "work").exists()
