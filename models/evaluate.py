"""Model evaluation protocol: CLMT vs classic baselines on held-out records of BIDMC and Challenge 2015, per
record, per dataset and overall.

Which records: the held-out ones of `models.data` (never trained on). BIDMC's validation patients (125 Hz,
8 min, split by patient) and Challenge 2015's held-out records with lead II + PLETH (250 Hz, 5-5.5 min, split by
record: one patient may have records on both sides, so those figures can be optimistic).

How each record is run (`Evaluation.add_record`):
  * PPG->ECG: the first `context_s` seconds are the patient's earlier paired ECG+PPG context; the rest is
    translated from PLETH alone, with and without that context. The translators get all of it; the worker
    instead gives them the best 10 s segment of what it holds (`context_pick_s=10` does that). PPG rate "25"
    also translates the PLETH brought to 25 Hz (anti-aliased; the context stays at the record's rate).
    Reference R-peaks are detected on the real lead II (neither dataset's beats are annotated here).
  * SR: the same part after the context, lead II and PLETH brought to 25 Hz (anti-aliased decimation "iir", and
    plain every-k-th-sample "plain", as monitors differ) and super-resolved to 100 Hz; the reference is the
    original resampled to 100 Hz. Lead II also runs "+context": the same full-rate context as above supplies
    the patient's QRS (CLMT's refiner input; the classic baseline pastes it, operators.processing.beatsr).

How outputs are scored (`Result`): R-peak F1 at +-50 / +-150 ms (one-to-one matching, pooled counts), HR MAE per
8 s window, waveform Pearson and RMSE per 8 s window (mean over windows), raw and after the best shift within
+-150 ms per window ("aligned", the figure comparable with published PPG->ECG results on pre-aligned windows).

This module never runs a translator itself: the caller passes the translate step (`TranslateArray`). The
`wavebridge evaluate` command (stream/tools/evaluate.py) plugs in the service's own window/stitch logic (the
offline pipeline), so the numbers are what a bed would get; models/ cannot import stream/ (tests/test_layering.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from models.data import challenge_split, is_bidmc_name, missing_at_canonical, record_path, split
from operators.io.records import Recording, read_recording
from operators.processing.metrics import (hr_mae, peak_f1, pool_windows, sum_scores, windowed_aligned_pearson_rmse,
                                          windowed_pearson_rmse)
from operators.processing.samples import fill_nonfinite
from operators.processing.resample import low_rate_copy, resample
from operators.processing.rpeaks import detect_rpeaks
from operators.state.context import select_context
from operators.translator import PPG2ECG, SR, PairedContext, Translator
from operators.vocab import LOW_RATE_HZ, SR_TARGET_HZ

SR_RATE, SR_TARGET = LOW_RATE_HZ, SR_TARGET_HZ  # the low monitor rate SR is evaluated from, and the rate it produces
TASKS = ("ppg2ecg", "sr-ecg", "sr-ppg")
SR_INPUTS = ("iir", "plain")  # how the 25 Hz input is made (operators.vocab.LOWRES_KINDS): anti-aliased, every k-th sample
DATASETS = ("bidmc", "challenge")
PPG_RATES = ("native", "25")  # PLETH rates PPG->ECG translates from: the record's own, 25 Hz
MAX_SHIFT_S = 0.15  # "aligned": best shift of each 8 s window within this
HR_WINDOW_S = 8.0


class TranslateArray(Protocol):
    """The translate step the protocol scores: one whole signal in, the translation on the target grid out.

    Parameters
    ----------
    translator : Translator
        The method being evaluated.
    task : str
        `operators.translator.PPG2ECG` or `SR`.
    x : np.ndarray
        The source signal at `rate`; a NaN run is a gap.
    rate : float
        Sample rate of `x`, Hz.
    target_rate : float
        Sample rate of the output, Hz.
    signal : str
        The source channel name ("PLETH", "II").
    context : PairedContext, optional
        The patient's earlier paired ECG + PPG.
    age : float, optional
        Years.
    sex : str, optional
        "M" or "F".

    Returns
    -------
    np.ndarray
        float64, exactly ``round(len(x) * target_rate / rate)`` samples on the grid starting with `x`'s first
        sample; NaN where no output was made (a gap), so everything after it stays in step with the reference.
    """

    def __call__(self, translator: Translator, task: str, x: np.ndarray, rate: float, target_rate: float,
                 signal: str, context: PairedContext | None = None, age: float | None = None,
                 sex: str | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Methods:
    """The translators compared: CLMT, the classic translator (polyphase SR, template PPG->ECG) and the classic
    translator with cubic SR."""

    clmt: Translator
    classic: Translator
    cubic: Translator


@dataclass(frozen=True)
class EvalOptions:
    """What each record is put through (module doc).

    Attributes
    ----------
    context_s : float
        The first `context_s` seconds of a record are the patient's paired context, not scored.
    context_pick_s : float
        When > 0, the translators get only the best segment of this many seconds of that context, as the worker
        does (`operators.state.context.select_context`); 0 gives them all of it.
    seconds : float, optional
        Score only this many seconds after the context; None scores the whole record.
    tasks, ppg_rates, sr_inputs : tuple of str
        Subsets of `TASKS`, `PPG_RATES`, `SR_INPUTS`.
    """

    context_s: float = 60.0
    context_pick_s: float = 0.0
    seconds: float | None = None
    tasks: tuple[str, ...] = TASKS
    ppg_rates: tuple[str, ...] = ("native",)
    sr_inputs: tuple[str, ...] = SR_INPUTS


@dataclass
class Result:
    """The scores of one row (task x input x method) over records: per-record peak scores and HR errors, per-window
    Pearson/RMSE raw and aligned, pooled by `overall`."""

    f1_50: list = field(default_factory=list)  # PeakScore per record
    f1_150: list = field(default_factory=list)
    hr: list = field(default_factory=list)
    windows: list = field(default_factory=list)  # WindowScores per record
    aligned: list = field(default_factory=list)  # the same windows after the best shift

    def add(self, ref: np.ndarray, out: np.ndarray, rate: float, peaks: bool = True) -> dict:
        """Score one record's output against its reference and keep the scores.

        Parameters
        ----------
        ref, out : np.ndarray
            Reference and output on the same grid (the longer is cut to the shorter); NaN marks a gap.
        rate : float
            Their sample rate, Hz.
        peaks : bool
            Also score R-peaks and heart rate (ECG outputs only).

        Returns
        -------
        dict
            This record's figures: pearson, pearson_aligned, rmse, and with `peaks` f1_50, f1_150, hr_mae (bpm).
        """
        n = min(len(ref), len(out))
        ref, out = ref[:n], out[:n]
        w = windowed_pearson_rmse(ref, out, rate)
        a = windowed_aligned_pearson_rmse(ref, out, rate, MAX_SHIFT_S)
        self.windows.append(w)
        self.aligned.append(a)
        row = {"pearson": w.mean_pearson, "pearson_aligned": a.mean_pearson, "rmse": w.mean_rmse}
        if peaks:
            # a gap (NaN run) in either holds no beat: interpolated across for the detector
            rp, tp = detect_rpeaks(fill_nonfinite(ref)[0], rate), detect_rpeaks(fill_nonfinite(out)[0], rate)
            s50, s150 = peak_f1(rp, tp, rate, 0.05), peak_f1(rp, tp, rate, 0.15)
            self.f1_50.append(s50)
            self.f1_150.append(s150)
            h = hr_mae(rp, tp, rate, HR_WINDOW_S, n)
            self.hr.append(h)
            row |= {"f1_50": s50.f1, "f1_150": s150.f1, "hr_mae": h}
        return row

    def merge(self, other: Result) -> Result:
        """Both results' records in one (self's first)."""
        return Result(self.f1_50 + other.f1_50, self.f1_150 + other.f1_150, self.hr + other.hr,
                      self.windows + other.windows, self.aligned + other.aligned)

    def overall(self) -> dict:
        """Pooled figures: mean window Pearson/RMSE over all windows, F1 of the summed peak counts, mean HR MAE
        over records (bpm); `windows` is the number of windows."""
        w, a = pool_windows(self.windows), pool_windows(self.aligned)
        row = {"pearson": w.mean_pearson, "pearson_aligned": a.mean_pearson, "rmse": w.mean_rmse, "windows": len(w.pearson)}
        if self.f1_50:
            row |= {"f1_50": sum_scores(self.f1_50).f1, "f1_150": sum_scores(self.f1_150).f1,
                    "hr_mae": float(np.nanmean(self.hr)) if np.isfinite(self.hr).any() else float("nan")}
        return row


def merged(parts: list[Result]) -> Result:
    """`parts` pooled into one `Result`, in order."""
    out = Result()
    for p in parts:
        out = out.merge(p)
    return out


def format_row(row: dict) -> str:
    """One row's figures as ``f1_50=0.906  ...  rmse=0.038`` (those present)."""
    keys = ("f1_50", "f1_150", "hr_mae", "pearson", "pearson_aligned", "rmse")
    return "  ".join(f"{k.replace('pearson_aligned', 'aligned')}={row[k]:.3f}" for k in keys if k in row)


