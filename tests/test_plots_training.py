"""Figures of the training notebooks: training curves, large heat maps, accuracy against
kernel distance. Each has titles and labels and rejects mismatched input."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tutorial_lib import plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_histories_draws_one_line_per_run_and_panel_per_key():
    runs = {"a": {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "accuracy": [0.1, 0.2, 0.3]},
            "b": {"step": [1, 2], "loss": [2.5, 1.5]}}
    fig = plots.plot_histories(runs, ["loss", "accuracy"], titles={"loss": "cross-entropy"}, logy=["loss"])
    loss_ax, acc_ax = fig.axes[:2]
    assert loss_ax.get_title() == "cross-entropy" and loss_ax.get_yscale() == "log"
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 1
    assert loss_ax.get_xlabel() == "training step"
    with pytest.raises(ValueError, match="different lengths"):
        plots.plot_histories({"bad": {"step": [1, 2], "loss": [1.0]}}, ["loss"])
    with pytest.raises(ValueError, match="'usage' holds a vector per entry"):  # one column at a time
        plots.plot_histories({"run": {"step": [1, 2], "usage": [[0.5, 0.5], [0.4, 0.6]]}}, ["usage"])
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_histories({}, ["loss"])


def test_plot_heatmap_colours_rows_and_checks_shapes():
    matrix = np.arange(12.0).reshape(6, 2)
    colours = ["#0072B2", "#E69F00"] * 3
    fig = plots.plot_heatmap(matrix, [f"r{i}" for i in range(6)], ["x", "y"], "title", "cols", "rows", "value",
                             row_colours=colours, legend={"seen": "#0072B2", "unseen": "#E69F00"})
    ax = fig.axes[0]
    assert ax.get_title() == "title" and ax.get_xlabel() == "cols" and ax.get_ylabel() == "rows"
    assert np.array_equal(ax.images[0].get_array(), matrix)
    assert [t.get_color() for t in ax.get_yticklabels()] == colours
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_heatmap(matrix, ["a"], ["x", "y"], "t", "x", "y", "c")
    with pytest.raises(ValueError, match="row_colours"):
        plots.plot_heatmap(matrix, [f"r{i}" for i in range(6)], ["x", "y"], "t", "x", "y", "c", row_colours=["k"])


def test_plot_accuracy_vs_distance_draws_curves_and_chance():
    fig = plots.plot_accuracy_vs_distance([0, 1, 2], {"model": [0.1, 0.5, 1.0]}, chance=[0.05, 0.3, 1.0])
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and ax.get_ylabel() == "fraction of cases"
    with pytest.raises(ValueError, match="thresholds"):
        plots.plot_accuracy_vs_distance([0, 1], {"m": [0.1]})
