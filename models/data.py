"""Training/validation data: BIDMC and Challenge 2015 records, fixed splits, 100 Hz arrays, batch sampling.

BIDMC records 06-09, 20-23 and 38-39 are the same patients, so the split is by patient: patients are
listed in record order (a multi-record patient counts once) and every 5th patient starting with the
3rd is held out for validation. The rule, not a hand-picked list, decides.

Challenge 2015 records (250 Hz, `../shared/data/challenge2015`) carry no patient id, so they are split by
record: the 300 names of its `RECORDS` file in sorted order, every 5th starting with the 3rd held out (the
same rule, applied before records without both lead II and PLETH are dropped, so the split does not depend on
that check). What that can leak: one patient with several alarms has several records, which may land on both
sides, so held-out Challenge figures can be optimistic about unseen patients; BIDMC's split has no such leak.
Record names tell the datasets apart: BIDMC's are two digits ("01"), Challenge's are its own ("a134s").
"""
from __future__ import annotations

import sys

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.batch import ModelBatch, TrainingBatch, sex_code
from models.prep import (align_ppg, beat_templates, ecg_prior, estimate_pat_s, finite, lowres_then_up, prior_translator, zscore)
from operators.processing.beatsr import paste_high_band, qrs_template, sr_cutoff_hz
from operators.translator import PairedContext
from operators.processing.rpeaks import detect_rpeaks
from operators.io.records import canonical_name, read_recording
from operators.processing.resample import resample
from operators.vocab import CANONICAL_RATE_HZ, LOWRES_KINDS, TASK_ECG_SR, TASK_PPG2ECG

SAME_PATIENT = (("06", "07", "08", "09"), ("20", "21", "22", "23"), ("38", "39"))
ALL_RECORDS = tuple(f"{i:02d}" for i in range(1, 41))
SR_SOURCE_RATES = (25.0, 50.0)
# ECG SR augmentation (refiner stage): replay a window faster or slower (heart rate and QRS width scale
# together) and/or with flipped polarity. Factors are k/20 so the polyphase resampler works with small
# integer ratios.
STRETCH_FACTORS = tuple(k / 20 for k in range(16, 26) if k != 20)
AUG_MARGIN = 100  # samples of filter run-in on each side, cropped after decimation


def patients() -> list[tuple[str, ...]]:
    """BIDMC's patients in record order, each as the tuple of its record names."""
    grouped = {r: g for g in SAME_PATIENT for r in g}
    out, seen = [], set()
    for r in ALL_RECORDS:
        group = grouped.get(r, (r,))
        if group not in seen:
            seen.add(group)
            out.append(group)
    return out


def split() -> tuple[list[str], list[str]]:
    """(train records, validation records), split by patient."""
    train, val = [], []
    for i, group in enumerate(patients()):
        (val if i % 5 == 2 else train).extend(group)
    return train, val


def is_bidmc_name(name: str) -> bool:
    """A BIDMC record name as training and evaluation list them ("01"-"40")."""
    return len(name) == 2 and name.isdigit()


def challenge_paired(root: Path, name: str) -> bool:
    """Whether Challenge record `name`'s header lists both lead II and PLETH (read from the header only)."""
    lines = (root / f"{name}.hea").read_text().splitlines()
    n_sig = int(lines[0].split()[1])
    have = {canonical_name(ln.split()[-1]) for ln in lines[1 : 1 + n_sig] if ln.strip()}
    return {"II", "PLETH"} <= have


def challenge_split(root: Path) -> tuple[list[str], list[str]]:
    """(train, held-out) Challenge 2015 records with lead II + PLETH, split by record (module doc)."""
    names = sorted(ln.strip() for ln in (root / "RECORDS").read_text().splitlines() if ln.strip())
    train, val = [], []
    for i, name in enumerate(names):
        if challenge_paired(root, name):
            (val if i % 5 == 2 else train).append(name)
    return train, val


@dataclass
class TrainingRecord:
    """One recording made ready for training: lead II and PLETH at 100 Hz plus what the sampler draws from them.

    Not `operators.io.records.Recording` (a file's channels at their own rates): this one is resampled, NaN runs
    interpolated as serving does (`models.prep.finite`), with R-peaks, low-rate versions and an unusable mask."""

    name: str
    ecg: np.ndarray  # lead II at 100 Hz, float32
    ppg: np.ndarray  # PLETH at 100 Hz
    age: float | None
    sex: str | None
    pat_s: float  # median pulse-arrival delay over the whole record (R-peak -> PPG peak)
    rpeaks: np.ndarray  # R-peak indices of `ecg`
    lowres: dict  # (modality, rate, kind) -> the signal as a `rate` Hz monitor sends it, back at 100 Hz (prep.LOWRES_KINDS)
    bad: np.ndarray | None = None  # cumulative count of unusable samples (missing or flat in either signal), len + 1

    def usable(self, start: int, length: int) -> bool:
        """Whether `length` samples from `start` hold no missing or flat stretch (`unusable_mask`)."""
        return self.bad is None or self.bad[start + length] == self.bad[start]


