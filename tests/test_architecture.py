"""The package's shape (docs/architecture.md): module and function sizes, one-way imports, no
cycles, no copied blocks, and the import graph in the docs generated from the code."""

import ast
from collections import defaultdict

from deim_jax.tools import import_graph

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
BLOCK = 6  # lines: a repeated block at least this long counts as duplicated
MAX_DUPLICATED_PAIRS = 2


def _sources():
    return import_graph.module_files().items()


def test_no_module_over_the_line_limit():
    long = {m: n for m, p in _sources() if (n := len(open(p).read().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_line_limit():
    long = {}
    for mod, path in _sources():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{mod}.{node.name}:{node.lineno}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_imports_point_one_way():
    assert import_graph.violations() == []


def test_no_import_cycle():
    assert import_graph.cycles() == []


def test_docs_show_the_current_import_graph():
    assert import_graph.main(["--check"]) == 0, "run: python -m deim_jax.tools.import_graph --write"


def _code_lines(path):
    """(stripped line, line number) of the lines that are code: no blanks, comments or docstrings."""
    text = open(path).read()
    doc_lines = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return [(s, i) for i, line in enumerate(text.splitlines(), 1)
            if (s := line.strip()) and not s.startswith("#") and i not in doc_lines
            and not s.startswith(("import ", "from "))]


def duplicated_blocks():
    """Pairs of places that repeat at least BLOCK code lines verbatim: [((file, line), (file, line))]."""
    seen = defaultdict(list)
    for mod, path in _sources():
        lines = _code_lines(path)
        for k in range(len(lines) - BLOCK + 1):
            seen[tuple(s for s, _ in lines[k:k + BLOCK])].append((mod, k, lines[k][1]))
    runs = {}
    for places in seen.values():
        for a in range(len(places)):
            for b in range(a + 1, len(places)):
                (ma, ka, la), (mb, kb, lb) = places[a], places[b]
                diagonal = (ma, mb, ka - kb)
                runs.setdefault(diagonal, []).append((ka, la, lb))
    pairs = []
    for (ma, mb, _), hits in runs.items():
        hits.sort()
        prev = None
        for ka, la, lb in hits:
            if prev is None or ka != prev + 1:
                pairs.append(((ma, la), (mb, lb)))
            prev = ka
    return pairs


def test_at_most_two_duplicated_blocks():
    pairs = duplicated_blocks()
    assert len(pairs) <= MAX_DUPLICATED_PAIRS, f"blocks of {BLOCK}+ identical code lines: {pairs}"


def test_duplicate_finder_finds_a_copied_block(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = x{i - 1} * {i} + 1" for i in range(1, 9))
    for name in ("a", "b"):
        (tmp_path / f"{name}.py").write_text(f"def f(x0):\n{body}\n    return x8\n")
    files = {n: str(tmp_path / f"{n}.py") for n in ("a", "b")}
    monkeypatch.setattr(import_graph, "module_files", lambda: files)
    assert duplicated_blocks() == [(("a", 1), ("b", 1))]  # the def line is part of the copy
