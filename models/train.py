"""CLMT training stages: tokenizer, then translator, then refiner, on BIDMC and Challenge 2015 (fixed splits).

BIDMC is split by patient, Challenge 2015 by record (`models.data`); `--datasets bidmc` trains on BIDMC alone, as
the shipped weights were. `--train-fraction` keeps a seeded share of each dataset's
training records (a learning curve).

Seeded and resumable: a checkpoint (model + optimizer + sampler and torch RNG + step + the stage's recipe) is
written to `--workdir` every `--ckpt-every` steps and picked up again by the same command, with the same or more
steps; a checkpoint of another recipe (seed, records, --init-from, augmentation, model config, batch, or earlier
stages trained for other step counts) is refused.
The final weights are exported as safetensors + JSON config to `--out` (default `models/weights/`), which is what
serving loads.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models.batch import Clmt
from models.data import Sampler
from models.prep import PRIOR_FIDUCIAL
from models.refiner import REFINED_TASKS, Refiner, RefinerConfig
from models.tokenizer import Tokenizer, TokenizerConfig, modality_masks
from models.translator import TranslatorConfig
from operators.vocab import LOWRES_KINDS

WINDOW = 800  # 8 s at 100 Hz
CONTEXT = (600, 2000)  # paired context segments of 6-20 s ...
TEMPLATE = 96  # ... summarised as R-aligned beat templates (models.prep.beat_templates)
REFINER_TASK_P = (0.0, 0.7, 0.3)  # refiner batches by task id (PPG->ECG, ECG SR, PPG SR): ECG SR is the hard one
assert all((p > 0) == (t in REFINED_TASKS) for t, p in enumerate(REFINER_TASK_P))
REFINER_SR_CONTEXT = 0.5  # share of ECG SR batches whose refiner input carries the patient's context beat
LR = {"tokenizer": 2e-3, "translator": 1e-3, "refiner": 2e-3}  # peak learning rates (cosine schedule)


def waveform_loss(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """L1 on samples and on first differences (keeps QRS edges sharp)."""
    return F.l1_loss(pred, tgt) + F.l1_loss(pred.diff(dim=-1), tgt.diff(dim=-1)) * 2.0


def _lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def _apply(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor) -> None:
    """One optimizer step with gradient clipping (every stage trains this way)."""
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


@torch.no_grad()
def _per_task_mse(pred: torch.Tensor, tgt: torch.Tensor, task: torch.Tensor) -> dict[str, float]:
    return {n: float(F.mse_loss(pred[task == k], tgt[task == k])) if (task == k).any() else float("nan")
            for k, n in enumerate(("ppg2ecg_mse", "ecgsr_mse", "ppgsr_mse"))}


class Progress:
    def __init__(self, name: str, total: int, start: int, every: int):
        self.name, self.total, self.every = name, total, every
        self.t0, self.s0 = time.time(), start

    def __call__(self, step: int, **metrics) -> None:
        if step % self.every and step != self.total:
            return
        done = step - self.s0
        rate = done / max(1e-9, time.time() - self.t0)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        vals = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"[{self.name}] step {step}/{self.total} {vals} ({rate:.2f} it/s, eta {eta / 60:.1f} min)", flush=True)


class CheckpointMismatch(RuntimeError):
    """A checkpoint in the workdir that this run must not resume."""


def _plain(recipe: dict) -> dict:
    """The recipe as it reads back from a checkpoint (JSON types: tuples become lists)."""
    return json.loads(json.dumps(recipe, sort_keys=True, default=str))


_NONE = object()  # a recipe part one side lacks


def _recipe_diff(saved: dict, now: dict, most: int = 4) -> str:
    """`key.sub: saved -> now` for what differs (a part present on one side only is named once, not leaf by leaf)."""
    short = lambda v: "(none)" if v is _NONE else (r if len(r := repr(v)) <= 40 else r[:37] + "...")

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(a.keys() | b.keys()) for d in walk(a.get(k, _NONE), b.get(k, _NONE), f"{prefix}{k}.")]
        return [] if a == b else [f"{prefix[:-1]}: {short(a)} -> {short(b)}"]

    diff = walk(saved, now, "")
    return "; ".join(diff[:most]) + (f"; {len(diff) - most} more" if len(diff) > most else "")


def check_checkpoint(workdir: Path, name: str, recipe: dict, steps: int) -> dict | None:
    """The saved state of stage `name` if this run may resume it (None when there is none); raises
    `CheckpointMismatch` when it was written by another recipe, or got further than the `steps` asked for (its
    weights would then be exported under a step count they do not have)."""
    path = workdir / f"{name}.ckpt"
    if not path.exists():
        return None
    # tensors, dicts and numbers only (numpy's PCG64 state is a dict of ints): no pickle code runs
    st = torch.load(path, weights_only=True, map_location="cpu")
    fresh = f"pass a fresh --workdir (or delete {path} to train this stage from scratch)"
    if st.get("recipe") != _plain(recipe):  # a file that records none is no run of this recipe either
        raise CheckpointMismatch(f"the workdir {workdir} holds a {name} checkpoint of another training recipe "
                                 f"({_recipe_diff(st.get('recipe', {}), _plain(recipe))}); {fresh}")
    if int(st["step"]) > steps:
        raise CheckpointMismatch(f"the workdir {workdir} holds a {name} checkpoint at step {st['step']}, past the "
                                 f"{steps} steps asked for; ask for at least {st['step']} or {fresh}")
    return st


class Checkpoint:
    """One stage's resumable state: model, optimizer, sampler and torch RNG, step and the stage's recipe (everything
    that makes its run but its own step count: more steps resume), in `workdir/<name>.ckpt`."""

    def __init__(self, workdir: Path, name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, sampler: Sampler,
                 recipe: dict, steps: int):
        self.workdir, self.path, self.name = workdir, workdir / f"{name}.ckpt", name
        self.model, self.opt, self.sampler, self.recipe, self.steps = model, opt, sampler, recipe, steps

    def resume(self) -> int:
        """Restore the saved state if there is one; returns the step to continue after."""
        st = check_checkpoint(self.workdir, self.name, self.recipe, self.steps)
        if st is None:
            return 0
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sampler.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])  # k-means init, dead-code resets and dropout draw from it
        if "cuda_rng" in st and torch.cuda.is_available() and len(st["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        print(f"[{self.name}] resumed at step {st['step']}", flush=True)
        planned = int(st["scheduled_for"])
        if planned != self.steps:
            # The cosine schedule is laid over the new total, so the learning rate jumps back up here: the result is
            # not what an uninterrupted run of the new length would give.
            print(f"[{self.name}] note: this checkpoint was scheduled for {planned} steps; the learning-rate schedule "
                  f"now spans {self.steps}, so it restarts from mid-schedule (not an ordinary {self.steps}-step run)",
                  flush=True)
        return int(st["step"])

    def save(self, step: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        st = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": step, "scheduled_for": self.steps,
              "rng": self.sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "recipe": _plain(self.recipe)}
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(st, tmp)
        tmp.replace(self.path)  # atomic: a kill mid-write never leaves a half checkpoint


@dataclass(frozen=True)
class StageRun:
    """What every stage of one training run shares: where windows come from, where checkpoints go."""

    sampler: Sampler
    workdir: Path
    ckpt_every: int  # steps between checkpoints
    device: str = "cpu"


@dataclass(frozen=True)
class Stage:
    """One stage's settings: its name (and checkpoint file), length, batch, peak learning rate and recipe (what
    makes its run but its own step count, `stage_recipes`)."""

    name: str
    steps: int
    batch: int
    lr: float
    recipe: dict
    warmup: int = 200  # linear learning-rate warm-up steps before the cosine decay
    log_every: int = 25


def _run_stage(run: StageRun, stage: Stage, model: torch.nn.Module, opt: torch.optim.Optimizer, step_loss) -> None:
    """The loop every stage shares: resume, lr schedule, one optimizer step per `step_loss()` -> (loss, logs),
    progress, checkpoints. `model` is in train mode inside the loop and in eval mode after it."""
    ckpt = Checkpoint(run.workdir, stage.name, model, opt, run.sampler, stage.recipe, stage.steps)
    start = ckpt.resume()
    prog = Progress(stage.name, stage.steps, start, stage.log_every)
    model.train()
    for step in range(start + 1, stage.steps + 1):
        _set_lr(opt, _lr(step, stage.steps, stage.lr, warmup=stage.warmup))
        loss, logs = step_loss()
        _apply(opt, model, loss)
        prog(step, **logs)
        if step % run.ckpt_every == 0 or step == stage.steps:
            ckpt.save(step)
    model.eval()


def train_tokenizer(tok: Tokenizer, run: StageRun, stage: Stage) -> None:
    """Stage 1: the tokenizer learns to reconstruct 4 s windows of both modalities through its codebooks."""
    def step_loss():
        b = run.sampler.tokenizer_batch(stage.batch, 400)
        loss_total, logs = 0.0, {}
        for mod in ("ecg", "ppg"):
            x = torch.from_numpy(b[mod]).to(run.device)
            rec, q = tok(x, mod)
            loss_total = loss_total + (waveform_loss(rec, x) + 0.25 * q.commit_loss)
            logs[f"{mod}_mse"] = float(F.mse_loss(rec.detach(), x))
        stats = tok.rvq.stats()  # codebook usage moves in the forward pass (EMA buffers), not in the optimizer step
        return loss_total, logs | {"ppl0": stats[0]["perplexity"], "dead": sum(s["dead_codes"] for s in stats)}

    opt = torch.optim.AdamW(tok.parameters(), lr=stage.lr, weight_decay=1e-4)
    _run_stage(run, stage, tok, opt, step_loss)


def train_translator(clmt: Clmt, run: StageRun, stage: Stage) -> None:
    """Stage 2: tokenizer frozen; the translator learns the target's latent frames (MSE) and, through the frozen
    decoder, its waveform."""
    tok, dev = clmt.tok, run.device
    for p in tok.parameters():
        p.requires_grad_(False)

    def step_loss():
        b = run.sampler.translator_batch(stage.batch)
        inp = clmt.tokenize(b.inputs, dev)
        tgt = torch.from_numpy(b.target).to(dev)
        with torch.no_grad():
            z_tgt = torch.empty(tgt.shape[0], tgt.shape[1] // tok.cfg.stride, tok.cfg.latent_dim, device=dev)
            for mod, mask in modality_masks(inp.task, 1):
                z_tgt[mask] = tok.encode(tgt[mask], mod).latent
        z = clmt.latents(inp)
        wave = clmt.decode(z, inp.task)
        loss = F.mse_loss(z, z_tgt) + waveform_loss(wave, tgt)
        return loss, {"loss": float(loss.detach()), **_per_task_mse(wave, tgt, inp.task)}

    opt = torch.optim.AdamW(clmt.tr.parameters(), lr=stage.lr, weight_decay=1e-2)
    _run_stage(run, stage, clmt.tr, opt, step_loss)


def refiner_loss(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """MSE (what per-window Pearson rewards) plus L1 on first differences (QRS edges)."""
    return F.mse_loss(pred, tgt) + F.l1_loss(pred.diff(dim=-1), tgt.diff(dim=-1))


def train_refiner(clmt: Clmt, ref: Refiner, run: StageRun, stage: Stage, ecg_stretch: float = 0.0,
                  ecg_flip: float = 0.0, draft: str = "decode") -> None:
    """Stage 3: tokenizer and translator frozen (eval mode, so the codebooks do not move); the refiner learns
    the residual between its draft and the target, on every way a monitor may decimate. `draft` is what serving will
    correct (`models.batch.REFINER_DRAFTS`): the decoded CLMT output (`Clmt.draft`, as serving decodes it), or the
    source itself (no tokenizer or translator pass). `ecg_stretch` / `ecg_flip`: share of ECG SR rows replayed faster
    or slower / inverted (`models.data.augment_ecg`)."""
    for m in (clmt.tok, clmt.tr):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    t = lambda a: torch.from_numpy(a).to(run.device)

    def step_loss():
        b = run.sampler.translator_batch(stage.batch, p_task=REFINER_TASK_P, lowres_kinds=LOWRES_KINDS,
                                         p_sr_context=REFINER_SR_CONTEXT, p_ecg_stretch=ecg_stretch, p_ecg_flip=ecg_flip)
        tgt, task = t(b.target_source_units), t(b.inputs.task)
        if draft == "source":  # every row is of a refined task (REFINER_TASK_P)
            pred = clmt.refine_source(t(b.inputs.source), t(b.inputs.prior), task, refiner=ref)
        else:
            inp = clmt.tokenize(b.inputs, run.device)
            pred = clmt.refine(inp, clmt.draft(inp), refiner=ref)
        loss = refiner_loss(pred, tgt)
        return loss, {"loss": float(loss.detach()), **_per_task_mse(pred, tgt, task)}

    opt = torch.optim.AdamW(ref.parameters(), lr=stage.lr, weight_decay=1e-4)
    _run_stage(run, stage, ref, opt, step_loss)


def tensor_digest(*modules: torch.nn.Module) -> str:
    """Identity of trained weights (names and exact values of every tensor)."""
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode()); h.update(str(v.dtype).encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stage_recipes(args: argparse.Namespace, train_names: list[str], tok_cfg: TokenizerConfig, tr_cfg: TranslatorConfig | None,
                  base_digest: str | None, tokenizer_digest: str | None = None) -> dict[str, dict]:
    """What makes each stage's run, kept in its checkpoint: everything but its own step count (the same run asked for
    more steps resumes). A stage trained on frozen earlier stages carries their recipes and step counts, or the digest
    of the --init-from tensors it starts from, so a refiner checkpoint never resumes over another or a further
    trained base; a translator over a kept tokenizer (--tokenizer-from) carries that tokenizer's digest."""
    common = {"seed": args.seed, "records": list(train_names), "window": WINDOW, "context": CONTEXT, "template": TEMPLATE}
    out = {}
    if base_digest is None:
        out["tokenizer"] = common | {"tokenizer": tok_cfg.to_dict(), "batch": args.batch * 2, "lr": LR["tokenizer"]}
        tok = ({"tokenizer_from": tokenizer_digest} if tokenizer_digest
               else {"tokenizer": out["tokenizer"], "tokenizer_steps": args.tokenizer_steps})
        out["translator"] = common | tok | {"translator": tr_cfg.to_dict(), "batch": args.batch, "lr": LR["translator"],
                                            "prior_fiducial": PRIOR_FIDUCIAL}
        base = {"translator": out["translator"], "translator_steps": args.translator_steps}
    else:
        base = {"init_from": base_digest}
    out["refiner"] = common | {"base": base, "refiner": RefinerConfig(channels=args.refiner_channels).to_dict(),
                               "draft": args.refiner_draft, "batch": args.batch, "lr": args.refiner_lr,
                               "refiner_from_base": args.refiner_from_base,
                               "ecg_stretch": args.ecg_stretch, "ecg_flip": args.ecg_flip, "task_p": REFINER_TASK_P,
                               "sr_context": REFINER_SR_CONTEXT}
    return out
