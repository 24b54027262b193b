"""`wavebridge alarm-check`: verify one Challenge-format record's arrhythmia alarm from its own signals."""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Sequence

from operators.processing import alarms as core
from stream.tools.cli import ArgumentParser, one_line

PROG = "wavebridge alarm-check"


def check_record(path: str, mode: str = "realtime", wait_s: float = 30.0, translator="classic",
                 config: core.VerifierConfig | None = None) -> tuple[core.ChallengeRecord, core.AlarmVerdict]:
    """Verify the alarm of one Challenge-format record (alarm at 300 s; type from its header).

    Parameters
    ----------
    path : str
        The record, without extension (or with `.hea`/`.mat`/`.dat`).
    mode, wait_s, config
        As for `operators.processing.alarms.verify_alarm`.
    translator : str, Translator or None
        A translator spec or a loaded translator for the ECG synthesized from PLETH; None leaves it out.

    Raises
    ------
    ValueError
        The record is missing or not a Challenge-format record, or the spec is unknown (one line).
    """
    if isinstance(translator, str):
        from operators.translator import load_translator

        translator = load_translator(translator)
    rec = core.read_challenge_record(path)
    return rec, verify_record(rec, mode, wait_s, translator, config)


def verify_record(rec: core.ChallengeRecord, mode: str = "realtime", wait_s: float = 30.0, translator=None,
                  config: core.VerifierConfig | None = None) -> core.AlarmVerdict:
    """Verify the alarm of a Challenge-format record already read (`check_record`'s parameters; `translator` a
    loaded translator or None)."""
    signals, rates = rec.signals, rec.rates_hz
    if translator is not None:
        signals, rates = core.add_synthesized_ecg(signals, rates, translator, rec.onset_s,
                                                  mode=mode, wait_s=wait_s, config=config)
    return core.verify_alarm(rec.alarm_type, signals, rates, rec.onset_s, mode=mode, wait_s=wait_s, config=config)


class AlarmCheckError(Exception):
    """A user's mistake (record, options), reported as one line with exit status 2."""


def _text(rec: core.ChallengeRecord, v: core.AlarmVerdict, seconds: float) -> str:
    label = "" if rec.label is None else f" (annotators: {'true' if rec.label else 'false'} alarm)"
    lines = [f"{rec.name}: {v.alarm_type} alarm at {rec.onset_s:g} s{label}",
             f"verdict: {v.verdict}  confidence {v.confidence:.2f}  false score {v.false_score:.2f} "
             f"(threshold {v.threshold:.2f}; mode {v.mode}; {1000 * seconds:.0f} ms)",
             f"reason: {v.reason}",
             f"{'channel':<9} {'quality':<9} {'score':>5} {'beats':>5} {'HR':>5} {'gap s':>6} {'contra':>6} {'supp':>5}  note"]
    for c in v.channels:
        hr = "-" if c.hr_bpm is None else f"{c.hr_bpm:.0f}"
        lines.append(f"{c.name:<9} {c.quality:<9} {c.quality_score:>5.2f} {len(c.beats_s):>5} {hr:>5} "
                     f"{c.max_gap_s:>6.1f} {c.contradicts:>6.2f} {c.supports:>5.2f}  {c.reason}")
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    """`wavebridge alarm-check ARGV`; returns the exit status: 0 whatever the verdict, 2 for a user's mistake
    (one line: no such record, not a Challenge-format record, bad options)."""
    ap = ArgumentParser(
        prog=PROG,
        description="Verify the arrhythmia alarm of a PhysioNet/CinC 2015 Challenge-format record (WFDB .hea + "
                    ".mat/.dat; alarm type from the header's comment lines, alarm at 300 s) against the record's own "
                    "ECG leads, PLETH, ABP and the ECG synthesized from PLETH. Exit 0 whatever the verdict; an "
                    "alarm system must treat 'uncertain' as 'true' (docs/alarms.md). Exit 2: a missing or "
                    "unreadable record, one that is not in the Challenge's format, or a bad option.")
    ap.add_argument("record", help="record path without extension, e.g. ../shared/data/challenge2015/v100s")
    ap.add_argument("--mode", choices=core.MODES, default="realtime",
                    help=f"realtime: data up to the alarm only; retrospective: the detectors also see up to "
                         f"{core.RETRO_POST_S:g} s after it (window_s: what the record held)")
    ap.add_argument("--wait-s", type=float, default=30.0, help="retrospective mode's wait after the alarm (s)")
    ap.add_argument("--translator", default="classic",
                    help="translator spec for the ECG synthesized from PLETH ('none' to leave it out)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (verdict, confidence, evidence)")
    a = ap.parse_args(argv)
    try:
        return _run(a)
    except AlarmCheckError as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2


def _run(a) -> int:
    if not (a.wait_s >= 0 and math.isfinite(a.wait_s)):
        raise AlarmCheckError("--wait-s must be a finite number >= 0")
    translator = None
    if a.translator.lower() != "none":  # loaded first: a bad option is reported before the record is read
        from operators.translator import load_translator

        try:
            translator = load_translator(a.translator)
        except Exception as exc:
            raise AlarmCheckError(f"--translator: {exc}") from None
    t0 = time.perf_counter()
    try:
        rec = core.read_challenge_record(a.record)
    except (ValueError, OSError) as exc:
        raise AlarmCheckError(str(exc) or type(exc).__name__) from None
    # The verification itself: an error there is a defect, not the user's; it ends in the console script's
    # one-line net with exit status 1.
    v = verify_record(rec, a.mode, a.wait_s, translator)
    seconds = time.perf_counter() - t0
    if a.json:
        d = {"record": rec.name, **v.to_dict(), "keep_alarm": v.keep_alarm,
             "label": None if rec.label is None else ("true" if rec.label else "false"), "seconds": round(seconds, 4)}
        print(json.dumps(d))
    else:
        print(_text(rec, v, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
