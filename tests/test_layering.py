"""The layering of the tree, checked by walking every import with ``ast`` (issue 17):

* backbone/ imports nothing of the project outside backbone;
* heads/ import only backbone (and each other);
* modalities/ import no apps and no benchmarks; apps/ import no benchmarks;
* project imports sit at the top of a file, never inside a function (that is how import
  cycles hide), and the module-level import graph has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backbone", "heads", "modalities", "apps", "benchmarks")
ALLOWED = {  # package -> the project packages it may import
    "backbone": {"backbone"},
    "heads": {"backbone", "heads"},
    "modalities": {"backbone", "heads", "modalities"},
    "apps": {"backbone", "heads", "modalities", "apps"},
    "benchmarks": set(PACKAGES),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(m) for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                   for m in ast.walk(n)}  # annotations only: never run, so neither a layer edge nor a cycle
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` / try-except blocks at the top level count as top level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(m) for m in ast.walk(n)}
    pkg = module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = pkg[:len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
                # `from apps.t2i import model` imports the module apps.t2i.model
                names += [f"{node.module}.{a.name}" for a in node.names
                          if (ROOT / Path(*f"{node.module}.{a.name}".split("."))).with_suffix(".py").exists()]
        else:
            continue
        if id(node) in typing_only:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                out.append((name, node.lineno, id(node) in top))
    return out


# The one exception: the CLI imports a command's module when that command runs, so that
# `omniar --help` and each command start without loading every task (gradio, pymatgen, encodec, ...).
LAZY = {"apps/cli.py"}


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_the_layers(path):
    pkg = path.relative_to(ROOT).parts[0]
    bad = [f"line {line}: {name}" for name, line, _ in imports(path) if name.split(".")[0] not in ALLOWED[pkg]]
    assert not bad, f"{pkg}/ may import only {sorted(ALLOWED[pkg])}: " + "; ".join(bad)


@pytest.mark.parametrize("path", [p for p in project_files() if p.parts[len(ROOT.parts)] != "benchmarks"
                                  and str(p.relative_to(ROOT)) not in LAZY],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_project_imports_sit_at_the_top(path):
    inner = [f"line {line}: {name}" for name, line, top in imports(path) if not top]
    assert not inner, "import project modules at the top of the file: " + "; ".join(inner)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    known = {module_name(p) for p in project_files()}
    for p in project_files():
        deps = set()
        for name, _, top in imports(p):
            while name and name not in known:  # `from pkg.mod import Class` -> pkg.mod
                name = name.rpartition(".")[0]
            if top and name and name != module_name(p) and not module_name(p).startswith(name + "."):
                deps.add(name)
        graph[module_name(p)] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_backwards_edge(tmp_path):
    """Guards the checker itself: an import inside a function and a backwards edge are found."""
    f = ROOT / "heads" / "_layering_probe.py"
    f.write_text("import torch\n\ndef f():\n    from apps.cli import main\n    return main\n")
    try:
        found = imports(f)
    finally:
        f.unlink()
    assert found == [("apps.cli", 4, False)]