FLAT_S = 2.0  # a stretch this long with (almost) no variation is a sensor off or a lead off, not signal


def unusable_mask(x: np.ndarray, missing: np.ndarray, rate: float = CANONICAL_RATE_HZ) -> np.ndarray:
    """Samples not to train on: `missing` (non-finite in the record) or inside a flat `FLAT_S` stretch of `x`
    (a Challenge PLETH whose sensor is off, or an ECG lead off). Training on them would teach the model to draw
    beats from nothing, which serving refuses to do (flat sources are never translated)."""
    w = int(FLAT_S * rate)
    bad = missing.copy()
    if len(x) >= w:
        sd = np.lib.stride_tricks.sliding_window_view(x, w).std(axis=1)
        flat = sd <= 1e-3 * max(float(np.std(x)), 1e-9)
        for s in np.flatnonzero(flat):  # few in practice; each marks its own stretch
            bad[s : s + w] = True
    return bad


def missing_at_canonical(raw: np.ndarray, rate_hz: float, n: int) -> np.ndarray:
    """Where `raw` (sampled at `rate_hz`) is non-finite, as a mask over its `n` samples at 100 Hz: the nearest
    sample of each non-finite one (`unusable_mask`'s `missing`, `models.evaluate`'s unscored reference samples)."""
    t = np.flatnonzero(~np.isfinite(raw)) * (CANONICAL_RATE_HZ / rate_hz)
    out = np.zeros(n, bool)
    out[np.clip(np.round(t).astype(np.int64), 0, n - 1)] = True
    return out


def load_record(path: Path, with_lowres: bool = True) -> TrainingRecord:
    """Read the WFDB record at `path` (lead II and PLETH) into a `TrainingRecord`; `with_lowres` also makes its
    25 and 50 Hz versions (every `LOWRES_KINDS` way) for SR windows."""
    rec = read_recording(path, signals=["II", "PLETH"])
    sig, missing = {}, {}
    for name, key in (("II", "ecg"), ("PLETH", "ppg")):
        raw = rec.signals[name].astype(np.float64)
        x = finite(raw)  # as serving repairs a window: NaN runs interpolated (a zero run would be a fake beat)
        sig[key] = resample(x, rec.rates[name], CANONICAL_RATE_HZ, method="polyphase").astype(np.float32)
        missing[key] = missing_at_canonical(raw, rec.rates[name], len(sig[key]))
    n = min(len(sig["ecg"]), len(sig["ppg"]))
    ecg, ppg = sig["ecg"][:n], sig["ppg"][:n]
    bad = unusable_mask(ecg, missing["ecg"][:n]) | unusable_mask(ppg, missing["ppg"][:n])
    lowres = {}
    if with_lowres:
        for mod, x in (("ecg", ecg), ("ppg", ppg)):
            for r in SR_SOURCE_RATES:
                for kind in LOWRES_KINDS:  # monitors differ: some low-pass before decimating, some don't
                    lowres[(mod, r, kind)] = lowres_then_up(x, r, kind)
    return TrainingRecord(path.name, ecg, ppg, rec.age, rec.sex, estimate_pat_s(ecg, ppg, CANONICAL_RATE_HZ),
                  detect_rpeaks(ecg, CANONICAL_RATE_HZ), lowres, np.concatenate([[0], np.cumsum(bad)]))


def record_path(name: str, bidmc_root: Path, challenge_root: Path | None = None) -> Path:
    """Where record `name` lives: BIDMC's "NN" under `bidmc_root`, any other name under `challenge_root`."""
    if is_bidmc_name(name):
        return bidmc_root / f"bidmc{name}"
    if challenge_root is None:
        raise ValueError(f"record {name!r} is not a BIDMC record and no Challenge 2015 folder was given")
    return challenge_root / name


def load_records(root: Path, names: list[str], with_lowres: bool = True, challenge_root: Path | None = None,
                 progress: bool = False) -> list[TrainingRecord]:
    """`load_record` for each of `names` (`record_path` finds them); `progress` prints every 25 records."""
    out = []
    for i, n in enumerate(names):
        out.append(load_record(record_path(n, root, challenge_root), with_lowres))
        if progress and (i + 1) % 25 == 0:
            print(f"  loaded {i + 1}/{len(names)} records", flush=True)
    return out




