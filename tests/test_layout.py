"""The layout rules the codebase keeps: files a reader can hold, no import cycles, no private
names shared across modules, and trial bodies that run without Ray or MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("whichmodel", "sweeps", "selection", "lightning_modules", "mlflow_server", "benchmarks")
MAX_LINES = 500


def production_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``import``/``from ... import`` in the file, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_no_production_module_is_over_500_lines():
    long = {name: n for name, path in production_modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_is_imported_from_another_module():
    modules = production_modules()
    shared = [(name, module, n) for name, path in modules.items()
              for module, names in imports(path) if module in modules
              for n in names if n.startswith("_") and not n.startswith("__")]
    assert shared == []


def test_no_import_cycle_among_production_modules():
    modules = production_modules()

    def targets(module: str, names: list[str]) -> set[str]:
        out = {module} if module in modules else set()
        out |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
        return out

    graph = {name: set().union(*[targets(m, ns) for m, ns in imports(path)]) - {name}
             for name, path in modules.items()}
    # Package __init__ modules are imported on the way to their modules: not an edge back.
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph = {k: {t for t in v if not (k.startswith(t + ".") and t in packages)}
             for k, v in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


# Which top-level package may import which (the README's layer diagram): ``whichmodel`` is the
# base; ``lightning_modules`` and ``selection`` are peers on it; ``sweeps`` sits on both;
# ``benchmarks`` on everything; ``mlflow_server`` only on the base.
ALLOWED = {
    "whichmodel": set(),
    "lightning_modules": {"whichmodel"},
    "selection": {"whichmodel"},
    "mlflow_server": {"whichmodel"},
    "sweeps": {"whichmodel", "lightning_modules", "selection", "mlflow_server"},
    "benchmarks": {"whichmodel", "lightning_modules", "selection", "sweeps", "mlflow_server"},
}


def test_package_graph_follows_the_layers():
    """Every import, at module level or inside a function, goes down the layers only."""
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, _ in imports(path):
                top = module.split(".")[0]
                if top in ALLOWED and top != package and top not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_subpackage_inits_import_nothing_but_what_registers():
    """``selection.report``, ``sweeps.tracking`` and ``sweeps.cluster`` import nothing when
    imported (a reader pays only for what they use); ``selection.proxies`` imports its modules
    (importing it registers every proxy, as ``timm.models`` does)."""
    code = ("import sys, selection.report, sweeps.tracking, sweeps.cluster; "
            "loaded = sorted(m for m in sys.modules if m.startswith(('selection.report.', "
            "'sweeps.tracking.', 'sweeps.cluster.', 'mlflow', 'ray'))); assert not loaded, loaded; "
            "import selection.proxies as p; "
            "assert {'linear', 'knn', 'logme', 'leep', 'early_stop'} <= set(p.list_proxies())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_public_entry_points_keep_their_import_paths():
    """What users import (README): the moves of the layout kept these paths working."""
    from selection import proxies
    from selection.rank_features import rank_features
    from sweeps.recommend import recommend

    assert callable(recommend) and callable(rank_features)
    for name in ("compute_proxies", "list_proxies", "logme", "hscore", "transrate", "leep",
                 "nce", "knn_accuracy"):
        assert callable(getattr(proxies, name)), name


def test_trial_bodies_import_neither_ray_nor_mlflow():
    code = ("import sys, sweeps.trials; "
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('ray', 'mlflow')))[:5]")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
