"""`wavebridge train`: train the CLMT tokenizer, then the translator, on BIDMC and Challenge 2015 (fixed splits).

BIDMC is split by patient, Challenge 2015 by record (`models.data`); `--datasets bidmc` trains on BIDMC alone, as
the weights shipped before Challenge 2015 was added did. `--train-fraction` keeps a seeded share of each dataset's
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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import weights as W
from models.data import Sampler, challenge_root, challenge_split, found_challenge_root, found_data_root, load_records, split
from models.prep import LOWRES_KINDS, PRIOR_FIDUCIAL, align_ppg
from models.refiner import REFINED_TASKS, Refiner, RefinerConfig
from models.tokenizer import TASK_PPG2ECG, Tokenizer, TokenizerConfig, modality_masks
from models.translator import ContextTranslator, TranslatorConfig
from stream.cli import ArgumentParser

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
    if "recipe" not in st:
        raise CheckpointMismatch(f"the workdir {workdir} holds a {name} checkpoint that records no recipe (written "
                                 f"before checkpoints did), so it cannot be told to belong to this run; {fresh}")
    if st["recipe"] != _plain(recipe):
        raise CheckpointMismatch(f"the workdir {workdir} holds a {name} checkpoint of another training recipe "
                                 f"({_recipe_diff(st['recipe'], _plain(recipe))}); {fresh}")
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
        planned = int(st.get("scheduled_for", self.steps))
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


def _run_stage(name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, sampler: Sampler, steps: int,
               workdir: Path, ckpt_every: int, lr: float, step_loss, warmup: int = 200, log_every: int = 25, *,
               recipe: dict) -> None:
    """The loop every stage shares: resume, lr schedule, one optimizer step per `step_loss()` -> (loss, logs),
    progress, checkpoints. `model` is in train mode inside the loop and in eval mode after it."""
    ckpt = Checkpoint(workdir, name, model, opt, sampler, recipe, steps)
    start = ckpt.resume()
    prog = Progress(name, steps, start, log_every)
    model.train()
    for step in range(start + 1, steps + 1):
        _set_lr(opt, _lr(step, steps, lr, warmup=warmup))
        loss, logs = step_loss()
        _apply(opt, model, loss)
        prog(step, **logs)
        if step % ckpt_every == 0 or step == steps:
            ckpt.save(step)
    model.eval()


def train_tokenizer(tok: Tokenizer, sampler: Sampler, steps: int, batch: int, workdir: Path, ckpt_every: int, lr: float,
                    device: str = "cpu", *, recipe: dict):
    def step_loss():
        b = sampler.tokenizer_batch(batch, 400)
        loss_total, logs = 0.0, {}
        for mod in ("ecg", "ppg"):
            x = torch.from_numpy(b[mod]).to(device)
            rec, _, commit = tok(x, mod)
            loss_total = loss_total + (waveform_loss(rec, x) + 0.25 * commit)
            logs[f"{mod}_mse"] = float(F.mse_loss(rec.detach(), x))
        stats = tok.rvq.stats()  # codebook usage moves in the forward pass (EMA buffers), not in the optimizer step
        return loss_total, logs | {"ppl0": stats[0]["perplexity"], "dead": sum(s["dead_codes"] for s in stats)}

    opt = torch.optim.AdamW(tok.parameters(), lr=lr, weight_decay=1e-4)
    _run_stage("tokenizer", tok, opt, sampler, steps, workdir, ckpt_every, lr, step_loss, log_every=50, recipe=recipe)


def translator_inputs(tok: Tokenizer, b: dict, default_pat: float, device: str = "cpu"):
    """Tokenize a sampled batch the way serving does (frozen tokenizer). Returns (translator kwargs, the
    z-scored source as the translator saw it: PPG shifted by the pulse delay)."""
    t = lambda a: torch.from_numpy(a).to(device)
    task = t(b["task"])
    pat = np.where(b["has_ctx"] > 0, b["pat"], default_pat)
    pat = np.where(np.isfinite(pat), pat, default_pat).astype(np.float32)
    src = b["src"].copy()
    for i in np.nonzero(b["task"] == TASK_PPG2ECG)[0]:
        src[i] = align_ppg(src[i], float(pat[i]))
    src_t = t(src)
    with torch.no_grad():
        src_tok = torch.empty(src_t.shape[0], src_t.shape[1] // tok.cfg.stride, tok.cfg.levels, dtype=torch.long,
                              device=device)
        for mod, mask in modality_masks(task, 0):
            src_tok[mask] = tok.tokens(src_t[mask], mod)
        ctx_e = tok.tokens(t(b["ctx_ecg"]), "ecg")
        ctx_p = tok.tokens(t(b["ctx_ppg"]), "ppg")
        prior = tok.tokens(t(b["prior"]), "ecg")
    return dict(src_tok=src_tok, task=task, rate=t(b["rate"]), age=t(b["age"]), sex=t(b["sex"]), pat=t(pat),
                ctx_ecg_tok=ctx_e, ctx_ppg_tok=ctx_p, has_ctx=t(b["has_ctx"]), prior_tok=prior,
                has_prior=(task == TASK_PPG2ECG).float()), src_t


def decode_target(tok: Tokenizer, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """Decode predicted latents with the target modality's decoder (ECG for tasks 0/1, PPG for 2)."""
    out = torch.empty(z.shape[0], z.shape[1] * tok.cfg.stride, dtype=z.dtype, device=z.device)
    for mod, mask in modality_masks(task, 1):
        out[mask] = tok.decode(z[mask], mod)
    return out


