"""CLMT model: RVQ health, tokenizer/translator shapes, training resume, weights, engine contract."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import weights as W
from models.data import STRETCH_FACTORS, Sampler, TrainingRecord, augment_ecg, augment_span, patients, split
from models.rvq import ResidualVQ
from models.tokenizer import Tokenizer, TokenizerConfig
from models.translator import ContextTranslator, TranslatorConfig
from operators.translator import PPG2ECG, SR, PairedContext, TranslationRequest

REPO = Path(__file__).resolve().parents[1]


def test_split_is_by_patient_and_holds_out_every_fifth_patient():
    train, val = split()
    assert not set(train) & set(val) and len(train) + len(val) == 40
    for group in (("06", "07", "08", "09"), ("20", "21", "22", "23"), ("38", "39")):
        assert set(group) <= set(train) or set(group) <= set(val)  # a patient never straddles the split
    assert len(patients()) == 33 and len(val) == 7


def test_augment_ecg_replays_faster_or_inverted_and_refuses_spans_outside():
    t = np.arange(6000) / 100.0
    x = np.sin(2 * np.pi * 1.5 * t)
    assert np.array_equal(augment_ecg(x, 500, 800, 1.0, 1.0), x[500:1300].astype(np.float32))
    assert np.allclose(augment_ecg(x, 500, 800, 1.0, -1.0, margin=100), -x[400:1400], atol=1e-6)
    fast = augment_ecg(x, 1000, 2000, 1.2, 1.0)
    spec = np.abs(np.fft.rfft(fast * np.hanning(len(fast))))
    assert np.fft.rfftfreq(len(fast), 0.01)[np.argmax(spec)] == pytest.approx(1.8, abs=0.06)  # 1.5 Hz x 1.2
    with pytest.raises(ValueError, match="outside"):
        augment_ecg(x, 5500, 800, 1.25, 1.0)
    for factor in STRETCH_FACTORS:  # augment_span is exactly the room augment_ecg needs: both ends fit, one more does not
        before, after = augment_span(800, factor, 100)
        assert len(augment_ecg(x, before, 800, factor, 1.0, margin=100)) == 1000
        assert len(augment_ecg(x, len(x) - after, 800, factor, 1.0, margin=100)) == 1000
        for start in (before - 1, len(x) - after + 1):
            with pytest.raises(ValueError, match="outside"):
                augment_ecg(x, start, 800, factor, 1.0, margin=100)


def test_sampler_augments_ecg_sr_rows_consistently():
    """Augmented rows keep source, target and context beat in step: the low-rate source is the target
    decimated, so the band both share must agree."""
    from models.prep import lowres_then_up
    from operators.vocab import CANONICAL_RATE_HZ
    from operators.vocab import TASK_ECG_SR

    rng = np.random.default_rng(1)
    t = np.arange(30000) / CANONICAL_RATE_HZ
    ecg = np.zeros_like(t)
    beats = np.arange(50, len(t) - 50, 80)  # 75 bpm, spiky QRS with high-band content
    for b in beats:
        ecg[b - 3 : b + 4] += np.array([-0.2, 0.3, 1.0, 2.0, 1.0, 0.3, -0.2])
    ecg += 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(len(t))
    ppg = np.sin(2 * np.pi * 1.25 * t)
    lowres = {(m, r, k): lowres_then_up(x, r, k) for m, x in (("ecg", ecg), ("ppg", ppg))
              for r in (25.0, 50.0) for k in ("fir", "plain", "iir")}
    rec = TrainingRecord("syn", ecg.astype(np.float32), ppg.astype(np.float32), 60.0, "F", 0.6, beats, lowres)
    sampler = Sampler([rec], 800, (600, 2000), 120, seed=0, default_pat_s=0.6)
    b = sampler.translator_batch(64, p_task=(0.0, 1.0, 0.0), lowres_kinds=("fir",), p_sr_context=1.0, p_ecg_stretch=0.5, p_ecg_flip=0.5)
    inp = b.inputs
    assert (inp.task == TASK_ECG_SR).all() and np.isfinite(inp.source).all() and np.isfinite(inp.prior).all()
    flipped = 0
    for src, tgt, rate in zip(inp.source, b.target_source_units, inp.source_rate_hz):
        low = lowres_then_up(tgt.astype(np.float64), float(rate), "fir")
        assert np.corrcoef(low[100:-100], src[100:-100])[0, 1] > 0.95  # source = target, decimated
        flipped += -tgt.min() > tgt.max()  # QRS spikes point down
    assert 10 < flipped < 54  # some rows inverted, not all
    assert np.abs(inp.prior).max() > 0  # the context beat was pasted


def test_sampler_skips_flat_or_missing_stretches_and_weights_records_by_length():
    """A Challenge PLETH with its sensor off (flat) or a NaN run is not trained on: serving never translates a flat
    source, so windows drawn from one would teach beats drawn from nothing."""
    from models.data import unusable_mask

    t = np.arange(6000) / 100.0
    x = np.sin(2 * np.pi * 1.2 * t)
    x[2000:3000] = 0.3  # 10 s flat
    missing = np.zeros(len(x), bool)
    missing[4500:4510] = True
    bad = unusable_mask(x, missing)
    assert bad[2000:3000].all() and bad[4500:4510].all() and not bad[:1990].any() and not bad[3000:4500].any()
    short = np.sin(2 * np.pi * 1.2 * t[:3000]).astype(np.float32)
    mk = lambda name, n, b: TrainingRecord(name, x[:n].astype(np.float32), x[:n].astype(np.float32), None, None, 0.6,
                                   np.arange(50, n, 80), {}, np.concatenate([[0], np.cumsum(b[:n])]))
    recs = [mk("long", 6000, bad), mk("short", 3000, np.zeros(3000, bool))]
    sampler = Sampler(recs, 800, (600, 2000), 96, seed=0, default_pat_s=0.6)
    for _ in range(200):
        s = sampler._start(recs[0], 0, 6000 - 800, 800)
        assert recs[0].usable(s, 800) and not bad[s : s + 800].any()
    picks = [sampler._record().name for _ in range(3000)]
    assert 0.6 < picks.count("long") / len(picks) < 0.73  # 2:1 by length


def test_rvq_kmeans_init_ema_and_dead_code_reset():
    torch.manual_seed(0)
    rvq = ResidualVQ(levels=3, codes=16, dim=4)
    rvq.train()
    x = torch.randn(8, 50, 4)
    q = rvq.encode(x)
    assert q.latent.shape == x.shape and q.codes.shape == (8, 50, 3) and q.commit_loss.item() >= 0
    # quantization error shrinks with each residual level
    errs = [(x - rvq.decode(q.codes[..., : k + 1])).pow(2).mean().item() for k in range(3)]
    assert errs[0] > errs[1] > errs[2]
    # a code nobody uses is moved onto the data instead of staying dead
    lvl = rvq.levels[0]
    lvl.codebook[0] = 1e3
    lvl.ema_count[0] = 0.0
    rvq(x)
    assert lvl.codebook[0].abs().max() < 100
    stats = rvq.stats()
    assert [s["level"] for s in stats] == [0, 1, 2] and all(0 < s["perplexity"] <= 16 for s in stats)
    assert stats[0]["dead_codes"] >= 1  # reported, though the same update revived it (it always read 0)
    assert "last_resets" not in rvq.state_dict()  # training-time only: weight files are unchanged


def test_tokenizer_and_translator_shapes():
    tok = Tokenizer(TokenizerConfig(channels=16, latent_dim=8, levels=2, codes=8))
    tr = ContextTranslator(tok.cfg, TranslatorConfig(d_model=32, layers=1, heads=2, ff=64))
    x = torch.randn(3, 160)
    rec, q = tok(x, "ecg")
    assert rec.shape == x.shape and q.codes.shape == (3, 20, 2)
    tokens = q.codes
    ctx = tok.tokens(torch.randn(3, 96), "ecg")
    z = tr(tokens, torch.tensor([0, 1, 2]), torch.tensor([125.0, 25.0, 50.0]), torch.tensor([70.0, float("nan"), 40.0]),
           torch.tensor([1, 0, 2]), torch.tensor([0.6, 0.6, 0.6]), ctx, ctx, torch.tensor([1.0, 0.0, 0.0]))
    assert z.shape == (3, 20, 8) and torch.isfinite(z).all()


@pytest.fixture(scope="module")
def bidmc(shared_data):
    root = shared_data / "bidmc"
    if not (root / "bidmc01.hea").exists():
        pytest.skip(f"BIDMC records not found under {root}")
    return root


def _train(tmp: Path, bidmc: Path, tok_steps: int, tr_steps: int, ref_steps: int = 2, *extra: str,
           ok: bool = True) -> str:
    cmd = [sys.executable, "-m", "stream.tools.train", "--data", str(bidmc), "--workdir", str(tmp / "work"), "--out",
           str(tmp / "out"), "--records", "01,02", "--tokenizer-steps", str(tok_steps), "--translator-steps",
           str(tr_steps), "--refiner-steps", str(ref_steps), "--batch", "4", "--ckpt-every", "2", "--d-model", "32",
           "--layers", "1", *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert (res.returncode == 0) == ok, res.stderr[-2000:]
    return res.stdout + res.stderr


def test_training_is_resumable_and_exports_loadable_safetensors(tmp_path, bidmc):
    out = _train(tmp_path, bidmc, 2, 2, 0)
    assert "[translator] step 2/2" in out
    out = _train(tmp_path, bidmc, 2, 4, 2)  # same workdir, more steps: picks up where it stopped
    assert "[tokenizer] resumed at step 2" in out and "[translator] resumed at step 2" in out
    assert "[translator] note: this checkpoint was scheduled for 2 steps" in out  # the schedule restarts: said
    assert "[tokenizer] note" not in out
    assert "[translator] step 4/4" in out and "[translator] step 1/" not in out and "[refiner] step 2/2" in out
    out = _train(tmp_path, bidmc, 2, 4, 4)
    assert "[refiner] resumed at step 2" in out and "[refiner] step 4/4" in out
    # a refiner trained over the 4-step translator must not resume over a translator trained further
    assert "translator_steps: 4 -> 6" in _train(tmp_path, bidmc, 2, 6, 6, ok=False)
    cfg = json.loads((tmp_path / "out" / "clmt-small.json").read_text())
    assert cfg["train_records"] == ["01", "02"] and cfg["translator_steps"] == 4 and cfg["refiner_steps"] == 4
    tok, tr, ref, _ = W.load(tmp_path / "out")
    assert ref is not None and W.count_params(tok, tr, ref) == cfg["parameters"]
    header = (tmp_path / "out" / "clmt-small.safetensors").read_bytes()[:8]
    assert int.from_bytes(header, "little") > 0  # safetensors header length, not a pickle
    # the same workdir for another run (refiner-only over these weights, stretched): refused before any training,
    # naming the workdir, instead of resuming the full run's refiner and exporting it as a stretched one
    work = str(tmp_path / "work")
    out = _train(tmp_path, bidmc, 0, 0, 6, "--init-from", str(tmp_path / "out"), "--ecg-stretch", "0.5", ok=False)
    assert "another training recipe" in out and work in out and "--workdir" in out and "[refiner] step" not in out
    out = _train(tmp_path, bidmc, 2, 4, 3, ok=False)  # the refiner checkpoint is at step 4: not exported as 3
    assert "at step 4, past the 3 steps" in out and work in out and "[translator] resumed" not in out
    assert json.loads((tmp_path / "out" / "clmt-small.json").read_text()) == cfg  # nothing overwritten


def test_refiner_only_training_keeps_tokenizer_and_translator(tmp_path, bidmc):
    from safetensors.torch import load_file

    _train(tmp_path / "base", bidmc, 2, 2, 0)
    base = tmp_path / "base" / "out"
    assert W.load(base)[2] is None  # trained without a refiner: none shipped, serving decodes CLMT as is
    _train(tmp_path / "ref", bidmc, 0, 0, 2, "--init-from", str(base), "--ecg-stretch", "0.5", "--ecg-flip", "0.5")
    a, b = load_file(str(base / "clmt-small.safetensors")), load_file(str(tmp_path / "ref" / "out" / "clmt-small.safetensors"))
    kept = [k for k in a if not k.startswith("refiner.")]
    assert kept and all(torch.equal(a[k], b[k]) for k in kept)
    assert any(k.startswith("refiner.") for k in b)
    cfg = json.loads((tmp_path / "ref" / "out" / "clmt-small.json").read_text())
    assert cfg["translator_steps"] == 2 and cfg["init_from"] == str(base)
    assert cfg["refiner_ecg_stretch"] == 0.5 and cfg["refiner_ecg_flip"] == 0.5  # augmentation recorded
    # the same refiner-only run again resumes its checkpoint (the base is recognised by its tensors) ...
    out = _train(tmp_path / "ref", bidmc, 0, 0, 2, "--init-from", str(base), "--ecg-stretch", "0.5", "--ecg-flip", "0.5")
    assert "[refiner] resumed at step 2" in out
    # ... and without the augmentation it is another run: refused
    out = _train(tmp_path / "ref", bidmc, 0, 0, 2, "--init-from", str(base), "--ecg-stretch", "0.5", ok=False)
    assert "ecg_flip: 0.5 -> 0.0" in out and str(tmp_path / "ref" / "work") in out
    out = _train(tmp_path / "bad", bidmc, 0, 0, 2, "--init-from", str(base), "--ecg-flip", "1.5", ok=False)
    assert "between 0 and 1" in out
    # a base trained on other records would leak: refused
    out = _train(tmp_path / "bad2", bidmc, 0, 0, 2, "--init-from", str(base), "--records", "01,04", ok=False)
    assert "other records" in out
    # a refiner of the source itself, narrower: recorded, and served without a translator pass for SR
    from models.engine import ClmtTranslator
    _train(tmp_path / "src", bidmc, 0, 0, 2, "--init-from", str(base), "--refiner-draft", "source",
           "--refiner-channels", "8")
    cfg = json.loads((tmp_path / "src" / "out" / "clmt-small.json").read_text())
    assert cfg["refiner_draft"] == "source" and cfg["refiner"]["channels"] == 8
    assert ClmtTranslator(weights=str(tmp_path / "src" / "out"), device="cpu").model.refiner_draft == "source"
    # fine-tuning it keeps what it is (its width, its draft); asking for another width or draft is refused
    src = str(tmp_path / "src" / "out")
    _train(tmp_path / "ft", bidmc, 0, 0, 2, "--init-from", src, "--refiner-from-base")
    cfg = json.loads((tmp_path / "ft" / "out" / "clmt-small.json").read_text())
    assert cfg["refiner_draft"] == "source" and cfg["refiner"]["channels"] == 8
    out = _train(tmp_path / "ft2", bidmc, 0, 0, 2, "--init-from", src, "--refiner-from-base", "--refiner-draft", "decode",
                 ok=False)
    assert "has --refiner-draft source, not decode" in out
    out = _train(tmp_path / "ft3", bidmc, 0, 0, 2, "--init-from", src, "--refiner-from-base", "--refiner-channels", "16",
                 ok=False)
    assert "has --refiner-channels 8, not 16" in out


def test_translator_over_a_kept_tokenizer_trains_only_the_translator(tmp_path, bidmc):
    from safetensors.torch import load_file

    _train(tmp_path / "base", bidmc, 2, 2, 0)
    base = tmp_path / "base" / "out"
    out = _train(tmp_path / "kept", bidmc, 0, 2, 2, "--tokenizer-from", str(base), "--records", "01")
    assert "[tokenizer] step" not in out and "[translator] step 2/2" in out and "[refiner] step 2/2" in out
    a, b = load_file(str(base / "clmt-small.safetensors")), load_file(str(tmp_path / "kept" / "out" / "clmt-small.safetensors"))
    tok_keys = [k for k in a if k.startswith("tokenizer.")]
    assert tok_keys and all(torch.equal(a[k], b[k]) for k in tok_keys)
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("translator."))  # trained anew
    cfg = json.loads((tmp_path / "kept" / "out" / "clmt-small.json").read_text())
    assert cfg["train_records"] == ["01"] and cfg["tokenizer_train_records"] == ["01", "02"]
    assert cfg["tokenizer_steps"] == 2 and cfg["tokenizer_from"] == str(base)
    # the same run resumes; over another tokenizer its translator checkpoint is refused
    assert "[translator] resumed at step 2" in _train(tmp_path / "kept", bidmc, 0, 2, 2, "--tokenizer-from", str(base),
                                                      "--records", "01")
    other = tmp_path / "other"
    _train(other, bidmc, 3, 2, 0)
    out = _train(tmp_path / "kept", bidmc, 0, 2, 2, "--tokenizer-from", str(other / "out"), "--records", "01", ok=False)
    assert "another training recipe" in out and "tokenizer_from" in out
    # a tokenizer that saw a held-out record would leak it: refused, as is naming two bases
    held_out = split()[1][0]
    cfg = json.loads((base / "clmt-small.json").read_text())
    (base / "clmt-small.json").write_text(json.dumps(cfg | {"train_records": cfg["train_records"] + [held_out]}))
    out = _train(tmp_path / "leak", bidmc, 0, 2, 0, "--tokenizer-from", str(base), ok=False)
    assert "held-out records" in out and held_out in out
    out = _train(tmp_path / "both", bidmc, 0, 2, 0, "--tokenizer-from", str(base), "--init-from", str(base), ok=False)
    assert "--init-from already keeps its tokenizer" in out


def test_training_refuses_held_out_challenge_records_and_unknown_datasets(tmp_path, bidmc, shared_data):
    if not (shared_data / "challenge2015" / "RECORDS").exists():
        pytest.skip("Challenge 2015 records not found")
    out = _train(tmp_path, bidmc, 2, 2, 0, "--records", "01,a123l,a134s", ok=False)  # a134s is held out
    assert "validation records given for training: ['a134s']" in out
    assert "choose from bidmc, challenge" in _train(tmp_path, bidmc, 2, 2, 0, "--datasets", "bidmc,mimic", ok=False)
    assert "--train-fraction" in _train(tmp_path, bidmc, 2, 2, 0, "--train-fraction", "0", ok=False)
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # refused before training


def _tiny_checkpoint(workdir: Path, recipe: dict, steps: int):
    from types import SimpleNamespace

    from models.train import Checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return Checkpoint(workdir, "refiner", model, opt, SimpleNamespace(rng=np.random.default_rng(0)), recipe, steps)


def test_checkpoint_resumes_only_its_own_recipe_and_restores_both_rngs(tmp_path):
    from models.train import CheckpointMismatch, check_checkpoint

    recipe = {"seed": 0, "records": ["01", "02"], "base": {"init_from": "abc"}, "ecg_stretch": 0.0, "task_p": (0.0, 0.7, 0.3)}
    ck = _tiny_checkpoint(tmp_path, recipe, 10)
    ck.sampler.rng.random(3)
    torch.manual_seed(5)
    ck.save(4)
    expected_torch, expected_np = torch.rand(3), ck.sampler.rng.random(3)
    st = torch.load(ck.path, weights_only=True)  # no pickled objects inside
    assert st["step"] == 4 and st["recipe"]["task_p"] == [0.0, 0.7, 0.3]
    torch.manual_seed(99)
    again = _tiny_checkpoint(tmp_path, recipe, 6)  # same recipe, more steps than saved (4): resumes
    assert again.resume() == 4
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(again.sampler.rng.random(3), expected_np)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), ck.model.state_dict().values()))
    # another recipe (e.g. a refiner-only run with stretch over a full run's workdir): refused, naming the workdir
    with pytest.raises(CheckpointMismatch, match="another training recipe") as err:
        _tiny_checkpoint(tmp_path, recipe | {"ecg_stretch": 0.5}, 10).resume()
    assert "ecg_stretch: 0.0 -> 0.5" in str(err.value) and str(tmp_path) in str(err.value) and "--workdir" in str(err.value)
    with pytest.raises(CheckpointMismatch, match="base.init_from: 'abc' -> 'def'"):
        check_checkpoint(tmp_path, "refiner", recipe | {"base": {"init_from": "def"}}, 10)
    # further than asked: its weights would be exported under a step count they do not have
    with pytest.raises(CheckpointMismatch, match="at step 4, past the 3 steps"):
        _tiny_checkpoint(tmp_path, recipe, 3).resume()
    # a checkpoint that records no recipe cannot be vouched for
    del st["recipe"]
    torch.save(st, ck.path)
    with pytest.raises(CheckpointMismatch, match="another training recipe"):
        check_checkpoint(tmp_path, "refiner", recipe, 10)


def test_stage_recipes_leave_out_only_their_own_step_count():
    import argparse

    from models.train import stage_recipes

    args = lambda **kw: argparse.Namespace(**({"seed": 0, "batch": 32, "ecg_stretch": 0.0, "ecg_flip": 0.0,
                                               "tokenizer_steps": 1500, "translator_steps": 2500, "refiner_steps": 2000,
                                               "refiner_lr": 2e-3, "refiner_from_base": False, "refiner_channels": 64,
                                               "refiner_draft": "decode"} | kw))
    tok_cfg, tr_cfg = TokenizerConfig(), TranslatorConfig()
    r = lambda a, base=None, names=("01", "02"), tc=tr_cfg: stage_recipes(a, list(names), tok_cfg, tc, base)
    full = r(args())
    steps = lambda **kw: r(args(**kw))
    assert steps(refiner_steps=3) == full  # a stage's own step count: more steps resume the same run
    assert steps(tokenizer_steps=1)["tokenizer"] == full["tokenizer"] and steps(translator_steps=2)["translator"] == full["translator"]
    # ... but a later stage trained over an earlier stage that trained further is another run
    assert steps(tokenizer_steps=1)["translator"] != full["translator"] and steps(tokenizer_steps=1)["refiner"] != full["refiner"]
    assert steps(translator_steps=2)["refiner"] != full["refiner"]
    for other in (r(args(seed=1)), r(args(batch=16)), r(args(), names=("01", "04")), r(args(), tc=TranslatorConfig(layers=2))):
        assert other["translator"] != full["translator"] and other["refiner"] != full["refiner"]
    assert r(args(ecg_stretch=0.5))["refiner"] != full["refiner"] and r(args(ecg_flip=0.5))["refiner"] != full["refiner"]
    assert r(args(ecg_stretch=0.5))["translator"] == full["translator"]  # refiner settings leave earlier stages alone
    only = r(args(), base="abc")
    assert set(only) == {"refiner"} and only["refiner"] != full["refiner"]  # over --init-from, not this run's stages
    assert only["refiner"] != r(args(), base="def")["refiner"]  # another base's tensors
    assert r(args(refiner_from_base=True), base="abc")["refiner"] != only["refiner"]  # fine-tuning is another run
    for other in (args(refiner_channels=32), args(refiner_draft="source")):  # another refiner, or another draft
        assert r(other)["refiner"] != full["refiner"] and r(other)["translator"] == full["translator"]


def test_refiner_starts_as_identity_and_keeps_rows_apart():
    from models.refiner import Refiner

    torch.manual_seed(0)
    ref = Refiner()
    src, prior, dec = torch.randn(3, 160), torch.zeros(3, 160), torch.randn(3, 160)
    task = torch.tensor([0, 1, 2])
    assert torch.equal(ref(src, prior, dec, task), dec)  # zero-initialised output: training starts from CLMT
    # ... or, for an ECG SR row with a context beat, from the source plus the pasted beat (the classic draft)
    beat = torch.zeros(3, 160)
    beat[:, 40:50] = 1.0
    y = ref(src, beat, dec, task)
    assert torch.equal(y[1], src[1] + beat[1]) and torch.equal(y[0], dec[0]) and torch.equal(y[2], dec[2])
    torch.nn.init.normal_(ref.out.weight, std=0.05)
    y = ref(src, prior, dec, task)
    y1 = ref(src[1:2], prior[1:2], dec[1:2], task[1:2])
    torch.testing.assert_close(y[1:2], y1, atol=1e-5, rtol=1e-4)  # batching never mixes beds
    assert not torch.allclose(y, dec)


SHIPPED = W.available()


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_contract_with_shipped_weights():
    from models.engine import ClmtTranslator
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=40.0, seed=3)
    ecg, ppg, rate = rec.signals["II"], rec.signals["PLETH"], rec.rate_hz
    eng = ClmtTranslator(device="cpu")
    assert not eng.half  # half precision only on CUDA
    ctx = PairedContext(ecg[:2000], ppg[:2000], rate)
    reqs = [TranslationRequest(PPG2ECG, ppg[2000:3000], rate, rate, "PLETH", 70, "M", ctx),
            TranslationRequest(PPG2ECG, ppg[2000:3000], rate, 250.0, "PLETH"),
            TranslationRequest(SR, ecg[2000:3000:5], 25.0, 100.0, "II"),
            TranslationRequest(SR, ppg[2000:2500:5], 25.0, 100.0, "PLETH")]
    outs = eng.translate(reqs)
    assert [len(o) for o in outs] == [r.n_out for r in reqs] == [1000, 2000, 800, 400]
    assert all(o.dtype == np.float32 and np.all(np.isfinite(o)) for o in outs)
    # batched == one at a time (one forward pass over many beds must not mix them up)
    single = [eng.translate([r])[0] for r in reqs]
    for a, b in zip(outs, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # the patient context is used: same PPG, different context -> different ECG
    other = PairedContext(-ecg[:2000], ppg[:2000], rate)
    flipped = eng.translate([TranslationRequest(PPG2ECG, ppg[2000:3000], rate, rate, "PLETH", 70, "M", other)])[0]
    assert not np.allclose(flipped, outs[0], atol=1e-3)
    # the refiner corrects super-resolution only; PPG->ECG is the CLMT decode as is
    assert eng.model.refiner is not None
    bare = ClmtTranslator(device="cpu")
    bare.model.refiner = None
    raw = bare.translate(reqs)
    np.testing.assert_allclose(raw[0], outs[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(raw[2], outs[2], atol=1e-3)
    # super-resolution keeps the source's level and spread
    assert abs(outs[2].mean() - ecg[2000:3000].mean()) < 0.5 * ecg[2000:3000].std()


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_tokenizes_a_beds_context_once_per_version_with_identical_outputs(monkeypatch):
    """The beat templates are tokenized once per context version and bed, not in every window's forward pass; the
    model's output is bitwise what tokenizing them in the batch gives; a refreshed context replaces its bed's entry."""
    from dataclasses import replace

    from models.batch import ModelBatch
    from models.engine import ClmtTranslator
    from operators.io.synthetic import synthesize

    eng = ClmtTranslator(device="cpu")
    calls = []
    tokens = eng.model.context_tokens
    monkeypatch.setattr(eng.model, "context_tokens", lambda e, p: (calls.append(len(e)), tokens(e, p))[1])
    recs = {bed: synthesize(seconds=60.0, seed=seed) for bed, seed in (("A", 4), ("B", 5))}
    rate = recs["A"].rate_hz
    ctx = {(bed, v): PairedContext(r.signals["II"][v * 500: v * 500 + 1250], r.signals["PLETH"][v * 500: v * 500 + 1250],
                                   rate) for bed, r in recs.items() for v in (0, 1)}

    def req(bed, version, k, context=True):
        ppg = recs[bed].signals["PLETH"][2500 + 250 * k: 3500 + 250 * k]
        return TranslationRequest(PPG2ECG, ppg, rate, rate, "PLETH", 60, "F", ctx[(bed, version)] if context else None,
                                  meta={"bed": bed})

    batch = [req("A", 0, k) for k in range(4)] + [req("B", 0, k) for k in range(3)] + [req("A", 0, 5, context=False)]
    eng.translate(batch)
    assert len(calls) == 2  # one per bed, not one per window
    eng.translate([req("A", 0, 6), req("B", 0, 7)])
    assert len(calls) == 2  # cached
    n_entries, n_priors = len(eng._ctx_cache), len(eng.prior_translator._cache)
    eng.translate([req("A", 1, 8)])
    assert len(calls) == 3 and len(eng._ctx_cache) == n_entries  # the new version replaced bed A's entries
    assert len(eng.prior_translator._cache) == n_priors == 2  # one beat model per bed for the prior, too
    # bitwise the model output of the same batch with the templates tokenized in it
    items = [eng._prepare(r) for r in batch + [req("A", 1, 9)]]
    assert sum(it.row.context_tokens is not None for it in items) == 8
    cached = ModelBatch.stack([it.row for it in items], eng.template_len)
    in_batch = ModelBatch.stack([replace(it.row, context_tokens=None) for it in items], eng.template_len)
    assert cached.context_tokens is not None and in_batch.context_tokens is None
    np.testing.assert_array_equal(eng.model(cached), eng.model(in_batch))


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_training_draws_a_window_as_serving_prepares_it(monkeypatch):
    """The sampler's PPG->ECG row and the engine's row for the same window are the same `ModelBatch` row: source
    z-scored and shifted by the population pulse delay, the same classic prior."""
    from models.engine import ClmtTranslator
    from models.prep import to_canonical
    from operators.io.synthetic import synthesize

    syn = synthesize(seconds=60.0, seed=2)
    ecg, ppg = (to_canonical(syn.signals[k], syn.rate_hz) for k in ("II", "PLETH"))
    eng = ClmtTranslator(device="cpu")
    rec = TrainingRecord("syn", ecg, ppg, 60.0, "F", 0.6, np.arange(50, len(ecg), 80), {})
    sampler = Sampler([rec], 800, (600, 2000), eng.template_len, seed=0, default_pat_s=eng.default_pat)
    monkeypatch.setattr(sampler, "_start", lambda *a, **k: 1000)
    drawn = sampler.translator_batch(4, p_task=(1.0, 0.0, 0.0), p_context=0.0).inputs
    served = eng._prepare(TranslationRequest(PPG2ECG, ppg[1000:1800], 100.0, 100.0, "PLETH")).row
    for i in range(4):
        np.testing.assert_array_equal(drawn.source[i], served.source)
        np.testing.assert_array_equal(drawn.prior[i], served.prior)
        assert drawn.pat_s[i] == np.float32(served.pat_s) and drawn.has_prior[i] == 1.0
    assert not np.array_equal(drawn.source[0], (ppg[1000:1800] - ppg[1000:1800].mean()) / ppg[1000:1800].std())


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_ecg_sr_uses_a_full_rate_context_beat():
    from models.engine import ClmtTranslator
    from operators.processing.metrics import windowed_pearson_rmse
    from operators.processing.resample import decimate_to, resample
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=60.0, seed=4)
    ecg, ppg, rate = rec.signals["II"].astype(np.float64), rec.signals["PLETH"], rec.rate_hz
    c = int(20 * rate)
    ctx = PairedContext(ecg[:c], ppg[:c], rate)
    later = ecg[c : c + int(8 * rate)]
    lo = decimate_to(later, rate, 25.0)
    truth = resample(later, rate, 100.0)
    eng = ClmtTranslator(device="cpu")
    assert eng.sr_context  # the shipped refiner was trained with context beats
    reqs = [TranslationRequest(SR, lo, 25.0, 100.0, "II", context=ctx), TranslationRequest(SR, lo, 25.0, 100.0, "II"),
            TranslationRequest(SR, decimate_to(ppg[c : c + int(8 * rate)], rate, 25.0), 25.0, 100.0, "PLETH", context=ctx),
            TranslationRequest(SR, decimate_to(ppg[c : c + int(8 * rate)], rate, 25.0), 25.0, 100.0, "PLETH")]
    with_ctx, without, ppg_ctx, ppg_plain = eng.translate(reqs)
    r = lambda y: windowed_pearson_rmse(truth, y, 100.0).mean_pearson
    assert r(with_ctx) > r(without) + 0.01, (r(with_ctx), r(without))
    np.testing.assert_array_equal(ppg_ctx, ppg_plain)  # a pulse signal ignores it
    np.testing.assert_allclose(eng.translate(reqs[:1])[0], with_ctx, rtol=1e-4, atol=1e-4)  # batch == single
    # a context no faster than the source carries no high band; weights not trained for it ignore context
    slow = PairedContext(decimate_to(ecg[:c], rate, 25.0), decimate_to(ppg[:c], rate, 25.0), 25.0)
    alone = eng.translate(reqs[1:2])[0]  # compared one at a time: batch size moves float rounding
    np.testing.assert_array_equal(eng.translate([TranslationRequest(SR, lo, 25.0, 100.0, "II", context=slow)])[0], alone)
    eng.sr_context = False
    np.testing.assert_array_equal(eng.translate(reqs[:1])[0], alone)


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_sr_of_a_source_at_or_above_the_canonical_rate_is_the_polyphase_resample():
    """The model works at 100 Hz: from a 125 Hz source it has nothing to add, so the measured signal is resampled,
    not re-synthesized from tokens (batched with a 25 Hz row that does go through the model)."""
    from models.engine import ClmtTranslator
    from operators.processing.resample import resample
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=20.0, seed=6)
    ecg, ppg, rate = rec.signals["II"], rec.signals["PLETH"], rec.rate_hz
    assert rate == 125.0
    eng = ClmtTranslator(device="cpu")
    src, low = ecg[:1000], ecg[:1000:5]
    reqs = [TranslationRequest(SR, src, rate, 250.0, "II", context=PairedContext(ecg[1000:], ppg[1000:], rate)),
            TranslationRequest(SR, low, 25.0, 100.0, "II"), TranslationRequest(SR, ppg[:1000], rate, 250.0, "PLETH")]
    outs = eng.translate(reqs)
    assert [len(o) for o in outs] == [r.n_out for r in reqs] == [2000, 800, 2000]
    np.testing.assert_allclose(outs[0], resample(src.astype(np.float64), rate, 250.0, method="polyphase"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[2], resample(ppg[:1000].astype(np.float64), rate, 250.0, method="polyphase"),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[1], eng.translate(reqs[1:2])[0], rtol=1e-4, atol=1e-4)  # the model row is unchanged


def test_engine_ppg_sr_from_a_source_that_holds_the_pulse_band_is_the_polyphase_resample():
    """A PPG carries its pulses below 8 Hz: from 25 Hz the model could only add the band above 12.5 Hz, where there
    is nothing, so it is not run (it measured no better than polyphase); from 12.5 Hz, whose Nyquist frequency cuts
    into the band, it is."""
    from models.engine import ClmtTranslator
    from operators.processing.resample import resample
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=20.0, seed=6)
    ppg = rec.signals["PLETH"].astype(np.float64)
    eng = ClmtTranslator(device="cpu")
    at25, at12 = resample(ppg[:1000], 125.0, 25.0), resample(ppg[:1000], 125.0, 12.5)
    reqs = [TranslationRequest(SR, at25, 25.0, 100.0, "PLETH"), TranslationRequest(SR, at12, 12.5, 100.0, "PLETH")]
    outs = eng.translate(reqs)
    np.testing.assert_allclose(outs[0], resample(at25, 25.0, 100.0, method="polyphase"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(outs[1], resample(at12, 12.5, 100.0, method="polyphase"), rtol=1e-3, atol=1e-3)
    # outputs say what made them: the resample is not tagged with the model's name
    ecg25 = TranslationRequest(SR, resample(rec.signals["II"][:1000].astype(np.float64), 125.0, 25.0), 25.0, 100.0, "II")
    ppg125 = TranslationRequest(SR, ppg[:1000], 125.0, 250.0, "PLETH")
    synth = TranslationRequest("ppg2ecg", ppg[:1000], 125.0, 125.0, "PLETH")
    assert [eng.method_for(r) for r in reqs + [ecg25, ppg125, synth]] == ["polyphase", None, None, "polyphase", None]


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_flat_short_and_non_finite_sources():
    """A flat source (sensor off) gives a flat line, not beats the stream would report a heart rate from; a window
    shorter than the pulse delay does not break the batch it rides in; NaN runs are interpolated, not zeroed."""
    from models.engine import ClmtTranslator
    from operators.processing.rpeaks import detect_rpeaks
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=40.0, seed=5)
    ecg, ppg, rate = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64), rec.rate_hz
    ctx = PairedContext(ecg[:2000], ppg[:2000], rate)
    eng = ClmtTranslator(device="cpu")
    window = ppg[2000:3000]
    flat = [TranslationRequest(PPG2ECG, np.full(1000, 0.4), rate, rate, "PLETH"),
            TranslationRequest(PPG2ECG, np.full(1000, 0.4), rate, rate, "PLETH", context=ctx),
            TranslationRequest(SR, np.full(200, 3.0), 25.0, 100.0, "II"),
            TranslationRequest(PPG2ECG, window, rate, rate, "PLETH", context=ctx)]
    outs = eng.translate(flat)
    for o in outs[:3]:
        assert np.ptp(o) == 0 and len(detect_rpeaks(o, 100.0)) == 0
    assert outs[2][0] == pytest.approx(3.0)  # SR keeps the source's level
    assert outs[1][0] == pytest.approx(float(np.mean(ecg[:2000])), abs=0.05)  # the patient's ECG level
    np.testing.assert_allclose(outs[3], eng.translate(flat[3:])[0], rtol=1e-4, atol=1e-4)  # the live row is unaffected
    # 0.5 s of PPG is shorter than any pulse delay; batched with a full window it must still come back
    short = TranslationRequest(PPG2ECG, window[:62], rate, rate, "PLETH", context=ctx)
    both = eng.translate([short, flat[3]])
    assert [len(o) for o in both] == [62, 1000] and np.all(np.isfinite(both[0]))
    # 12 missing samples: the output stays close to that of the complete window
    holed = window.copy()
    holed[500:512] = np.nan
    full, gap = eng.translate([flat[3], TranslationRequest(PPG2ECG, holed, rate, rate, "PLETH", context=ctx)])
    assert np.all(np.isfinite(gap))
    assert np.corrcoef(full, gap)[0, 1] > 0.95


def test_lowres_then_up_keeps_length_and_refuses_fractional_plain_steps():
    from models.prep import lowres_then_up

    x = np.sin(np.arange(1002) / 7.0)
    for kind in ("fir", "iir", "plain"):
        for rate in (25.0, 50.0):
            assert len(lowres_then_up(x, rate, kind)) == len(x)
    with pytest.raises(ValueError, match="whole number"):
        lowres_then_up(x, 40.0, "plain")  # every 2.5th sample would stretch time


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_weights_refuse_a_json_that_does_not_describe_the_tensors(tmp_path):
    """Settings that change no tensor's shape (attention heads) loaded silently from a wrong JSON; refiner tensors
    were dropped when the JSON had no refiner. The engine names outputs after the file it loaded."""
    import json
    import shutil

    from models.engine import ClmtTranslator

    src = W.resolve(None)
    dst = tmp_path / "ward7.safetensors"
    shutil.copy(src, dst)
    cfg = json.loads(src.with_suffix(".json").read_text())
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    assert ClmtTranslator(weights=str(dst), device="cpu").name == "clmt:ward7"
    wrong = json.loads(json.dumps(cfg))
    wrong["translator"]["heads"] = 2 * int(cfg["translator"]["heads"])
    dst.with_suffix(".json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="translator.heads"):
        W.load(dst)
    no_refiner = {k: v for k, v in cfg.items() if k != "refiner"}
    dst.with_suffix(".json").write_text(json.dumps(no_refiner))
    with pytest.raises(ValueError, match="does not describe|refiner"):
        W.load(dst)
    # weights trained on priors timed at another fiducial would be fed inputs they never learnt: refused
    dst.with_suffix(".json").write_text(json.dumps(cfg | {"prior_fiducial": "peak"}))
    with pytest.raises(ValueError, match="pulse peak, serving times them at the pulse foot"):
        ClmtTranslator(weights=str(dst), device="cpu")
    # a tensor file without the architecture header is not one `weights.save` wrote
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(src)), str(dst))
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="records no architecture"):
        W.load(dst)


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_ignores_the_scale_of_a_context_without_a_usable_beat():
    """A flat context ECG has no beat to learn from, and its spread (0, then 1.0) scaled PPG->ECG to ~3 mV."""
    from models.engine import ClmtTranslator
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=40.0, seed=9)
    ppg, rate = rec.signals["PLETH"].astype(np.float64), rec.rate_hz
    eng = ClmtTranslator(device="cpu")
    flat_ctx = PairedContext(np.full(2500, 0.2), ppg[:2500], rate)
    with_flat, without = eng.translate([TranslationRequest(PPG2ECG, ppg[2500:3500], rate, rate, "PLETH", context=flat_ctx),
                                        TranslationRequest(PPG2ECG, ppg[2500:3500], rate, rate, "PLETH")])
    np.testing.assert_allclose(with_flat, without, atol=1e-5)  # treated as no context at all
    assert np.ptp(without) < 1.5


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_evaluate_runs_end_to_end_and_can_pick_the_context_as_the_worker_does(bidmc, tmp_path, capsys):
    """One held-out record, 16 s after a 30 s context: every row is scored, and --context-pick changes what the
    translators get (the worker gives them the best 10 s segment, not the whole context)."""
    from stream.tools import evaluate

    rows = {}
    for pick in (0.0, 10.0):
        out = tmp_path / f"e{pick:g}.json"
        assert evaluate.cli(["--data", str(bidmc), "--records", "11", "--context-s", "30", "--seconds", "16",
                             "--tasks", "ppg2ecg", "--context-pick", str(pick), "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["context_pick"] == pick
        rows[pick] = res["overall"]
    assert set(rows[0.0]) == {f"ppg2ecg {m} {c}" for m in ("clmt", "baseline") for c in ("+context", "no context")}
    assert all(0.5 < r["f1_150"] <= 1.0 for r in rows[0.0].values())
    assert rows[0.0]["ppg2ecg baseline no context"] == rows[10.0]["ppg2ecg baseline no context"]
    assert rows[0.0]["ppg2ecg baseline +context"]["pearson"] != rows[10.0]["ppg2ecg baseline +context"]["pearson"]


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_evaluate_reports_both_datasets_aligned_pearson_and_25hz_pleth(bidmc, shared_data, tmp_path):
    """A BIDMC (125 Hz) and a Challenge 2015 (250 Hz) record, PLETH also from 25 Hz: per dataset and pooled rows,
    and the aligned Pearson (best shift within +-150 ms per window) never below the raw one."""
    from stream.tools import evaluate

    challenge = shared_data / "challenge2015"
    if not (challenge / "a134s.hea").exists():
        pytest.skip(f"Challenge 2015 record a134s not found under {challenge}")
    out = tmp_path / "e.json"
    assert evaluate.cli(["--data", str(bidmc), "--challenge-data", str(challenge), "--records", "bidmc11,a134s",
                         "--context-s", "30", "--seconds", "16", "--tasks", "ppg2ecg", "--ppg-rates", "native,25",
                         "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["datasets"]["bidmc"]["records"] == ["11"] and res["datasets"]["challenge"]["records"] == ["a134s"]
    rows = {f"{t} {m} {c}" for t in ("ppg2ecg", "ppg2ecg@25Hz") for m in ("clmt", "baseline") for c in ("+context", "no context")}
    for part in (res["overall"], *(d["overall"] for d in res["datasets"].values())):
        assert set(part) == rows
        assert all(r["pearson_aligned"] >= r["pearson"] - 1e-12 for r in part.values())
    assert res["per_record"]["challenge/a134s"]["ppg2ecg@25Hz baseline +context"]["f1_150"] > 0.9
    assert res["overall"]["ppg2ecg clmt +context"]["windows"] == sum(
        d["overall"]["ppg2ecg clmt +context"]["windows"] for d in res["datasets"].values())


def test_evaluate_max_records_spreads_over_the_held_out_list():
    from models.evaluate import spread_pick

    names = [f"r{i}" for i in range(10)]
    assert spread_pick(names, 3) == ["r0", "r4", "r9"] and spread_pick(names, 0) == names and spread_pick(names, 20) == names


def test_evaluate_compares_clmt_with_the_strongest_classic_method_on_the_same_input():
    from models.evaluate import comparison, markdown_comparison

    m = lambda p: {"pearson": p, "pearson_aligned": p, "rmse": 1 - p}
    rows = {"sr-ecg 25->100 iir clmt": m(0.9), "sr-ecg 25->100 iir polyphase": m(0.8), "sr-ecg 25->100 iir cubic": m(0.85),
            "sr-ecg 25->100 iir clmt +context": m(0.95), "sr-ecg 25->100 iir polyphase +context": m(0.97),
            "ppg2ecg clmt +context": m(0.6), "ppg2ecg baseline +context": m(0.66), "ppg2ecg baseline no context": m(0.2)}
    got = {task: (method, b["pearson"]) for task, _, method, b in comparison(rows)}
    assert got == {"sr-ecg 25->100 iir": ("cubic", 0.85), "sr-ecg 25->100 iir +context": ("polyphase", 0.97),
                   "ppg2ecg +context": ("baseline", 0.66)}  # a classic row without its CLMT row is not compared
    assert "| sr-ecg 25->100 iir | 0.9000 / 0.9000, 0.1000 | 0.8500 / 0.8500, 0.1500 | cubic |" in markdown_comparison(rows)


def test_challenge_split_is_fixed_by_record_name(shared_data):
    from models.data import challenge_split

    root = shared_data / "challenge2015"
    if not (root / "RECORDS").exists():
        pytest.skip(f"Challenge 2015 records not found under {root}")
    train, val = challenge_split(root)
    assert not set(train) & set(val) and len(train) + len(val) == 244  # the records with lead II and PLETH
    assert val[:3] == ["a134s", "a203l", "a278s"] and len(val) == 49


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_bench_model_counts_flops_per_window_without_timing(capsys):
    from stream.tools import bench_model as bench

    assert bench.cli(["--flops-only", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    flops = {m.group(1): float(m.group(2)) for m in re.finditer(r"FLOPs per 8 s window, (.+?): ([\d.]+) M", out)}
    assert set(flops) == {"ppg2ecg +context", "ppg2ecg", "sr", "sr +context"}
    assert all(50 < f < 5000 for f in flops.values()) and flops["ppg2ecg +context"] > flops["ppg2ecg"]
    assert "clmt win/s" not in out  # nothing timed


def test_prior_blend_adds_the_classic_output_to_ppg2ecg_rows_only():
    """The classic term is the classic translator's own blur of the prior; PPG->ECG rows get the weights of their
    context flag, super-resolution rows pass through untouched."""
    from models.blend import PriorBlend
    from operators.classic import blur_timing

    rng = np.random.default_rng(0)
    prior = torch.from_numpy(rng.standard_normal((4, 160)))
    out = torch.from_numpy(rng.standard_normal((4, 160)))
    blend = PriorBlend(context=(0.25, 0.5), no_context=(0.75, 0.125))
    classic = blend.classic(prior)
    np.testing.assert_allclose(classic.numpy(), np.stack([blur_timing(p, 100.0) for p in prior.numpy()]), atol=1e-12)
    task, has_ctx = torch.tensor([0, 0, 1, 2]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    y = blend(task, has_ctx, prior, out)
    torch.testing.assert_close(y[0], 0.25 * out[0] + 0.5 * classic[0])
    torch.testing.assert_close(y[1], 0.75 * out[1] + 0.125 * classic[1])
    assert torch.equal(y[2:], out[2:])
    assert PriorBlend.from_config(None) is None
    assert PriorBlend.from_config(blend.to_dict()) == blend


def test_prior_blend_fit_recovers_least_squares_weights_per_context_flag():
    """Raw least squares with context; without, the fit first finds each window's shift (population timing is
    off by up to 150 ms) and then the same weights."""
    from models.blend import PriorBlend, fit

    rng = np.random.default_rng(1)
    model_out, prior = rng.standard_normal((200, 800)), rng.standard_normal((200, 800))
    has_ctx = (np.arange(200) % 2).astype(np.float32)
    classic = PriorBlend((1.0, 0.0), (1.0, 0.0)).classic(torch.from_numpy(prior)).numpy()
    with_ctx = 0.3 * model_out + 0.6 * classic
    shifts = rng.integers(-10, 11, 200)
    without = np.stack([np.roll(r, -k) for r, k in zip(0.8 * model_out + 0.1 * classic, shifts)])
    target = np.where(has_ctx[:, None] > 0, with_ctx, without)
    target[:, :400] = 0.0  # outside the fitted region (and its shifts): must not count
    got = fit(model_out, prior, target, has_ctx, (500, 700), meta={"windows": 200})
    np.testing.assert_allclose(got.context, (0.3, 0.6), atol=1e-9)
    np.testing.assert_allclose(got.no_context, (0.8, 0.1), atol=1e-9)
    assert got.fit["windows"] == 200 and got.fit["objectives"] == {"context": "raw", "no_context": "aligned"}
    raw = fit(model_out, prior, target, has_ctx, (500, 700), objectives={"no_context": "raw"})
    assert raw.context == got.context and abs(raw.no_context[0] - 0.8) > 0.3  # timing errors swamp a raw fit
    with pytest.raises(ValueError, match="no context rows"):
        fit(model_out, prior, target, np.zeros(200), (500, 700))
    with pytest.raises(ValueError, match="leaves the 800-sample window"):
        fit(model_out, prior, target, has_ctx, (5, 700))


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_engine_applies_the_weights_prior_blend_to_ppg2ecg_only(tmp_path):
    """A JSON blend of (0, 1) makes CLMT's PPG->ECG the classic translator's drawing (same shape); none leaves
    the model's own output; super-resolution is unchanged either way."""
    import shutil

    from models.engine import ClmtTranslator
    from operators.classic import ClassicTranslator
    from operators.io.synthetic import synthesize

    rec = synthesize(seconds=40.0, rate_hz=100.0, seed=3)  # the model's rate: its prior is the classic's drawing
    ecg, ppg, rate = rec.signals["II"], rec.signals["PLETH"], rec.rate_hz
    ctx = PairedContext(ecg[:2000], ppg[:2000], rate)
    reqs = [TranslationRequest(PPG2ECG, ppg[2000:2800], rate, rate, "PLETH", 70, "M", ctx),
            TranslationRequest(PPG2ECG, ppg[2000:2800], rate, rate, "PLETH"),
            TranslationRequest(SR, ecg[2000:2800:4], 25.0, 100.0, "II")]
    src = W.resolve(None)
    cfg = json.loads(src.with_suffix(".json").read_text())
    outs = {}
    for name, blend in (("own", None), ("classic", {"context": [0.0, 1.0], "no_context": [0.0, 1.0], "blur_s": 0.013})):
        dst = tmp_path / f"{name}.safetensors"
        shutil.copy(src, dst)
        dst.with_suffix(".json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "prior_blend"}
                                                       | ({"prior_blend": blend} if blend else {})))
        outs[name] = ClmtTranslator(weights=str(dst), device="cpu").translate(reqs)
    classic = ClassicTranslator().translate(reqs[:2])
    for i in (0, 1):
        assert np.corrcoef(outs["classic"][i], classic[i])[0, 1] > 0.999
        assert np.corrcoef(outs["own"][i], classic[i])[0, 1] < 0.99
    np.testing.assert_array_equal(outs["own"][2], outs["classic"][2])


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_source_draft_refiner_serves_sr_rows_without_tokens():
    """With `refiner_draft` "source", SR rows are the refiner's correction of their own source (the tokenizer never
    sees them) and PPG->ECG rows in the same batch get what a batch of their own gives them through the tokens."""
    from models.batch import Clmt, ModelBatch
    from models.engine import ClmtTranslator
    from models.refiner import Refiner, RefinerConfig
    from operators.io.synthetic import synthesize

    eng = ClmtTranslator(device="cpu")
    rec = synthesize(seconds=40.0, seed=5)
    rate = rec.rate_hz
    full_rate = PairedContext(rec.signals["II"][:2500], rec.signals["PLETH"][:2500], rate)
    reqs = [TranslationRequest(SR, rec.signals["II"][3000:4000][::5].copy(), rate / 5, 100.0, "II"),
            TranslationRequest(PPG2ECG, rec.signals["PLETH"][3000:4000], rate, rate, "PLETH"),
            TranslationRequest(SR, rec.signals["II"][4000:5000][::5].copy(), rate / 5, 100.0, "II", context=full_rate)]
    batch = ModelBatch.stack([eng._prepare(r).row for r in reqs], eng.template_len)
    assert not batch.prior[0].any() and batch.prior[2].any()  # the third row's draft is source + the pasted QRS
    torch.manual_seed(0)
    ref = Refiner(RefinerConfig(channels=8)).eval()
    torch.nn.init.normal_(ref.out.weight, std=0.05)  # not the identity: the rows must show the refiner ran
    base = eng.model
    m = Clmt(base.tok, base.tr, ref, base.refined_tasks, refiner_draft="source")
    seen = []
    tokens = base.tok.tokens
    base.tok.tokens = lambda x, mod: (seen.append(x.shape[0]), tokens(x, mod))[1]
    try:
        out = m(batch)
    finally:
        base.tok.tokens = tokens
    assert seen and sum(seen) <= 2  # the PPG->ECG row (source, prior); never the SR rows
    sr = np.array([True, False, True])
    t = lambda a: torch.from_numpy(a[sr])
    with torch.no_grad():
        direct = ref(t(batch.source), t(batch.prior), t(batch.source), t(batch.task)).numpy()
    np.testing.assert_allclose(out[sr], direct, rtol=0, atol=1e-6)
    assert np.abs(out[sr] - batch.source[sr]).max() > 1e-3
    np.testing.assert_allclose(out[~sr], base(batch.rows(~sr)), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="refiner_draft"):
        Clmt(base.tok, base.tr, ref, base.refined_tasks, refiner_draft="tokens")


