"""Graded exercises for the course (``exercises/`` in the repository).

Each exercise is a short notebook ``NN_x_topic.ipynb`` that goes with lesson ``NN``. Its
last cell grades it where it runs::

    from phi2kit_exercises import check
    report = check("02_b", globals())

and ``phi2kit exercises check 02_b [path]`` grades a saved copy from a shell: it runs the
notebook's code cells in one Python process, then prints what passed, what failed, and a
hint for each failure. The checks (the ``checks_*`` modules) compare what a
learner measured or wrote with ``phi2kit``'s own version, on data the grader makes.

In the unsolved notebooks the parts to write call :func:`TODO`, which raises
:class:`Todo` with a sentence saying what is missing.
"""

from phi2kit_exercises.grader import (
    EXERCISES,
    TODO,
    Report,
    Todo,
    check,
    find_notebook,
    grade_notebook,
    run_notebook,
)

__all__ = [
    "EXERCISES",
    "Report",
    "TODO",
    "Todo",
    "check",
    "find_notebook",
    "grade_notebook",
    "run_notebook",
]
