"""Pickle-free weight files: `<name>.safetensors` (tensors) + `<name>.json` (configs and metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.refiner import Refiner, RefinerConfig
from models.tokenizer import Tokenizer, TokenizerConfig
from models.translator import ContextTranslator, TranslatorConfig

DEFAULT_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "clmt-small"


def count_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def save(out_dir: Path, tok: Tokenizer, tr: ContextTranslator, meta: dict, name: str = DEFAULT_NAME,
         refiner: Refiner | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {"tokenizer": tok, "translator": tr} | ({"refiner": refiner} if refiner is not None else {})
    tensors = {f"{p}.{k}": v.detach().contiguous().cpu() for p, m in parts.items() for k, v in m.state_dict().items()}
    path = out_dir / f"{name}.safetensors"
    save_file(tensors, str(path))
    cfg = {p: m.cfg.to_dict() for p, m in parts.items()} | {"parameters": count_params(*parts.values()), **meta}
    (out_dir / f"{name}.json").write_text(json.dumps(cfg, indent=2, default=float))
    return path


def load(path: str | Path | None = None, device: str = "cpu") -> tuple[Tokenizer, ContextTranslator, Refiner | None, dict]:
    """Load weights with safetensors (no pickle); `path` is the .safetensors file or its folder.
    The refiner is None for weights trained without one."""
    path = Path(path) if path else DEFAULT_DIR / f"{DEFAULT_NAME}.safetensors"
    if path.is_dir():
        path = path / f"{DEFAULT_NAME}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"CLMT weights not found: {path} (train them with `wavebridge train`)")
    cfg = json.loads(path.with_suffix(".json").read_text())
    tok = Tokenizer(TokenizerConfig(**cfg["tokenizer"]))
    tr = ContextTranslator(tok.cfg, TranslatorConfig(**cfg["translator"]))
    state = load_file(str(path), device=device)
    tok.load_state_dict({k[len("tokenizer."):]: v for k, v in state.items() if k.startswith("tokenizer.")})
    tr.load_state_dict({k[len("translator."):]: v for k, v in state.items() if k.startswith("translator.")})
    ref = None
    if "refiner" in cfg:
        rc = cfg["refiner"]
        # files from before `prior_draft` existed were trained without it
        ref = Refiner(RefinerConfig(**({"prior_draft": False} | rc | {"dilations": tuple(rc["dilations"])})))
        ref.load_state_dict({k[len("refiner."):]: v for k, v in state.items() if k.startswith("refiner.")})
        ref = ref.to(device).eval()
    return tok.to(device).eval(), tr.to(device).eval(), ref, cfg


def available(path: str | Path | None = None) -> bool:
    p = Path(path) if path else DEFAULT_DIR / f"{DEFAULT_NAME}.safetensors"
    return (p / f"{DEFAULT_NAME}.safetensors").exists() if p.is_dir() else p.exists()
