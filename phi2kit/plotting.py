"""One way to make a figure that shows up in Jupyter and works headless."""

from __future__ import annotations


def new_figure(**kwargs):
    """``(fig, ax)`` from pyplot, already closed.

    pyplot loads Jupyter's inline backend, which knows how to display a ``Figure`` returned
    by a cell; closing it keeps pyplot from showing it a second time at the end of the cell.
    Headless (no display, as in CI) pyplot uses the Agg backend.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(**kwargs)
    plt.close(fig)
    return fig, ax