def spread_pick(names: list[str], most: int) -> list[str]:
    """At most `most` of `names`, evenly spread over the list (Challenge names are sorted by alarm type, so the
    first few would all be asystole records).

    Parameters
    ----------
    names : list of str
        Record names, in order.
    most : int
        How many to keep; <= 0 (or at least ``len(names)``) keeps all.

    Returns
    -------
    list of str
        The kept names in their order, first and last included.
    """
    if most <= 0 or most >= len(names):
        return list(names)
    return [names[int(i)] for i in np.linspace(0, len(names) - 1, most).round()]


def held_out_records(dataset: str, root: Path, most: int = 0) -> list[str]:
    """The held-out record names of a dataset (`models.data` splits).

    Parameters
    ----------
    dataset : str
        "bidmc" or "challenge".
    root : Path
        The dataset's folder (Challenge's split reads its `RECORDS` and headers; BIDMC's is fixed by name).
    most : int
        At most this many, spread evenly over the list (`spread_pick`); 0 = all.
    """
    return _split_records(dataset, root, 1, most)


def training_records(dataset: str, root: Path, most: int = 0) -> list[str]:
    """The training record names of a dataset (`models.data` splits); parameters as `held_out_records`."""
    return _split_records(dataset, root, 0, most)


def _split_records(dataset: str, root: Path, part: int, most: int) -> list[str]:
    return spread_pick((challenge_split(root) if dataset == "challenge" else split())[part], most)


