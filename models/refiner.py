"""Sample-rate refiner: a small dilated 1-D conv net that corrects a draft at 100 Hz (the CLMT decode, or the source).

Why it exists: the translator works on 80 ms token frames, and for super-resolution the band above the
source's Nyquist frequency is mostly the QRS complex, whose shape is stereotyped per patient but whose
position must be right to a few milliseconds (an oracle that pastes the patient's own high-band QRS
template at the true R-peaks reaches Pearson 0.99 on ECG 25->100 Hz; the token path alone 0.87). The
refiner sees, sample by sample, what the translator cannot resolve in token space:
    channel 0  the source as the translator got it (z-scored; for PPG->ECG shifted by the pulse delay)
    channel 1  a prior: for ECG SR with a full-rate context of the same patient, that patient's QRS high band
               pasted at matched beat times (operators.processing.beatsr), else zeros (PPG->ECG's template synthesis
               would go here, but PPG->ECG is not refined)
    channel 2  the draft's base: the decoded CLMT output, or the source again (below)
plus the task as a learned per-channel bias, and predicts a residual added to a draft: the CLMT decode
(channel 2), or, for ECG SR rows that carry a context beat, the source plus that beat's high band
(`prior_draft`): the classic paste is the better draft there (held-out Pearson 0.978 against 0.956 when
the refiner had to rebuild it from the decode), and a zero-initialised residual starts from it.
For SR the target is expressed in the source's z-units (same level and spread as the serving path rescales with).

Weights may instead have the refiner correct the source itself (`refiner_draft` "source", `models.batch.REFINER_DRAFTS`):
channel 2 is then the source again, the draft is the source (or source plus pasted beat), and super-resolution never
passes through the tokenizer and translator. On held-out records a refiner trained that way did as well as the one
over the CLMT decode at about an eighth of the FLOPs (model card): the band above a low-rate source's Nyquist
frequency comes from the sample-level net, not from the 80 ms tokens.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.translator import N_TASKS
from operators.vocab import TASK_ECG_SR, TASK_PPG_SR

N_INPUTS = 3
# Tasks the refiner is trained on and applied to. Not PPG->ECG: there the sample-level error is beat timing,
# and BIDMC's PPG-to-ECG delay jitters ~13 ms from beat to beat (unpredictable from the PPG), which a
# sample-level net cannot fix; a refiner trained on all tasks lowered held-out PPG->ECG Pearson 0.543 -> 0.429.
REFINED_TASKS = (TASK_ECG_SR, TASK_PPG_SR)


@dataclass
class RefinerConfig:
    channels: int = 64
    dilations: tuple = (1, 2, 4, 8, 16, 1, 2, 4, 8, 1)  # receptive field 201 samples = 2.0 s at 100 Hz (7 + 4*47 + 6)
    kernel: int = 5
    prior_draft: bool = True  # ECG SR rows with a context beat start from source + prior, not from the CLMT decode

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, ch: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.mix = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        return x + self.mix(F.gelu(self.conv(F.gelu(x))))


class Refiner(nn.Module):
    def __init__(self, cfg: RefinerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RefinerConfig()
        self.inp = nn.Conv1d(N_INPUTS, cfg.channels, 7, padding=3)
        self.task_bias = nn.Embedding(N_TASKS, cfg.channels)
        self.blocks = nn.Sequential(*(_Block(cfg.channels, cfg.kernel, d) for d in cfg.dilations))
        self.out = nn.Conv1d(cfg.channels, 1, 7, padding=3)
        nn.init.zeros_(self.out.weight)  # starts as the identity: output == its draft
        nn.init.zeros_(self.out.bias)

    def forward(self, source: torch.Tensor, prior: torch.Tensor, decoded: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """All (B, N) at 100 Hz, task (B,) long -> refined (B, N)."""
        x = torch.stack([source, prior, decoded], dim=1)
        h = self.inp(x) + self.task_bias(task)[:, :, None]
        draft = decoded
        if self.cfg.prior_draft:
            beat = (task == TASK_ECG_SR) & (prior.abs().amax(dim=-1) > 0)
            draft = torch.where(beat[:, None], source + prior, decoded)
        return draft + self.out(F.gelu(self.blocks(h)))[:, 0]
