"""The grader: run an exercise notebook, check what it left behind, report with hints.

- :func:`TODO` marks what the learner still has to write; it raises :class:`Todo`.
- :func:`run_notebook` executes a notebook's code cells in this process (the cell tagged
  ``grade`` is left out) and stops at the first cell that raises, like Jupyter's "Run all".
- :func:`check` runs one exercise's criteria on a namespace (a notebook's ``globals()``).
- :func:`grade_notebook` does both; ``phi2kit exercises check`` prints its report.

A criterion is a function of the namespace registered with :func:`criterion`. It fails by
raising :class:`Fail` (or :class:`Todo`, from a learner's unfinished function); any other
exception becomes a failure that names it. A report never shows a stack trace.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRADE_TAG = "grade"  # the cell that calls check(); run_notebook leaves it out
CHECK_MODULES = tuple(
    f"phi2kit_exercises.checks_{n}" for n in ("01_02", "03_04", "05_06", "07", "08", "09")
)


class Todo(NotImplementedError):
    """A part of an exercise that is not written yet."""


def TODO(what: str) -> Any:  # noqa: N802  (reads as a placeholder in the notebooks)
    """Stand-in for code the learner writes: raises :class:`Todo` saying what is missing."""
    raise Todo(f"TODO: {what}")


class Fail(AssertionError):
    """A criterion that does not hold; the message says what was found."""


#: what a check says when an earlier check's failure keeps it from looking
NOT_CHECKED = "not checked: it needs the failure above fixed first"


@dataclass
class Criterion:
    what: str  # what must hold, in the learner's words
    hint: str  # what to do when it does not
    fn: Callable[[Mapping[str, Any]], str | None]


@dataclass
class Exercise:
    id: str  # "02_b"
    title: str
    kind: str  # "Try it", "Write it" or "Break and fix"
    lesson: str  # the lesson section it goes with, e.g. "02 §2.6"
    criteria: list[Criterion] = field(default_factory=list)


EXERCISES: dict[str, Exercise] = {}


def exercise(id: str, title: str, kind: str, lesson: str) -> Exercise:
    """Register an exercise (its criteria are added with :func:`criterion`)."""
    if kind not in ("Try it", "Write it", "Break and fix"):
        raise ValueError(f"unknown kind {kind!r}")
    EXERCISES[id] = Exercise(id, title, kind, lesson)
    return EXERCISES[id]


def criterion(id: str, what: str, hint: str):
    """Decorator: add ``fn(namespace) -> detail or None`` as a criterion of exercise ``id``."""

    def register(fn):
        EXERCISES[id].criteria.append(Criterion(what, hint, fn))
        return fn

    return register


def need(ns: Mapping[str, Any], name: str) -> Any:
    """``ns[name]``, or a failure saying that it is not there yet."""
    if name not in ns:
        raise Fail(f"`{name}` is not defined: run the cell that sets it (and finish its TODO)")
    return ns[name]


def expect(condition: Any, message: str) -> None:
    if not condition:
        raise Fail(message)


def call(ns: Mapping[str, Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function ``name``; its errors become failures that say so."""
    fn = need(ns, name)
    expect(callable(fn), f"`{name}` should be a function, not {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except Todo as err:
        raise Fail(f"`{name}` is not written yet ({err})") from None
    except Exception as err:  # the learner's bug: name it, no traceback
        raise Fail(f"`{name}` raised {type(err).__name__}: {_first_line(err)}") from None


def _first_line(err: BaseException, most: int = 300) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:most] if text else "(no message)"


_TINY: dict[str, Any] = {}


def tiny_model():
    """The shipped tiny model (eval mode) and its tokenizer, loaded once per process."""
    if not _TINY:
        import torch

        from phi2kit.models import load_model, load_tokenizer

        torch.manual_seed(0)
        _TINY["model"] = load_model("tiny", quantize_4bit=False).eval()
        _TINY["tokenizer"] = load_tokenizer("tiny", padding_side="right")
    return _TINY["model"], _TINY["tokenizer"]


