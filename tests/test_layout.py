"""The package's layout: dependencies run one way, no module reaches into another's private names, the
root import stays light, and every public name resolves on a fresh import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "confounded_patching"
NAME = PACKAGE.name

# the stage of each top-level module or subpackage: a module imports from its own module or subpackage, the base
# modules (stage 0) and earlier stages only; modules of one stage (interventions and estimation, the two analyses
# of captured activations; datasets and models) do not import each other
STAGES = {
    "__init__": 0, "errors": 0, "validation": 0, "nodes": 0, "results": 0, "progress": 0, "metrics": 0,
    "_deprecated": 0, "datasets": 1, "models": 1, "activations": 2, "interventions": 3, "estimation": 3,
    "plot": 4, "report": 5, "pipeline": 6, "cli": 7,
}
# the one import against the stages: ``cp.nodes(model)`` asks the model's adapter for its sizes, imported when
# called so that ``import confounded_patching`` (which loads nodes.py) does not load torch
UPWARD = {("confounded_patching.nodes", "confounded_patching.models")}
# modules kept at their old paths for one release: they only re-export
SHIMS = {"devices", "store", "patching", "ablation", "balancing", "weighting", "gamma_rule", "pairs", "coords",
         "outcome_model", "mediation", "deconfound", "simulate", "blocks", "cholesky", "topics"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(modules: dict[str, Path]):
    """``(importer, imported module, names, line)`` for every import of a package module, at any depth."""
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node.level, node.module) if node.level else node.module
                if not source or not (source == NAME or source.startswith(NAME + ".")):
                    continue
                names = [a.name for a in node.names]
                submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in modules]
                yield module, source, [n for n in names if f"{source}.{n}" not in modules], node.lineno
                for sub in submodules:
                    yield module, sub, [], node.lineno
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == NAME or alias.name.startswith(NAME + "."):
                        yield module, alias.name, [], node.lineno


def _graph() -> dict[str, set]:
    modules = _modules()
    graph = {m: set() for m in modules}
    for importer, imported, _, _ in _imports(modules):
        parts = imported.split(".")
        # importing a.b.c runs a.b's __init__ too (a's is running already)
        targets = [".".join(parts[:k]) for k in range(2, len(parts) + 1)] or [imported]
        for target in targets:
            if target in modules and target != importer and not importer.startswith(target + "."):
                graph[importer].add(target)
    return graph


def _cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_package_modules_import_each_other_without_cycles():
    graph = _graph()
    for importer, target in UPWARD:  # imported when called, after every module has loaded
        graph[importer].discard(target)
    assert _cycles(graph) == []


def test_dependencies_run_one_way_through_the_stages():
    wrong = []
    for importer, targets in _graph().items():
        a = _stage(importer)
        if a in SHIMS:
            continue
        for target in targets:
            b = _stage(target)
            if b in SHIMS:
                wrong.append(f"{importer} imports the old path {target}")
            elif a != b and STAGES[b] != 0 and STAGES[b] >= STAGES[a] and (importer, target) not in UPWARD:
                wrong.append(f"{importer} ({a}) imports {target} ({b})")
    assert wrong == []


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    private = [f"{importer}:{line} imports {name} from {source}"
               for importer, source, names, line in _imports(modules) for name in names
               if name.startswith("_") and not name.startswith("__") and source != importer]
    assert private == []


def test_no_module_reads_another_modules_private_attributes():
    found = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and node.module is None:
                aliases |= {a.asname or a.name for a in node.names}  # `from . import plot`
            elif isinstance(node, ast.Import):
                aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(NAME)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in aliases:
                    found.append(f"{module}:{node.lineno} reads {ast.unparse(node)}")
    assert found == []


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], capture_output=True,
                          text=True, cwd=PACKAGE.parent)


def test_importing_the_package_loads_no_heavy_dependency():
    result = _python("import sys, confounded_patching as cp; cp.MLP(0); "
                     "heavy = [m for m in ('torch', 'plotly', 'pandas', 'nnsight', 'transformers', 'scipy') "
                     "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_name_resolves_on_a_fresh_import():
    result = _python("import confounded_patching as cp; missing = [n for n in cp.__all__ if getattr(cp, n, None) "
                     "is None]; print(missing); raise SystemExit(1 if missing else 0)")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("expression", ["cp.aie_many", "cp.AIETable", "cp.simulate.gaussian_sem",
                                        "cp.plot.compare", "cp.pipeline.run"])
def test_public_names_work_without_importing_their_modules_first(expression):
    result = _python(f"import confounded_patching as cp; {expression}")
    assert result.returncode == 0, result.stderr


def test_old_module_paths_still_import_and_say_where_the_names_went():
    for old in sorted(SHIMS):
        result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", f"import {NAME}.{old}"],
                                capture_output=True, text=True, cwd=PACKAGE.parent)
        assert result.returncode != 0 and "is deprecated" in result.stderr, old
        result = _python(f"import {NAME}.{old} as m; assert m.__all__ and all(hasattr(m, n) for n in m.__all__)")
        assert result.returncode == 0, (old, result.stderr)


def test_import_is_light():
    code = ("import sys, confounded_patching as cp; cp.MLP(0); "
            "heavy = [m for m in ('plotly', 'nnsight', 'transformers', 'transformer_lens', 'pandas') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_package_and_modules_does_not_import_plotly():
    code = ("import sys, confounded_patching, confounded_patching.plot, confounded_patching.report, "
            "confounded_patching.cli; bad = [m for m in sys.modules if m.split('.')[0] == 'plotly']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
