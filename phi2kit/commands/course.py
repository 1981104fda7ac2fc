"""Run the whole course: execute every notebook in order and write ``summary.md``.

    phi2kit course --profile tiny            # about 6 minutes on 2 CPU cores
    phi2kit course --profile t4 --out runs/colab

Each notebook records its key numbers with :func:`phi2kit.metrics.record_metrics`; they land in
``<run>/metrics/<notebook>.json`` and in the summary table.

Running notebooks needs the ``course`` extra (papermill, nbclient, ipykernel, JupyterLab):
``pip install -e ".[course]"``. The notebooks' side,
:func:`phi2kit.metrics.record_metrics`, needs nothing, so they import it on Colab too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from phi2kit.commands import add_profile_argument
from phi2kit.metrics import METRICS_ENV

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


def find_notebooks(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks, in teaching order."""
    if folder is None:
        here = Path.cwd() / "notebooks"
        folder = here if here.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"
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


def add_course_parser(sub) -> None:
    """Register ``phi2kit course``."""
    p = sub.add_parser(
        "course",
        help="execute every notebook in order and write summary.md",
        description="Execute notebooks 01-06 on a profile and write the "
        "executed copies and summary.md to a run folder.",
    )
    add_profile_argument(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<time>)")
    p.add_argument("--notebooks", type=Path, default=None, help="folder of NN_*.ipynb")
    p.add_argument("--only", nargs="*", default=None, help="notebook numbers, e.g. 01 02")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    p.set_defaults(func=_course_main)


def _course_main(args: argparse.Namespace) -> int:
    from phi2kit.profiles import get_profile

    try:
        import_papermill()  # before any work: without the extra, say which one to install
    except CourseDependencyError as exc:
        print(f"phi2kit course: {exc}", file=sys.stderr)
        return 2
    profile = get_profile(args.profile).name
    notebooks = find_notebooks(args.notebooks)
    if args.only:
        notebooks = [n for n in notebooks if n.name[:2] in set(args.only)]
    # relative to where the command runs (run_course makes it absolute before the kernels start)
    out = (args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    runs = run_course(profile, out, notebooks, timeout=args.timeout)
    print(f"\nsummary: {out / 'summary.md'}")
    print((out / "summary.md").read_text())
    return 0 if all(r.status == "passed" for r in runs) else 1
