"""Batched CLMT inference engine: the `Translator` the stream worker and the offline CLI use.

Per window: tokenize -> translator -> re-quantize -> decode -> refiner (sample-level correction, when the
weights have one); with weights whose refiner corrects the source itself (`refiner_draft` "source"), super-resolution
windows go to the refiner alone. One `translate()` call batches windows from many beds (grouped by length), on the
CPU or CUDA (config), under `torch.inference_mode`, in half precision on CUDA, with weights loaded from
safetensors (no pickle). Numpy pre/post-processing matches training exactly (`models.prep`).
Super-resolution of a source sampled at or above the canonical 100 Hz, or of a PLETH at 16 Hz or faster
(`_measured_enough`), skips the model: polyphase resampling.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models import weights as W
from models.allocator import keep_freed_memory
from models.blend import PriorBlend
from models.batch import Clmt, ModelBatch, WindowInput, sex_code
from models.prep import (PRIOR_FIDUCIAL, align_ppg, beat_templates, ecg_prior, estimate_pat_s, finite, prior_translator, to_canonical, zscore)
from operators.processing.beatsr import paste_high_band, qrs_template, sr_cutoff_hz
from operators.processing.quality import PULSE_BAND_HZ
from operators.state.context import ContextCache
from operators.processing.resample import merge_bands, resample
from operators.processing.rpeaks import detect_rpeaks
from operators.processing.samples import fit_length
from operators.translator import PPG2ECG, SR, PairedContext, TranslationRequest, is_ecg_signal
from operators.vocab import CANONICAL_RATE_HZ, TASK_ECG_SR, TASK_PPG2ECG, TASK_PPG_SR


MIN_CONTEXT_S = 3.0
# Values derived from beds' contexts kept prepared (features, template tokens, SR template: up to three per bed, one
# per bed and kind however often a bed's context is refreshed; about 10 KB each, so at most ~40 MB).
CONTEXT_CACHE = 4096
FLAT_REL = 1e-6  # a source whose spread is below this fraction of its magnitude is flat (no model pass)


def resolve_device(device: str = "auto") -> str:
    """The torch device to run on: "auto" is "cuda" when torch sees a GPU, else "cpu"; an explicit CUDA device
    without a GPU raises RuntimeError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU (set WAVEBRIDGE_DEVICE=cpu or auto)")
    return device