class Sampler:
    """Draws random training windows, each prepared as serving prepares a request (`models.batch.ModelBatch`).

    Parameters
    ----------
    records : list of TrainingRecord
        What to draw from (in proportion to their length).
    window : int
        Samples per window at 100 Hz.
    context : (int, int)
        (min, max) length in samples of the paired segment beat templates are drawn from.
    template : int
        Samples per beat template.
    seed : int
        Seeds the sampler's random stream (saved in checkpoints).
    default_pat_s : float
        Pulse-arrival delay in s for PPG->ECG rows without a measured one (the population's, as serving uses).
    """

    def __init__(self, records: list[TrainingRecord], window: int, context: tuple[int, int], template: int, seed: int,
                 default_pat_s: float):
        self.records, self.window, self.context, self.template = records, window, context, template
        self.default_pat_s = default_pat_s
        self.prior_translator = prior_translator()  # the same classic prior serving draws
        self.rng = np.random.default_rng(seed)
        lengths = np.array([len(r.ecg) for r in records], np.float64)
        # records drawn in proportion to their length (BIDMC's 8 min and Challenge's 5 min alike per hour);
        # equal lengths (BIDMC alone, the shipped weights' recipe) keep the uniform draw, so that run reproduces
        self._p = None if np.all(lengths == lengths[0]) else lengths / lengths.sum()

    def _record(self) -> TrainingRecord:
        if self._p is None:
            return self.records[self.rng.integers(len(self.records))]
        return self.records[self.rng.choice(len(self.records), p=self._p)]

    def _start(self, r: TrainingRecord, lo: int, hi: int, length: int, tries: int = 20) -> int:
        """A start in [lo, hi) whose `length` samples are usable (`TrainingRecord.usable`); after `tries` draws the last."""
        for _ in range(tries):
            s = int(self.rng.integers(lo, hi))
            if r.usable(s, length):
                return s
        return s

    def tokenizer_batch(self, batch: int, length: int) -> dict[str, np.ndarray]:
        """{"ecg": (batch, length), "ppg": (batch, length)} float32 windows at 100 Hz, each z-scored on its own."""
        out = {}
        for mod in ("ecg", "ppg"):
            xs = []
            for _ in range(batch):
                r = self._record()
                x = getattr(r, mod)
                s = self._start(r, 0, len(x) - length, length)
                xs.append(zscore(x[s : s + length])[0])
            out[mod] = np.stack(xs)
        return out

    def translator_batch(self, batch: int, p_task=(0.5, 0.3, 0.2), p_context: float = 0.75,
                         lowres_kinds: tuple[str, ...] = ("fir", "plain"), p_sr_context: float = 0.0,
                         p_ecg_stretch: float = 0.0, p_ecg_flip: float = 0.0) -> TrainingBatch:
        """`batch` windows, task drawn per row with probabilities `p_task` (PPG->ECG, ECG SR, PPG SR).

        PPG->ECG rows carry the patient's beat templates with probability `p_context` and the classic synthesis as
        `prior`. SR rows come from a 25 or 50 Hz version made one of the `lowres_kinds` ways; ECG SR rows carry the
        high band of the patient's context beat pasted on the source as `prior` with probability `p_sr_context`
        (`operators.processing.beatsr`; the refiner's input), and are time-stretched with probability
        `p_ecg_stretch`, sign-flipped with `p_ecg_flip` (`augment_ecg`)."""
        w, rng = self.window, self.rng
        src, tgt, tgt_src, prior = (np.zeros((batch, w), np.float32) for _ in range(4))
        ctx_e, ctx_p = (np.zeros((batch, self.template), np.float32) for _ in range(2))
        task = rng.choice(3, size=batch, p=p_task)
        has_ctx = np.zeros(batch, np.float32)
        rate = np.full(batch, CANONICAL_RATE_HZ, np.float32)
        age = np.full(batch, np.nan, np.float32)
        sex = np.zeros(batch, np.int64)
        pat = np.zeros(batch, np.float32)
        for b in range(batch):
            r = self._record()
            s = self._start(r, 0, len(r.ecg) - w, w)
            if rng.random() < 0.8:  # priors are sometimes unknown at the bedside
                age[b] = r.age if r.age is not None else np.nan
                sex[b] = sex_code(r.sex)
            if task[b] == TASK_PPG2ECG:
                src[b], tgt[b], prior[b], rate[b], tpl, pat[b] = self._ppg2ecg_row(r, s, p_context)
                tgt_src[b] = tgt[b]
                if tpl is not None:
                    (ctx_e[b], ctx_p[b]), has_ctx[b] = tpl, 1.0
            else:
                src[b], tgt[b], tgt_src[b], prior[b], rate[b] = self._sr_row(
                    r, s, int(task[b]), lowres_kinds, p_sr_context, p_ecg_stretch, p_ecg_flip)
        # as the engine: the context's pulse delay where measured, else the population's; PPG shifted by it
        pat = np.where((has_ctx > 0) & np.isfinite(pat), pat, self.default_pat_s).astype(np.float32)
        for i in np.flatnonzero(task == TASK_PPG2ECG):
            src[i] = align_ppg(src[i], float(pat[i]))
        inputs = ModelBatch(source=src, task=task, source_rate_hz=rate, age_years=age, sex=sex, pat_s=pat,
                            has_context=has_ctx, context_ecg=ctx_e, context_ppg=ctx_p, prior=prior)
        return TrainingBatch(inputs, tgt, tgt_src)

    def _ppg2ecg_row(self, r: TrainingRecord, s: int, p_context: float):
        """(source, target, prior, source rate in Hz, beat templates or None, context pulse delay in s) of the
        window at `s`; the source not yet shifted by the delay."""
        w, rng, n = self.window, self.rng, len(r.ecg)
        context, tpl, pat_s = None, None, 0.0
        if rng.random() < p_context:
            # a paired segment of the same patient from elsewhere in the record (no overlap)
            c = int(rng.integers(self.context[0], self.context[1] + 1))
            cs = self._context_start(n, s, c)
            if cs is not None:
                e, p = r.ecg[cs : cs + c], r.ppg[cs : cs + c]
                rp = r.rpeaks[(r.rpeaks >= cs) & (r.rpeaks < cs + c)] - cs
                tpl = beat_templates(e, p, CANONICAL_RATE_HZ, rpeaks=rp)
                if tpl is not None:
                    pat_s = estimate_pat_s(e, p, CANONICAL_RATE_HZ)
                    context = PairedContext(e, p, CANONICAL_RATE_HZ)
        prior = ecg_prior(self.prior_translator, r.ppg[s : s + w], context)
        source_rate_hz = float(rng.choice([62.5, 100.0, 125.0, 250.0]))
        return zscore(r.ppg[s : s + w])[0], zscore(r.ecg[s : s + w])[0], prior, source_rate_hz, tpl, pat_s

    def _sr_row(self, r: TrainingRecord, s: int, task: int, lowres_kinds: tuple[str, ...], p_sr_context: float,
                p_ecg_stretch: float, p_ecg_flip: float):
        """(source, target, target in the source's z-units, prior, source rate in Hz) of an SR window at `s` (an
        augmented ECG window draws its own start)."""
        w, rng, n = self.window, self.rng, len(r.ecg)
        mod = "ecg" if task == TASK_ECG_SR else "ppg"
        source_rate_hz = float(rng.choice(SR_SOURCE_RATES))
        kind = lowres_kinds[int(rng.random() * len(lowres_kinds))]
        full = getattr(r, mod)
        aug = None
        if mod == "ecg" and (p_ecg_stretch > 0 or p_ecg_flip > 0):
            factor = float(rng.choice(STRETCH_FACTORS)) if rng.random() < p_ecg_stretch else 1.0
            aug = (factor, -1.0 if rng.random() < p_ecg_flip else 1.0)
            aug = None if aug == (1.0, 1.0) else aug
        if aug is not None:
            before, after = augment_span(w, aug[0], AUG_MARGIN)
            s = self._start(r, before, n - after + 1, after)
            # one resampled span: the target is its middle, the source its decimation, margins cropped
            z = augment_ecg(full, s, w, *aug, margin=AUG_MARGIN)
            y = z[AUG_MARGIN:-AUG_MARGIN]
            x = lowres_then_up(z, source_rate_hz, kind)[AUG_MARGIN:-AUG_MARGIN]
        else:
            y = full[s : s + w]
            x = r.lowres[(mod, source_rate_hz, kind)][s : s + w]
        src, mu, sd = zscore(x)
        prior = np.zeros(w, np.float32)
        if p_sr_context > 0 and task == TASK_ECG_SR and rng.random() < p_sr_context:
            c = int(rng.integers(self.context[0], self.context[1] + 1))
            span = augment_span(c, aug[0])[1] if aug else c
            cs = self._context_start(n, s, span, augment_span(w, aug[0])[1] if aug else w)
            if cs is not None:
                ctx_ecg = augment_ecg(full, cs, c, *aug) if aug else full[cs : cs + c]
                tpl = qrs_template(ctx_ecg, CANONICAL_RATE_HZ, sr_cutoff_hz(source_rate_hz))
                if tpl is not None:  # the refiner's input only: the translator never sees SR context
                    prior = paste_high_band(x, CANONICAL_RATE_HZ, tpl) / sd
        return src, zscore(y)[0], (y - mu) / sd, prior, source_rate_hz

    def _context_start(self, n: int, s: int, c: int, w: int | None = None) -> int | None:
        """Start of a `c`-sample segment that does not overlap the `w`-sample window at `s`."""
        w = self.window if w is None else w
        for _ in range(10):
            cs = int(self.rng.integers(0, n - c))
            if cs + c <= s or cs >= s + w:
                return cs
        return None


