"""Imports flow one way: foundation -> data -> models -> losses/metrics -> records -> train -> experiment/predict ->
recipes/bench -> tables/viz -> pipeline/cli.

Read from the source with ``ast`` (every ``import`` statement, also the ones inside functions), so a deferred
import cannot hide a dependency against the direction.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "emolib"

# Lower layers never import higher ones; a module may import its own layer and any lower one. The issue's
# "data -> models -> train -> records -> tables" is the flow of data; as imports, records (the run-record schema
# the trainer writes) sits below train, and metrics/losses sit between models and train.
LAYERS: list[tuple[str, ...]] = [
    ("emolib", "emolib.io", "emolib.registry", "emolib.labels", "emolib.deviations", "emolib.progress",
     "emolib.timing"),
    ("emolib.data",),
    ("emolib.models",),
    ("emolib.losses", "emolib.metrics"),
    ("emolib.records",),
    ("emolib.train",),
    # launch: run_experiment(num_processes=N) hands over to it, so it sits beside experiment (it imports nothing above)
    ("emolib.experiment", "emolib.predict", "emolib.launch"),
    ("emolib.recipes", "emolib.bench"),
    ("emolib.tables", "emolib.viz"),
    # evaluate re-scores trained runs and writes its own tables with the table helpers
    ("emolib.evaluate",),
    ("emolib.pipeline", "emolib.cli", "emolib.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = "", None
    for i, members in enumerate(LAYERS):
        for m in members:
            # the package root "emolib" (its __init__) matches itself only
            if (module == m or (m != "emolib" and module.startswith(m + "."))) and len(m) > len(best):
                best, rank = m, i
    if rank is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py; add it where it belongs")
    return rank


def emolib_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported emolib module) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "emolib"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "emolib":
                continue
            # "from emolib.data import synthetic" imports the module emolib.data.synthetic
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                              or (ROOT.parent / sub.replace(".", "/")).is_dir() else base))
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        here = module_name(path)
        for line, target in emolib_imports(path):
            if layer_of(target) > layer_of(here):
                out.append(f"{path.relative_to(ROOT.parent)}:{line}: {here} (layer {layer_of(here)}) imports "
                           f"{target} (layer {layer_of(target)})")
    return out


def test_imports_flow_one_way() -> None:
    assert violations() == []


def test_models_import_nothing_from_metrics_or_data() -> None:
    bad = [f"{p.name}:{line} {t}" for p in (ROOT / "models").rglob("*.py") for line, t in emolib_imports(p)
           if t.startswith(("emolib.metrics", "emolib.data"))]
    assert bad == []


def test_metrics_and_losses_do_not_import_the_data_package() -> None:
    files = [ROOT / "metrics.py", *(ROOT / "losses").rglob("*.py")]
    assert [f"{p.name}:{line} {t}" for p in files for line, t in emolib_imports(p) if t.startswith("emolib.data")] == []


def test_benchmarks_do_not_import_each_other() -> None:
    bench = ROOT / "bench"
    for path in bench.glob("*.py"):
        if path.name in ("__main__.py", "__init__.py", "common.py"):
            continue
        others = [t for _, t in emolib_imports(path) if t.startswith("emolib.bench") and t != "emolib.bench.common"]
        assert others == [], f"{path.name} imports {others}"


def test_the_check_catches_a_wrong_direction(tmp_path: Path) -> None:
    # The scanner sees deferred imports and resolves "from package import module".
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from emolib.tables import build_tables\n    from emolib.data import cache\n")
    assert emolib_imports(src) == [(2, "emolib.tables"), (3, "emolib.data.cache")]
    assert layer_of("emolib.tables") > layer_of("emolib.models.fe2e")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("emolib.unknown_module")
