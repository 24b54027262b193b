"""The model batch and the one forward path that training and serving share.

`ModelBatch` is what the CLMT model takes, as numpy arrays: the serving engine stacks it from translation requests
(`models.engine`), the training sampler draws it from records (`models.data.Sampler`). `Clmt` runs it: tokenize
(frozen tokenizer) -> translator -> re-quantize -> decode -> refiner, or for the refiner's tasks the refiner alone when
the weights' refiner corrects the source (`REFINER_DRAFTS`). Training calls the same steps, so what a stage learns
from is what serving computes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from models.blend import PriorBlend
from models.refiner import Refiner
from models.tokenizer import Tokenizer, modality_masks
from models.translator import ContextTranslator
from operators.vocab import SEX_CODES, TASK_PPG2ECG

# What a refiner corrects. "decode": the CLMT decode (tokenizer -> translator -> decoder), the design's own path.
# "source": the source as the engine prepared it (z-scored at 100 Hz), so rows of refined tasks skip the tokens: the
# refiner then is the whole model for super-resolution, and costs only its own convolutions.
REFINER_DRAFTS = ("decode", "source")


def sex_code(sex: str | None) -> int:
    """0 unknown, 1 male, 2 female (`"M"`/`"F"`, any case)."""
    return SEX_CODES.get((sex or "").upper(), 0)


@dataclass(frozen=True)
class ModelBatch:
    """B windows of N samples at the canonical 100 Hz (N a multiple of the tokenizer stride), K-sample templates.

    Attributes
    ----------
    source : np.ndarray
        (B, N) float32, each window z-scored on its own; PPG->ECG rows shifted earlier by `pat_s`
        (`models.prep.align_ppg`) so each pulse sits where its R-peak will be.
    task : np.ndarray
        (B,) int64 task ids (`models.tokenizer.TASK_*`).
    source_rate_hz : np.ndarray
        (B,) float32, the rate the monitor sent the source at (a prompt: the model still sees 100 Hz).
    age_years : np.ndarray
        (B,) float32, NaN when unknown.
    sex : np.ndarray
        (B,) int64, `sex_code`.
    pat_s : np.ndarray
        (B,) float32 pulse-arrival delay (R-peak -> PPG systolic peak): the context's, or the population's.
    has_context : np.ndarray
        (B,) float32, 1.0 where the row carries the patient's beat templates.
    context_ecg, context_ppg : np.ndarray
        (B, K) float32 z-scored R-aligned median beats (`models.prep.beat_templates`); zeros where none.
    prior : np.ndarray
        (B, N) float32 in the source's z-units: for PPG->ECG the classic synthesis (the translator's prior); for ECG
        SR the patient's QRS high band pasted on the source (the refiner's input only); zeros where none.
    context_tokens : tuple of np.ndarray, optional
        (ECG, PPG) tokens of the templates, each (B, K / stride, levels) int64, zeros where a row has none: the
        serving engine tokenizes each patient's templates once per context (`Clmt.context_tokens`) instead of in
        every window's batch. None: `Clmt.tokenize` tokenizes `context_ecg` and `context_ppg`.
    """

    source: np.ndarray
    task: np.ndarray
    source_rate_hz: np.ndarray
    age_years: np.ndarray
    sex: np.ndarray
    pat_s: np.ndarray
    has_context: np.ndarray
    context_ecg: np.ndarray
    context_ppg: np.ndarray
    prior: np.ndarray
    context_tokens: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.task)

    def rows(self, keep: np.ndarray) -> "ModelBatch":
        """The rows where the (B,) boolean `keep` is true."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        tok = fields.pop("context_tokens")
        return ModelBatch(**{k: v[keep] for k, v in fields.items()},
                          context_tokens=None if tok is None else (tok[0][keep], tok[1][keep]))

    @property
    def has_prior(self) -> np.ndarray:
        """(B,) float32, 1.0 where the translator takes the prior: PPG->ECG rows (SR priors go to the refiner)."""
        return (self.task == TASK_PPG2ECG).astype(np.float32)

    @classmethod
    def stack(cls, rows: Sequence["WindowInput"], template_len: int) -> "ModelBatch":
        """One batch from windows of equal length (zeros where a row has no context or prior); context tokens when
        every row with a context carries them."""
        n = len(rows[0].source)
        none_tpl, none_prior = np.zeros(template_len, np.float32), np.zeros(n, np.float32)
        f32 = lambda vals: np.array(vals, np.float32)
        with_ctx = [r for r in rows if r.context is not None]
        ctx_tok = None
        if with_ctx and all(r.context_tokens is not None for r in with_ctx):
            none_tok = np.zeros_like(with_ctx[0].context_tokens[0])
            ctx_tok = tuple(np.stack([r.context_tokens[i] if r.context is not None else none_tok for r in rows])
                            for i in (0, 1))
        return cls(source=np.stack([r.source for r in rows]),
                   task=np.array([r.task for r in rows], np.int64),
                   source_rate_hz=f32([r.source_rate_hz for r in rows]),
                   age_years=f32([r.age_years for r in rows]),
                   sex=np.array([r.sex for r in rows], np.int64),
                   pat_s=f32([r.pat_s for r in rows]),
                   has_context=f32([r.context is not None for r in rows]),
                   context_ecg=np.stack([r.context[0] if r.context is not None else none_tpl for r in rows]),
                   context_ppg=np.stack([r.context[1] if r.context is not None else none_tpl for r in rows]),
                   prior=np.stack([r.prior if r.prior is not None else none_prior for r in rows]),
                   context_tokens=ctx_tok)