def augment_span(length: int, factor: float, margin: int = 0) -> tuple[int, int]:
    """(samples before `start`, samples from `start` on) of the original signal `augment_ecg` reads: the one
    place that arithmetic lives, so callers drawing a start know how much room to leave."""
    return int(round(margin * factor)), int(round((length + margin) * factor)) + 2


def augment_ecg(x: np.ndarray, start: int, length: int, factor: float, sign: float, margin: int = 0) -> np.ndarray:
    """`length` (+ 2 `margin`) samples of `x` from `start` replayed `factor` times faster, times `sign`.

    The input span is `length * factor` samples (margins too, so they lie outside the window on both sides);
    polyphase resampling keeps the band the SR target is scored on."""
    before, after = augment_span(length, factor, margin)
    lo, hi = start - before, start + after
    if lo < 0 or hi > len(x):
        raise ValueError(f"augment_ecg: span {lo}..{hi} outside the signal (0..{len(x)})")
    y = resample(np.asarray(x[lo:hi], np.float64), CANONICAL_RATE_HZ * factor, CANONICAL_RATE_HZ, method="polyphase")
    n = length + 2 * margin
    if len(y) < n:
        raise ValueError("augment_ecg: resampled span too short")
    return (sign * y[:n]).astype(np.float32)


# The one path in the package computed from a file's place: the datasets live in `shared/data` beside the
# checkout (a checkout at /work/main reads /work/shared/data; a worktree's parent folder holds a `shared` link),
# so every command finds them from any working directory. Tools take an explicit folder to read another copy.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class DatasetPlace:
    """Where a dataset lives under `DATA_DIR`, the file whose presence shows its records are there, and the
    command-line option that names another folder (quoted in the error when it is missing)."""

    title: str
    folder: str
    marker: str
    option: str


