"""The package's shape: two layers, teaching order, small modules (docs/maintainers.md, "Layout").

- The library (``phi2kit`` outside ``phi2kit/commands/``) never imports the commands.
- Each notebook imports only library modules that it or an earlier notebook introduces,
  as the layout table in docs/maintainers.md assigns them; every library module is in that table.
- No module grows far past 300 lines.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "phi2kit"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_LINES = 320  # "about 300"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> set[str]:
    """Every ``phi2kit...`` module a piece of code imports (``from M import x`` gives M and
    M.x, since x may be a submodule)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "phi2kit"}


LIBRARY = {
    _module_name(p): p for p in PACKAGE.rglob("*.py") if "commands" not in p.relative_to(ROOT).parts
}


def _layout_table() -> dict[str, int | str]:
    """``{"models": 1, ..., "profiles": "plumbing", "exercises": "tools"}`` from the table."""
    text = (ROOT / "docs" / "maintainers.md").read_text()
    section = text.split("## Layout", 1)[1]
    table: dict[str, int | str] = {}
    for line in section.splitlines():
        match = re.match(r"\| (\d\d) [^|]*\| (.*) \|$", line) or re.match(
            r"\| \((plumbing|tools)\) \| (.*) \|$", line
        )
        if not match:
            continue
        key = match.group(1)
        for module in re.findall(r"`([\w.]+)`", match.group(2)):
            table[module] = int(key) if key.isdigit() else key
    return table


def _owner_of(module: str, table: dict[str, int | str]) -> int | str | None:
    """The table's entry for ``phi2kit.a.b.c``: the longest listed prefix (``a.b``, ``a``)."""
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in table:
            return table[key]
    return None


def _layout_key(module: str, table) -> str:
    """The table entry a module falls under (``phi2kit.data.webglm`` -> ``data``)."""
    parts = module.split(".")[1:]
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1)
                if ".".join(parts[:n]) in table)


def _notebook_code(path: Path) -> str:
    return "\n".join(
        "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
        for cell in json.loads(path.read_text())["cells"]
        if cell["cell_type"] == "code"
    )


def _without_docstrings(node: ast.AST) -> str:
    node = ast.parse(ast.unparse(node))  # a copy
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None),
                                                          ast.Constant):
                n.body = n.body[1:] or [ast.Pass()]
    return ast.dump(node)


def _definitions(tree: ast.AST) -> dict[str, ast.AST]:
    return {
        n.name: n
        for n in getattr(tree, "body", [])
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }


def test_the_library_never_imports_the_commands():
    offenders = {
        name: sorted(m for m in _imports(ast.parse(path.read_text())) if "commands" in m)
        for name, path in LIBRARY.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_library_module_is_in_the_layout_table():
    table = _layout_table()
    assert len(table) > 15, table  # the table was found and read
    code = {m for m, p in LIBRARY.items() if p.name != "__init__.py" or len(p.read_text()) > 200}
    missing = sorted(m for m in code if m != "phi2kit" and _owner_of(m, table) is None)
    assert missing == [], f"add these to the layout table in docs/maintainers.md: {missing}"
    stale = sorted(k for k in table if f"phi2kit.{k}" not in LIBRARY)
    assert stale == [], f"the layout table names modules that do not exist: {stale}"


def _disallowed(imported: set[str], number: int, table) -> dict[str, object]:
    """What a lesson imports beyond the plumbing and earlier lessons' modules."""
    bad = {}
    for m in imported:
        owner = _owner_of(m, table)
        if m.startswith("phi2kit.commands") or owner is None and m != "phi2kit":
            bad[m] = owner or "commands"
        elif owner == "tools" or (isinstance(owner, int) and owner >= number):
            bad[m] = owner
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_imports_only_plumbing_and_earlier_lessons(path):
    """As rasbt's ``previous_chapters.py``: what a lesson teaches is written in its cells."""
    table = _layout_table()
    imported = {
        m for m in _imports(ast.parse(_notebook_code(path)))
        if m in LIBRARY or m.startswith("phi2kit.commands") or m == "phi2kit"
    }
    bad = _disallowed(imported, int(path.name[:2]), table)
    assert bad == {}, f"{path.name} imports its own or later lessons' modules (or tools): {bad}"
    entries = {_layout_key(m, table) for m in imported if m in LIBRARY}
    assert len(entries) <= 14, f"{path.name} imports from {len(entries)} modules: {entries}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_a_lesson_writes_is_what_its_module_keeps(path):
    """A function or class defined in the lesson's cells and kept in the library (its lesson
    module, or plumbing such as 02's ``to_prompt_completion`` for ``phi2kit train``) is the
    same code in both places (docstrings and comments aside): no twin drifts. A name the
    library uses twice (``data.webglm``'s ``to_prompt_completion``) must match one of them."""
    cells = _definitions(ast.parse(_notebook_code(path)))
    kept: dict[str, list[tuple[str, ast.AST]]] = {}
    for module, file in LIBRARY.items():
        for name, node in _definitions(ast.parse(file.read_text())).items():
            kept.setdefault(name, []).append((module, node))
    drifted = [f"{' or '.join(m for m, _ in kept[name])}.{name}"
               for name in cells.keys() & kept.keys()
               if all(_without_docstrings(cells[name]) != _without_docstrings(node)
                      for _, node in kept[name])]  # fmt: skip
    assert drifted == [], f"{path.name}: these differ between the cells and the library: {drifted}"


def test_no_module_is_far_past_300_lines():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def test_the_checks_can_fail():
    """The import walker sees a commands import; a lesson's own module, a later one and a
    tool are refused; a changed body is a drift, a changed docstring is not."""
    table = _layout_table()
    tree = ast.parse("from phi2kit.commands.train import main\nimport phi2kit.chat\n")
    assert _imports(tree) >= {"phi2kit.commands.train", "phi2kit.chat"}
    assert _owner_of("phi2kit.chat", table) == 6
    assert _owner_of("phi2kit.data.sentiment", table) == "plumbing"
    bad = _disallowed({"phi2kit.chat", "phi2kit.lora", "phi2kit.footprint",
                       "phi2kit.profiles", "phi2kit.models"}, 6, table)
    assert set(bad) == {"phi2kit.chat", "phi2kit.footprint"}
    one = ast.parse('def f(x):\n    """doc"""\n    return x + 1\n').body[0]
    other_doc = ast.parse('def f(x):\n    """other"""\n    return x + 1\n').body[0]
    other_body = ast.parse('def f(x):\n    """doc"""\n    return x + 2\n').body[0]
    assert _without_docstrings(one) == _without_docstrings(other_doc)
    assert _without_docstrings(one) != _without_docstrings(other_body)
