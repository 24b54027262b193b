"""Pickle-free weight files: `<name>.safetensors` (tensors) + `<name>.json` (configs and metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.refiner import Refiner, RefinerConfig
from models.tokenizer import Tokenizer, TokenizerConfig
from models.translator import ContextTranslator, TranslatorConfig

DEFAULT_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "clmt-small"
PARTS = ("tokenizer", "translator", "refiner")


def count_params(*modules: torch.nn.Module) -> int:
    """Number of parameters (not buffers such as codebooks) of `modules` together."""
    return sum(p.numel() for m in modules for p in m.parameters())


def save(out_dir: Path, tok: Tokenizer, tr: ContextTranslator, meta: dict, name: str = DEFAULT_NAME,
         refiner: Refiner | None = None) -> Path:
    """Write `<out_dir>/<name>.safetensors` (tensors, the architecture in its header) and `<name>.json`
    (architecture, parameter count and `meta`: what serving reads, e.g. `default_pat_s`, `ecg_scale`,
    `refiner_tasks`, `prior_fiducial`); returns the .safetensors path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {"tokenizer": tok, "translator": tr} | ({"refiner": refiner} if refiner is not None else {})
    tensors = {f"{p}.{k}": v.detach().contiguous().cpu() for p, m in parts.items() for k, v in m.state_dict().items()}
    path = out_dir / f"{name}.safetensors"
    arch = {p: m.cfg.to_dict() for p, m in parts.items()}
    # The architecture travels inside the tensor file too: settings that change no tensor's shape (heads,
    # dilations) would otherwise load silently from a mismatched JSON and compute something else.
    save_file(tensors, str(path), metadata={"architecture": _canonical(arch)})
    cfg = arch | {"parameters": count_params(*parts.values()), **meta}
    (out_dir / f"{name}.json").write_text(json.dumps(cfg, indent=2, default=float))
    return path


def load(path: str | Path | None = None, device: str = "cpu") -> tuple[Tokenizer, ContextTranslator, Refiner | None, dict]:
    """Load weights with safetensors (no pickle); `path` is the .safetensors file or its folder.
    The refiner is None for weights trained without one."""
    path = resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"CLMT weights not found: {path} (train them with `wavebridge train`)")
    cfg = json.loads(path.with_suffix(".json").read_text())
    _check_matches(path, cfg)
    tok = Tokenizer(TokenizerConfig(**cfg["tokenizer"]))
    tr = ContextTranslator(tok.cfg, TranslatorConfig(**cfg["translator"]))
    state = load_file(str(path), device=device)
    parts = {k.split(".", 1)[0] for k in state}
    if parts - set(PARTS) or ("refiner" in parts) != ("refiner" in cfg):
        raise ValueError(f"{path}: tensors for {sorted(parts)} but {path.with_suffix('.json').name} configures "
                         f"{sorted(p for p in PARTS if p in cfg)}")
    tok.load_state_dict({k[len("tokenizer."):]: v for k, v in state.items() if k.startswith("tokenizer.")})
    tr.load_state_dict({k[len("translator."):]: v for k, v in state.items() if k.startswith("translator.")})
    ref = None
    if "refiner" in cfg:
        rc = cfg["refiner"]
        ref = Refiner(RefinerConfig(**(rc | {"dilations": tuple(rc["dilations"])})))
        ref.load_state_dict({k[len("refiner."):]: v for k, v in state.items() if k.startswith("refiner.")})
        ref = ref.to(device).eval()
    return tok.to(device).eval(), tr.to(device).eval(), ref, cfg


def refiner_draft(cfg: dict) -> str:
    """What the weights' refiner corrects (`models.batch.REFINER_DRAFTS`): the JSON's `refiner_draft`; weights that name
    none correct the decode, the design's own path."""
    return cfg.get("refiner_draft", "decode")


def resolve(path: str | Path | None = None) -> Path:
    """The .safetensors file `path` names (a file, or a folder holding the default one)."""
    p = Path(path) if path else DEFAULT_DIR / f"{DEFAULT_NAME}.safetensors"
    return p / f"{DEFAULT_NAME}.safetensors" if p.is_dir() else p


def _canonical(arch: dict) -> str:
    return json.dumps(json.loads(json.dumps(arch)), sort_keys=True)  # tuples -> lists, stable key order


def _check_matches(path: Path, cfg: dict) -> None:
    """The JSON's architecture must be the one the tensors were saved with (the tensor file's header records it)."""
    with safe_open(str(path), framework="pt") as f:
        saved = (f.metadata() or {}).get("architecture")
    if saved is None:
        raise ValueError(f"{path.name} records no architecture in its header: not a file `weights.save` wrote")
    mine = _canonical({p: cfg[p] for p in PARTS if p in cfg})
    if mine != saved:
        a, b = json.loads(saved), json.loads(mine)
        diff = sorted(f"{p}.{k}" for p in set(a) | set(b) for k in set(a.get(p, {})) | set(b.get(p, {}))
                      if a.get(p, {}).get(k) != b.get(p, {}).get(k))
        raise ValueError(f"{path.with_suffix('.json').name} does not describe the tensors in {path.name} "
                         f"(differs in {', '.join(diff) or 'its parts'})")


def available(path: str | Path | None = None) -> bool:
    """Whether the weights `path` names (default: the shipped ones) exist."""
    return resolve(path).exists()