def _load_checks() -> None:
    for name in CHECK_MODULES:
        importlib.import_module(name)


@dataclass
class Result:
    what: str
    passed: bool
    detail: str = ""
    hint: str = ""


@dataclass
class CellError:
    index: int  # position among the notebook's cells, from 0 (markdown cells count)
    kind: str  # "todo" or the exception's type name
    message: str
    first_line: str = ""  # the cell's first line of code, to find it by
    run_from: int | None = None  # todo: the cell whose call reached it, when another one

    def __str__(self) -> str:
        # a learner counts cells from 1, top to bottom, markdown included
        where = f"cell {self.index + 1}" + (f" (`{self.first_line}`)" if self.first_line else "")
        if self.kind == "todo":
            called = "" if self.run_from is None else f" (reached from cell {self.run_from + 1})"
            return f"{where} is not done yet{called}: {self.message}"
        return f"{where} stopped with {self.kind}: {self.message}"


@dataclass
class Report:
    exercise: Exercise
    results: list[Result]
    cell_error: CellError | None = None

    @property
    def passed(self) -> bool:
        """Every check passed, and the notebook ran to the end (a cell that stopped it is a
        bug in the notebook, whatever the checks found in what it had set by then)."""
        ran = self.cell_error is None
        return ran and bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.passed]

    def text(self) -> str:
        ex = self.exercise
        lines = [f"Exercise {ex.id} · {ex.title} ({ex.kind}; lesson {ex.lesson})"]
        if self.cell_error is not None:
            lines.append(f"  note  the notebook stopped there: {self.cell_error}")
        for r in self.results:
            lines.append(f"  {'PASS' if r.passed else 'FAIL'}  {r.what}")
            if r.detail:
                lines.append(f"        {r.detail}")
            if not r.passed:
                lines.append(f"        hint: {r.hint}")
        n_ok = sum(r.passed for r in self.results)
        verdict = "solved" if self.passed else "not solved yet"
        if self.cell_error is not None and n_ok == len(self.results):
            verdict = f"not solved yet, the notebook stopped with an error ({self.cell_error.kind})"
        lines.append(f"{n_ok} of {len(self.results)} checks passed: {verdict}.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        n_ok = sum(r.passed for r in self.results)
        return f"<Report {self.exercise.id}: {n_ok}/{len(self.results)} passed>"


def get_exercise(id: str) -> Exercise:
    _load_checks()
    key = id[:4]
    if key not in EXERCISES:
        raise KeyError(f"unknown exercise {id!r}; choose one of {', '.join(sorted(EXERCISES))}")
    return EXERCISES[key]


def evaluate(id: str, ns: Mapping[str, Any], cell_error: CellError | None = None) -> Report:
    """Run exercise ``id``'s criteria on ``ns``; return the report (nothing printed)."""
    ex = get_exercise(id)
    results = []
    for c in ex.criteria:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                detail = c.fn(ns) or ""
            results.append(Result(c.what, True, detail))
        except (Fail, Todo) as err:
            # the grader's own words (a learner's error inside is cut by call())
            results.append(Result(c.what, False, _first_line(err, 600), c.hint))
        except Exception as err:  # the grader could not even look: say what it met
            found = f"could not check it ({type(err).__name__}: {_first_line(err)})"
            results.append(Result(c.what, False, found, c.hint))
    seen: set[str] = set()
    for r in results:  # one mistake is told once: a later check that met it says so
        if r.passed:
            continue
        if r.detail in seen:
            r.detail, r.hint = NOT_CHECKED, "see above"
        elif r.detail == NOT_CHECKED:  # a check that said so itself
            r.hint = "see above"
        seen.add(r.detail)
    return Report(ex, results, cell_error)


def check(id: str, ns: Mapping[str, Any]) -> Report:
    """Grade exercise ``id`` on a notebook's ``globals()`` and print the report."""
    report = evaluate(id, ns)
    print(report.text())
    return report


# --- running a notebook ------------------------------------------------------------------


def _display(*objs: Any, **_: Any) -> None:
    """Stand-in for IPython's ``display`` outside a kernel: figures are closed, not shown."""
    import matplotlib.pyplot as plt

    for obj in objs:
        if hasattr(obj, "savefig"):
            plt.close(obj)


@contextlib.contextmanager
def _in_folder(folder: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def _code(source: str) -> str:
    """Cell source without IPython magics and shell escapes (``%...``, ``!...``)."""
    return "\n".join("" if line.lstrip()[:1] in "%!" and line.strip() else line
                     for line in source.splitlines())  # fmt: skip


def _first_code_line(source: str) -> str:
    return next((ln.strip() for ln in source.splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")), "")[:60]  # fmt: skip


def _todo_cell(err: BaseException, name: str) -> int | None:
    """The index of the cell whose code raised ``err``, innermost first: the cell that holds
    the TODO, when a later cell called a function defined there."""
    tb, found = err.__traceback__, None
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        if file.startswith(f"<{name} cell "):
            found = int(file.rstrip(">").rsplit(" ", 1)[-1]) - 1
        tb = tb.tb_next
    return found


def run_notebook(
    path: str | Path, parameters: Mapping[str, Any] | None = None, *, quiet: bool = True
) -> tuple[dict[str, Any], CellError | None]:
    """Execute a notebook's code cells here, in its folder; return ``(globals, first error)``.

    ``parameters`` are set right after the cell tagged ``parameters`` (as papermill does).
    Execution stops at the first cell that raises. Printed output is swallowed when
    ``quiet``.
    """
    import matplotlib
    import nbformat

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    ns: dict[str, Any] = {"__name__": "__main__", "display": _display}
    error = None
    sink = io.StringIO() if quiet else None
    with _in_folder(path.parent), contextlib.ExitStack() as stack:
        if sink is not None:
            stack.enter_context(contextlib.redirect_stdout(sink))
        for i, cell in enumerate(nb.cells):
            tags = cell.metadata.get("tags", [])
            if cell.cell_type != "code" or GRADE_TAG in tags:
                continue
            first = _first_code_line(cell.source)
            try:
                exec(compile(_code(cell.source), f"<{path.name} cell {i + 1}>", "exec"), ns)
                if "parameters" in tags and parameters:
                    ns.update(parameters)
            except Todo as err:
                message = str(err).removeprefix("TODO: ")
                held = _todo_cell(err, path.name)
                if held is None or held == i:
                    error = CellError(i, "todo", message, first)
                else:  # a function of an earlier cell holds the TODO: name that cell
                    source = nb.cells[held].source
                    error = CellError(held, "todo", message, _first_code_line(source), i)
                break
            except Exception as err:
                error = CellError(i, type(err).__name__, _first_line(err), first)
                break
    plt.close("all")
    return ns, error


def find_notebook(id: str, folder: str | Path | None = None) -> Path:
    """The notebook of exercise ``id`` (``02_b``) in ``folder`` (default: ./exercises or .):
    the shortest name, so the exercise itself before Jupyter's ``...-Copy1.ipynb`` of it."""
    folders = [Path(folder)] if folder else [Path("exercises"), Path(".")]
    for f in folders:
        hits = list(f.glob(f"{id[:4]}_*.ipynb"))
        if hits:
            return min(hits, key=lambda p: (len(p.name), p.name))
    where = " or ".join(str(f) for f in folders)
    raise FileNotFoundError(f"no notebook {id[:4]}_*.ipynb in {where}: pass its path")


def grade_notebook(
    path: str | Path,
    id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    *,
    quiet: bool = True,
) -> Report:
    """Run the notebook at ``path`` and grade it (``id`` defaults to its file name)."""
    path = Path(path).resolve()
    ns, error = run_notebook(path, parameters, quiet=quiet)
    with _in_folder(path.parent):  # relative paths in the notebook mean the same here
        return evaluate(id or path.name[:4], ns, error)
