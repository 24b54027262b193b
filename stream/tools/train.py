"""`wavebridge train`: train the CLMT tokenizer, then the translator, on BIDMC and Challenge 2015 (fixed splits).

The stages themselves are `models.train`; this is their command line.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import weights as W
from models.data import DatasetNotFound, challenge_split, find_dataset, found_dataset, load_records, split, Sampler
from models.refiner import REFINED_TASKS, Refiner, RefinerConfig
from models.tokenizer import Tokenizer, TokenizerConfig
from models.translator import ContextTranslator, TranslatorConfig
from models.train import (CONTEXT, LR, TEMPLATE, WINDOW, CheckpointMismatch, PRIOR_FIDUCIAL, check_checkpoint,
                          stage_recipes, tensor_digest, train_refiner, train_tokenizer, train_translator)
from stream.tools.cli import ArgumentParser


def cli(argv: list[str] | None = None) -> int:
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
    root = found_dataset("bidmc", args.data)
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
    try:
        croot = find_dataset("challenge", args.challenge_data)
    except DatasetNotFound as exc:
        if not only_bidmc and ("challenge" in datasets or args.records):
            print(f"error: {exc}", file=sys.stderr)
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