@dataclass(frozen=True)
class TrainingBatch:
    """A drawn `ModelBatch` and what the model should have made of it.

    Attributes
    ----------
    inputs : ModelBatch
        (B rows of N samples at 100 Hz.)
    target : np.ndarray
        (B, N) float32 target window z-scored on its own (the translator stage's target).
    target_source_units : np.ndarray
        (B, N) float32 target in the units serving rescales the output with: for SR the source's level and spread,
        for PPG->ECG the same as `target` (the refiner stage's target).
    """

    inputs: ModelBatch
    target: np.ndarray
    target_source_units: np.ndarray


@dataclass(frozen=True)
class WindowInput:
    """One row of a `ModelBatch` (the serving engine prepares one per request; fields as there, per row)."""

    task: int
    source: np.ndarray
    source_rate_hz: float
    age_years: float
    sex: int
    pat_s: float
    context: tuple[np.ndarray, np.ndarray] | None = None
    prior: np.ndarray | None = None
    context_tokens: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class TokenizedBatch:
    """A `ModelBatch` on the device, its sequences tokenized: the translator's and refiner's inputs.

    `src_tok` is (B, N / stride, levels) long; the context and prior tokens are None when no row of the batch has
    one (the translator then sees no such segment at all). `source` and `prior` stay samples: the refiner's inputs.
    """

    task: torch.Tensor
    source: torch.Tensor
    prior: torch.Tensor
    src_tok: torch.Tensor
    rate: torch.Tensor
    age: torch.Tensor
    sex: torch.Tensor
    pat: torch.Tensor
    has_ctx: torch.Tensor
    ctx_ecg_tok: torch.Tensor | None
    ctx_ppg_tok: torch.Tensor | None
    prior_tok: torch.Tensor | None
    has_prior: torch.Tensor | None


def _take_rows(inp: TokenizedBatch, rows: torch.Tensor, with_ctx: bool) -> TokenizedBatch:
    """The `rows` of `inp`; without the context segments unless `with_ctx`."""
    take = lambda v: None if v is None else v.index_select(0, rows)
    fields = {f.name: take(getattr(inp, f.name)) for f in dataclasses.fields(inp)}
    if not with_ctx:
        fields.update(ctx_ecg_tok=None, ctx_ppg_tok=None)
    return TokenizedBatch(**fields)


