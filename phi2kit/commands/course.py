"""``phi2kit course``: execute every notebook in order and write ``summary.md`` (needs the
``course`` extra)."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from unittest import mock

from phi2kit.commands import add_profile_argument, fail, it_holds
from phi2kit.metrics import METRICS_ENV

#: Seconds one cell may run. Generous: under a competing process, CPU training at 2 threads
#: on 2 cores ran 3.3x slower (and a cell that takes 72 s alone timed out at 600 s).
DEFAULT_TIMEOUT = 1800


def find_notebooks(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks, in teaching order."""
    if folder is None:
        here = Path.cwd() / "notebooks"
        folder = here if here.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"
    if not Path(folder).is_dir():
        raise ValueError(f"--notebooks {folder}: no such folder; pass the folder of NN_*.ipynb")
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise ValueError(f"--notebooks {folder}: no NN_*.ipynb notebooks in it")
    return found


def select_notebooks(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks ``--only`` names (``1`` and ``01`` both mean ``01_*``); all when None."""
    if not only:
        return notebooks
    valid = {nb.name[:2]: nb for nb in notebooks}
    unknown = [n for n in only if n.zfill(2) not in valid]
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: no such notebook; the numbers are "
                         f"{' '.join(valid)}")  # fmt: skip
    wanted = {n.zfill(2) for n in only}
    return [nb for key, nb in valid.items() if key in wanted]


@dataclass
class NotebookRun:
    name: str
    status: str
    seconds: float
    metrics: dict = field(default_factory=dict)
    error: str = ""


def run_course(profile: str, out: Path, notebooks: list[Path], *, timeout: int = DEFAULT_TIMEOUT,
               log=print, workdir: Path | None = None) -> list[NotebookRun]:  # fmt: skip
    """Execute ``notebooks`` with papermill (``PROFILE`` set) and write ``summary.md``; kernels run
    in the notebooks' folder, or in ``workdir`` so that two runs share nothing."""
    import papermill as pm
    from tqdm.auto import tqdm

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    notebooks = [Path(nb).resolve() for nb in notebooks]
    if workdir is not None:
        workdir = _prepare_workdir(Path(workdir).resolve(), notebooks)
    runs: list[NotebookRun] = []
    with mock.patch.dict(os.environ, {METRICS_ENV: str(out / "metrics")}):  # restored after
        bar = tqdm(notebooks, desc="course", unit="notebook")
        for nb in bar:
            bar.set_postfix_str(nb.stem)
            metrics = out / "metrics" / f"{nb.stem}.json"
            metrics.unlink(missing_ok=True)  # a re-run into the same folder: no old numbers
            start, status, error = time.perf_counter(), "passed", ""
            try:  # the kernel's own log (e.g. "running over TCP without encryption") is no news
                pm.execute_notebook(str(nb), str(out / nb.name), parameters={"PROFILE": profile},
                                    cwd=str(workdir or nb.parent), kernel_name="python3",
                                    language="python", execution_timeout=timeout,
                                    progress_bar=False,
                                    extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
            except Exception as exc:  # papermill raises PapermillExecutionError per cell
                status, error = "failed", describe_failure(exc, nb, out / nb.name, timeout)
            found = json.loads(metrics.read_text()) if metrics.exists() else {}
            runs.append(NotebookRun(nb.stem, status, time.perf_counter() - start, found, error))
            said = f"{nb.stem}: {status} in {runs[-1].seconds:.0f} s"
            log(said + (f": {error}" if error else ""))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # the last minute's
    (out / "summary.md").write_text(summary_markdown(runs, profile, load))
    return runs


def _prepare_workdir(workdir: Path, notebooks: list[Path]) -> Path:
    """``workdir/lessons`` (the kernels' folder), with ``workdir/data`` -> the samples."""
    lessons = workdir / "lessons"
    lessons.mkdir(parents=True, exist_ok=True)
    data = notebooks[0].parent.parent / "data" if notebooks else None
    link = workdir / "data"
    if data is not None and data.is_dir() and not link.exists():
        link.symlink_to(data, target_is_directory=True)
    return lessons


def _failed_cell(exc: Exception, nb: Path, executed: Path) -> tuple[int | None, str]:
    """(index in ``nb``, first line) of the failed cell: papermill's error carries its source;
    after a timeout or a dead kernel it is the executed copy's last started cell."""
    import nbformat

    source = getattr(exc, "source", None)
    if source is None and executed.is_file():  # half-written: describe_failure says what it can
        ran = nbformat.read(executed, as_version=4).cells
        started = [c for c in ran if c.get("metadata", {}).get("papermill", {}).get("start_time")]
        source = started[-1].source if started else None
    if source is None:
        return None, ""
    cells = nbformat.read(nb, as_version=4).cells
    index = next((i for i, c in enumerate(cells) if c.source == source), None)
    first = next((line for line in source.splitlines() if line.strip()), "")
    return index, first.strip()[:80]


def describe_failure(exc: Exception, nb: Path, executed: Path, timeout: int) -> str:
    """One line: the notebook, the failed cell (counted from 1; its first line) and the error."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    try:
        index, first = _failed_cell(exc, nb, executed)
    except Exception:  # noqa: BLE001 - describing must never hide the failure itself
        index, first = None, ""
    where = f"{nb.name}, cell {index + 1} ({first!r})" if index is not None else nb.name
    if isinstance(exc, CellTimeoutError):
        what = (f"timed out: the cell ran past the limit of {timeout} s per cell. A busy machine "
                f"can run CPU training several times slower: raise it with --timeout "
                f"{max(2 * timeout, DEFAULT_TIMEOUT)}")  # the default at least  # fmt: skip
    elif isinstance(exc, DeadKernelError):
        what = "the kernel died (out of memory?)"
    elif getattr(exc, "ename", None):
        what = f"{exc.ename}: {exc.evalue}".strip().rstrip(":")
    else:
        lines = [ln for ln in str(exc).splitlines() if ln.strip().strip("-")]
        what = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return f"{where}: {what}"[:400]


def _figure(value) -> str:
    """A float to 4 significant figures (a merge error of 7e-6 is not ``0.0``)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_markdown(runs: list[NotebookRun], profile: str, load: float | None = None) -> str:
    """The course table, the stand-ins, and what the speeds depend on (``load``: load average)."""
    lines = [f"# phi2kit course run (profile: {profile})", "",
             "| notebook | status | wall time | key metrics |", "|---|---|---|---|"]  # fmt: skip
    for r in runs:
        shown = ", ".join(f"{k}={_figure(v)}" for k, v in r.metrics.items()) or r.error
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} s | {shown.replace('|', '/')} |")
    passed = sum(r.status == "passed" for r in runs)
    lines += ["", f"{passed} passed, {len(runs) - passed} failed", ""]
    if stand_ins := [r.name + (f" ({r.metrics['stand_in']})" if isinstance(
            r.metrics["stand_in"], str) else "") for r in runs if r.metrics.get("stand_in")]:
        lines += [f"Stand-ins (`stand_in`): {', '.join(stand_ins)}. Each trained a short adapter "
                  "in place of an earlier lesson's (not found for this profile, or not the kind "
                  "it needs: the lesson says which), and the figures computed from it are the "
                  "stand-in's.", ""]
    at_end = f" (load average {load:.1f} at the end, on {os.cpu_count()} cores)" if load else ""
    lines += ["Wall times and speeds (01's `batch_speedup` and `batched_tokens_per_s`, 02's "
              f"`eval_examples_per_s`, 07's `tokens_per_s_*`) are this machine's at its load "
              f"during the run{at_end}: another busy process on the same cores lowers them.", ""]
    return "\n".join(lines)


def add_course_parser(sub) -> None:
    """Register ``phi2kit course``."""
    p = sub.add_parser(
        "course", help="execute every notebook in order and write summary.md",
        description="Execute every lesson (notebooks/NN_*.ipynb) on a profile and write the "
        "executed copies and summary.md to a run folder.")  # fmt: skip
    add_profile_argument(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<time>)")
    p.add_argument("--notebooks", type=Path, default=None, help="folder of NN_*.ipynb")
    p.add_argument("--only", nargs="*", default=None, help="notebook numbers, e.g. 01 02")
    p.add_argument("--workdir", type=Path, default=None,
                   help="run the lessons under this folder (in WORKDIR/lessons: their outputs/ "
                        "go there) instead of the notebooks folder, so that this run shares no "
                        "adapter or checkpoint with another")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                   help=f"seconds one cell may run (default {DEFAULT_TIMEOUT}: generous, "
                   "for a busy machine)")  # fmt: skip
    p.set_defaults(func=_course_main)


