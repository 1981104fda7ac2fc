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


def _readme_table() -> dict[str, int]:
    """``{"models": 1, "data.sentiment": 2, ..., "exercises": 99}`` from the layout table."""
    text = (ROOT / "docs" / "maintainers.md").read_text()
    section = text.split("## Layout", 1)[1]
    table: dict[str, int] = {}
    for line in section.splitlines():
        match = re.match(r"\| (\d\d) [^|]*\| (.*) \|$", line) or re.match(
            r"\| \(instructors\) \| (.*) \|$", line
        )
        if not match:
            continue
        number = int(match.group(1)) if match.re.groups == 2 else 99
        for module in re.findall(r"`([\w.]+)`", match.group(match.re.groups)):
            table[module] = number
    return table


def _notebook_of(module: str, table: dict[str, int]) -> int | None:
    """The table's entry for ``phi2kit.a.b.c``: the longest listed prefix (``a.b``, ``a``)."""
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in table:
            return table[key]
    return None


def test_the_library_never_imports_the_commands():
    offenders = {
        name: sorted(m for m in _imports(ast.parse(path.read_text())) if "commands" in m)
        for name, path in LIBRARY.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_library_module_has_a_notebook_in_the_readme():
    table = _readme_table()
    assert len(table) > 20, table  # the table was found and read
    code = {m for m, p in LIBRARY.items() if p.name != "__init__.py" or len(p.read_text()) > 200}
    missing = sorted(m for m in code if m != "phi2kit" and _notebook_of(m, table) is None)
    assert missing == [], f"add these to the layout table in docs/maintainers.md: {missing}"
    stale = sorted(k for k in table if f"phi2kit.{k}" not in LIBRARY)
    assert stale == [], f"the layout table in docs/maintainers.md names modules that do not exist: {stale}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_only_what_it_or_an_earlier_notebook_teaches(path):
    table = _readme_table()
    number = int(path.name[:2])
    code = "\n".join(
        "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
        for cell in json.loads(path.read_text())["cells"]
        if cell["cell_type"] == "code"
    )
    imported = {
        m for m in _imports(ast.parse(code)) if m in LIBRARY or m.startswith("phi2kit.commands")
    }
    assert not [m for m in imported if m.startswith("phi2kit.commands")], imported
    later = {m: _notebook_of(m, table) for m in imported if (_notebook_of(m, table) or 0) > number}
    assert later == {}, f"{path.name} imports modules that later notebooks introduce: {later}"


def test_no_module_is_far_past_300_lines():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def test_the_check_can_fail(tmp_path):
    """The import walker sees a commands import, and the table lookup finds late modules."""
    tree = ast.parse("from phi2kit.commands.train import main\nimport phi2kit.merging\n")
    assert _imports(tree) >= {"phi2kit.commands.train", "phi2kit.merging"}
    assert _notebook_of("phi2kit.merging", _readme_table()) == 5
    assert _notebook_of("phi2kit.data.sentiment", _readme_table()) == 2
