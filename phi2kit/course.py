"""Run the whole course: execute every notebook in order and write ``summary.md``.

    phi2kit course --profile tiny            # about 6 minutes on 2 CPU cores
    phi2kit course --profile t4 --out runs/colab

Each notebook records its key numbers with :func:`record_metrics`; they land in
``<run>/metrics/<notebook>.json`` and in the summary table.

Running notebooks needs the ``course`` extra (papermill, nbclient, ipykernel, JupyterLab):
``pip install -e ".[course]"``. :func:`record_metrics` itself needs nothing, so the notebooks
import it on Colab too.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

METRICS_ENV = "PHI2KIT_METRICS_DIR"
COURSE_EXTRA_HINT = (
    'phi2kit course runs the notebooks with papermill: install the "course" extra, '
    'pip install -e ".[course]" (or pip install "phi2kit[course]")'
)


class CourseDependencyError(ImportError):
    """The ``course`` extra (papermill, nbclient, ipykernel) is not installed."""


def import_papermill():
    """``papermill``, or a :class:`CourseDependencyError` that names the extra to install."""
    try:
        import papermill
    except ImportError as exc:
        raise CourseDependencyError(f"{COURSE_EXTRA_HINT} ({exc})") from exc
    return papermill


def record_metrics(notebook: str, metrics: dict) -> dict:
    """Store a notebook's key numbers for the course summary and return them.

    Writes ``<PHI2KIT_METRICS_DIR>/<notebook>.json`` when ``phi2kit course`` runs the
    notebook; otherwise it only returns the dict, so a notebook can show it.
    """
    clean = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    folder = os.environ.get(METRICS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{notebook}.json").write_text(json.dumps(clean, indent=2) + "\n")
    return clean


def find_notebooks(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks, in teaching order."""
    if folder is None:
        here = Path.cwd() / "notebooks"
        folder = here if here.is_dir() else Path(__file__).resolve().parents[1] / "notebooks"
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {folder}; pass --notebooks DIR")
    return found


@dataclass
class NotebookRun:
    name: str
    status: str
    seconds: float
    metrics: dict = field(default_factory=dict)
    error: str = ""


def run_course(
    profile: str, out: Path, notebooks: list[Path], *, timeout: int = 1200, log=print
) -> list[NotebookRun]:
    """Execute ``notebooks`` with papermill, setting ``PROFILE``; write ``summary.md``.

    Each kernel runs in its notebook's folder, so ``out`` and ``notebooks`` are made
    absolute first: a relative path means what it meant where the command was run.
    """
    pm = import_papermill()
    from tqdm.auto import tqdm

    out = Path(out).resolve()
    notebooks = [Path(nb).resolve() for nb in notebooks]
    out.mkdir(parents=True, exist_ok=True)
    metrics_dir = out / "metrics"
    before = os.environ.get(METRICS_ENV)
    os.environ[METRICS_ENV] = str(metrics_dir)
    runs: list[NotebookRun] = []
    try:
        bar = tqdm(notebooks, desc="course", unit="notebook")
        for nb in bar:
            bar.set_postfix_str(nb.stem)
            runs.append(_run_notebook(pm, nb, out, profile, timeout))
            log(f"{nb.stem}: {runs[-1].status} in {runs[-1].seconds:.0f} s")
    finally:
        if before is None:
            os.environ.pop(METRICS_ENV, None)
        else:
            os.environ[METRICS_ENV] = before
    (out / "summary.md").write_text(summary_markdown(runs, profile))
    return runs


def _run_notebook(pm, nb: Path, out: Path, profile: str, timeout: int) -> NotebookRun:
    m_path = out / "metrics" / f"{nb.stem}.json"
    m_path.unlink(missing_ok=True)  # a re-run into the same folder must not show old numbers
    start = time.perf_counter()
    status, error = "passed", ""
    try:
        pm.execute_notebook(
            str(nb),
            str(out / nb.name),
            parameters={"PROFILE": profile},
            cwd=str(nb.parent),
            kernel_name="python3",
            execution_timeout=timeout,
            progress_bar=False,
        )
    except Exception as exc:  # papermill raises PapermillExecutionError per cell
        status, error = "failed", str(exc).strip().splitlines()[-1][:300]
    seconds = time.perf_counter() - start
    metrics = json.loads(m_path.read_text()) if m_path.exists() else {}
    return NotebookRun(nb.stem, status, seconds, metrics, error)


def summary_markdown(runs: list[NotebookRun], profile: str) -> str:
    lines = [
        f"# phi2kit course run (profile: {profile})",
        "",
        "| notebook | status | wall time | key metrics |",
        "|---|---|---|---|",
    ]
    for r in runs:
        shown = ", ".join(f"{k}={v}" for k, v in r.metrics.items()) or r.error
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} s | {shown} |")
    passed = sum(r.status == "passed" for r in runs)
    lines += ["", f"{passed} passed, {len(runs) - passed} failed", ""]
    return "\n".join(lines)
