"""Figure helpers: each builds a figure with titles and labels, draws what it promises, and
rejects bad input clearly. Every figure is closed again."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from tutorial_lib import kernels as K
from tutorial_lib import plots
from tutorial_lib.metrics import psnr_y
from tutorial_lib.widgets import kernel_explorer_state


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def image():
    rows, cols = np.mgrid[0:48, 0:64]
    return 0.5 + 0.4 * np.sin(rows / 5.0) * np.cos(cols / 7.0)


def titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_kernel_bank_figure_marks_the_split_and_the_twins():
    params = K.bank_parameters()
    fig = plots.plot_kernel_bank(K.kernel_bank(), params, K.SEEN_INDICES, K.UNSEEN_INDICES,
                                 twins=K.seen_unseen_twins(), duplicates=K.duplicate_pairs())
    assert fig._suptitle is not None and "58" in fig._suptitle.get_text()
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 58
    frame = {ax.get_title().split()[0]: matplotlib.colors.to_hex(ax.spines["top"].get_edgecolor())
             for ax in drawn}
    for i in K.SEEN_INDICES:
        assert frame[f"#{i}"] == plots.SEEN_COLOUR.lower()
    for i in K.UNSEEN_INDICES:
        assert frame[f"#{i}"] == plots.UNSEEN_COLOUR.lower()
    labels = titles(fig)
    for seen, unseen in K.seen_unseen_twins():
        assert f"#{seen} = #{unseen}" in labels and f"#{unseen} = #{seen}" in labels
    stars = [t for ax in drawn for t in ax.texts if t.get_text() == "★"]
    assert len(stars) == 2 * len(K.seen_unseen_twins())


def test_kernel_bank_rejects_mismatched_input():
    with pytest.raises(ValueError, match="len\\(params\\)"):
        plots.plot_kernel_bank(K.kernel_bank()[:5], K.bank_parameters(), [], [])


def test_plot_kernel_draws_the_covariance_ellipse():
    _, ax = plt.subplots()
    sigma = K.covariance(0.75, 3.0, np.pi / 4)
    plots.plot_kernel(ax, K.anisotropic_gaussian(0.75, 3.0, np.pi / 4), "k", covariance=sigma)
    (line,) = ax.lines
    rows, cols = line.get_ydata(), line.get_xdata()
    points = np.stack([rows, cols])
    # every ellipse point z satisfies z^T Σ^-1 z = 1 (one standard deviation)
    np.testing.assert_allclose(np.einsum("in,ij,jn->n", points, np.linalg.inv(sigma), points), 1.0)
    assert ax.get_title() == "k" and ax.get_xlabel() and ax.get_ylabel()


def test_show_images_titles_native_size_and_insets(image):
    fig = plots.show_images({"a": image, "b": image[::2, ::2]}, pixel_scale=2,
                            zoom_box=(4, 6, 10, 12), suptitle="two images")
    assert titles(fig)[:2] == ["a", "b"]
    main = fig.axes[0]
    width_px = main.get_position().width * fig.get_figwidth() * fig.dpi
    assert width_px == pytest.approx(2 * image.shape[1])  # 2 screen pixels per image pixel
    assert len(main.child_axes) == 1  # the zoomed inset
    assert fig._suptitle.get_text() == "two images"


def test_show_images_grid_and_errors(image):
    fig = plots.show_images({f"image {i}": image for i in range(5)}, ncols=2)
    assert titles(fig) == [f"image {i}" for i in range(5)]
    with pytest.raises(ValueError, match="2-D"):
        plots.show_images({"rgb": np.zeros((8, 8, 3))})
    with pytest.raises(ValueError, match="does not fit"):
        plots.show_images({"a": image}, zoom_box=(40, 0, 20, 10))
    with pytest.raises(ValueError, match="at least one"):
        plots.show_images({})


def test_zoom_compare_titles_carry_the_psnr(image):
    noisy = np.clip(image + 0.05 * np.random.default_rng(0).standard_normal(image.shape), 0, 1)
    fig = plots.zoom_compare(image, {"noisy": noisy, "exact": image.copy()}, (8, 8, 16, 24), 2)
    labels = titles(fig)
    assert labels[0].startswith("ground truth")
    expected = float(psnr_y(image, noisy, shave_border=2))
    assert f"noisy\nPSNR {expected:.2f} dB" in labels
    assert "exact\nPSNR inf dB" in labels
    assert fig._suptitle is not None
    with pytest.raises(ValueError, match="expected the shape of hr"):
        plots.zoom_compare(image, {"small": image[:10]}, (0, 0, 5, 5), 2)
    with pytest.raises(ValueError, match="does not fit"):
        plots.zoom_compare(image, {"x": image}, (0, 60, 5, 5), 2)


def test_error_maps_share_one_scale_centred_on_zero(image):
    shifted = np.roll(image, 1, axis=1)
    slightly = np.clip(image + 0.01, 0, 1)
    box = (8, 8, 16, 24)
    fig = plots.plot_errors(image, {"shifted": shifted, "brighter": slightly}, box)
    maps = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(maps) == 2
    top, left, h, w = box
    expected = shifted[top:top + h, left:left + w] - image[top:top + h, left:left + w]
    np.testing.assert_allclose(maps[0].get_array(), expected)
    limits = {m.get_clim() for m in maps}
    assert len(limits) == 1 and next(iter(limits))[0] == -next(iter(limits))[1]  # one symmetric scale
    both = np.stack([expected, slightly[top:top + h, left:left + w] - image[top:top + h, left:left + w]])
    assert next(iter(limits))[1] == pytest.approx(np.percentile(np.abs(both), 99))
    assert maps[0].get_cmap().name == "RdBu_r"
    rms = np.sqrt(np.mean(expected ** 2))
    assert f"shifted\nRMS error {rms:.4f}" in titles(fig)
    with pytest.raises(ValueError, match="expected the shape of hr"):
        plots.plot_errors(image, {"small": image[:10]}, box)


def test_plot_matrix_annotates_every_entry():
    matrix = np.array([[30.0, 25.5, 28.0], [27.0, 31.25, 29.0]])
    fig = plots.plot_matrix(matrix, ["k1", "k2"], ["f1", "f2", "all"], "performance",
                            "filter", "test kernel", "PSNR (dB)", mark_row_max=True)
    ax = fig.axes[0]
    assert ax.get_title() == "performance" and ax.get_xlabel() == "filter"
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in matrix.ravel())
    frames = [p for p in ax.patches]
    assert [(p.get_x() + 0.5, p.get_y() + 0.5) for p in frames] == [(0.0, 0.0), (1.0, 1.0)]
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_matrix(matrix, ["k1"], ["a", "b", "c"], "t", "x", "y", "c")


def test_explorer_state_figure(image):
    state = kernel_explorer_state(image, 1.5, 0.75, 0.5, 2, 0.0)
    fig = plots.plot_explorer_state(state, title="explorer")
    labels = titles(fig)
    assert len(labels) == 3
    assert f"PSNR {state['psnr']:.2f} dB" in labels[2]
    assert fig.axes[0].lines  # the covariance ellipse
