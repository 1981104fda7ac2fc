"""The train/eval loss plot (headless matplotlib), written in notebook 02's cells."""

from __future__ import annotations

import io

import matplotlib

from phi2kit.training import plot_losses

HISTORY = [
    {"loss": 9.0, "step": 1},
    {"loss": 2.5, "step": 2},
    {"eval_loss": 3.0, "step": 2},  # eval rows carry no "loss"
    {"loss": 0.4, "step": 3},
    {"eval_loss": 1.0, "step": 3},
    {"train_runtime": 1.0, "train_loss": 4.0, "step": 3},  # the summary row is not plotted
]


def test_plot_losses_train_eval_and_best_step():
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = plot_losses(HISTORY, best_step=3, log_scale=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["train loss"].get_ydata()) == [9.0, 2.5, 0.4]
    assert list(lines["eval loss"].get_xdata()) == [2, 3]
    assert list(lines["eval loss"].get_ydata()) == [3.0, 1.0]
    best = lines["best (step 3)"]
    assert list(best.get_xdata()) == [3, 3] and best.get_linestyle() == ":"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # draws the ticks
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_text()}
    assert {"0.5", "1", "2", "5"} <= labels, labels  # plain numbers, not 10^0
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_plot_losses_on_a_given_axes_without_eval():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2)
    assert plot_losses(HISTORY[:2], title="LoRA", ax=right) is fig
    assert [line.get_label() for line in right.get_lines()] == ["train loss"]
    assert right.get_yscale() == "linear" and right.get_title() == "LoRA"
    assert not left.get_lines()