def train_translator(tok: Tokenizer, tr: ContextTranslator, sampler: Sampler, steps: int, batch: int, workdir: Path,
                     ckpt_every: int, lr: float, default_pat: float, device: str = "cpu", *, recipe: dict):
    for p in tok.parameters():
        p.requires_grad_(False)

    def step_loss():
        b = sampler.translator_batch(batch)
        inp, _ = translator_inputs(tok, b, default_pat, device)
        tgt = torch.from_numpy(b["tgt"]).to(device)
        with torch.no_grad():
            z_tgt = torch.empty(tgt.shape[0], tgt.shape[1] // tok.cfg.stride, tok.cfg.latent_dim, device=device)
            for mod, mask in modality_masks(inp["task"], 1):
                z_tgt[mask] = tok.encode(tgt[mask], mod)[0]
        z = tr(**inp)
        wave = decode_target(tok, z, inp["task"])
        loss = F.mse_loss(z, z_tgt) + waveform_loss(wave, tgt)
        return loss, {"loss": float(loss.detach()), **_per_task_mse(wave, tgt, inp["task"])}

    opt = torch.optim.AdamW(tr.parameters(), lr=lr, weight_decay=1e-2)
    _run_stage("translator", tr, opt, sampler, steps, workdir, ckpt_every, lr, step_loss, recipe=recipe)


def refiner_loss(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """MSE (what per-window Pearson rewards) plus L1 on first differences (QRS edges)."""
    return F.mse_loss(pred, tgt) + F.l1_loss(pred.diff(dim=-1), tgt.diff(dim=-1))


@torch.no_grad()
def clmt_decode(tok: Tokenizer, tr: ContextTranslator, inp: dict) -> torch.Tensor:
    """What serving decodes before the refiner: translator -> (re-quantized, as `engine.QUANTIZE_OUTPUT`) latents
    -> target decoder."""
    from models.engine import QUANTIZE_OUTPUT

    z = tr(**inp)
    if QUANTIZE_OUTPUT:
        z = tok.rvq.decode_indices(tok.rvq(z)[1])
    return decode_target(tok, z, inp["task"])


def train_refiner(tok: Tokenizer, tr: ContextTranslator, ref: Refiner, sampler: Sampler, steps: int, batch: int,
                  workdir: Path, ckpt_every: int, lr: float, default_pat: float, device: str = "cpu",
                  ecg_stretch: float = 0.0, ecg_flip: float = 0.0, *, recipe: dict):
    """Stage 3: tokenizer and translator frozen (eval mode, so the codebooks do not move); the refiner learns
    the residual between the decoded CLMT output and the target, on every way a monitor may decimate.
    `ecg_stretch` / `ecg_flip`: share of ECG SR rows replayed faster or slower / inverted (data.augment_ecg)."""
    for m in (tok, tr):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)

    def step_loss():
        b = sampler.translator_batch(batch, p_task=REFINER_TASK_P, lowres_kinds=LOWRES_KINDS, p_sr_context=REFINER_SR_CONTEXT,
                                    p_ecg_stretch=ecg_stretch, p_ecg_flip=ecg_flip)
        inp, src = translator_inputs(tok, b, default_pat, device)
        decoded = clmt_decode(tok, tr, inp)
        tgt = torch.from_numpy(b["tgt_src_units"]).to(device)
        prior = torch.from_numpy(b["prior"]).to(device)  # PPG->ECG synthesis, or ECG SR context beat, or zeros
        pred = ref(src, prior, decoded, inp["task"])
        loss = refiner_loss(pred, tgt)
        return loss, {"loss": float(loss.detach()), **_per_task_mse(pred, tgt, inp["task"])}

    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=1e-4)
    _run_stage("refiner", ref, opt, sampler, steps, workdir, ckpt_every, lr, step_loss, warmup=100, recipe=recipe)


