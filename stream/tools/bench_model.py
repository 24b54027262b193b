"""`wavebridge bench-model`: translator throughput in windows/s, batch 1 vs batch N, against the
classic translator measured in the same run (ratios, not absolute timings, are what to compare).

Windows are 8 s of synthetic PLETH at 125 Hz (ppg2ecg, with a paired context) and 8 s of ECG at
25 Hz (sr -> 100 Hz, without and with a full-rate context), so the benchmark needs no data files.
"""
from __future__ import annotations

import sys
import time


from operators.io.synthetic import synthesize
from operators.translator import PPG2ECG, SR, PairedContext, TranslationRequest, load_translator
from operators.vocab import ECG, SR_TARGET_HZ
from stream.tools.cli import ArgumentParser


def _requests(task: str, n: int, rec, with_context: bool) -> list[TranslationRequest]:
    ecg, ppg, rate = rec.signals["II"], rec.signals["PLETH"], rec.rate_hz
    ctx = PairedContext(ecg[:2500], ppg[:2500], rate) if with_context else None
    w = int(8 * rate)
    out = []
    for i in range(n):
        s = 2500 + (i * 97) % (len(ppg) - w - 2500)
        if task == PPG2ECG:
            out.append(TranslationRequest(PPG2ECG, ppg[s : s + w], rate, rate, "PLETH", 60, "F", ctx))
        else:
            lo = ecg[s : s + w : 5]
            out.append(TranslationRequest(SR, lo, rate / 5, SR_TARGET_HZ, ECG, 60, "F", ctx))
    return out


def windows_per_s(tr, reqs: list[TranslationRequest], batch: int, min_time: float) -> float:
    tr.translate(reqs[:batch])  # warm-up (allocations, kernels)
    done, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(reqs), batch):
            tr.translate(reqs[s : s + batch])
            done += len(reqs[s : s + batch])
        el = time.perf_counter() - t0
        if el >= min_time:
            return done / el


def flops_per_window(clmt, req: TranslationRequest) -> int:
    """Floating-point operations (multiply and add counted apart) of one CLMT forward pass over one window,
    counted by torch's FlopCounterMode (matrix products and convolutions; element-wise work is not counted).

    The patient's beat templates are tokenized once per context, not per window (`ClmtTranslator`): not counted.
    The transformer layers are counted on torch's unfused path (the fused inference kernel serving uses computes
    the same products, but the counter does not see inside it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    items = [clmt._prepare(req)]
    fused = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as fc:
            clmt._forward(items)
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
    return int(fc.get_total_flops())


def cli(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="wavebridge bench-model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum timing per measurement")
    ap.add_argument("--flops-only", action="store_true", help="print parameters and FLOPs per window, time nothing")
    args = ap.parse_args(argv)
    import torch

    from models import weights as W
    from models.engine import ClmtTranslator

    if args.threads:
        torch.set_num_threads(args.threads)
    clmt = ClmtTranslator(args.weights, device=args.device)
    classic = load_translator("classic")
    tok, tr, ref, _ = W.load(args.weights)
    parts = [tok, tr] + ([ref] if ref is not None else [])
    print(f"CLMT parameters: {W.count_params(*parts):,} (tokenizer {W.count_params(tok):,}, translator {W.count_params(tr):,}, "
          f"refiner {W.count_params(ref) if ref is not None else 0:,})")
    print(f"device: {clmt.device}{' fp16' if clmt.half else ''}; torch threads {torch.get_num_threads()}")
    rec = synthesize(seconds=120.0, seed=1)
    for task, ctx in ((PPG2ECG, True), (PPG2ECG, False), (SR, False), (SR, True)):
        f = flops_per_window(clmt, _requests(task, 1, rec, ctx)[0])
        print(f"FLOPs per 8 s window, {task}{' +context' if ctx else ''}: {f / 1e6:.1f} M")
    if args.flops_only:
        return 0
    n = max(args.batch * 2, 64)
    print(f"{'task':<22}{'batch':>6}{'clmt win/s':>12}{'classic win/s':>15}{'clmt/classic':>14}")
    for task, ctx in ((PPG2ECG, True), (SR, False), (SR, True)):
        reqs = _requests(task, n, rec, ctx)
        base = windows_per_s(classic, reqs, args.batch, args.seconds)
        one = windows_per_s(clmt, reqs[: max(8, n // 8)], 1, args.seconds)
        many = windows_per_s(clmt, reqs, args.batch, args.seconds)
        label = task + (" +context" if ctx else "")
        print(f"{label:<22}{1:>6}{one:>12.1f}{'':>15}{one / base:>14.3f}")
        print(f"{label:<22}{args.batch:>6}{many:>12.1f}{base:>15.1f}{many / base:>14.3f}")
        print(f"{'':<22}batch {args.batch} vs batch 1 speed-up: {many / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
