"""Shrinkage of CLMT's PPG->ECG output toward the classic template synthesis, fitted by least squares.

Why it exists: the translator learnt on 33 BIDMC training patients and, on patients it never saw, draws PPG->ECG
no better than the classic template synthesis it gets as its prior (model card). Both estimate the same lead II
with partly independent errors (CLMT's from an unseen morphology, the classic's from a fixed beat drawn at pulse
times), so a weighted sum can beat either. Per PPG->ECG row:

    output = w_model * CLMT output + w_classic * blur(prior)

where the prior is the sharp classic synthesis the translator already takes (`models.prep.ecg_prior`, z-scored at
100 Hz) and blur is the classic translator's own beat-timing blur (`operators.classic.TIMING_BLUR_S`), which makes
the term the classic translator's output in the window's z-units. One (w_model, w_classic) pair for rows with the
patient's context and one for rows without, fitted by least squares against the z-scored real lead II on windows
run as serving runs them over training records (`served_windows`, `fit`; command `python -m
stream.tools.fit_blend`). Weights whose JSON holds a `prior_blend` get it applied last by `models.batch.Clmt`, in
serving and `wavebridge evaluate` alike; super-resolution rows are never touched. The shipped weights hold none:
on held-out records the fitted blend narrowed but did not close CLMT's gap to the classic translator (model card,
"Shrinkage toward the classic prior").
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from operators.classic import TIMING_BLUR_S
from operators.vocab import CANONICAL_RATE_HZ, TASK_PPG2ECG

TRUNCATE_SD = 4.0  # kernel half-width in SDs, as scipy.ndimage.gaussian_filter1d (the classic translator's blur)


def gaussian_kernel(sd_samples: float) -> np.ndarray:
    """The normalised Gaussian `scipy.ndimage.gaussian_filter1d` convolves with, (2 r + 1,) float64."""
    r = int(TRUNCATE_SD * sd_samples + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sd_samples) ** 2)
    return k / k.sum()


# Constants a forward pass needs on its device, made once per (values, dtype, device): copied from host memory in
# every pass, each would make the host wait for the device's queued work first.
@functools.lru_cache(maxsize=32)
def _blur_kernel(sd_samples: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor: usable outside inference mode too
        return torch.as_tensor(gaussian_kernel(sd_samples), dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _weight_table(no_context: tuple[float, float], context: tuple[float, float], dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.tensor([no_context, context], dtype=dtype, device=device)


@dataclass(frozen=True)
class PriorBlend:
    """Blend weights for PPG->ECG rows (module doc).

    Attributes
    ----------
    context, no_context : (float, float)
        (w_model, w_classic) for rows with and without the patient's beat templates.
    blur_s : float
        SD of the timing blur applied to the prior, s (at the canonical 100 Hz).
    fit : dict
        How the weights were fitted (command, records, windows, region): recorded, not used.
    """

    context: tuple[float, float]
    no_context: tuple[float, float]
    blur_s: float = TIMING_BLUR_S
    fit: dict | None = None

    @classmethod
    def from_config(cls, cfg: dict | None) -> "PriorBlend | None":
        """The blend a weights JSON's `prior_blend` describes; None when it has none (the output is CLMT's own)."""
        if not cfg:
            return None
        return cls(tuple(map(float, cfg["context"])), tuple(map(float, cfg["no_context"])), float(cfg["blur_s"]),
                   cfg.get("fit"))

    def to_dict(self) -> dict:
        return asdict(self)

    def classic(self, prior: torch.Tensor) -> torch.Tensor:
        """(B, N) z-scored sharp priors -> the classic translator's output in the same units (blurred, edges held)."""
        if self.blur_s <= 0:
            return prior
        k = _blur_kernel(self.blur_s * CANONICAL_RATE_HZ, prior.dtype, prior.device)
        r = (len(k) - 1) // 2
        return F.conv1d(F.pad(prior[:, None], (r, r), mode="replicate"), k[None, None])[:, 0]

    def __call__(self, task: torch.Tensor, has_ctx: torch.Tensor, prior: torch.Tensor,
                 out: torch.Tensor) -> torch.Tensor:
        """`out` (B, N) with its PPG->ECG rows replaced by the blend; `has_ctx` (B,) 1.0 where a row has context."""
        m = task == TASK_PPG2ECG
        if not bool(m.any()):
            return out
        w = _weight_table(tuple(self.no_context), tuple(self.context), out.dtype, out.device)[has_ctx[m].long()]
        res = out.clone()
        res[m] = w[:, :1] * out[m] + w[:, 1:] * self.classic(prior[m])
        return res


OBJECTIVES = ("raw", "aligned")


