"""`wavebridge train`: train the CLMT tokenizer, then the translator, on BIDMC and Challenge 2015 (fixed splits).

The stages themselves are `models.train`; this is their command line.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import weights as W
from models.batch import REFINER_DRAFTS, Clmt
from models.data import DatasetNotFound, challenge_split, find_dataset, load_records, split, Sampler
from models.engine import resolve_device
from models.refiner import REFINED_TASKS, Refiner, RefinerConfig
from models.tokenizer import Tokenizer, TokenizerConfig
from models.translator import ContextTranslator, TranslatorConfig
from models.train import (CONTEXT, LR, TEMPLATE, WINDOW, CheckpointMismatch, PRIOR_FIDUCIAL, Stage, StageRun,
                          check_checkpoint, stage_recipes, tensor_digest, train_refiner, train_tokenizer, train_translator)
from stream.tools.cli import ArgumentParser


class Refused(Exception):
    """A run refused before training, with the one-line reason printed to stderr (exit status 2)."""


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="wavebridge train", description=__doc__.splitlines()[0].split(": ", 1)[1])
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
    ap.add_argument("--tokenizer-from", default=None,
                    help="weights whose tokenizer is kept: the translator and refiner are trained over it (a learning "
                         "curve over one tokenizer; it must never have seen a held-out record)")
    ap.add_argument("--refiner-from-base", action="store_true",
                    help="with --init-from: start the refiner from those weights' refiner (fine-tuning) instead of from scratch")
    ap.add_argument("--refiner-lr", type=float, default=LR["refiner"], help="refiner peak learning rate")
    ap.add_argument("--refiner-channels", type=int, default=None,
                    help=f"refiner width, convolution channels (default {RefinerConfig.channels}; with --refiner-from-base the "
                         "base refiner's)")
    ap.add_argument("--refiner-draft", choices=REFINER_DRAFTS, default=None,
                    help="what the refiner corrects: the CLMT decode, or the source itself (super-resolution then skips the "
                         "tokenizer and translator; models.batch.REFINER_DRAFTS). Default decode; with --refiner-from-base the "
                         "base refiner's")
    # Shipped weights: --ecg-stretch 0.5, no flips (flips cost R-peak F1 on held-out record 03; model card).
    ap.add_argument("--ecg-stretch", type=float, default=0.0, help="refiner: share of ECG SR rows replayed 0.8-1.25x as fast")
    ap.add_argument("--ecg-flip", type=float, default=0.0, help="refiner: share of ECG SR rows with inverted polarity")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of this process")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when torch sees a GPU)")
    ap.add_argument("--d-model", type=int, default=TranslatorConfig.d_model)
    ap.add_argument("--layers", type=int, default=TranslatorConfig.layers)
    return ap


def _check_args(args: argparse.Namespace) -> list[str]:
    """The --datasets listed, after the share options are checked."""
    if not (0.0 <= args.ecg_stretch <= 1.0 and 0.0 <= args.ecg_flip <= 1.0):
        raise Refused("--ecg-stretch and --ecg-flip are shares between 0 and 1")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or set(datasets) - {"bidmc", "challenge"}:
        raise Refused(f"--datasets {args.datasets!r}: choose from bidmc, challenge")
    if not 0.0 < args.train_fraction <= 1.0:
        raise Refused("--train-fraction is a share in (0, 1]")
    if args.refiner_from_base and not args.init_from:
        raise Refused("--refiner-from-base needs --init-from")
    if args.refiner_channels is not None and args.refiner_channels < 1:
        raise Refused("--refiner-channels must be at least 1")
    if not args.refiner_from_base:  # with it, `_base` takes them from the base refiner
        args.refiner_channels = args.refiner_channels or RefinerConfig.channels
        args.refiner_draft = args.refiner_draft or "decode"
    if args.tokenizer_from and args.init_from:
        raise Refused("--tokenizer-from and --init-from both name a base: --init-from already keeps its tokenizer")
    return datasets


def _record_lists(args: argparse.Namespace, datasets: list[str]) -> tuple[list[str], list[str], Path | None]:
    """(training records, validation records, Challenge 2015 folder or None when not used)."""
    only_bidmc = bool(args.records) and all(n.isdigit() for n in args.records.split(","))
    try:
        croot = find_dataset("challenge", args.challenge_data)
    except DatasetNotFound as exc:
        if not only_bidmc and ("challenge" in datasets or args.records):
            raise Refused(str(exc)) from exc
        croot, datasets = None, [d for d in datasets if d != "challenge"]  # BIDMC --records: BIDMC's split only
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
            raise Refused(f"validation records given for training: {sorted(overlap)}")
    return train_names, val_names, croot


def _base(args: argparse.Namespace, train_names: list[str], device: str):
    """(tokenizer, translator, refiner or None, weights' JSON) of --init-from, checked against this run."""
    tok, tr, base_ref, base = W.load(args.init_from, device)
    # their records must all be in this run's training split: one held out here would have been learnt
    if not set(base.get("train_records", [])) <= set(train_names):
        raise Refused("--init-from weights were trained on other records than this run's training split")
    if args.refiner_from_base:
        if base_ref is None:
            raise Refused("--refiner-from-base: the --init-from weights have no refiner")
        # fine-tuning keeps what the base refiner is: its width, and the draft it learnt to correct
        kept = {"--refiner-channels": ("refiner_channels", base_ref.cfg.channels),
                "--refiner-draft": ("refiner_draft", W.refiner_draft(base))}
        for flag, (name, value) in kept.items():
            if getattr(args, name) not in (None, value):
                raise Refused(f"--refiner-from-base: the base refiner has {flag} {value}, not {getattr(args, name)}")
            setattr(args, name, value)
    return tok, tr, base_ref, base


def _kept_tokenizer(args: argparse.Namespace, val_names: list[str], device: str) -> tuple[Tokenizer, dict]:
    """(tokenizer, its weights' JSON) of --tokenizer-from, refused when it was trained on a record held out here.
    Its training records need not be this run's: it learns no translation, only to reconstruct each modality."""
    tok, _, _, cfg = W.load(args.tokenizer_from, device)
    if seen := set(cfg.get("train_records", [])) & set(val_names):
        raise Refused(f"--tokenizer-from weights were trained on held-out records: {sorted(seen)[:5]}")
    return tok, cfg


def _population(records) -> tuple[float, tuple[float, float]]:
    """(median pulse-arrival delay in s, median lead II (level, spread) per 8 s window in mV): what serving uses for
    a bed without context."""
    default_pat = float(np.nanmedian(np.array([r.pat_s for r in records])))
    starts = [(r, i) for r in records for i in range(0, len(r.ecg) - WINDOW, WINDOW)]
    means = [np.mean(r.ecg[i : i + WINDOW]) for r, i in starts]
    stds = [np.std(r.ecg[i : i + WINDOW]) for r, i in starts]
    return default_pat, (float(np.median(means)), float(np.median(stds)))


def _base_meta(args: argparse.Namespace, base: dict) -> dict:
    """What a refiner-only run's weights record of the tokenizer and translator they keep."""
    meta = {k: base[k] for k in ("tokenizer_steps", "translator_steps", "codebook", "seed") if k in base}
    meta["prior_fiducial"] = base["prior_fiducial"]  # the prior timing the translator learnt with
    # a base that was itself refiner-only passes on the minutes of the run that trained its tokenizer and translator
    meta |= {"init_from": str(args.init_from), "refiner_from_base": args.refiner_from_base,
             "base_train_records": base.get("train_records"),
             "base_train_minutes": base.get("base_train_minutes", base.get("train_minutes"))}
    return meta


def _refiner_meta(args: argparse.Namespace, ref) -> dict:
    on = ref is not None
    return {"refiner_steps": args.refiner_steps, "refiner_tasks": list(REFINED_TASKS) if on else [],
            "refiner_sr_context": on, "refiner_ecg_stretch": args.ecg_stretch if on else 0.0,
            "refiner_ecg_flip": args.ecg_flip if on else 0.0, "refiner_seed": args.seed,
            "refiner_draft": args.refiner_draft if on else "decode"}


def _train_base(args: argparse.Namespace, run: StageRun, recipes: dict, tok_cfg: TokenizerConfig,
                tr_cfg: TranslatorConfig, kept: tuple[Tokenizer, dict] | None):
    """Stages 1 and 2: (tokenizer, translator, what the weights record of their training); stage 1 is skipped when
    `kept` holds the --tokenizer-from tokenizer."""
    if kept is None:
        tok = Tokenizer(tok_cfg).to(run.device)
        train_tokenizer(tok, run, Stage("tokenizer", args.tokenizer_steps, args.batch * 2, LR["tokenizer"],
                                        recipes["tokenizer"], log_every=50))
        tok_meta = {"tokenizer_steps": args.tokenizer_steps}
    else:
        tok, cfg = kept
        tok_meta = {"tokenizer_steps": cfg["tokenizer_steps"], "tokenizer_from": str(args.tokenizer_from),
                    "tokenizer_train_records": cfg.get("train_records")}
    tr = ContextTranslator(tok_cfg, tr_cfg).to(run.device)
    train_translator(Clmt(tok, tr), run, Stage("translator", args.translator_steps, args.batch, LR["translator"],
                                               recipes["translator"]))
    meta = tok_meta | {"translator_steps": args.translator_steps, "codebook": tok.rvq.stats(), "seed": args.seed,
                       "prior_fiducial": PRIOR_FIDUCIAL}
    return tok, tr, meta


def _train_refiner(args: argparse.Namespace, run: StageRun, recipe: dict, clmt: Clmt, base_ref: Refiner | None):
    """Stage 3 over the frozen `clmt` (from scratch, or from `base_ref` with --refiner-from-base); None when
    --refiner-steps is 0."""
    if args.refiner_steps <= 0:
        return None
    ref = Refiner(base_ref.cfg if args.refiner_from_base else RefinerConfig(channels=args.refiner_channels)).to(run.device)
    if args.refiner_from_base:
        ref.load_state_dict(base_ref.state_dict())
    train_refiner(clmt, ref, run, Stage("refiner", args.refiner_steps, args.batch, args.refiner_lr, recipe, warmup=100),
                  args.ecg_stretch, args.ecg_flip, draft=args.refiner_draft)
    return ref


def cli(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _train(args)
    except (Refused, CheckpointMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    print(f"device: {device}", flush=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)  # this process's edge: the library code never sets it
    try:
        root = find_dataset("bidmc", args.data)
    except DatasetNotFound as exc:
        raise Refused(str(exc)) from exc
    datasets = _check_args(args)
    train_names, val_names, croot = _record_lists(args, datasets)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"train records ({len(train_names)}): {' '.join(train_names)}\nvalidation records ({len(val_names)}): {' '.join(val_names)}",
          flush=True)
    if args.init_from:
        tok, tr, base_ref, base = _base(args, train_names, device)
        tok_cfg, tr_cfg = tok.cfg, tr.cfg
        base_digest = tensor_digest(*((tok, tr, base_ref) if args.refiner_from_base else (tok, tr)))
        kept = None
    else:
        base = base_ref = base_digest = None
        kept = _kept_tokenizer(args, val_names, device) if args.tokenizer_from else None
        tok_cfg = kept[0].cfg if kept else TokenizerConfig()
        tr_cfg = TranslatorConfig(d_model=args.d_model, layers=args.layers, heads=max(1, args.d_model // 32), ff=args.d_model * 3)
    recipes = stage_recipes(args, train_names, tok_cfg, tr_cfg, base_digest, tensor_digest(kept[0]) if kept else None)
    stages = [] if args.init_from else [("translator", args.translator_steps)]
    if not (args.init_from or kept):
        stages.insert(0, ("tokenizer", args.tokenizer_steps))
    stages += [("refiner", args.refiner_steps)] if args.refiner_steps > 0 else []
    for name, steps in stages:  # before any data is loaded or any stage trains: a refused run costs nothing
        check_checkpoint(workdir, name, recipes[name], steps)
    t0 = time.time()
    records = load_records(root, train_names, challenge_root=croot, progress=True)
    default_pat, ecg_scale = _population(records)
    print(f"loaded {len(records)} records in {time.time() - t0:.1f}s; population pulse-arrival delay {default_pat:.3f}s", flush=True)
    if base is not None:  # the kept translator learnt with its own run's population values
        default_pat, ecg_scale = float(base["default_pat_s"]), tuple(base["ecg_scale"])
    run = StageRun(Sampler(records, WINDOW, CONTEXT, TEMPLATE, args.seed, default_pat_s=default_pat), workdir,
                   args.ckpt_every, device)
    if base is not None:
        meta_stages = _base_meta(args, base)
        print(f"tokenizer and translator from {args.init_from} (trained {base.get('train_minutes', float('nan')):.1f} min)", flush=True)
    else:
        tok, tr, meta_stages = _train_base(args, run, recipes, tok_cfg, tr_cfg, kept)
    ref = _train_refiner(args, run, recipes["refiner"], Clmt(tok, tr, refined_tasks=REFINED_TASKS), base_ref)
    meta = {"default_pat_s": default_pat, "window": WINDOW, "template": TEMPLATE, "ecg_scale": ecg_scale,
            "train_records": train_names, "val_records": val_names, "device": device, **meta_stages,
            **_refiner_meta(args, ref), "batch": args.batch, "train_minutes": (time.time() - t0) / 60}
    path = W.save(Path(args.out), tok, tr, meta, refiner=ref)
    n = W.count_params(tok, tr, *([ref] if ref is not None else []))
    print(f"saved {path} ({n} parameters) in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
