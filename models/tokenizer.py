"""Universal waveform tokenizer: per-modality 1-D conv encoder -> shared hierarchical RVQ -> decoder.

Every signal is first resampled to the canonical rate (100 Hz) and z-scored per window, so one token
vocabulary serves ECG and PPG at any source rate. The encoder downsamples by `stride` (8: one token per
80 ms, about one QRS); the RVQ turns each latent frame into `levels` codes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.rvq import Quantized, ResidualVQ
from operators.vocab import TASK_MODALITIES

MODALITIES = ("ecg", "ppg")
# Task ids used by the translator, training and serving: (source modality, target modality).


def modality_masks(task: torch.Tensor, side: int) -> list[tuple[str, torch.Tensor]]:
    """[(modality, (B,) bool mask of rows whose task has it as source (side 0) / target (side 1))], non-empty only."""
    out = []
    for mod in MODALITIES:
        ids = [t for t, pair in TASK_MODALITIES.items() if pair[side] == mod]
        mask = torch.isin(task, torch.tensor(ids, device=task.device))
        if bool(mask.any()):
            out.append((mod, mask))
    return out


@dataclass
class TokenizerConfig:
    channels: int = 64
    latent_dim: int = 64
    levels: int = 6
    codes: int = 256
    stride: int = 8  # product of the encoder's stride-2 stages
    decay: float = 0.99

    def to_dict(self) -> dict:
        return asdict(self)


class _ResBlock(nn.Module):
    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 5, padding=2 * dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


def _stages(stride: int) -> int:
    n = stride.bit_length() - 1
    if 2**n != stride:
        raise ValueError(f"stride must be a power of two, got {stride}")
    return n


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(1, ch, 7, padding=3)]
        for _ in range(_stages(cfg.stride)):
            layers += [_ResBlock(ch), nn.GELU(), nn.Conv1d(ch, ch, 4, stride=2, padding=1)]
        layers += [_ResBlock(ch, 2), nn.GELU(), nn.Conv1d(ch, cfg.latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # (B, N) -> (B, N/stride, D)
        return self.net(x.unsqueeze(1)).transpose(1, 2)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_dim, ch, 3, padding=1), _ResBlock(ch, 2)]
        for _ in range(_stages(cfg.stride)):
            layers += [nn.GELU(), nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1), _ResBlock(ch)]
        layers += [nn.GELU(), nn.Conv1d(ch, 1, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):  # (B, T, D) -> (B, T*stride)
        return self.net(z.transpose(1, 2)).squeeze(1)


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig | None = None):
        super().__init__()
        self.cfg = cfg or TokenizerConfig()
        self.encoders = nn.ModuleDict({m: Encoder(self.cfg) for m in MODALITIES})
        self.decoders = nn.ModuleDict({m: Decoder(self.cfg) for m in MODALITIES})
        self.rvq = ResidualVQ(self.cfg.levels, self.cfg.codes, self.cfg.latent_dim, self.cfg.decay)

    def encode(self, x: torch.Tensor, modality: str) -> Quantized:
        """Encode and quantize.

        Parameters
        ----------
        x : torch.Tensor
            (B, N) z-scored signal at 100 Hz, N a multiple of `cfg.stride`.
        modality : str
            "ecg" or "ppg" (which encoder).

        Returns
        -------
        Quantized
            latent (B, N / stride, latent_dim), codes (B, N / stride, levels), commit loss.
        """
        return self.rvq.encode(self.encoders[modality](x))

    def tokens(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, N) z-scored at 100 Hz -> (B, N / stride, levels) long token ids."""
        return self.encode(x, modality).codes

    def decode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, T, latent_dim) latent frames -> (B, T * stride) z-scored signal at 100 Hz."""
        return self.decoders[modality](z)

    def decode_tokens(self, tokens: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, T, L) token ids -> (B, T * stride) z-scored signal at 100 Hz."""
        return self.decode(self.rvq.decode(tokens), modality)

    def forward(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, Quantized]:
        """(B, N) -> (reconstruction (B, N), the quantization it was decoded from)."""
        q = self.encode(x, modality)
        return self.decode(q.latent, modality), q