class ClmtTranslator:
    """The CLMT model behind the `operators.translator.Translator` protocol.

    Parameters
    ----------
    weights : str, optional
        A .safetensors file or its folder (default: the shipped `models/weights/clmt-small`).
    device : str
        "cpu", "cuda[:n]" or "auto" (CUDA when torch sees a GPU). Torch's CPU thread count is the process's
        business: set it where the process starts (`torch.set_num_threads`), not here. On the CPU the engine sets
        glibc's malloc thresholds for the process (`models.allocator.keep_freed_memory`): without them page
        faults cost about a sixth of the worker's CPU.
    half : bool, optional
        Half precision (default: on CUDA only).
    max_batch : int
        Most windows in one forward pass.
    """

    name = "clmt"

    def __init__(self, weights: str | None = None, device: str = "auto", half: bool | None = None, max_batch: int = 256):
        self.device = resolve_device(device)
        if self.device == "cpu":
            keep_freed_memory()
        tok, tr, refiner, self.cfg = W.load(weights, self.device)
        self.half = (self.device != "cpu") if half is None else half
        if self.half:
            for m in (tok, tr, refiner):
                if m is not None:
                    m.half()
        self.model = Clmt(tok, tr, refiner, self.cfg["refiner_tasks"], PriorBlend.from_config(self.cfg.get("prior_blend")),
                          W.refiner_draft(self.cfg))
        self.stride = tok.cfg.stride
        # draws the PPG->ECG prior the translator refines; keeps each served bed's beat model (its latest context's)
        self.prior_translator = prior_translator(cache_size=CONTEXT_CACHE)
        # ECG SR uses a full-rate context beat only if the refiner learnt to (weights say so)
        self.sr_context = refiner is not None and bool(self.cfg["refiner_sr_context"])
        self.template_len = int(self.cfg["template"])
        self.default_pat = float(self.cfg["default_pat_s"])
        self.ecg_scale = tuple(self.cfg["ecg_scale"])  # population (mean, std) of lead II windows, mV
        self.max_batch = max_batch
        self._lock = threading.Lock()  # one forward pass at a time; callers may be worker threads
        self._ctx_cache = ContextCache(CONTEXT_CACHE)
        self.name = f"clmt:{W.resolve(weights).stem}"  # tags every output: which weights made it
        if self.cfg["prior_fiducial"] != PRIOR_FIDUCIAL:
            # the translator learnt PPG->ECG priors timed at one fiducial; fed another, its input distribution moves
            raise ValueError(f"{W.resolve(weights).name}: trained on PPG->ECG priors timed at the pulse "
                             f"{self.cfg['prior_fiducial']}, serving times them at the pulse {PRIOR_FIDUCIAL}")

    # -- per-request numpy preparation -------------------------------------------------------------
    def _task_id(self, r: TranslationRequest) -> int:
        if r.task == PPG2ECG:
            return TASK_PPG2ECG
        if r.task == SR:
            return TASK_ECG_SR if is_ecg_signal(r.source_signal) else TASK_PPG_SR
        raise ValueError(f"unknown task {r.task!r}")

    def _prepare(self, r: TranslationRequest) -> _Prepared:
        task = self._task_id(r)
        x = to_canonical(finite(r.source), r.source_rate)
        z, mu, sd = zscore(x)
        pat, tpl, tpl_tokens, prior, source_up = self.default_pat, None, None, None, None
        ctx = r.context if task == TASK_PPG2ECG else None
        slot = r.bed
        feats = self._context_features(ctx, slot) if ctx is not None else None
        if feats is not None:
            ctx_100, tpl, ctx_pat, out_scale = feats  # this patient's ECG level and spread
            tpl_tokens = self._ctx_cache.get(ctx, "template_tokens", lambda: self._template_tokens(tpl), slot)
            if np.isfinite(ctx_pat):
                pat = ctx_pat
        elif task == TASK_PPG2ECG:
            out_scale = self.ecg_scale
        else:
            out_scale = (mu, sd)  # SR keeps the source's level and spread
            source_up = x  # the measured band, merged back in `_finish`
            sr_tpl = self._sr_template(r.context, r.source_rate, slot) if task == TASK_ECG_SR else None
            if sr_tpl is not None:  # the refiner's input: the patient's own QRS high band pasted on the source
                prior = (paste_high_band(x, CANONICAL_RATE_HZ, sr_tpl) / sd).astype(np.float32)
        if task == TASK_PPG2ECG:
            prior = ecg_prior(self.prior_translator, x, ctx_100 if feats is not None else None, bed=slot)
            z = align_ppg(z, pat)
        row = WindowInput(task=task, source=_pad(z, self.stride), source_rate_hz=float(r.source_rate),
                          age_years=float(r.age) if r.age is not None else np.nan, sex=sex_code(r.sex), pat_s=pat,
                          context=tpl, prior=_pad(prior, self.stride) if prior is not None else None,
                          context_tokens=tpl_tokens)
        return _Prepared(row, len(x), out_scale, source_up)

    def _sr_template(self, ctx: PairedContext | None, source_rate: float, slot=None):
        """The context's QRS template for ECG SR from `source_rate`, or None: no context, weights not trained for
        it, a context too slow to hold the band above the source's Nyquist frequency, or too few beats."""
        if ctx is None or not self.sr_context or source_rate >= CANONICAL_RATE_HZ or ctx.rate_hz < CANONICAL_RATE_HZ:
            return None
        if len(ctx.ecg) / ctx.rate_hz < MIN_CONTEXT_S:
            return None
        cutoff = sr_cutoff_hz(source_rate)
        return self._ctx_cache.get(ctx, ("sr", cutoff), lambda: qrs_template(np.asarray(ctx.ecg, np.float64), ctx.rate_hz, cutoff),
                                   slot)

    def _context_features(self, ctx: PairedContext, slot=None):
        """(context at 100 Hz, beat templates, pulse delay, ECG (mean, std)), or None if too short or without a usable
        beat (flat, noise, too few beats: its spread is not an ECG's either; a flat context ECG scaled PPG->ECG to
        ~3 mV peak to peak); cached per context version, in the bed's `slot` when given."""
        return self._ctx_cache.get(ctx, "ppg2ecg", lambda: self._build_context_features(ctx, slot), slot)

    def _template_tokens(self, tpl: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The (ECG, PPG) beat templates' tokens, each (K / stride, levels) int64: tokenized once per context version
        instead of in every window's forward pass (the tokenizer treats each row on its own, so the tokens are the
        ones the batch would have computed)."""
        dtype = torch.float16 if self.half else torch.float32
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a[None])).to(self.device, dtype)
        with self._lock, torch.inference_mode():
            e, p = self.model.context_tokens(t(tpl[0]), t(tpl[1]))
        return e[0].cpu().numpy(), p[0].cpu().numpy()

    def _build_context_features(self, ctx: PairedContext, slot=None):
        if len(ctx.ecg) / ctx.rate_hz < MIN_CONTEXT_S:
            return None
        ce = to_canonical(finite(ctx.ecg), ctx.rate_hz)
        cp = to_canonical(finite(ctx.ppg), ctx.rate_hz)
        m = min(len(ce), len(cp))
        ce, cp = ce[:m], cp[:m]
        # the templates, the pulse delay and the prior's beat model all start from the same R-peaks: found once
        r = detect_rpeaks(ce, CANONICAL_RATE_HZ)
        tpl = beat_templates(ce, cp, CANONICAL_RATE_HZ, rpeaks=r)
        if tpl is None:
            return None
        ctx_100 = PairedContext(ce, cp, CANONICAL_RATE_HZ)
        self.prior_translator.beat_model(ctx_100, slot, rpeaks=r)  # kept for this context's windows' priors
        return (ctx_100, tpl, estimate_pat_s(ce, cp, CANONICAL_RATE_HZ, rpeaks=r),
                (float(np.mean(ce)), float(np.std(ce)) or 1.0))

    # -- batched forward ---------------------------------------------------------------------------
    def _forward(self, items: list[_Prepared]) -> np.ndarray:
        return self._run(ModelBatch.stack([it.row for it in items], self.template_len))

    @torch.inference_mode()
    def _run(self, batch: ModelBatch) -> np.ndarray:
        """`batch` through the model on the engine's device and precision: (B, N) float32 z-scored outputs."""
        return self.model(batch, self.device, torch.float16 if self.half else torch.float32)

    @staticmethod
    def _measured_enough(r: TranslationRequest) -> bool:
        """SR whose source already holds the whole band; such rows get the polyphase resample of the source.

        - A source at or above the canonical rate: the model works at 100 Hz and can add nothing above its own 50 Hz
          Nyquist frequency, while running it would replace measured signal by a reconstruction from tokens (with a
          rate prompt training never used).
        - A PPG whose Nyquist frequency is above its band (`PULSE_BAND_HZ`, 8 Hz: sampled at 16 Hz or faster):
          the model only adds the band above the source's Nyquist frequency (`_finish` keeps the measured one),
          where a PPG has nothing. Measured on the held-out BIDMC patients (`wavebridge evaluate --tasks
          sr-ppg`, 25 -> 100 Hz): the model's output no better than polyphase (Pearson equal, RMSE 0.0024 against
          0.0022 on anti-aliased input), at a model pass's cost."""
        if r.task != SR:
            return False
        rate = float(r.source_rate)
        return rate >= CANONICAL_RATE_HZ or (not is_ecg_signal(r.source_signal) and rate >= 2 * PULSE_BAND_HZ)

    def method_for(self, r: TranslationRequest) -> str | None:
        """"polyphase" for the requests `translate` resamples instead of running the model (`_measured_enough`), so
        their outputs are not tagged with the model's name; None otherwise."""
        return "polyphase" if self._measured_enough(r) else None

    def translate(self, requests: Sequence[TranslationRequest]) -> list[np.ndarray]:
        """One output per request, each `request.n_out` float32 samples at `request.target_rate` Hz.

        Requests of equal length (at 100 Hz) share forward passes of up to `max_batch` rows; a flat source gets a
        flat line and an SR source the model cannot improve on (`_measured_enough`) its polyphase resample, without a
        model pass."""
        flat = [_is_flat(r.source) for r in requests]
        # None: no model pass (a flat source, or an SR source the model cannot improve on)
        items = [None if f or self._measured_enough(r) else self._prepare(r) for r, f in zip(requests, flat)]
        results: list[np.ndarray | None] = [None] * len(items)
        by_len = defaultdict(list)
        for i, it in enumerate(items):
            if it is not None:
                by_len[len(it.row.source)].append(i)
        with self._lock:
            for idxs in by_len.values():
                for s in range(0, len(idxs), self.max_batch):
                    part = idxs[s : s + self.max_batch]
                    out = self._forward([items[i] for i in part])
                    for row, i in zip(out, part):
                        results[i] = row
        return [self._flat_output(r) if f else self._resampled(r) if it is None else self._finish(r, it, y)
                for r, f, it, y in zip(requests, flat, items, results)]

    def _flat_output(self, r: TranslationRequest) -> np.ndarray:
        """A flat line for a flat source (a sensor off, a monitor sending a constant). The model, given one, draws
        beats anyway, and the stream would report a heart rate from them. PPG->ECG stays at the patient's ECG
        level (from the context) or the population's; SR keeps the source's level."""
        if r.task == PPG2ECG:
            feats = self._context_features(r.context, r.bed) if r.context is not None else None
            level = feats[3][0] if feats is not None else self.ecg_scale[0]
        else:
            level = float(np.mean(finite(r.source))) if len(r.source) else 0.0
        return np.full(r.n_out, level, dtype=np.float32)  # the translator contract's dtype, as `_fit` gives

    @staticmethod
    def _resampled(r: TranslationRequest) -> np.ndarray:
        y = resample(finite(r.source), r.source_rate, r.target_rate, method="polyphase")
        return _fit(y, r.n_out)

    @staticmethod
    def _finish(r: TranslationRequest, it: _Prepared, y: np.ndarray) -> np.ndarray:
        mu, sd = it.out_scale
        y = y[: it.n].astype(np.float64) * sd + mu
        if it.source_up is not None and it.row.source_rate_hz < CANONICAL_RATE_HZ:
            # keep what the low-rate monitor measured; the model supplies only the band above its Nyquist
            y = merge_bands(it.source_up, y, CANONICAL_RATE_HZ, sr_cutoff_hz(it.row.source_rate_hz))
        if abs(r.target_rate - CANONICAL_RATE_HZ) > 1e-9:
            y = resample(y, CANONICAL_RATE_HZ, r.target_rate, method="polyphase")
        return _fit(y, r.n_out)


@dataclass(frozen=True)
class _Prepared:
    """A request made ready for the model: its batch row, and what `_finish` needs to bring the output back."""

    row: WindowInput
    n: int  # samples of the source at 100 Hz, before padding to the tokenizer stride
    out_scale: tuple[float, float]  # (level, spread) the z-scored output is rescaled with
    source_up: np.ndarray | None  # SR: the source at 100 Hz, whose measured band is kept


def _pad(x: np.ndarray, stride: int) -> np.ndarray:
    """`x` lengthened to a multiple of `stride` by holding its last value."""
    return fit_length(x, len(x) + (-len(x)) % stride)


def _is_flat(x) -> bool:
    """No variation worth translating: spread within float rounding of the level (or no finite sample)."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return len(v) == 0 or float(np.std(v)) <= FLAT_REL * max(1.0, float(np.max(np.abs(v))))


def _fit(y: np.ndarray, n_out: int) -> np.ndarray:
    """Exactly `n_out` float32 samples (the translator contract); a short result holds its last value."""
    return fit_length(y, n_out).astype(np.float32)