DATASET_PLACES = {
    "bidmc": DatasetPlace("BIDMC", "bidmc", "bidmc01.hea", "--data"),
    "challenge": DatasetPlace("Challenge 2015", "challenge2015", "RECORDS", "--challenge-data"),
}


class DatasetNotFound(FileNotFoundError):
    """A dataset's records are not in the folder looked at; the message is one line naming it and the option."""

    def __init__(self, dataset: str, root: Path):
        place = DATASET_PLACES[dataset]
        super().__init__(f"{place.title} records not found under {root} (pass {place.option})")
        self.dataset, self.root = dataset, root


def dataset_root(dataset: str, explicit: str | Path | None = None) -> Path:
    """Folder of a dataset's records, whether or not they are there.

    Parameters
    ----------
    dataset : str
        "bidmc" or "challenge" (a key of `DATASET_PLACES`).
    explicit : str or Path, optional
        A folder the user named; when empty, the dataset's folder under `DATA_DIR`.

    Returns
    -------
    Path
    """
    return Path(explicit) if explicit else DATA_DIR / DATASET_PLACES[dataset].folder


def find_dataset(dataset: str, explicit: str | Path | None = None) -> Path:
    """Folder holding a dataset's records, or an error that says what is missing where.

    Parameters
    ----------
    dataset : str
        "bidmc" or "challenge".
    explicit : str or Path, optional
        A folder the user named (else the default, `dataset_root`).

    Returns
    -------
    Path
        The folder; its marker file (`DatasetPlace.marker`) exists.

    Raises
    ------
    DatasetNotFound
        When the marker file is not there.
    """
    root = dataset_root(dataset, explicit)
    if not (root / DATASET_PLACES[dataset].marker).exists():
        raise DatasetNotFound(dataset, root)
    return root


def found_dataset(dataset: str, explicit: str | Path | None = None) -> Path | None:
    """`find_dataset` for a command's main: the folder, or None after printing the error to stderr as one line
    (the caller then exits with status 2)."""
    try:
        return find_dataset(dataset, explicit)
    except DatasetNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
