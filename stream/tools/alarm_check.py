"""`wavebridge alarm-check`: verify one Challenge-format record's arrhythmia alarm from its own signals."""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Sequence

from operators.processing import alarms as core
from stream.tools.cli import ArgumentParser


def check_record(path: str, mode: str = "realtime", wait_s: float = 30.0, translator: str | None = "classic",
                 config: core.VerifierConfig | None = None) -> tuple[core.ChallengeRecord, core.AlarmVerdict]:
    """Verify the alarm of one Challenge-format record (alarm at 300 s; type from its header)."""
    rec = core.read_challenge_record(path)
    signals, rates = rec.signals, rec.rates_hz
    if translator:
        from operators.translator import load_translator

        signals, rates = core.add_synthesized_ecg(signals, rates, load_translator(translator), rec.onset_s,
                                                  mode=mode, wait_s=wait_s, config=config)
    return rec, core.verify_alarm(rec.alarm_type, signals, rates, rec.onset_s, mode=mode, wait_s=wait_s, config=config)


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
    ap = ArgumentParser(
        prog="wavebridge alarm-check",
        description="Verify the arrhythmia alarm of a PhysioNet/CinC 2015 Challenge-format record (WFDB .hea + "
                    ".mat/.dat; alarm type from the header's comment lines, alarm at 300 s) against the record's own "
                    "ECG leads, PLETH, ABP and the ECG synthesized from PLETH. Exit 0 whatever the verdict; an "
                    "alarm system must treat 'uncertain' as 'true' (docs/alarms.md).")
    ap.add_argument("record", help="record path without extension, e.g. ../shared/data/challenge2015/v100s")
    ap.add_argument("--mode", choices=core.MODES, default="realtime",
                    help="realtime: data up to the alarm only; retrospective: also --wait-s after it")
    ap.add_argument("--wait-s", type=float, default=30.0, help="retrospective mode's wait after the alarm (s)")
    ap.add_argument("--translator", default="classic",
                    help="translator spec for the ECG synthesized from PLETH ('none' to leave it out)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (verdict, confidence, evidence)")
    a = ap.parse_args(argv)
    prog = "wavebridge alarm-check"
    if not (a.wait_s >= 0 and math.isfinite(a.wait_s)):
        print(f"{prog}: error: --wait-s must be a finite number >= 0", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        rec, v = check_record(a.record, a.mode, a.wait_s, None if a.translator.lower() == "none" else a.translator)
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
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
