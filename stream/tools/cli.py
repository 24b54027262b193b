"""`wavebridge` console script: one entry point that dispatches to each tool's own `cli(argv)`.

Subcommand modules are imported only when chosen, so `wavebridge --help` stays fast and needs
neither torch nor faust. Every error ends as one line on stderr and a non-zero exit status, never a
traceback (WAVEBRIDGE_TRACEBACK=1 shows one, for debugging); each tool builds its options with
`ArgumentParser` below, whose `--help` shows the defaults.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence


def _default_worth_showing(action: argparse.Action) -> bool:
    """Whether `--help` should state `action`'s default: not None ("decided at run time", which the help says in
    words), not a flag's (no argument: its default is just "not given"), not an empty collection."""
    d = action.default
    return (d is not None and d is not argparse.SUPPRESS and action.nargs != 0
            and not (isinstance(d, (list, tuple)) and not d))


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to an option's help unless the help states its default itself or it is not worth
    showing (`_default_worth_showing`)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or not _default_worth_showing(action):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in `--help` and usage errors as one line (`prog: error: ... (see --help)`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        # argparse prints no line for an option without help, so not its default either: give it one that does
        if not action.help:
            action.help = "(default: %(default)s)" if _default_worth_showing(action) else " "
        return action

    def error(self, message: str):
        """Exit 2 with `message` on one line."""
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def one_line(text: str, limit: int = 500) -> str:
    """`text` with its white space runs (newlines included) made single spaces, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."

# name -> (module, one-line description). Each module exposes `cli(argv) -> int | None`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("stream.tools.demo", "end-to-end demo: embedded broker + worker + replay, writes Parquet and a PNG"),
    "worker": ("stream.app", "run the Faust streaming worker (Kafka in -> translation -> InfluxDB/Kafka out)"),
    "sink": ("stream.influxsink", "run the InfluxDB sink agent (output and event topics -> InfluxDB) on its own"),
    "replay": ("stream.tools.replay", "replay a WFDB recording onto the input topic as one or more beds"),
    "broker": ("stream.tools.embedded", "run the embedded Kafka-protocol broker (Tansu) for local use"),
    "translate": ("stream.tools.offline", "translate a recording offline (no Kafka) to files"),
    "alarm-check": ("stream.tools.alarm_check", "verify a Challenge-format record's arrhythmia alarm (true/false/uncertain)"),
    "train": ("stream.tools.train", "train the CLMT translation model"),
    "evaluate": ("stream.tools.evaluate", "evaluate CLMT vs classic baselines on held-out BIDMC and Challenge records"),
    "bench-model": ("stream.tools.bench_model", "benchmark model inference throughput/latency"),
}

PROG = "wavebridge"


def usage() -> str:
    """`wavebridge --help`: the commands, one line each."""
    width = max(len(n) for n in COMMANDS)
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "Streaming ICU waveform translation (PPG->ECG synthesis, super-resolution) on Kafka + InfluxDB.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", f"Run '{PROG} <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`wavebridge ARGV` (default `sys.argv[1:]`); returns the exit status: the tool's own, 2 for a usage error,
    1 for a missing dependency or an unexpected error, 130 for Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        # No command at all is a usage error; asking for help is not.
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r} (commands: {', '.join(COMMANDS)}; see {PROG} --help)", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        # A missing third-party dependency gets a one-line hint; our own import bugs keep their traceback.
        if not exc.name or exc.name.split(".")[0] in ("stream", "operators", "models"):
            raise
        print(f"{PROG} {name}: needs the Python package {exc.name!r}, which is not installed "
              f"(pip install -e . in the project's virtualenv)", file=sys.stderr)
        return 1
    try:
        rc = module.cli(rest)
    except SystemExit as exc:  # argparse inside a subcommand exits; keep its code
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(one_line(code), file=sys.stderr)  # sys.exit("message") convention
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last net: each tool reports its expected errors itself, more precisely
        if os.environ.get("WAVEBRIDGE_TRACEBACK"):
            raise
        print(f"{PROG} {name}: error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
