"""Check that a lesson's cells and its module hold the same definitions (ast-equal).

A lesson module holds what the lesson wrote in its cells (rasbt's ``previous_chapters.py``):
the same names, the same source.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _definitions(code: str) -> dict[str, str]:
    return {
        node.name: ast.dump(node)
        for node in ast.parse(code).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


def assert_cells_define(notebook: str, module: str, names: list[str]) -> None:
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    in_cells = _definitions(code)
    in_module = _definitions((ROOT / module).read_text())
    missing = [n for n in names if n not in in_cells]
    assert not missing, f"{notebook} does not define {missing} in a cell"
    differ = [n for n in names if in_cells[n] != in_module[n]]
    assert not differ, f"{notebook}'s cells and {module} define {differ} differently"
