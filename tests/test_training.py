"""The training-loss curve and its plot (headless matplotlib)."""

from __future__ import annotations

import io

import matplotlib

from phi2kit.training import loss_curve, plot_losses

HISTORY = [
    {"loss": 9.0, "step": 1},
    {"loss": 2.5, "step": 2},
    {"eval_loss": 3.0, "step": 2},  # eval rows carry no "loss": not part of the curve
    {"loss": 0.4, "step": 3},
    {"train_runtime": 1.0, "step": 3},
]


def test_loss_curve_keeps_training_losses_only():
    assert loss_curve(HISTORY) == ([1, 2, 3], [9.0, 2.5, 0.4])
    assert loss_curve(HISTORY, key="eval_loss") == ([2], [3.0])


def test_plot_losses_headless_with_readable_log_ticks():
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = plot_losses({"LoRA": HISTORY, "QLoRA": HISTORY[:2]}, log_scale=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["LoRA", "QLoRA"]
    assert list(ax.get_lines()[0].get_ydata()) == [9.0, 2.5, 0.4]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # draws the ticks
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_text()}
    assert {"0.5", "1", "2", "5"} <= labels, labels  # plain numbers, not 10^0
    assert buffer.getvalue().startswith(b"\x89PNG")
    assert plot_losses({"LoRA": HISTORY}).axes[0].get_yscale() == "linear"
