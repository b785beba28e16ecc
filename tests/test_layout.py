"""The layout's rules, checked on the source tree: imports run one way (the core and the
pipelines never import the fairseq adapter; the core, the pipelines, the metrics and the
analyses never import fairseq at module level), no import cycle between the project's
modules, and no module over 400 lines outside tests."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("informative_dialogue", "fairseq_plugins", "data_prep", "dialogue_metrics", "analysis")
FAIRSEQ_FREE = ("informative_dialogue", "data_prep", "dialogue_metrics", "analysis")
MAX_LINES = 400


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, module: str, top_level_only: bool) -> set[str]:
    """Modules imported by ``path`` (absolute names; relative imports resolved against ``module``).
    ``top_level_only``: only statements executed at import time (module body, not inside
    functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if top_level_only and nested:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    prefix = ".".join(base[: len(base) - child.level + 1])
                    name = f"{prefix}.{child.module}" if child.module else prefix
                else:
                    name = child.module or ""
                found.add(name)
                found.update(f"{name}.{alias.name}" for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return found


def test_core_and_pipelines_never_import_the_adapter() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in project_modules().items() if module.split(".")[0] in FAIRSEQ_FREE
        for name in imports_of(path, module, top_level_only=False)
        if name == "fairseq_plugins" or name.startswith("fairseq_plugins.")
    ]
    assert not offenders, offenders


def test_no_fairseq_import_at_module_level_outside_the_adapter() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in project_modules().items() if module.split(".")[0] in FAIRSEQ_FREE
        for name in imports_of(path, module, top_level_only=True)
        if name == "fairseq" or name.startswith("fairseq.")
    ]
    assert not offenders, offenders


def test_no_import_cycle_between_project_modules() -> None:
    modules = project_modules()
    graph = {
        module: {name for name in imports_of(path, module, top_level_only=True) if name in modules and name != module}
        for module, path in modules.items()
    }
    # a package imports its own submodules by design (fairseq_plugins/__init__ registers them);
    # drop parent -> child edges before looking for cycles
    for module in graph:
        graph[module] = {m for m in graph[module] if not m.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module)
    assert not cycles, cycles


def test_no_module_over_400_lines_outside_tests() -> None:
    roots = [*PACKAGES, "benchmarks", "examples"]
    long = {
        str(path.relative_to(REPO)): n
        for root in roots for path in (REPO / root).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


@pytest.mark.parametrize("statement", [
    "from informative_dialogue.kid.hf_processor import KIDLogitsProcessor",
    "import data_prep.kid.build_trie, data_prep.ki.binarize, data_prep.ki.mine, data_prep.corpora.tokenize",
])
def test_core_entry_points_load_without_fairseq(statement: str) -> None:
    code = (f"import sys; {statement}; "
            "bad = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('fairseq', 'fairseq_plugins')}); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
