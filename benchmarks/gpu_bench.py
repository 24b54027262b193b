"""GPU benchmark of the CLMT translator: windows/s at batch 1 ... 1024 and beds per GPU, host-side cost included.

For each batch size and task (PPG->ECG with a patient context; ECG super-resolution 25 -> 100 Hz) it times
- `model`: the forward pass alone (`ClmtTranslator._forward` on prepared windows, the device synchronised), and
- `end-to-end`: `ClmtTranslator.translate`, i.e. the host-side preparation (classic prior, context features,
  resampling) and finishing on one CPU thread plus the forward pass, which is what a worker pays per window.

Beds per GPU follow from the best end-to-end rate: a bed produces one window per task every hop (2 s), so a
125 Hz bed (PPG->ECG only) needs 1/hop windows/s and a 25 Hz bed (PPG->ECG and SR) twice that. One worker process
feeds the GPU from one host thread, so the host-side cost is usually the limit, not the GPU.

    python benchmarks/gpu_bench.py                      # on a GPU: fp16, batch 1..1024, under 5 minutes
    python benchmarks/gpu_bench.py --device cpu --quick # proves the script on CPU (fp32, a few batch sizes)

Windows are synthetic (operators.io.synthetic), so the benchmark needs no data files. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOP_S = 2.0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn, n_windows: int, min_time_s: float, device: str) -> float:
    """Windows per second of `fn()` (which handles `n_windows`), after one warm-up call."""
    fn()
    _sync(device)
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        _sync(device)
        done += n_windows
        el = time.perf_counter() - t0
        if el >= min_time_s:
            return done / el


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--precision", choices=("auto", "fp16", "fp32"), default="auto",
                    help="auto: fp16 on a GPU (as the worker runs it), fp32 on CPU")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timing per measurement")
    ap.add_argument("--quick", action="store_true", help="batches 1,4,16 and 0.3 s per measurement (a smoke run)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default="out/bench/gpu_bench.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.seconds = "1,4,16", 0.3
    batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})

    import torch

    from stream.tools.bench_model import _requests
    from models.engine import ClmtTranslator, resolve_device
    from operators.io.synthetic import synthesize
    from operators.translator import PPG2ECG, SR

    device = resolve_device(args.device)
    half = device != "cpu" if args.precision == "auto" else args.precision == "fp16"
    clmt = ClmtTranslator(args.weights, device=device, half=half, max_batch=max(batches))
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    print(f"device: {device} ({name}); {'fp16' if half else 'fp32'}; torch threads {torch.get_num_threads()}",
          flush=True)
    rec = synthesize(seconds=300.0, seed=1)
    t_start = time.monotonic()
    rows = []
    print(f"{'task':<18}{'batch':>6}{'model win/s':>14}{'end-to-end win/s':>18}{'host share':>12}", flush=True)
    for task, ctx in ((PPG2ECG, True), (SR, False)):
        pool = _requests(task, max(batches), rec, ctx)
        label = task + (" +context" if ctx else "")
        for b in batches:
            reqs = pool[:b]
            items = [clmt._prepare(r) for r in reqs]
            model = rate(lambda: clmt._forward(items), b, args.seconds, device)
            e2e = rate(lambda: clmt.translate(reqs), b, args.seconds, device)
            host = max(0.0, 1.0 - e2e / model)  # share of the end-to-end time spent outside the forward pass
            rows.append({"task": label, "batch": b, "model_windows_per_s": model, "end_to_end_windows_per_s": e2e})
            print(f"{label:<18}{b:>6}{model:>14.1f}{e2e:>18.1f}{host:>12.0%}", flush=True)
    best = {t: max(r["end_to_end_windows_per_s"] for r in rows if r["task"].startswith(t)) for t in (PPG2ECG, SR)}
    beds_125 = best[PPG2ECG] * HOP_S
    beds_25 = 1.0 / (1.0 / (best[PPG2ECG] * HOP_S) + 1.0 / (best[SR] * HOP_S))
    print(f"\nbeds per {'GPU' if device != 'cpu' else 'CPU process'} (one worker feeding it, best batch, "
          f"{HOP_S:g} s hop, host side included): {beds_125:.0f} beds at 125 Hz (PPG->ECG), "
          f"{beds_25:.0f} beds at 25 Hz (PPG->ECG + SR); {time.monotonic() - t_start:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "name": name, "fp16": half, "rows": rows,
                               "beds_125hz": beds_125, "beds_25hz": beds_25}, indent=2))
    print(f"details: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