def fit(model_out: np.ndarray, prior: np.ndarray, target: np.ndarray, has_ctx: np.ndarray,
        region: tuple[int, int], objectives: dict[str, str] | None = None, max_shift: int = 15,
        iterations: int = 4, blur_s: float = TIMING_BLUR_S, meta: dict | None = None) -> PriorBlend:
    """Least-squares blend weights from PPG->ECG training windows, one pair per context flag.

    Parameters
    ----------
    model_out, prior, target : np.ndarray
        (B, N) at 100 Hz: CLMT's output without a blend, the z-scored sharp prior, the z-scored real lead II.
    has_ctx : np.ndarray
        (B,) 1.0 where the row carried the patient's context.
    region : (int, int)
        Sample range of each window the fit weighs (the part serving emits).
    objectives : dict, optional
        {"context": ..., "no_context": ...}, each "raw" (least squares against the target as it is) or "aligned"
        (against the target shifted, per window, to where the current blend matches it best within `max_shift`
        samples, `iterations` times from equal weights: the waveform's shape, not its timing). Default: raw with
        context (the patient's pulse delay times the beats), aligned without (population timing).
    max_shift : int
        Samples; `region` widened by it must stay inside the window.
    blur_s : float
        Timing blur of the classic term, s.
    meta : dict, optional
        Recorded as `PriorBlend.fit`.

    Returns
    -------
    PriorBlend
    """
    objectives = {"context": "raw", "no_context": "aligned"} | (objectives or {})
    if bad := {v for v in objectives.values()} - set(OBJECTIVES):
        raise ValueError(f"unknown blend objective {sorted(bad)}; expected one of {OBJECTIVES}")
    lo, hi = region
    if lo - max_shift < 0 or hi + max_shift > target.shape[1]:
        raise ValueError(f"region {region} +- {max_shift} samples leaves the {target.shape[1]}-sample window")
    classic = PriorBlend((1.0, 0.0), (1.0, 0.0), blur_s).classic(
        torch.from_numpy(np.ascontiguousarray(prior, np.float64))).numpy()
    weights = {}
    for key, flag in (("context", 1.0), ("no_context", 0.0)):
        m = np.asarray(has_ctx) == flag
        if not m.any():
            raise ValueError(f"no {key.replace('_', ' ')} rows to fit the blend on")
        y, c, t = (np.asarray(v, np.float64)[m] for v in (model_out, classic, target))
        shift = np.zeros(len(t), np.int64)
        w = np.array([0.5, 0.5])
        for _ in range(iterations if objectives[key] == "aligned" else 1):
            if objectives[key] == "aligned":
                shift = _best_shift(w[0] * y + w[1] * c, t, region, max_shift)
            idx = np.arange(lo, hi)[None, :] + shift[:, None]
            a = np.stack([np.take_along_axis(y, idx, 1).ravel(), np.take_along_axis(c, idx, 1).ravel()], 1)
            w = np.linalg.lstsq(a, t[:, lo:hi].ravel(), rcond=None)[0]
        weights[key] = (float(w[0]), float(w[1]))
    fitted = {"objectives": objectives, "max_shift": max_shift, "region": list(region)}
    return PriorBlend(weights["context"], weights["no_context"], blur_s, (meta or {}) | fitted)


def _best_shift(out: np.ndarray, target: np.ndarray, region: tuple[int, int], max_shift: int) -> np.ndarray:
    """(B,) the shift of each row of `out` within +-`max_shift` samples whose `region` best matches the target's
    (Pearson)."""
    lo, hi = region
    t = target[:, lo:hi] - target[:, lo:hi].mean(1, keepdims=True)
    scores = []
    for s in range(-max_shift, max_shift + 1):
        o = out[:, lo + s : hi + s] - out[:, lo + s : hi + s].mean(1, keepdims=True)
        scores.append((o * t).sum(1) / np.sqrt((o * o).sum(1) * (t * t).sum(1) + 1e-12))
    return np.argmax(np.stack(scores, 1), 1) - max_shift

def served_windows(engine, ecg: np.ndarray, ppg: np.ndarray, rate_hz: float, context_s: float = 60.0,
                   window_s: float = 8.0, hop_s: float = 2.0, age: float | None = None, sex: str | None = None,
                   batch: int = 64) -> dict[str, np.ndarray]:
    """PPG->ECG windows of one record prepared and run as serving runs them, for `fit`.

    The record's first `context_s` seconds are the patient's paired context (as `wavebridge evaluate` does); every
    `window_s` window after it, `hop_s` apart, is translated with and without that context by `engine`'s model
    without a blend. Windows whose PPG or lead II holds a non-finite sample or is flat are left out (serving
    withholds or flattens them).

    Parameters
    ----------
    engine : models.engine.ClmtTranslator
        Prepares each request (`_prepare`) and runs the batches (`_run`: its device and precision).
    ecg, ppg : np.ndarray
        Lead II and PLETH at `rate_hz`, same length.
    age, sex
        The patient's, as a request carries them.

    Returns
    -------
    dict
        {"model_out", "prior", "target", "has_ctx"} as `fit` takes them; target is the lead II window at 100 Hz,
        z-scored.
    """
    from models.batch import ModelBatch
    from models.prep import to_canonical, zscore
    from operators.translator import PPG2ECG, PairedContext, TranslationRequest

    c, w, h = (int(round(v * rate_hz)) for v in (context_s, window_s, hop_s))
    ctx = PairedContext(ecg[:c], ppg[:c], rate_hz)
    reqs, targets = [], []
    for s in range(c, len(ppg) - w + 1, h):
        x, y = ppg[s : s + w], ecg[s : s + w]
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.std(x) < 1e-6 or np.std(y) < 1e-6:
            continue
        t = zscore(to_canonical(y, rate_hz))[0]
        for context in (ctx, None):
            reqs.append(TranslationRequest(PPG2ECG, x.astype(np.float32), rate_hz, rate_hz, "PLETH", age, sex, context))
            targets.append(t)
    out = {k: [] for k in ("model_out", "prior", "target", "has_ctx")}
    blend, engine.model.blend = engine.model.blend, None
    try:
        for i in range(0, len(reqs), batch):
            rows = [engine._prepare(r).row for r in reqs[i : i + batch]]
            mb = ModelBatch.stack(rows, engine.template_len)
            n = len(targets[i])
            out["model_out"].append(engine._run(mb)[:, :n])
            out["prior"].append(mb.prior[:, :n])
            out["has_ctx"].append(mb.has_context)
            out["target"].append(np.stack(targets[i : i + batch]))
    finally:
        engine.model.blend = blend
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}