class Clmt:
    """Tokenizer, translator and optional refiner run as one model, by serving and by every training stage.

    Parameters
    ----------
    tok, tr, refiner
        The three trained modules (the refiner may be None).
    refined_tasks : sequence of int
        Task ids the refiner corrects (the weights' `refiner_tasks`).
    blend : PriorBlend, optional
        Shrinkage of PPG->ECG outputs toward the classic synthesis (the weights' `prior_blend`), applied last by
        `__call__`; None leaves outputs as the translator and refiner make them (training stages).
    refiner_draft : {"decode", "source"}
        What the refiner corrects (the weights' `refiner_draft`): the CLMT decode (`draft`), or the source itself,
        in which case rows of refined tasks never pass through the tokenizer and translator (`REFINER_DRAFTS`).
    """

    def __init__(self, tok: Tokenizer, tr: ContextTranslator, refiner: Refiner | None = None,
                 refined_tasks: Sequence[int] = (), blend: PriorBlend | None = None, refiner_draft: str = "decode"):
        if refiner_draft not in REFINER_DRAFTS:
            raise ValueError(f"refiner_draft must be one of {REFINER_DRAFTS}, not {refiner_draft!r}")
        self.tok, self.tr, self.refiner = tok, tr, refiner
        self.refined_tasks = list(refined_tasks)
        self.blend = blend
        self.refiner_draft = refiner_draft

    @torch.no_grad()
    def tokenize(self, batch: ModelBatch, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> TokenizedBatch:
        """Move `batch` to `device` (samples in `dtype`; rate, age, delay in float32) and tokenize its sequences."""
        tok = self.tok
        t = lambda a, dt=None: torch.from_numpy(np.ascontiguousarray(a)).to(device, dt)
        src, task = t(batch.source, dtype), t(batch.task)
        src_tok = torch.empty(src.shape[0], src.shape[1] // tok.cfg.stride, tok.cfg.levels, dtype=torch.long,
                              device=device)
        for mod, mask in modality_masks(task, 0):
            src_tok[mask] = tok.tokens(src[mask], mod)
        has_ctx = t(batch.has_context)
        ctx_e = ctx_p = None
        if batch.context_tokens is not None:
            ctx_e, ctx_p = t(batch.context_tokens[0]), t(batch.context_tokens[1])
        elif batch.has_context.any():  # host-side flags: no device sync
            ctx_e, ctx_p = self.context_tokens(t(batch.context_ecg, dtype), t(batch.context_ppg, dtype))
        prior = t(batch.prior, dtype)
        prior_rows = batch.has_prior
        has_prior = t(prior_rows)
        prior_tok = self._prior_tokens(prior, prior_rows) if prior_rows.any() else None
        return TokenizedBatch(task=task, source=src, prior=prior, src_tok=src_tok, rate=t(batch.source_rate_hz),
                              age=t(batch.age_years), sex=t(batch.sex), pat=t(batch.pat_s), has_ctx=has_ctx,
                              ctx_ecg_tok=ctx_e, ctx_ppg_tok=ctx_p, prior_tok=prior_tok,
                              has_prior=has_prior if prior_tok is not None else None)

    def _prior_tokens(self, prior: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """(B, N / stride, levels) prior tokens, encoded only for the `rows` (B,) > 0 that take the prior; other rows
        get token 0, which the translator gates out (`has_prior` 0). Mixed batches (PPG->ECG with SR) would otherwise
        run the ECG encoder over every SR row's prior for nothing: the tokenizer treats each row on its own, so the
        encoded rows' tokens are the ones a whole-batch pass would give, up to the rounding a different batch size may
        bring to the encoder's kernels (on the CPU here: equal; as any change of batch composition, not checked on CUDA)."""
        take = rows > 0
        if take.all():
            return self.tok.tokens(prior, "ecg")
        idx = torch.from_numpy(np.flatnonzero(take)).to(prior.device)
        enc = self.tok.tokens(prior.index_select(0, idx), "ecg")
        out = torch.zeros((prior.shape[0],) + enc.shape[1:], dtype=enc.dtype, device=enc.device)
        out[idx] = enc
        return out

    @torch.no_grad()
    def context_tokens(self, ecg: torch.Tensor, ppg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) z-scored ECG and PPG beat templates -> their (B, K / stride, levels) token ids."""
        return self.tok.tokens(ecg, "ecg"), self.tok.tokens(ppg, "ppg")

    def latents(self, inp: TokenizedBatch) -> torch.Tensor:
        """The translator's predicted target latent frames, (B, N / stride, latent_dim).

        A batch with context segments whose rows do not all have a context (PPG->ECG windows batched with SR ones,
        which take none) runs, on the CPU in eval mode, its context-less rows in a pass of their own without those
        segments: there they are masked keys, whose softmax weights are exact zeros, yet every layer computed them
        for every row (about a quarter of the translator's time on such batches). The outputs equal the one pass's up
        to float rounding (a few 1e-6 on some batches: the CPU's matrix kernels round by shape, as they do whenever the
        batch's composition changes; tests/test_models.py). Not on CUDA, where padding costs little and one pass fewer
        launches."""
        if inp.ctx_ecg_tok is not None and inp.src_tok.device.type == "cpu" and not self.tr.training:
            absent = inp.has_ctx < 0.5
            if bool(absent.any()):
                parts = [(torch.nonzero(~absent)[:, 0], True), (torch.nonzero(absent)[:, 0], False)]
                out = None
                for rows, with_ctx in parts:
                    if len(rows):
                        z = self._latents(_take_rows(inp, rows, with_ctx))
                        if out is None:
                            out = z.new_empty((len(absent),) + z.shape[1:])
                        out[rows] = z
                return out
        return self._latents(inp)

    def _latents(self, inp: TokenizedBatch) -> torch.Tensor:
        return self.tr(inp.src_tok, inp.task, inp.rate, inp.age, inp.sex, inp.pat, ctx_ecg_tok=inp.ctx_ecg_tok,
                       ctx_ppg_tok=inp.ctx_ppg_tok, has_ctx=inp.has_ctx, prior_tok=inp.prior_tok,
                       has_prior=inp.has_prior)

    def decode(self, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """(B, T, latent_dim) -> (B, T * stride) z-scored at 100 Hz, each row by its task's target decoder."""
        out = torch.empty(z.shape[0], z.shape[1] * self.tok.cfg.stride, dtype=z.dtype, device=z.device)
        for mod, mask in modality_masks(task, 1):
            out[mask] = self.tok.decode(z[mask], mod)
        return out

    @torch.no_grad()
    def draft(self, inp: TokenizedBatch) -> torch.Tensor:
        """What the refiner corrects: predicted frames re-quantized to target tokens, decoded; (B, N)."""
        z = self.latents(inp)
        return self.decode(self.tok.rvq.requantize(z).to(z.dtype), inp.task)

    def refine(self, inp: TokenizedBatch, draft: torch.Tensor, refiner: nn.Module | None = None) -> torch.Tensor:
        """`draft` with the rows of refined tasks corrected by the refiner (`refiner` overrides the member)."""
        refiner = refiner if refiner is not None else self.refiner
        if refiner is None:
            return draft
        m = torch.isin(inp.task, torch.tensor(self.refined_tasks, dtype=torch.long, device=draft.device))
        if not bool(m.any()):
            return draft
        out = draft.clone()
        out[m] = refiner(inp.source[m], inp.prior[m], draft[m], inp.task[m])
        return out

    def refine_source(self, source: torch.Tensor, prior: torch.Tensor, task: torch.Tensor,
                      refiner: nn.Module | None = None) -> torch.Tensor:
        """(B, N) rows of refined tasks corrected from the source itself (`refiner_draft` "source")."""
        return (refiner if refiner is not None else self.refiner)(source, prior, source, task)

    @torch.no_grad()
    def __call__(self, batch: ModelBatch, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> np.ndarray:
        """Serving's forward pass: (B, N) float32 outputs, z-scored in the units the caller rescales with."""
        if self.refiner_draft == "source" and self.refiner is not None:
            direct = np.isin(batch.task, self.refined_tasks)
            if direct.any():
                out = np.empty(batch.source.shape, np.float32)
                d = batch.rows(direct)
                t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
                out[direct] = self.refine_source(t(d.source).to(dtype), t(d.prior).to(dtype), t(d.task)).float().cpu().numpy()
                if not direct.all():
                    out[~direct] = self._through_tokens(batch.rows(~direct), device, dtype)
                return out
        return self._through_tokens(batch, device, dtype)

    def _through_tokens(self, batch: ModelBatch, device: str | torch.device, dtype: torch.dtype) -> np.ndarray:
        inp = self.tokenize(batch, device, dtype)
        out = self.refine(inp, self.draft(inp))
        if self.blend is not None:
            out = self.blend(inp.task, inp.has_ctx, inp.prior, out)
        return out.float().cpu().numpy()
