"""Imports flow one way: every medseg module imports alone in a fresh interpreter, and the import graph of the
package (read from the source, imports inside functions included) has no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The medseg module that defines ``name`` (a module, or an attribute of one)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the medseg modules it imports anywhere in its source (top level, functions, TYPE_CHECKING).

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg`` itself (whose
    ``__init__`` provides the name); relative imports are resolved against the module's package.
    """
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                owner = _owner(target, modules) if target.split(".")[0] == "medseg" else None
                if owner is not None and owner != module:
                    graph[module].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "medseg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .low import thing\n")
    (pkg / "sub" / "low.py").write_text("def f():\n    from medseg.high import g\n    return g\nthing = 1\n")
    (pkg / "high.py").write_text("from medseg.sub import thing\ndef g():\n    return thing\n")
    modules = {}
    for path in pkg.rglob("*.py"):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = import_graph(modules)
    assert graph["medseg.sub"] == {"medseg.sub.low"} and graph["medseg.sub.low"] == {"medseg.high"}
    assert cycles(graph) == [["medseg.high", "medseg.sub", "medseg.sub.low"]]


def test_medseg_has_no_import_cycle():
    found = cycles(import_graph(_modules()))
    graph = import_graph(_modules())
    detail = "\n".join(
        "  " + ", ".join(f"{m} -> {sorted(t for t in graph[m] if t in set(c))}" for m in c) for c in found
    )
    assert not found, f"import cycles (lazy imports included):\n{detail}"


_IMPORT_EACH = textwrap.dedent(
    """
    import os, sys, importlib
    # third-party libraries are loaded once; each medseg module is then imported in a forked child whose
    # sys.modules holds no medseg module, exactly as in a fresh interpreter
    for heavy in ("numpy", "torch", "monai", "nibabel", "pydicom", "SimpleITK", "scipy", "yaml", "highdicom"):
        importlib.import_module(heavy)
    failed = []
    for name in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException as exc:
                sys.stderr.write(f"{name}: {type(exc).__name__}: {exc}\\n")
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(name)
    print(" ".join(failed))
    sys.exit(1 if failed else 0)
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_alone():
    names = sorted(_modules())
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True,
                          timeout=600, cwd=PACKAGE.parent)  # fmt: skip
    assert done.returncode == 0, f"modules that fail to import alone: {done.stdout}\n{done.stderr[-3000:]}"
