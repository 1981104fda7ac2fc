"""What the tests of ``examples/`` share: import or run a script, read its imports, and run a
notebook's cells tagged ``recipe`` for a profile (the configurations a script must equal)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

from phi2kit.profiles import get_profile
from phi2kit.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "phi2kit" / "tiny" / "model"
IGNORED = {"output_dir", "logging_dir"}  # where files go, not what is trained
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def script_path(name: str) -> Path:
    return ROOT / "examples" / name


def load_script(name: str) -> ModuleType:
    """Import ``examples/<name>`` as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(Path(name).stem.replace("-", "_"),
                                                  script_path(name))  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def imported_packages(name: str) -> set[str]:
    """The top-level packages a script imports (``import x.y`` and ``from x.y import z``)."""
    tree = ast.parse(script_path(name).read_text())
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {m.split(".")[0] for m in found}


def run_script(name: str, *args: str, cwd: Path = ROOT,
               timeout: int = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a script as a shell user would, offline, on one thread."""
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script_path(name)), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout, check=False)  # fmt: skip


def notebook_recipe(notebook: str, task: str, out: Path, profile: str = "t4",
                    cells: int = 3, **names: object) -> dict:  # fmt: skip
    """Run ``notebooks/<notebook>``'s cells tagged ``recipe`` for ``profile``; their namespace.

    The cells build the quantization, LoRA and trainer configurations from ``profile`` and
    ``recipe`` alone (no model, no GPU); ``names`` are the notebook's other parameters.
    """
    path = ROOT / "notebooks" / notebook
    tagged = [c for c in json.loads(path.read_text())["cells"]
              if "recipe" in c["metadata"].get("tags", [])]  # fmt: skip
    sources = ["".join(c["source"]) for c in tagged if c["cell_type"] == "code"]
    assert len(sources) == cells, f"{notebook} tags {len(sources)} recipe cells, not {cells}"
    prof = get_profile(profile, check=False)
    ns = {"torch": torch, "profile": prof, "recipe": get_recipe(task, prof),
          "OUTPUT_DIR": str(out), **names}  # fmt: skip
    for source in sources:
        exec(compile(source, str(path), "exec"), ns)  # noqa: S102  (our own notebook)
    return ns


def adapter_stub(folder: Path, task_type: str = "CAUSAL_LM") -> Path:
    """An adapter folder as far as the checks before any model go: its ``adapter_config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"task_type": task_type}))
    return folder


def plain(config) -> dict:
    """A configuration as a dict, without where its files go."""
    return {k: v for k, v in config.to_dict().items() if k not in IGNORED}


def mismatch(mine, theirs) -> dict:
    """The fields where two configurations differ: ``{field: (mine, theirs)}`` (empty: equal)."""
    a, b = plain(mine), plain(theirs)
    return {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