def tensor_digest(*modules: torch.nn.Module) -> str:
    """Identity of trained weights (names and exact values of every tensor)."""
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode()); h.update(str(v.dtype).encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stage_recipes(args: argparse.Namespace, train_names: list[str], tok_cfg: TokenizerConfig, tr_cfg: TranslatorConfig | None,
                  base_digest: str | None) -> dict[str, dict]:
    """What makes each stage's run, kept in its checkpoint: everything but its own step count (the same run asked for
    more steps resumes). A stage trained on frozen earlier stages carries their recipes and step counts, or the digest
    of the --init-from tensors it starts from, so a refiner checkpoint never resumes over another or a further
    trained base."""
    common = {"seed": args.seed, "records": list(train_names), "window": WINDOW, "context": CONTEXT, "template": TEMPLATE}
    out = {}
    if base_digest is None:
        out["tokenizer"] = common | {"tokenizer": tok_cfg.to_dict(), "batch": args.batch * 2, "lr": LR["tokenizer"]}
        out["translator"] = common | {"tokenizer": out["tokenizer"], "tokenizer_steps": args.tokenizer_steps,
                                      "translator": tr_cfg.to_dict(), "batch": args.batch, "lr": LR["translator"],
                                      "prior_fiducial": PRIOR_FIDUCIAL}
        base = {"translator": out["translator"], "translator_steps": args.translator_steps}
    else:
        base = {"init_from": base_digest}
    out["refiner"] = common | {"base": base, "refiner": RefinerConfig().to_dict(), "batch": args.batch, "lr": args.refiner_lr,
                               "refiner_from_base": args.refiner_from_base,
                               "ecg_stretch": args.ecg_stretch, "ecg_flip": args.ecg_flip, "task_p": REFINER_TASK_P,
                               "sr_context": REFINER_SR_CONTEXT}
    return out


def cli(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="wavebridge train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--challenge-data", default=None, help="Challenge 2015 folder (default ../shared/data/challenge2015)")
    ap.add_argument("--datasets", default="bidmc,challenge", help="comma list of bidmc, challenge (training splits of each)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="keep this share of each dataset's training records (seeded pick; validation unchanged)")
    ap.add_argument("--workdir", default=".work/train", help="checkpoints (resume from here)")
    ap.add_argument("--out", default=str(W.DEFAULT_DIR), help="where the safetensors + config + card go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", default=None, help="comma list of training records (default: the training split)")
    ap.add_argument("--tokenizer-steps", type=int, default=1500)
    ap.add_argument("--translator-steps", type=int, default=2500)
    ap.add_argument("--refiner-steps", type=int, default=2000, help="0 ships no refiner")
    ap.add_argument("--init-from", default=None,
                    help="weights (.safetensors or folder) whose tokenizer and translator are kept: only the refiner is trained "
                         "(on their training records or more, never on a held-out one)")
    ap.add_argument("--refiner-from-base", action="store_true",
                    help="with --init-from: start the refiner from those weights' refiner (fine-tuning) instead of from scratch")
    ap.add_argument("--refiner-lr", type=float, default=LR["refiner"], help="refiner peak learning rate")
    # Shipped weights: --ecg-stretch 0.5, no flips (flips cost R-peak F1 on held-out record 03; model card).
    ap.add_argument("--ecg-stretch", type=float, default=0.0, help="refiner: share of ECG SR rows replayed 0.8-1.25x as fast")
    ap.add_argument("--ecg-flip", type=float, default=0.0, help="refiner: share of ECG SR rows with inverted polarity")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when torch sees a GPU)")
    ap.add_argument("--d-model", type=int, default=TranslatorConfig.d_model)
    ap.add_argument("--layers", type=int, default=TranslatorConfig.layers)
    args = ap.parse_args(argv)
    from models.engine import resolve_device

    device = resolve_device(args.device)
    print(f"device: {device}", flush=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    root = found_data_root(args.data)
    if root is None:
        return 2
    if not (0.0 <= args.ecg_stretch <= 1.0 and 0.0 <= args.ecg_flip <= 1.0):
        print("error: --ecg-stretch and --ecg-flip are shares between 0 and 1", file=sys.stderr)
        return 2
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or set(datasets) - {"bidmc", "challenge"}:
        print(f"error: --datasets {args.datasets!r}: choose from bidmc, challenge", file=sys.stderr)
        return 2
    if not 0.0 < args.train_fraction <= 1.0:
        print("error: --train-fraction is a share in (0, 1]", file=sys.stderr)
        return 2
    only_bidmc = bool(args.records) and all(n.isdigit() for n in args.records.split(","))
    croot = challenge_root(args.challenge_data)
    if not (croot / "RECORDS").exists():
        if not only_bidmc and ("challenge" in datasets or args.records):
            found_challenge_root(args.challenge_data)  # says what is missing where
            return 2
        croot, datasets = None, [d for d in datasets if d != "challenge"]  # BIDMC --records: BIDMC's split only
    workdir = Path(args.workdir); workdir.mkdir(parents=True, exist_ok=True)
    train_names, val_names = [], []
    for d in datasets:
        tr_d, val_d = split() if d == "bidmc" else challenge_split(croot)
        if args.train_fraction < 1.0:  # seeded, and a smaller share is a subset of a larger one
            order = np.random.default_rng(args.seed).permutation(len(tr_d))
            tr_d = [tr_d[i] for i in sorted(order[: max(1, math.ceil(args.train_fraction * len(tr_d)))])]
        train_names += tr_d
        val_names += val_d
    if args.records:
        train_names = args.records.split(",")
        if overlap := set(train_names) & set(val_names):
            print(f"error: validation records given for training: {sorted(overlap)}", file=sys.stderr)
            return 2
    print(f"train records ({len(train_names)}): {' '.join(train_names)}\nvalidation records ({len(val_names)}): {' '.join(val_names)}",
          flush=True)
    if args.init_from:
        tok, tr, base_ref, base = W.load(args.init_from, device)
        # their records must all be in this run's training split: one held out here would have been learnt
        if not set(base.get("train_records", [])) <= set(train_names):
            print("error: --init-from weights were trained on other records than this run's training split", file=sys.stderr)
            return 2
        if args.refiner_from_base and base_ref is None:
            print("error: --refiner-from-base: the --init-from weights have no refiner", file=sys.stderr)
            return 2
        kept = (tok, tr, base_ref) if args.refiner_from_base else (tok, tr)
        tok_cfg, tr_cfg, base_digest = tok.cfg, tr.cfg, tensor_digest(*kept)
    elif args.refiner_from_base:
        print("error: --refiner-from-base needs --init-from", file=sys.stderr)
        return 2
    else:
        tok_cfg, base_digest = TokenizerConfig(), None
        tr_cfg = TranslatorConfig(d_model=args.d_model, layers=args.layers, heads=max(1, args.d_model // 32), ff=args.d_model * 3)
    recipes = stage_recipes(args, train_names, tok_cfg, tr_cfg, base_digest)
    stages = [] if args.init_from else [("tokenizer", args.tokenizer_steps), ("translator", args.translator_steps)]
    stages += [("refiner", args.refiner_steps)] if args.refiner_steps > 0 else []
    for name, steps in stages:  # before any data is loaded or any stage trains: a refused run costs nothing
        try:
            check_checkpoint(workdir, name, recipes[name], steps)
        except CheckpointMismatch as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    t0 = time.time()
    records = load_records(root, train_names, challenge_root=croot, progress=True)
    pats = np.array([r.pat_s for r in records])
    default_pat = float(np.nanmedian(pats))
    print(f"loaded {len(records)} records in {time.time() - t0:.1f}s; population pulse-arrival delay {default_pat:.3f}s", flush=True)
    # population lead II level and spread per 8 s window (mV): output scale when no context is given
    stds = [np.std(r.ecg[i : i + WINDOW]) for r in records for i in range(0, len(r.ecg) - WINDOW, WINDOW)]
    means = [np.mean(r.ecg[i : i + WINDOW]) for r in records for i in range(0, len(r.ecg) - WINDOW, WINDOW)]
    ecg_scale = (float(np.median(means)), float(np.median(stds)))
    sampler = Sampler(records, WINDOW, CONTEXT, TEMPLATE, args.seed)
    if args.init_from:
        default_pat, ecg_scale = float(base["default_pat_s"]), tuple(base["ecg_scale"])
        meta_stages = {k: base[k] for k in ("tokenizer_steps", "translator_steps", "codebook", "seed") if k in base}
        # the PPG->ECG prior timing the translator learnt with (weights from before the record: systolic peaks)
        meta_stages["prior_fiducial"] = base.get("prior_fiducial", "peak")
        meta_stages |= {"init_from": str(args.init_from), "refiner_from_base": args.refiner_from_base,
                        "base_train_records": base.get("train_records"), "base_train_minutes": base.get("base_train_minutes", base.get("train_minutes"))}
        # (a base that was itself refiner-only passes on the minutes of the run that trained its tokenizer and translator)
        print(f"tokenizer and translator from {args.init_from} (trained {base.get('train_minutes', float('nan')):.1f} min)", flush=True)
    else:
        tok = Tokenizer(tok_cfg).to(device)
        train_tokenizer(tok, sampler, args.tokenizer_steps, args.batch * 2, workdir, args.ckpt_every, LR["tokenizer"], device,
                        recipe=recipes["tokenizer"])
        tr = ContextTranslator(tok_cfg, tr_cfg).to(device)
        train_translator(tok, tr, sampler, args.translator_steps, args.batch, workdir, args.ckpt_every, LR["translator"],
                         default_pat, device, recipe=recipes["translator"])
        meta_stages = {"tokenizer_steps": args.tokenizer_steps, "translator_steps": args.translator_steps,
                       "codebook": tok.rvq.stats(), "seed": args.seed, "prior_fiducial": PRIOR_FIDUCIAL}
    ref = None
    if args.refiner_steps > 0:
        ref = Refiner(base_ref.cfg if args.refiner_from_base else RefinerConfig()).to(device)
        if args.refiner_from_base:
            ref.load_state_dict(base_ref.state_dict())
        train_refiner(tok, tr, ref, sampler, args.refiner_steps, args.batch, workdir, args.ckpt_every, args.refiner_lr, default_pat,
                      device, args.ecg_stretch, args.ecg_flip, recipe=recipes["refiner"])
    meta = {"default_pat_s": default_pat, "window": WINDOW, "template": TEMPLATE, "ecg_scale": ecg_scale,
            "train_records": train_names, "val_records": val_names, "device": device, **meta_stages, "refiner_steps": args.refiner_steps,
            "refiner_tasks": list(REFINED_TASKS) if ref is not None else [],
            "refiner_sr_context": ref is not None,
            "refiner_ecg_stretch": args.ecg_stretch if ref is not None else 0.0,
            "refiner_ecg_flip": args.ecg_flip if ref is not None else 0.0, "refiner_seed": args.seed, "batch": args.batch, "train_minutes": (time.time() - t0) / 60}
    path = W.save(Path(args.out), tok, tr, meta, refiner=ref)
    n = W.count_params(tok, tr, *([ref] if ref is not None else []))
    print(f"saved {path} ({n} parameters) in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
