"""Layering rules from docs/architecture.md.

`operators/` must stay importable without Kafka or torch (pure signal code, reusable offline);
`models/` must not depend on Kafka (the model is trained and served without a broker); the service
half of `stream/` (everything but `stream/tools/`) loads translators by spec only, so it imports
neither torch nor `models`, and never the tools.
Checked twice: every import statement (parsed with `ast`, including imports inside functions),
and by really importing each module and looking at what ends up in `sys.modules` (catches
indirect imports through another package).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA = {"kafka", "faust", "aiokafka", "mode", "confluent_kafka"}
TORCH = {"torch", "torchvision", "torchaudio"}

RULES = {
    # operators is the bottom layer: it may not reach up into stream/ or models/ either.
    "operators": KAFKA | TORCH | {"stream", "models"},
    "models": KAFKA | {"stream"},
    # the service: a worker image must not need torch unless a spec asks for CLMT
    "stream": TORCH | {"models", "stream.tools"},
}
# Packages whose rule does not apply to one of their subpackages (the tools may use everything).
EXEMPT = {"stream": "stream/tools"}


def imported_names(path: Path) -> set[tuple[str, int]]:
    """Dotted module names imported anywhere in `path` (incl. inside functions), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module, node.lineno))
            # `from stream import tools` names the subpackage in the alias
            found |= {(f"{node.module}.{alias.name}", node.lineno) for alias in node.names}
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add((arg.value, node.lineno))
    return found


def imported_roots(path: Path) -> set[tuple[str, int]]:
    """Top-level package names imported anywhere in `path`, with line numbers."""
    return {(name.split(".")[0], line) for name, line in imported_names(path)}


def _forbidden(name: str, forbidden: set[str]) -> str | None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) in forbidden:
            return ".".join(parts[:i])
    return None


def _is_dynamic_import(call: ast.Call) -> bool:
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
    return name in ("import_module", "__import__")


def violations(package: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in _files(package):
        for name, line in sorted(imported_names(path)):
            hit = _forbidden(name, forbidden)
            if hit:
                out.append(f"{path.relative_to(REPO)}:{line} imports {hit}")
    return sorted(set(out))


def _files(package: str) -> list[Path]:
    exempt = EXEMPT.get(package)
    return [
        p for p in sorted((REPO / package).rglob("*.py"))
        if not (exempt and p.relative_to(REPO).as_posix().startswith(exempt + "/"))
    ]


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_respects_layering(package):
    assert (REPO / package).is_dir()
    files = _files(package)
    assert files, f"{package}/ has no Python files to check"
    bad = violations(package, RULES[package])
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_checker_catches_violations(tmp_path):
    # The checker itself must see plain, from-, nested and dynamic imports, or the rule above proves nothing.
    pkg = tmp_path / "operators"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import numpy as np\n"
        "from aiokafka import AIOKafkaProducer\n"
        "def f():\n"
        "    import torch.nn\n"
        "    import importlib\n"
        "    return importlib.import_module('faust.app')\n"
        "from . import sibling\n"
    )
    roots = {r for r, _ in imported_roots(pkg / "bad.py")}
    assert {"numpy", "aiokafka", "torch", "faust"} <= roots
    assert "sibling" not in roots  # relative imports stay inside the package


def test_checker_sees_subpackages(tmp_path):
    (tmp_path / "svc.py").write_text("from stream import tools\nfrom stream.tools.cli import main\nimport stream.wire\n")
    names = {n for n, _ in imported_names(tmp_path / "svc.py")}
    assert _forbidden("stream.tools", RULES["stream"]) == "stream.tools"
    assert {"stream.tools", "stream.tools.cli"} <= names
    assert _forbidden("stream.wire", RULES["stream"]) is None


def _module_names(package: str) -> list[str]:
    names = []
    for path in _files(package):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        names.append(".".join(parts))
    return names


@pytest.mark.parametrize("package, forbidden", [("operators", KAFKA | TORCH), ("models", KAFKA), ("stream", TORCH | {"models"})])
def test_importing_package_loads_no_forbidden_module(package, forbidden):
    # A fresh interpreter: the test process itself may already have Kafka/torch loaded.
    code = (
        "import importlib, json, sys\n"
        f"for name in {_module_names(package)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = set(json.loads(res.stdout.strip().splitlines()[-1]))
    assert not loaded & forbidden, f"importing {package}/ loads {sorted(loaded & forbidden)}"
