"""Batched CLMT inference engine: the `Translator` the stream worker and the offline CLI use.

Per window: tokenize -> translator -> re-quantize -> decode -> refiner (sample-level correction, when the
weights have one). One `translate()` call runs ONE forward pass over windows from many beds (grouped by length), on the
CPU or CUDA (config), under `torch.inference_mode`, in half precision on CUDA, with weights loaded from
safetensors (no pickle). Numpy pre/post-processing matches training exactly (`models.prep`).
Super-resolution of a source sampled at or above the canonical 100 Hz skips the model: polyphase resampling.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from models import weights as W
from models.tokenizer import TASK_ECG_SR, TASK_PPG2ECG, TASK_PPG_SR, modality_masks
from models.prep import (CANONICAL_RATE, PRIOR_FIDUCIAL, align_ppg, beat_templates, ecg_prior, estimate_pat_s, to_canonical,
                         zscore)
from operators.processing.beatsr import paste_high_band, qrs_template, sr_cutoff_hz
from operators.state.context import ContextCache
from operators.processing.samples import fill_nonfinite
from operators.processing.resample import merge_bands, resample
from operators.translator import PPG2ECG, SR, PairedContext, TranslationRequest, is_ecg_signal

log = logging.getLogger(__name__)

MIN_CONTEXT_S = 3.0
CONTEXT_CACHE = 1024  # beds' contexts kept prepared
SR_BAND_MERGE = True
QUANTIZE_OUTPUT = True
FLAT_REL = 1e-6  # a source whose spread is below this fraction of its magnitude is flat (no model pass)


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU (set WAVEBRIDGE_DEVICE=cpu or auto)")
    return device


class ClmtTranslator:
    name = "clmt"

    def __init__(self, weights: str | None = None, device: str = "auto", half: bool | None = None, max_batch: int = 256,
                 threads: int | None = None):
        self.device = resolve_device(device)
        if threads:
            torch.set_num_threads(threads)
        self.tok, self.tr, self.refiner, self.cfg = W.load(weights, self.device)
        self.half = (self.device != "cpu") if half is None else half
        if self.half:
            for m in (self.tok, self.tr, self.refiner):
                if m is not None:
                    m.half()
        self.stride = self.tok.cfg.stride
        self.refined_tasks = torch.tensor(self.cfg.get("refiner_tasks", []), dtype=torch.long, device=self.device)
        # ECG SR uses a full-rate context beat only if the refiner learnt to (weights say so)
        self.sr_context = self.refiner is not None and bool(self.cfg.get("refiner_sr_context", False))
        self.template_len = int(self.cfg["template"])
        self.default_pat = float(self.cfg["default_pat_s"])
        self.ecg_scale = tuple(self.cfg.get("ecg_scale", (0.0, 0.3)))  # population (mean, std) of lead II windows, mV
        self.max_batch = max_batch
        self._lock = threading.Lock()  # one forward pass at a time; callers may be worker threads
        self._ctx_cache = ContextCache(CONTEXT_CACHE)
        self.name = f"clmt:{W.resolve(weights).stem}"  # tags every output: which weights made it
        trained = self.cfg.get("prior_fiducial", "peak")  # weights from before the record learnt on peak timing
        if trained != PRIOR_FIDUCIAL:
            log.info("CLMT weights were trained with PPG->ECG priors timed at the pulse %s; serving priors timed at "
                     "the pulse %s (models/prep.py, model card)", trained, PRIOR_FIDUCIAL)

    # -- per-request numpy preparation -------------------------------------------------------------
    def _task_id(self, r: TranslationRequest) -> int:
        if r.task == PPG2ECG:
            return TASK_PPG2ECG
        if r.task == SR:
            return TASK_ECG_SR if is_ecg_signal(r.source_signal) else TASK_PPG_SR
        raise ValueError(f"unknown task {r.task!r}")

    def _prepare(self, r: TranslationRequest) -> dict:
        task = self._task_id(r)
        x = to_canonical(_finite(r.source), r.source_rate)
        n = len(x)
        z, mu, sd = zscore(x)
        item = {"task": task, "n": n, "rate": float(r.source_rate),
                "age": float(r.age) if r.age is not None else np.nan, "sex": {"M": 1, "F": 2}.get((r.sex or "").upper(), 0),
                "has_ctx": 0.0, "pat": self.default_pat}
        ctx = r.context if task == TASK_PPG2ECG else None
        feats = self._context_features(ctx) if ctx is not None else None
        if feats is not None:
            _, tpl, pat, ecg_scale = feats
            item["ctx_ecg"], item["ctx_ppg"] = tpl
            item["has_ctx"] = 1.0
            if np.isfinite(pat):
                item["pat"] = pat
            item["out_scale"] = ecg_scale  # this patient's ECG level/spread
        elif task == TASK_PPG2ECG:
            item["out_scale"] = self.ecg_scale
        else:
            item["out_scale"] = (mu, sd)  # SR keeps the source's level and spread
            item["source_up"] = x  # the measured band, merged back in `_finish`
            tpl = self._sr_template(r.context, r.source_rate) if task == TASK_ECG_SR else None
            if tpl is not None:  # the refiner's input: the patient's own QRS high band pasted on the source
                item["prior"] = (paste_high_band(x, CANONICAL_RATE, tpl) / sd).astype(np.float32)
        if task == TASK_PPG2ECG:
            item["prior"] = ecg_prior(x, feats[0] if item["has_ctx"] else None)
            z = align_ppg(z, item["pat"])
        pad = (-n) % self.stride
        item["src"] = np.concatenate([z, np.repeat(z[-1:], pad)]) if pad else z
        if "prior" in item and pad:
            item["prior"] = np.concatenate([item["prior"], np.repeat(item["prior"][-1:], pad)])
        return item

    def _sr_template(self, ctx: PairedContext | None, source_rate: float):
        """The context's QRS template for ECG SR from `source_rate`, or None: no context, weights not trained for
        it, a context too slow to hold the band above the source's Nyquist frequency, or too few beats."""
        if ctx is None or not self.sr_context or source_rate >= CANONICAL_RATE or ctx.rate_hz < CANONICAL_RATE:
            return None
        if len(ctx.ecg) / ctx.rate_hz < MIN_CONTEXT_S:
            return None
        cutoff = sr_cutoff_hz(source_rate)
        return self._ctx_cache.get(ctx, ("sr", cutoff), lambda: qrs_template(np.asarray(ctx.ecg, np.float64), ctx.rate_hz, cutoff))

    def _context_features(self, ctx: PairedContext):
        """(context at 100 Hz, beat templates, pulse delay, ECG (mean, std)), or None if too short or without a usable
        beat (flat, noise, too few beats: its spread is not an ECG's either; a flat context ECG scaled PPG->ECG to
        ~3 mV peak to peak); cached."""
        return self._ctx_cache.get(ctx, "ppg2ecg", lambda: self._build_context_features(ctx))

    def _build_context_features(self, ctx: PairedContext):
        if len(ctx.ecg) / ctx.rate_hz < MIN_CONTEXT_S:
            return None
        ce = to_canonical(_finite(ctx.ecg), ctx.rate_hz)
        cp = to_canonical(_finite(ctx.ppg), ctx.rate_hz)
        m = min(len(ce), len(cp))
        ce, cp = ce[:m], cp[:m]
        tpl = beat_templates(ce, cp, CANONICAL_RATE)
        if tpl is None:
            return None
        return (PairedContext(ce, cp, CANONICAL_RATE), tpl, estimate_pat_s(ce, cp, CANONICAL_RATE),
                (float(np.mean(ce)), float(np.std(ce)) or 1.0))

    # -- batched forward ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, items: list[dict]) -> np.ndarray:
        dev, dt = self.device, (torch.float16 if self.half else torch.float32)
        src = torch.from_numpy(np.stack([it["src"] for it in items])).to(dev, dt)
        task = torch.tensor([it["task"] for it in items], device=dev)
        src_tok = torch.empty(src.shape[0], src.shape[1] // self.stride, self.tok.cfg.levels, dtype=torch.long, device=dev)
        for mod, mask in modality_masks(task, 0):
            src_tok[mask] = self.tok.tokens(src[mask], mod)
        kw = {}
        has_ctx = torch.tensor([it["has_ctx"] for it in items], device=dev)
        if bool(has_ctx.any()):
            zeros = np.zeros(self.template_len, np.float32)
            ce = torch.from_numpy(np.stack([it.get("ctx_ecg", zeros) for it in items])).to(dev, dt)
            cp = torch.from_numpy(np.stack([it.get("ctx_ppg", zeros) for it in items])).to(dev, dt)
            kw = dict(ctx_ecg_tok=self.tok.tokens(ce, "ecg"), ctx_ppg_tok=self.tok.tokens(cp, "ppg"), has_ctx=has_ctx)
        # the translator's prior is the PPG->ECG synthesis; an ECG SR context beat goes to the refiner only
        has_prior = torch.tensor([float("prior" in it and it["task"] == TASK_PPG2ECG) for it in items], device=dev)
        zeros = np.zeros(src.shape[1], np.float32)
        prior = torch.from_numpy(np.stack([it.get("prior", zeros) for it in items])).to(dev, dt)  # zeros where none
        if bool(has_prior.any()):
            kw |= dict(prior_tok=self.tok.tokens(prior, "ecg"), has_prior=has_prior)
        f = lambda k: torch.tensor([it[k] for it in items], device=dev, dtype=torch.float32)
        z = self.tr(src_tok, task, f("rate"), f("age"), torch.tensor([it["sex"] for it in items], device=dev), f("pat"), **kw)
        if QUANTIZE_OUTPUT:  # target tokens: re-quantize the predicted frames, decode the tokens
            z = self.tok.rvq.decode_indices(self.tok.rvq(z)[1]).to(dt)
        out = torch.empty(src.shape, dtype=dt, device=dev)
        for mod, mask in modality_masks(task, 1):
            out[mask] = self.tok.decode(z[mask], mod)
        if self.refiner is not None:  # sample-level correction of the decoded frames (models/refiner.py)
            m = torch.isin(task, self.refined_tasks)
            if bool(m.any()):
                out[m] = self.refiner(src[m], prior[m], out[m], task[m])
        return out.float().cpu().numpy()

    @staticmethod
    def _measured_enough(r: TranslationRequest) -> bool:
        """SR of a source at or above the canonical rate: the model works at 100 Hz and can add nothing above its
        own 50 Hz Nyquist frequency, while running it would replace measured signal by a reconstruction from
        tokens (with a rate prompt training never used). Such rows get the polyphase resample of the source."""
        return r.task == SR and float(r.source_rate) >= CANONICAL_RATE

    def translate(self, requests: Sequence[TranslationRequest]) -> list[np.ndarray]:
        flat = [_is_flat(r.source) for r in requests]
        # None: no model pass (a flat source, or an SR source the model cannot improve on)
        items = [None if f or self._measured_enough(r) else self._prepare(r) for r, f in zip(requests, flat)]
        results: list[np.ndarray | None] = [None] * len(items)
        by_len = defaultdict(list)
        for i, it in enumerate(items):
            if it is not None:
                by_len[len(it["src"])].append(i)
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
            feats = self._context_features(r.context) if r.context is not None else None
            level = feats[3][0] if feats is not None else self.ecg_scale[0]
        else:
            level = float(np.mean(_finite(r.source))) if len(r.source) else 0.0
        return np.full(r.n_out, level, dtype=np.float32)  # the translator contract's dtype, as `_fit` gives

    @staticmethod
    def _resampled(r: TranslationRequest) -> np.ndarray:
        y = resample(_finite(r.source), r.source_rate, r.target_rate, method="polyphase")
        return _fit(y, r.n_out)

    @staticmethod
    def _finish(r: TranslationRequest, it: dict, y: np.ndarray) -> np.ndarray:
        mu, sd = it["out_scale"]
        y = y[: it["n"]].astype(np.float64) * sd + mu
        if "source_up" in it and SR_BAND_MERGE and it["rate"] < CANONICAL_RATE:
            # keep what the low-rate monitor measured; the model supplies only the band above its Nyquist
            y = merge_bands(it["source_up"], y, CANONICAL_RATE, sr_cutoff_hz(it["rate"]))
        if abs(r.target_rate - CANONICAL_RATE) > 1e-9:
            y = resample(y, CANONICAL_RATE, r.target_rate, method="polyphase")
        return _fit(y, r.n_out)


def _finite(x) -> np.ndarray:
    """float64 copy with NaN/inf runs interpolated (`operators.processing.samples.fill_nonfinite`): a zero or a huge value
    in their place would be drawn by the model as a beat or squash the window's z-score."""
    return fill_nonfinite(np.asarray(x, dtype=np.float64))[0]


def _is_flat(x) -> bool:
    """No variation worth translating: spread within float rounding of the level (or no finite sample)."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return len(v) == 0 or float(np.std(v)) <= FLAT_REL * max(1.0, float(np.max(np.abs(v))))


def _fit(y: np.ndarray, n_out: int) -> np.ndarray:
    """Exactly `n_out` float32 samples (the translator contract); a short result holds its last value."""
    if len(y) < n_out:
        y = np.concatenate([y, np.repeat(y[-1:], n_out - len(y))])
    return y[:n_out].astype(np.float32)
