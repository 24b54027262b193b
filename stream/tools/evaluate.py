"""`wavebridge evaluate`: CLMT vs classic baselines on held-out records of BIDMC and Challenge 2015, per record,
per dataset and overall.

The protocol (which records, what each is put through, how it is scored, the report) is `models.evaluate`. This
command reads the options, picks the records and plugs in the translate step: every method runs through the
same streaming window logic as the service (`stream.tools.offline`), so the numbers are what a bed would get.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from models.data import DatasetNotFound, dataset_root, find_dataset, record_path
from models.evaluate import (DATASETS, PPG_RATES, SR_INPUTS, TASKS, EvalOptions, Methods, evaluate, held_out_records,
                             records_by_dataset)
from operators.io.records import Recording
from operators.translator import PairedContext, Translator, load_translator
from stream.config import file_write_problem
from stream.tools.cli import ArgumentParser


def translate_array(translator: Translator, task: str, x: np.ndarray, rate: float, target_rate: float, signal: str,
                    context: PairedContext | None = None, age: float | None = None,
                    sex: str | None = None) -> np.ndarray:
    """One signal through the service's own window/stitch logic (`stream.tools.offline`), output on its grid: the
    samples of a gap the service leaves (a NaN run in `x`) stay NaN, so everything after it stays in step.

    The `models.evaluate.TranslateArray` step of `wavebridge evaluate`; its parameters (rates in Hz) and result
    are described there.
    """
    from stream.tools.offline import translate_recording  # Kafka-free: the pipeline core without a broker

    rec = Recording("eval", {signal: np.asarray(x, np.float32)}, {signal: rate}, {signal: ""}, age, sex, {signal: signal})
    res = translate_recording(rec, task, target_rate=target_rate, context=context, translator=translator, signal=signal)
    values = next(iter(res.columns.values())).astype(np.float64)
    n = int(round(len(x) * target_rate / rate))
    out = np.full(n, np.nan)
    idx = np.round(res.times_s * target_rate).astype(np.int64)
    ok = (idx >= 0) & (idx < n)
    out[idx[ok]] = values[ok]
    return out


def _comma_list(ap: argparse.ArgumentParser, option: str, value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        ap.error(f"{option}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; choose from {', '.join(allowed)}")
    return tuple(items)


def _plan(ap: argparse.ArgumentParser, args: argparse.Namespace, datasets: tuple[str, ...],
          folders: dict[str, str | None]) -> dict[str, list[str]]:
    """dataset -> the record names to evaluate (the held-out ones unless --records names others)."""
    if args.records:
        return records_by_dataset([n.strip() for n in args.records.split(",") if n.strip()])
    plan = {}
    for d in datasets:
        given = folders[d]
        try:
            root = find_dataset(d, given)
        except DatasetNotFound as exc:
            if args.datasets is not None or given:  # asked for by name or folder: an error, not a silent skip
                ap.error(f"--datasets {d}: {exc}" if args.datasets is not None else str(exc))
            print(f"{exc}; {d} skipped", flush=True)
            continue
        plan[d] = held_out_records(d, root, args.max_records)
    return plan


def cli(argv: list[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, on one line
    ap = ArgumentParser(prog="wavebridge evaluate", description=summary.split(": ", 1)[1])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--challenge-data", default=None, help="Challenge 2015 folder (default ../shared/data/challenge2015)")
    ap.add_argument("--datasets", default=None,
                    help=f"comma list of {', '.join(DATASETS)} (default: each whose records are found)")
    ap.add_argument("--records", default=None,
                    help="comma list of record names instead of the held-out ones: BIDMC's '03' or 'bidmc03', Challenge's 'v158s'")
    ap.add_argument("--max-records", type=int, default=0, metavar="N",
                    help="at most N held-out records per dataset, spread evenly over its list (a quick run); 0 = all")
    ap.add_argument("--weights", default=None, help="CLMT .safetensors (default: shipped weights)")
    ap.add_argument("--classic", default="classic", help="the classic translator spec to compare with (default classic)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--context-s", type=float, default=60.0, help="the first S seconds are the patient's context")
    ap.add_argument("--context-pick", type=float, default=0.0, metavar="S",
                    help="give the translators only the best S-second segment of that context, as the worker does "
                         "(operators.state.context.select_context; the worker's default is 10); 0 = all of it")
    ap.add_argument("--seconds", type=float, default=None, help="evaluate only this much of each record")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--ppg-rates", default="native",
                    help="comma list of the PLETH rates PPG->ECG translates from: native (the record's) and/or 25 (Hz)")
    ap.add_argument("--sr-input", default=",".join(SR_INPUTS),
                    help="comma list; how the 25 Hz input is made: iir = anti-aliased decimation (8th-order Butterworth), plain = every k-th sample")
    ap.add_argument("--json", default=None, help="also write all numbers here")
    args = ap.parse_args(argv)
    problem = file_write_problem(args.json) if args.json else None
    if problem:  # written after every record: a bad path must not wait for the first one
        ap.error(f"--json {args.json}: {problem}")
    # Checked before any work: an unknown name would otherwise evaluate nothing (tasks) or run
    # plain decimation under the user's label (sr-input), and still exit 0.
    options = EvalOptions(context_s=args.context_s, context_pick_s=args.context_pick, seconds=args.seconds,
                          tasks=_comma_list(ap, "--tasks", args.tasks, TASKS),
                          ppg_rates=_comma_list(ap, "--ppg-rates", args.ppg_rates, PPG_RATES),
                          sr_inputs=_comma_list(ap, "--sr-input", args.sr_input, SR_INPUTS))
    datasets = _comma_list(ap, "--datasets", args.datasets or ",".join(DATASETS), DATASETS)
    if args.max_records < 0:
        ap.error("--max-records must be >= 0")
    folders = {"bidmc": args.data, "challenge": args.challenge_data}  # None: the default place
    plan = _plan(ap, args, datasets, folders)
    if not plan:
        ap.error("no records to evaluate")
    roots = {d: dataset_root(d, folders[d]) for d in plan}
    for d, names in plan.items():  # before loading the model, not after evaluating the records before a bad one
        missing = [n for n in names if not record_path(n, roots[d], roots[d]).with_suffix(".hea").exists()]
        if missing:
            ap.error(f"--records: no {d} record {missing[0]} under {roots[d]} (--data / --challenge-data)")
    methods = Methods(clmt=load_translator("clmt", weights=args.weights, device=args.device),
                      classic=load_translator(args.classic), cubic=load_translator("classic", sr_method="cubic"))
    evaluate(plan, roots, options, methods, translate_array, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