def test_source_draft_training_never_runs_the_tokens(tmp_path):
    """`train_refiner(draft="source")` trains the refiner on [source, prior, source] alone: the tokenizer and
    translator are never run (a Clmt whose tokenize raises still trains), and the refiner moves."""
    from models.batch import Clmt
    from models.refiner import Refiner, RefinerConfig
    from models.prep import lowres_then_up
    from models.train import Stage, StageRun, train_refiner
    from operators.vocab import CANONICAL_RATE_HZ, LOWRES_KINDS

    t = np.arange(6000) / CANONICAL_RATE_HZ
    ecg = np.zeros_like(t)
    beats = np.arange(50, len(t) - 50, 80)
    for b in beats:
        ecg[b - 3 : b + 4] += np.array([-0.2, 0.3, 1.0, 2.0, 1.0, 0.3, -0.2])
    ppg = np.sin(2 * np.pi * 1.25 * t)
    lowres = {(m, r, k): lowres_then_up(x, r, k) for m, x in (("ecg", ecg), ("ppg", ppg))
              for r in (25.0, 50.0) for k in LOWRES_KINDS}
    rec = TrainingRecord("syn", ecg.astype(np.float32), ppg.astype(np.float32), 60.0, "F", 0.6, beats, lowres)
    sampler = Sampler([rec], 800, (600, 2000), 96, seed=0, default_pat_s=0.6)

    class NoTokens(Clmt):
        def tokenize(self, *a, **k):
            raise AssertionError("the source draft must not tokenize")

    clmt = NoTokens(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    ref = Refiner(RefinerConfig(channels=8))
    before = ref.out.weight.detach().clone()
    train_refiner(clmt, ref, StageRun(sampler, tmp_path, ckpt_every=10), Stage("refiner", 3, 4, 2e-3, {}, warmup=1),
                  draft="source")
    assert not torch.equal(before, ref.out.weight)
    with pytest.raises(AssertionError, match="must not tokenize"):
        train_refiner(clmt, Refiner(RefinerConfig(channels=8)), StageRun(sampler, tmp_path / "d", ckpt_every=10),
                      Stage("refiner", 1, 4, 2e-3, {}, warmup=1))


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_weights_naming_no_refiner_draft_correct_the_decode(tmp_path):
    import shutil

    from models.engine import ClmtTranslator

    src = W.resolve(None)
    dst = tmp_path / "clmt-small.safetensors"
    shutil.copy(src, dst)
    cfg = json.loads(src.with_suffix(".json").read_text())
    assert cfg["refiner_draft"] == "source"
    dst.with_suffix(".json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "refiner_draft"}))
    assert ClmtTranslator(weights=str(dst), device="cpu").model.refiner_draft == "decode"


@pytest.mark.skipif(not SHIPPED, reason="no shipped CLMT weights in models/weights/")
def test_mixed_batch_serving_shortcuts_give_each_row_its_own_result():
    """A batch mixing PPG->ECG rows (with and without a context) and ECG SR rows: the prior is encoded only for the
    PPG->ECG rows and the context-less rows run in a pass of their own; each row gets what the whole-batch pass gives
    it (tokens equal; latents up to float rounding), in its own place. The quantizer's sum of codes is `decode` of its
    codes."""
    from models.batch import ModelBatch
    from models.engine import ClmtTranslator
    from operators.io.synthetic import synthesize

    eng = ClmtTranslator(device="cpu")
    rec = synthesize(seconds=60.0, seed=11)
    rate = rec.rate_hz
    ctx = PairedContext(rec.signals["II"][:1250], rec.signals["PLETH"][:1250], rate)
    reqs = []
    for k in range(6):
        sl = slice(2500 + 250 * k, 3500 + 250 * k)
        if k % 3 == 2:  # ECG 25 -> 100 Hz, no context, no prior
            reqs.append(TranslationRequest(SR, rec.signals["II"][sl][::5].copy(), rate / 5, 100.0, "II", 60, "F", None))
        else:
            reqs.append(TranslationRequest(PPG2ECG, rec.signals["PLETH"][sl], rate, rate, "PLETH", 60, "F",
                                           ctx if k % 3 == 0 else None, meta={"bed": "A"}))
    batch = ModelBatch.stack([eng._prepare(r).row for r in reqs], eng.template_len)
    assert 0 < batch.has_prior.sum() < len(reqs) and 0 < batch.has_context.sum() < len(reqs)
    m = eng.model
    inp = m.tokenize(batch)
    whole = m.tok.tokens(inp.prior, "ecg")
    rows = torch.from_numpy(batch.has_prior > 0)
    assert torch.equal(inp.prior_tok[rows], whole[rows]) and not inp.prior_tok[~rows].any()
    split, one_pass = m.latents(inp), m._latents(inp)
    assert split.shape == one_pass.shape
    torch.testing.assert_close(split, one_pass, rtol=0, atol=1e-4)
    # a row placed in another row's slot would be far off: rows differ by much more than the tolerance
    assert (one_pass[1:] - one_pass[:-1]).abs().amax(dim=(1, 2)).min() > 1e-2
    rvq = m.tok.rvq
    z = one_pass.float()
    assert torch.equal(rvq.requantize(z), rvq.decode(rvq.encode(z).codes))
