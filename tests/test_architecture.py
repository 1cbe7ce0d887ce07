"""Dependencies flow one way: no module imports from a later stage (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "brainlatent"

#: stage rank of a module (longest matching prefix wins); a module may import only ranks <= its own.
#: The two registries are catalogues: they name implementations by string and import them lazily
#: through importlib, so they sit at the bottom with the other shared helpers.
RANKS = {
    "": 0, "errors": 0, "io": 0, "config": 0, "stage_keys": 0, "progress": 0, "numerics": 0, "images": 0,
    "attributes": 0, "interventions": 0, "models.families": 0, "metrics.registry": 0,
    "synth": 1, "inputs": 1, "qc": 1, "preprocess": 1, "slices": 1,
    "models": 2, "latents": 2, "labels": 2,
    "train": 3,
    "metrics": 4, "explore": 4, "generate": 4, "conditional": 4, "growing_walks": 4, "latent_groups": 2,
    "counterfactual": 4,
    "report": 5, "batch": 5, "cli": 6, "__main__": 6,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def rank(module: str) -> int:
    best = ""
    for prefix in RANKS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return RANKS[best]


def imported(path: Path) -> set[str]:
    """Every ``brainlatent.*`` module a file imports, at any depth of the code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainlatent"):
            base = node.module.removeprefix("brainlatent").lstrip(".")
            for alias in node.names:  # ``from brainlatent.report import figures`` imports a module
                sub = f"{base}.{alias.name}" if base else alias.name
                out.add(sub if (SRC / Path(*sub.split("."))).with_suffix(".py").exists() or (SRC / Path(*sub.split("."))).is_dir() else base)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("brainlatent").lstrip(".") for a in node.names if a.name.startswith("brainlatent"))
    return out


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[module_name(p) or "__init__" for p in FILES])
def test_no_upward_import(path):
    me = module_name(path)
    upward = sorted(m for m in imported(path) if rank(m) > rank(me))
    assert not upward, f"{me} (stage {rank(me)}) imports later stages: {[(m, rank(m)) for m in upward]}"


def test_every_module_has_a_rank():
    assert all(rank(module_name(p)) is not None for p in FILES)