def papermill_missing() -> str | None:
    """What to install when papermill (the "course" extra) is missing, before any work."""
    try:
        import papermill  # noqa: F401
    except ImportError as exc:
        return ('the notebooks run with papermill: install the "course" extra, pip install -e '
                f'".[course]" (or pip install "phi2kit[course]") ({exc})')
    return None


def _course_main(args: argparse.Namespace) -> int:
    from phi2kit.profiles import get_profile

    if args.timeout <= 0:
        return fail("course", f"--timeout {args.timeout}: must be positive, e.g. --timeout "
                    f"{DEFAULT_TIMEOUT}")  # fmt: skip
    try:  # before papermill loads: a wrong folder or lesson is said at once
        notebooks = select_notebooks(find_notebooks(args.notebooks), args.only)
    except ValueError as exc:
        return fail("course", str(exc))
    if missing := papermill_missing():
        return fail("course", missing)
    profile = get_profile(args.profile).name  # ProfileError: phi2kit.commands.main says it
    # relative to where the command runs (run_course makes it absolute before the kernels start)
    out = (args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    if out.is_dir() and (held := it_holds(out)):  # never overwritten
        return fail("course", f"--out {out}: not empty ({held}): pass a new or empty folder "
                    "(without --out, runs/<time> is new each time)")  # fmt: skip
    runs = run_course(profile, out, notebooks, timeout=args.timeout, workdir=args.workdir)
    print(f"\nsummary: {out / 'summary.md'}")
    print((out / "summary.md").read_text())
    return 0 if all(r.status == "passed" for r in runs) else 1
