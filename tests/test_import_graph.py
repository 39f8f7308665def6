"""The shape of the package's imports: no circles, no torch in the UI, no late imports.

Every ``import`` statement of every module under ``diffviews/`` counts, at module level or
inside a function ("lazy"): a circle through a lazy import is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffviews"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the diffviews modules it imports (a package's ``__init__`` is the package).
    The implicit import of a module's own parent packages is not an edge: every submodule has it."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:  # "pkg.mod.func" -> "pkg.mod"
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "diffviews.backends.protocol" in graph["diffviews.visualization.gpu_ops"]
    assert "diffviews.backends.local" in graph["diffviews.backends.process"]  # imported inside a function


def test_no_import_circles_among_diffviews_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_late_imports_silenced_with_noqa():
    roots = [PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "scripts", *PACKAGE.parent.glob("*.py")]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py"))]
    marker = "noqa: " + "E402"  # spelled apart so that this file does not match itself
    offenders = [str(p) for p in files if marker in p.read_text()]
    assert offenders == []


def test_importing_the_app_does_not_import_torch():
    code = ("import sys, diffviews.visualization.app, diffviews.hosting, diffviews.backends.remote, "
            "diffviews.backends.process, diffviews.backends.modal_worker; "
            "print(sorted(m for m in ('torch', 'diffviews.backends.local', 'diffviews.core.generator') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