def records_by_dataset(names: list[str]) -> dict[str, list[str]]:
    """Record names as a user writes them (BIDMC's "03" or "bidmc03", Challenge's "v158s") -> dataset -> names
    in the form the splits use; datasets without a name are left out."""
    names = [n[5:] if n.startswith("bidmc") and is_bidmc_name(n[5:]) else n for n in names]
    plan = {"bidmc": [n for n in names if is_bidmc_name(n)], "challenge": [n for n in names if not is_bidmc_name(n)]}
    return {d: v for d, v in plan.items() if v}


def comparison(rows: dict[str, dict]) -> list[tuple[str, dict, str, dict]]:
    """CLMT against the strongest classic method run on the same input, row by row.

    Parameters
    ----------
    rows : dict
        Row name ("sr-ecg 25->100 iir clmt +context") -> its figures (`Result.overall`).

    Returns
    -------
    list of tuple
        (task row without the method, CLMT figures, classic method, its figures) for each CLMT row that has a
        classic rival; the strongest is the one with the highest mean window Pearson: polyphase or cubic for SR,
        the context paste ("polyphase +context") for ECG SR + context, the template ("baseline") for PPG->ECG.
    """
    out = []
    for key, row in rows.items():
        parts = key.split(" ")
        if "clmt" not in parts:
            continue
        i = parts.index("clmt")
        task, rest = " ".join(parts[:i]), " ".join(parts[i + 1:])
        names = ("baseline",) if task.startswith("ppg2ecg") else ("polyphase",) if rest else ("polyphase", "cubic")
        rivals = {n: f"{task} {n}{' ' + rest if rest else ''}" for n in names}
        rivals = {n: r for n, r in rivals.items() if r in rows}
        if rivals:
            best = max(rivals, key=lambda n: rows[rivals[n]]["pearson"])
            out.append((f"{task}{' ' + rest if rest else ''}", row, best, rows[rivals[best]]))
    return out


