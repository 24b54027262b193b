"""Context-prompted, non-autoregressive translator: source tokens -> target latent frames -> tokens.

Sequence seen by one transformer encoder:
    [task] [priors: source rate, age, sex, pulse delay] [context flag]  source tokens  context ECG tokens  context PPG tokens
Source and context token ids are embedded per RVQ level and summed. Context tokens (the same
patient's earlier paired ECG+PPG) are masked out when absent. For PPG->ECG a physiological prior -
the classic synthesis (patient beat template placed at PPG-derived beat times, operators.classic),
tokenized with the ECG tokenizer - is added position by position to the source tokens, so the
network refines a time-aligned draft instead of inventing beat timing from scratch. One forward pass predicts every target
latent frame at once; serving re-quantizes them with the tokenizer's RVQ (target tokens) and decodes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from models.tokenizer import TokenizerConfig
from operators.vocab import TASK_ECG_SR, TASK_MODALITIES

N_TASKS = len(TASK_MODALITIES)
N_PROMPT = 3


@dataclass
class TranslatorConfig:
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ff: int = 384
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoid(n: int, d: int, device=None) -> torch.Tensor:
    """(n, d) sinusoidal position encoding."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class ContextTranslator(nn.Module):
    def __init__(self, tok: TokenizerConfig, cfg: TranslatorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TranslatorConfig()
        d = cfg.d_model
        self.level_emb = nn.ModuleList(nn.Embedding(tok.codes, d) for _ in range(tok.levels))
        self.segment_emb = nn.Embedding(4, d)  # 0 source, 1 context ECG, 2 context PPG, 3 prior
        self.source_mod_emb = nn.Embedding(2, d)  # source modality: 0 ecg, 1 ppg
        self.task_emb = nn.Embedding(N_TASKS, d)
        self.sex_emb = nn.Embedding(3, d)  # unknown, M, F
        self.ctx_flag_emb = nn.Embedding(2, d)
        self.num_proj = nn.Linear(4, d)  # log2(rate/100), (age-60)/20, age known, pat/0.3
        layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff, cfg.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, tok.latent_dim)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, L) -> (B, T, d)
        return sum(emb(tokens[..., i]) for i, emb in enumerate(self.level_emb[: tokens.shape[-1]]))

    def forward(self, src_tok, task, rate, age, sex, pat, ctx_ecg_tok=None, ctx_ppg_tok=None, has_ctx=None,
                prior_tok=None, has_prior=None):
        """Predict the target's latent frames.

        Parameters
        ----------
        src_tok : torch.Tensor
            (B, T, L) long source tokens.
        task, sex : torch.Tensor
            (B,) long task ids and sex codes (0 unknown, 1 M, 2 F).
        rate, age, pat : torch.Tensor
            (B,) float: source rate in Hz, age in years (NaN unknown), pulse-arrival delay in s.
        ctx_ecg_tok, ctx_ppg_tok : torch.Tensor, optional
            (B, Tc, L) beat-template tokens; rows with `has_ctx` < 0.5 are masked out.
        has_ctx : torch.Tensor, optional
            (B,) float, 1.0 where the row has context (default: none has).
        prior_tok, has_prior : torch.Tensor, optional
            (B, T, L) prior tokens, added where `has_prior` (B,) is 1.

        Returns
        -------
        torch.Tensor
            (B, T, latent_dim) predicted target latent frames.
        """
        b, t, _ = src_tok.shape
        d = self.cfg.d_model
        dev = src_tok.device
        src_mod = (task != TASK_ECG_SR).long()  # source modality id: 0 ecg, 1 ppg (TASK_MODALITIES)
        age_known = torch.isfinite(age).float()
        age_n = torch.where(age_known > 0, (age - 60.0) / 20.0, torch.zeros_like(age))
        nums = torch.stack([torch.log2(rate / 100.0), age_n, age_known, pat / 0.3], dim=-1)
        if has_ctx is None:
            has_ctx = torch.zeros(b, device=dev)
        prompt = torch.stack([
            self.task_emb(task),
            self.sex_emb(sex) + self.num_proj(nums.to(self.num_proj.weight.dtype)),
            self.ctx_flag_emb(has_ctx.long()),
        ], dim=1)
        x = self.embed_tokens(src_tok) + self.segment_emb.weight[0] + self.source_mod_emb(src_mod)[:, None]
        if prior_tok is not None:
            gate = has_prior.to(x.dtype)[:, None, None]
            x = x + gate * (self.embed_tokens(prior_tok) + self.segment_emb.weight[3])
        x = x + sinusoid(t, d, dev).to(x.dtype)
        parts, masks = [prompt, x], [torch.zeros(b, N_PROMPT + t, dtype=torch.bool, device=dev)]
        if ctx_ecg_tok is not None:
            tc = ctx_ecg_tok.shape[1]
            pe = sinusoid(tc, d, dev).to(x.dtype)
            parts += [self.embed_tokens(ctx_ecg_tok) + self.segment_emb.weight[1] + pe,
                      self.embed_tokens(ctx_ppg_tok) + self.segment_emb.weight[2] + pe]
            absent = (has_ctx < 0.5)[:, None].expand(b, 2 * tc)
            masks.append(absent)
        h = self.encoder(torch.cat(parts, dim=1), src_key_padding_mask=torch.cat(masks, dim=1))
        return self.head(self.norm(h[:, N_PROMPT : N_PROMPT + t]))
