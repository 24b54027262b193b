"""Residual vector quantization with EMA codebooks, k-means init and dead-code reset.

Small and readable on purpose (about 100 lines) rather than a dependency: every knob that matters
for codebook health is visible here, and `stats()` reports perplexity and dead codes per level.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def _kmeans(x: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """Plain k-means on rows of `x` (N, D); initial centroids are random rows."""
    n = x.shape[0]
    idx = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(0, n, (k,), device=x.device)
    c = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(dim=1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).clamp(min=1).unsqueeze(1).to(x.dtype)
        moved = sums / counts
        empty = torch.bincount(assign, minlength=k) == 0
        c = torch.where(empty.unsqueeze(1), c, moved)
    return c


class VQLevel(nn.Module):
    """One codebook level; updated by exponential moving averages, not by gradients."""

    def __init__(self, codes: int, dim: int, decay: float = 0.99, dead_threshold: float = 0.5):
        super().__init__()
        self.codes, self.dim, self.decay, self.dead_threshold = codes, dim, decay, dead_threshold
        self.register_buffer("codebook", torch.randn(codes, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.register_buffer("usage", torch.zeros(codes))  # EMA of assignment frequency, for stats
        # codes found dead (and reset) by the last update; not saved: it describes training, not the weights
        self.register_buffer("last_resets", torch.zeros((), dtype=torch.long), persistent=False)

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) index of each row's nearest code (squared Euclidean distance)."""
        cb = self.codebook.to(x.dtype)
        # |x|^2 - 2 x.c + |c|^2 in place on the (N, codes) product: the same roundings as the three-temporary form
        # (x - y == -y + x, and scaling by -2 is exact), without allocating two more N x codes arrays per level
        dist = torch.mm(x, cb.t()).mul_(-2)
        return dist.add_(x.pow(2).sum(1, keepdim=True)).add_(cb.pow(2).sum(1)).argmin(dim=1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.codebook)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, D) -> (quantized (N, D), indices (N,))."""
        if self.training and not bool(self.initialised):
            self._init(x.detach())
        idx = self.nearest(x.detach())
        q = self.lookup(idx).to(x.dtype)
        if self.training:
            self._ema_update(x.detach().float(), idx)
        return q, idx

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        c = _kmeans(x.float(), self.codes)
        self.codebook.copy_(c)
        self.ema_sum.copy_(c)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.codes).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, x)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.usage.mul_(self.decay).add_(counts / counts.sum().clamp(min=1), alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.codes * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        # Dead-code reset: a code nobody picks is moved onto a random recent input vector.
        dead = self.ema_count < self.dead_threshold
        n_dead = int(dead.sum())
        self.last_resets.fill_(n_dead)
        if n_dead:
            pick = x[torch.randint(0, x.shape[0], (n_dead,), device=x.device)]
            self.codebook[dead] = pick
            self.ema_sum[dead] = pick
            self.ema_count[dead] = 1.0


@dataclass(frozen=True)
class Quantized:
    """What `ResidualVQ.encode` returns (the shape of encodec's `QuantizedResult`).

    Attributes
    ----------
    latent : torch.Tensor
        (B, T, D) the sum of the chosen codes; in training, gradients pass straight through to the input.
    codes : torch.Tensor
        (B, T, L) long, the code index per level (the tokens).
    commit_loss : torch.Tensor
        Scalar MSE between the input and its quantization (the encoder's commitment term).
    """

    latent: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor


class ResidualVQ(nn.Module):
    """Hierarchical RVQ: level l quantizes what levels < l left over."""

    def __init__(self, levels: int, codes: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.levels = nn.ModuleList(VQLevel(codes, dim, decay) for _ in range(levels))

    def encode(self, z: torch.Tensor, n_levels: int | None = None) -> Quantized:
        """Quantize latent frames; in training mode the codebooks also take their EMA update.

        Parameters
        ----------
        z : torch.Tensor
            (B, T, D) latent frames.
        n_levels : int, optional
            Use only the first `n_levels` levels (default: all).
        """
        b, t, d = z.shape
        flat = z.reshape(-1, d)
        total, idxs = self._quantize(flat, n_levels)
        commit = F.mse_loss(flat, total.detach())
        quantized = flat + (total - flat).detach()
        return Quantized(quantized.view(b, t, d), torch.stack(idxs, -1).view(b, t, -1), commit)

    forward = encode

    def _quantize(self, flat: torch.Tensor, n_levels: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, D) frames -> (the sum of their chosen codes (N, D), each level's code indices (N,))."""
        residual, total, idxs = flat, torch.zeros_like(flat), []
        for level in self.levels[: n_levels or len(self.levels)]:
            q, idx = level(residual)
            residual = residual - q
            total = total + q
            idxs.append(idx)
        return total, idxs

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, L) code indices (L may be fewer than the levels) -> (B, T, D) latent frames, the codes' sum."""
        return sum(level.lookup(codes[..., i]) for i, level in enumerate(self.levels[: codes.shape[-1]]))

    def requantize(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): each frame replaced by its nearest code sum (`decode(encode(z).codes)`).

        The sum `encode` builds while choosing the codes, taken as is: the same lookups added in the same order as
        `decode` adds them, without a second lookup pass or the training-only commitment loss."""
        return self._quantize(z.reshape(-1, z.shape[-1]))[0].view(z.shape)

    @torch.no_grad()
    def stats(self) -> list[dict]:
        """Per level: perplexity of recent usage (max = number of codes) and dead codes: those the last training
        update found unused and reset. (Counting `ema_count` below the threshold here would always give 0: the
        update that finds such codes resets them at once.)"""
        out = []
        for i, level in enumerate(self.levels):
            p = level.usage / level.usage.sum().clamp(min=1e-12)
            ent = -(p * (p + 1e-12).log()).sum()
            out.append({"level": i, "perplexity": float(ent.exp()), "dead_codes": int(level.last_resets), "codes": level.codes})
        return out
