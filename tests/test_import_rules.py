"""The import rules of docs/architecture.md, checked on the package's source with ``ast``.

Every ``import`` counts, at module top or inside a function (a lazy import is still an
edge); imports under ``if TYPE_CHECKING:`` count too. A module is named by its dotted
path (``aensae.saes.training.trainer``; a package by its ``__init__``). The oracle is the
list of rules written out here, not the code that is checked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

BASE = {"aensae", "aensae._validation", "aensae._io", "aensae._dtypes", "aensae.objective",
        "aensae.metrics"}
#: What each domain package may import besides the base modules and itself.
DOMAIN = {
    "aensae.synthetic": set(),
    "aensae.solvers": set(),
    "aensae.saes": set(),
    "aensae.theory": {"aensae.solvers"},
    "aensae.llm": {"aensae.saes", "aensae.theory", "aensae.solvers"},
}
ARCHITECTURE_FILES = ("relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk", "batchtopk",
                      "jumprelu", "base", "registry", "io", "dead", "evaluate", "collectives")
#: What ``aensae.cli`` modules may import at module top (what ``--help`` needs).
CLI_TOP = ("aensae.cli", "aensae._validation", "aensae._io", "aensae._dtypes",
           "aensae.experiments.config", "aensae.experiments.executors", "aensae.benches")


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "aensae").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"import of {name!r}: no such module in the package")


def _imports(path: Path, top_only: bool = False) -> set[str]:
    """The package modules ``path`` imports (``from a.b import c`` is ``a.b.c`` when that
    is a module, else ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {_resolve(a.name) for a in node.names if a.name.split(".")[0] == "aensae"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "aensae":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in MODULES else _resolve(node.module))
    return out - {_module_name(path)}


def _module_name(path: Path) -> str:
    return next(name for name, p in MODULES.items() if p == path)


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _violations(sources: list[str], allowed) -> list[str]:
    return [f"{s} imports {t}" for s in sources for t in sorted(GRAPH[s]) if not allowed(s, t)]


def test_the_package_has_the_documented_layout() -> None:
    for package in ("aensae.saes.training", "aensae.experiments", "aensae.experiments.spiked",
                    "aensae.experiments.llm", "aensae.experiments.executors", "aensae.benches",
                    "aensae.cli"):
        assert package in MODULES, package
    assert not any(_under(m, "aensae.benchmarks") for m in MODULES)


def test_base_modules_import_only_each_other() -> None:
    base = [m for m in MODULES if any(_under(m, b) for b in BASE - {"aensae"})]
    assert base
    bad = _violations(base, lambda s, t: any(_under(t, b) for b in BASE - {"aensae"}))
    assert not bad, bad


@pytest.mark.parametrize("package", sorted(DOMAIN))
def test_domain_packages_import_downwards_only(package: str) -> None:
    allowed = DOMAIN[package] | BASE | {package}
    sources = [m for m in MODULES if _under(m, package)]
    bad = _violations(sources, lambda s, t: any(
        t == a or (a != "aensae" and _under(t, a)) for a in allowed))
    assert not bad, bad


def test_architecture_files_never_import_the_training_engine() -> None:
    files = [f"aensae.saes.{name}" for name in ARCHITECTURE_FILES]
    assert all(f in MODULES for f in files)
    bad = _violations(files, lambda s, t: not _under(t, "aensae.saes.training"))
    assert not bad, bad


def test_benches_never_import_experiments_or_cli() -> None:
    sources = [m for m in MODULES if _under(m, "aensae.benches")]
    bad = _violations(sources, lambda s, t: not (_under(t, "aensae.experiments")
                                                 or _under(t, "aensae.cli")))
    assert not bad, bad


def test_experiments_pipelines_stay_apart() -> None:
    exp = [m for m in MODULES if _under(m, "aensae.experiments")]
    spiked, llm = "aensae.experiments.spiked", "aensae.experiments.llm"
    shared = [m for m in exp if not (_under(m, spiked) or _under(m, llm))]
    assert "aensae.experiments.layout" in shared and "aensae.experiments.results" in shared
    assert not _violations(exp, lambda s, t: not _under(t, "aensae.cli"))
    bad = _violations(shared, lambda s, t: not (_under(t, spiked) or _under(t, llm)))
    assert not bad, bad
    bad = _violations([m for m in exp if _under(m, spiked)], lambda s, t: not _under(t, llm))
    bad += _violations([m for m in exp if _under(m, llm)], lambda s, t: not _under(t, spiked))
    assert not bad, bad


def test_cli_is_imported_only_by_main_and_imports_little_at_top() -> None:
    users = [s for s, ts in GRAPH.items() if not _under(s, "aensae.cli")
             and any(_under(t, "aensae.cli") for t in ts)]
    assert users == ["aensae.__main__"], users
    for name, path in MODULES.items():
        if _under(name, "aensae.cli"):
            top = _imports(path, top_only=True)
            bad = [t for t in top if not any(t == a or _under(t, a) for a in CLI_TOP)
                   and t != "aensae"]
            assert not bad, f"{name} imports at module top: {bad}"


def test_there_are_no_import_circles() -> None:
    """Tarjan's strongly connected components of the whole graph: all of size one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
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
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_help_imports_no_numerical_stack() -> None:
    """``aensae --help`` (building every parser) loads none of the heavy libraries (numpy
    is light and the base module ``_validation`` uses it)."""
    code = ("import sys; from aensae import cli; cli.build_parser(); "
            "print(' '.join(m for m in ('torch', 'scipy', 'numba', 'matplotlib', 'sklearn', "
            "'cvxpy', 'transformers', 'submitit', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
