"""The `wavebridge` dispatcher: help text, exit codes, lazy imports and argument hand-off."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from stream.tools import cli

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ["demo", "worker", "sink", "replay", "broker", "translate", "alarm-check", "train", "evaluate", "bench-model"]


def run_cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "stream.tools.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_with_a_description():
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for name in EXPECTED:
        row = next((ln for ln in lines if ln.split()[:1] == [name]), None)
        assert row is not None, f"{name} missing from --help:\n{res.stdout}"
        assert len(row.split()) > 2, f"{name} has no description"


def test_help_imports_neither_torch_nor_faust():
    # Lazy dispatch is what keeps `wavebridge --help` instant on a machine with a cold disk cache.
    res = run_cli(code=(
        "import sys, io, contextlib\n"
        "from stream.tools.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['--help'])\n"
        "heavy = sorted(m for m in ('torch', 'faust', 'aiokafka', 'kafka') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0 []"


def test_unknown_command_exits_2_with_one_line_naming_the_commands():
    res = run_cli("frobnicate")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"wavebridge: unknown command 'frobnicate' (commands: {', '.join(cli.COMMANDS)}; see wavebridge --help)"]


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "usage: wavebridge" in capsys.readouterr().out


@pytest.fixture
def fake_module(monkeypatch):
    """Install a stand-in for one subcommand module and record what it receives."""
    calls: list[list[str]] = []

    def install(command: str, behaviour):
        mod = types.ModuleType(cli.COMMANDS[command][0])

        def fake_cli(argv):
            calls.append(list(argv))
            return behaviour(argv)

        mod.cli = fake_cli
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        return calls

    return install


def test_dispatch_passes_remaining_args_and_return_code(fake_module):
    calls = fake_module("bench-model", lambda argv: 3)
    assert cli.main(["bench-model", "--batch", "8", "x"]) == 3
    assert calls == [["--batch", "8", "x"]]


def test_none_return_means_success(fake_module):
    fake_module("translate", lambda argv: None)
    assert cli.main(["translate"]) == 0


@pytest.mark.parametrize("exit_value, expected", [(0, 0), (2, 2), (None, 0), ("fatal: bad record", 1)])
def test_system_exit_from_subcommand_becomes_return_code(fake_module, capsys, exit_value, expected):
    def boom(argv):
        raise SystemExit(exit_value)

    fake_module("replay", boom)
    assert cli.main(["replay", "--help"]) == expected
    if isinstance(exit_value, str):
        assert exit_value in capsys.readouterr().err


def test_real_subcommand_help_goes_through_dispatch():
    # The broker command ships with the stream package; its argparse help proves end-to-end dispatch.
    res = run_cli("broker", "--help")
    assert res.returncode == 0, res.stderr
    assert "wavebridge broker" in res.stdout
    assert "--port" in res.stdout


def test_every_command_resolves_to_a_module_with_cli_help():
    # One child process for all commands so torch/faust are imported once.
    res = run_cli(code=(
        "import contextlib, io, json\n"
        "from stream.tools.cli import COMMANDS, main\n"
        "out = {}\n"
        "for name in COMMANDS:\n"
        "    buf = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):\n"
        "            rc = main([name, '--help'])\n"
        "    except Exception as exc:\n"
        "        rc = f'{type(exc).__name__}: {exc}'\n"
        "    out[name] = [rc, buf.getvalue()]\n"
        "print(json.dumps(out))\n"
    ))
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(EXPECTED)
    # Help must come from the subcommand itself (its usage line or its own name), not be empty.
    bad = {name: (rc, text[:200]) for name, (rc, text) in results.items()
           if rc != 0 or not ("usage:" in text.lower() or f"wavebridge {name}" in text)}
    assert not bad, f"subcommands whose --help failed: {bad}"
    # Each option states its default once, and never an empty one: "(default: None)" or "(default: [])" says
    # nothing, and a help that states its default in words gets no second one.
    import re

    for name, (_, text) in results.items():
        if name == "worker":  # Faust's own command line
            continue
        options = re.split(r"\n  (?=-)", text)
        for opt in options:
            flat = " ".join(opt.split())
            assert flat.count("(default") <= 1, (name, flat[:160])
            assert not re.search(r"\(default: (None|\[\]|False)\)", flat), (name, flat[:160])


def test_missing_third_party_dependency_gives_a_hint(monkeypatch, capsys):
    # Simulate a machine without faust: importing the worker module fails on it.
    def fake_import(name, *a, **k):
        raise ModuleNotFoundError(f"No module named {'faust'!r}", name="faust")

    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    assert cli.main(["worker"]) == 1
    assert "needs the Python package 'faust'" in capsys.readouterr().err


def test_import_error_inside_project_keeps_traceback(monkeypatch):
    def fake_import(name, *a, **k):
        raise ModuleNotFoundError("No module named 'stream.nothere'", name="stream.nothere")

    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["worker"])


@pytest.mark.parametrize("args, message", [
    (["--tasks", "ppg2ecg,sr-ecgg"], "--tasks: unknown 'sr-ecgg'; choose from ppg2ecg, sr-ecg, sr-ppg"),
    (["--tasks", ","], "--tasks: empty"),
    (["--sr-input", "iir,IIR"], "--sr-input: unknown 'IIR'; choose from iir, plain"),
])
def test_evaluate_refuses_unknown_task_or_sr_input_before_any_work(monkeypatch, capsys, args, message):
    # A typo used to evaluate nothing (tasks) or run plain decimation under the typed label (sr-input), exit 0.
    from stream.tools import evaluate

    def no_work(*a, **k):
        raise AssertionError("evaluation started despite an invalid option")

    monkeypatch.setattr(evaluate, "find_dataset", no_work)
    monkeypatch.setattr(evaluate, "dataset_root", no_work)
    monkeypatch.setattr(evaluate, "load_translator", no_work)
    with pytest.raises(SystemExit) as exc:
        evaluate.cli(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