def markdown_comparison(rows: dict[str, dict]) -> str:
    """`comparison` as a markdown table: Pearson raw / aligned, RMSE, and for ECG outputs F1 at +-50 / +-150 ms
    and HR MAE (bpm)."""
    cell = lambda r: (f"{r['pearson']:.4f} / {r['pearson_aligned']:.4f}, {r['rmse']:.4f}"
                      + (f", {r['f1_50']:.3f} / {r['f1_150']:.3f}, {r['hr_mae']:.2f}" if "f1_50" in r else ""))
    lines = ["| task | CLMT | strongest classic | classic method |", "|---|---|---|---|"]
    for task, a, method, b in comparison(rows):
        lines.append(f"| {task} | {cell(a)} | {cell(b)} | {method} |")
    return "\n".join(lines)


class Evaluation:
    """One evaluation run: records go in one at a time (`add_record`), scores pile up per dataset and row, and
    `report` / `write_json` / `print_summary` give them per dataset and pooled over the datasets.

    Parameters
    ----------
    options : EvalOptions
    methods : Methods
    translate : TranslateArray
        The translate step (module doc).
    say : callable
        Where progress lines go (default: print, flushed).
    """

    def __init__(self, options: EvalOptions, methods: Methods, translate: TranslateArray,
                 say: Callable[[str], None] | None = None):
        self.options, self.methods, self.translate = options, methods, translate
        self.say = say or (lambda line: print(line, flush=True))
        self.results: dict[str, dict[str, Result]] = {}  # dataset -> row -> scores
        self.per_record: dict[str, dict[str, dict]] = {}  # "dataset/name" -> row -> that record's figures
        self.done: dict[str, list[str]] = {}  # dataset -> records added, in order

    def add_record(self, dataset: str, name: str, rec: Recording) -> None:
        """Score every asked-for row on one record (lead II and PLETH at one rate; a record whose two rates differ
        is skipped with a note)."""
        o = self.options
        results = self.results.setdefault(dataset, {})
        rate = rec.rates["II"]
        if abs(rec.rates["PLETH"] - rate) > 1e-9:
            self.say(f"  {name}: lead II at {rate:g} Hz, PLETH at {rec.rates['PLETH']:g} Hz: skipped")
            self.done.setdefault(dataset, []).append(name)
            return
        ecg, ppg = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64)
        if o.seconds:
            n = int((o.context_s + o.seconds) * rate)
            ecg, ppg = ecg[:n], ppg[:n]
        self.say(f"{dataset} {name} ({rate:g} Hz, age {rec.age}, sex {rec.sex})")
        c = int(o.context_s * rate)
        meta = dict(age=rec.age, sex=rec.sex)
        ctx = PairedContext(ecg[:c], ppg[:c], rate)
        if o.context_pick_s:  # as the worker does: the best segment of that length from what it holds
            ctx = select_context(ecg[:c], ppg[:c], rate, o.context_pick_s)
            if ctx is None:
                self.say(f"  no {o.context_pick_s:g} s segment of the context passes selection: '+context' runs without")

        def score(key, ref, out, out_rate, peaks=True):
            row = results.setdefault(key, Result()).add(ref, out, out_rate, peaks)
            self.per_record.setdefault(f"{dataset}/{name}", {})[key] = row
            self.say(f"  {key:<44} {format_row(row)}")

        m = self.methods
        if "ppg2ecg" in o.tasks:
            ref = ecg[c:]
            for prate in o.ppg_rates:
                src, src_rate, tag = ppg[c:], rate, "ppg2ecg"
                if prate != "native":
                    src_rate, tag = float(prate), f"ppg2ecg@{prate}Hz"
                    src = low_rate_copy(src, rate, src_rate, "iir")
                for label, tr in (("clmt", m.clmt), ("baseline", m.classic)):
                    for with_ctx in (True, False):
                        out = self.translate(tr, PPG2ECG, src, src_rate, rate, "PLETH",
                                             context=ctx if with_ctx else None, **meta)
                        score(f"{tag} {label} {'+context' if with_ctx else 'no context'}", ref, out, rate)
        for sig, task in (("II", "sr-ecg"), ("PLETH", "sr-ppg")):
            if task not in o.tasks:
                continue
            x = rec.signals[sig].astype(np.float64)[c : len(ecg)]
            ref = resample(fill_nonfinite(x)[0], rate, SR_TARGET, method="polyphase")
            ref[missing_at_canonical(x, rate, len(ref))] = np.nan  # SR_TARGET is the canonical 100 Hz
            runs = [("clmt", m.clmt, None), ("polyphase", m.classic, None), ("cubic", m.cubic, None)]
            if sig == "II":
                runs += [("clmt +context", m.clmt, ctx), ("polyphase +context", m.classic, ctx)]
            for kind in o.sr_inputs:
                lo = low_rate_copy(x, rate, SR_RATE, kind)
                for label, tr, context in runs:
                    out = self.translate(tr, SR, lo, SR_RATE, SR_TARGET, sig, context=context, **meta)
                    score(f"{task} 25->100 {kind} {label}", ref, out, SR_TARGET, peaks=sig == "II")
        self.done.setdefault(dataset, []).append(name)

    def report(self) -> dict:
        """``{"datasets": {dataset: {"records", "overall": row -> figures}}, "overall": row -> figures}``, the
        last pooled over the datasets (`Result.overall`)."""
        done, results = self.done, self.results
        out = {"datasets": {d: {"records": names, "overall": {k: r.overall() for k, r in results.get(d, {}).items()}}
                            for d, names in done.items()}}
        keys = {k: None for d in done for k in results.get(d, {})}
        out["overall"] = {k: merged([results[d][k] for d in done if k in results.get(d, {})]).overall() for k in keys}
        return out

    def write_json(self, path: str | Path, complete: bool) -> None:
        """All numbers (options, records, `report`, per-record rows) to `path`, replaced atomically; `complete`
        False marks a file written after each record of a run still going."""
        o = self.options
        out = {"complete": complete, "context_s": o.context_s, "context_pick": o.context_pick_s,
               "max_shift_s": MAX_SHIFT_S, "records": [n for v in self.done.values() for n in v], **self.report(),
               "per_record": self.per_record}
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2, default=float))
        tmp.replace(path)

    def print_summary(self, elapsed_s: float) -> None:
        """Per dataset and pooled: every row's figures, then CLMT against the strongest classic method."""
        report = self.report()
        for dataset, names in self.done.items():
            self.say(f"\n{dataset}: overall over {len(names)} held-out records ({', '.join(names)}):")
            for k, row in report["datasets"][dataset]["overall"].items():
                self.say(f"  {k:<44} {format_row(row)}")
        self.say(f"\nall datasets ({', '.join(self.done)}), {elapsed_s:.0f}s:")
        for k, row in report["overall"].items():
            self.say(f"  {k:<44} {format_row(row)}")
        parts = [(d, report["datasets"][d]["overall"]) for d in self.done] + [("all", report["overall"])]
        for part, rows in parts:
            self.say(f"\nCLMT against the strongest classic method in this run ({part}; Pearson raw / aligned, RMSE, "
                     f"F1 +-50 / +-150 ms, HR MAE bpm):")
            self.say(markdown_comparison(rows))


def evaluate(plan: dict[str, list[str]], roots: dict[str, Path], options: EvalOptions, methods: Methods,
             translate: TranslateArray, json_path: str | Path | None = None) -> dict:
    """Run the protocol over records, printing each record's rows and then the summary.

    Parameters
    ----------
    plan : dict
        dataset -> the record names to evaluate, in order (`held_out_records` names the held-out ones).
    roots : dict
        dataset -> its folder (`models.data.find_dataset`).
    options, methods, translate
        As `Evaluation`.
    json_path : str or Path, optional
        Also write all numbers here, after every record (an interrupted long run keeps what it measured) and
        complete at the end.

    Returns
    -------
    dict
        `Evaluation.report`.
    """
    ev = Evaluation(options, methods, translate)
    t0 = time.time()
    for dataset, names in plan.items():
        ev.say(f"== {dataset}: {len(names)} records")
        for name in names:
            path = record_path(name, roots[dataset], roots[dataset])  # the name tells the dataset, whose folder it is
            ev.add_record(dataset, name, read_recording(path, signals=["II", "PLETH"]))
            if json_path:
                ev.write_json(json_path, complete=False)
    ev.print_summary(time.time() - t0)
    if json_path:
        ev.write_json(json_path, complete=True)
    return ev.report()
