"""The package's import graph, read from the source (nothing is imported or run).

    python -m deim_jax.tools.import_graph            # print the graph of the parts (mermaid)
    python -m deim_jax.tools.import_graph --write    # refresh it in docs/architecture.md
    python -m deim_jax.tools.import_graph --check    # exit 1 if docs/architecture.md is stale

A *part* is a subpackage (``ops``, ``models``, ...) or a top-level module (``convert``, ``main``).
Every ``import`` counts, also those inside functions: a lazy import hides a dependency from
Python, not from the design. ``ALLOWED`` is the rule the tests hold the code to.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Dict, List, Set, Tuple

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(os.path.dirname(PACKAGE_DIR), "docs", "architecture.md")
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"

# part -> the parts it may import (besides itself)
ALLOWED: Dict[str, Set[str]] = {
    "errors": set(),
    "ops": {"errors"},
    "kernels": {"errors"},
    "configs": {"errors"},
    "models": {"errors", "ops", "kernels"},
    "losses": {"errors", "ops"},
    "data": {"errors", "ops"},
    "evaluate": {"errors", "ops", "data"},
    "convert": {"errors", "ops", "models"},
    "train": {"errors", "ops", "models", "losses", "data", "evaluate", "convert", "configs"},
    "deploy": {"errors", "ops", "models", "data", "evaluate", "convert", "train"},
    "cli": {"errors", "ops", "models", "losses", "data", "evaluate", "convert", "configs", "train", "deploy"},
    "main": {"errors", "ops", "models", "losses", "data", "evaluate", "convert", "configs", "train", "deploy", "cli"},
    "predict": {"errors", "models", "deploy", "cli"},
    "export": {"errors", "models", "deploy", "cli"},
    "tools": {"errors", "ops", "models", "losses", "data", "evaluate", "convert", "configs", "train", "cli", "main",
              "deploy"},
}


def module_files() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    root = os.path.dirname(PACKAGE_DIR)
    for dirpath, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return dict(sorted(out.items()))


def _targets(node: ast.AST, module: str, is_package: bool, known: Set[str]) -> List[str]:
    """deim_jax modules named by one import statement (``from a import b`` -> a.b if b is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "deim_jax"]
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
    if base.split(".")[0] != "deim_jax":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def module_imports() -> Dict[str, Set[str]]:
    """Dotted module -> the deim_jax modules it imports (anywhere in the file)."""
    files = module_files()
    known = set(files)
    graph = {}
    for mod, path in files.items():
        tree = ast.parse(open(path).read(), path)
        is_package = path.endswith("__init__.py")
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(t for t in _targets(node, mod, is_package, known) if t != mod)
        graph[mod] = deps
    return graph


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "deim_jax"


def part_graph() -> Dict[str, Set[str]]:
    """Part -> the other parts it imports."""
    out: Dict[str, Set[str]] = {}
    for mod, deps in module_imports().items():
        p = part_of(mod)
        out.setdefault(p, set()).update(part_of(d) for d in deps if part_of(d) not in (p, "deim_jax"))
    return out


def violations() -> List[str]:
    """One line per import that breaks ``ALLOWED`` (module -> module)."""
    bad = []
    for mod, deps in module_imports().items():
        p = part_of(mod)
        for d in sorted(deps):
            q = part_of(d)
            if q not in (p, "deim_jax") and q not in ALLOWED.get(p, set()):
                bad.append(f"{mod} imports {d} ({p} may import only {sorted(ALLOWED.get(p, set()))})")
    return bad


def cycles() -> List[Tuple[str, ...]]:
    """Import cycles between modules (each reported once, as the path that closes it)."""
    graph = module_imports()
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(tuple(stack[stack.index(nxt):] + [nxt]))
            elif nxt in graph and not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for n in graph:
        if not state.get(n):
            visit(n, [])
    return found


def mermaid() -> str:
    lines = ["```mermaid", "graph LR"]
    for p, deps in sorted(part_graph().items()):
        if p == "deim_jax":
            continue
        lines.extend(f"  {p} --> {d}" for d in sorted(deps))
    return "\n".join(lines + ["```"])


def _doc_with_graph(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + mermaid() + "\n" + END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"refresh the graph in {DOC}")
    p.add_argument("--check", action="store_true", help=f"exit 1 if the graph in {DOC} is stale")
    a = p.parse_args(argv)
    if not (a.write or a.check):
        print(mermaid())
        return 0
    text = open(DOC).read()
    new = _doc_with_graph(text)
    if a.check:
        if new != text:
            print(f"{DOC} is stale: run python -m deim_jax.tools.import_graph --write", file=sys.stderr)
            return 1
        return 0
    with open(DOC, "w") as f:
        f.write(new)
    print(f"wrote the import graph into {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
