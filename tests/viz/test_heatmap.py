"""attnlab.viz.heatmap: shapes, labels, errors and atomic saving."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from attnlab.viz.heatmap import plot_attention, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _weights(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g), dim=-1)


def _image_axes(fig):
    return [a for a in fig.axes if a.images and a.get_visible() and a.get_label() != "<colorbar>"]


def test_single_head_draws_the_matrix_as_given_with_labels():
    w = _weights(3, 5)  # Tq=3 != Tk=5: a transposed image would have shape (5, 3)
    rows, cols = ["a", "b", "c"], ["K0", "K1", "K2", "K3", "K4"]
    fig = plot_attention(w, rows, cols, title="one head")
    (ax,) = _image_axes(fig)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), w.numpy(), rtol=0, atol=1e-7)
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    assert [t.get_text() for t in ax.get_xticklabels()] == cols
    assert ax.get_title() == "one head"
    assert len(fig.axes) == 2  # the panel and its colorbar


def test_small_matrices_are_annotated_with_their_values_and_large_ones_are_not():
    w = _weights(3, 5)
    (ax,) = _image_axes(plot_attention(w))
    texts = {t.get_text() for t in ax.texts}
    assert len(ax.texts) == 15
    assert f"{float(w[2, 4]):.2f}" in texts and f"{float(w[0, 0]):.2f}" in texts
    (big,) = _image_axes(plot_attention(_weights(30, 30)))
    assert len(big.texts) == 0
    (forced,) = _image_axes(plot_attention(_weights(3, 5), annotate=False))
    assert len(forced.texts) == 0


def test_heads_are_laid_out_in_a_grid_with_their_titles_and_one_shared_scale():
    w = _weights(5, 3, 7)
    fig = plot_attention(w, list("abc"), list("ABCDEFG"), title="five heads")
    panels = _image_axes(fig)
    assert len(panels) == 5
    assert [p.get_title() for p in panels] == [f"head {h}" for h in range(5)]
    for h, p in enumerate(panels):
        np.testing.assert_allclose(np.asarray(p.images[0].get_array()), w[h].numpy(), atol=1e-7)
        assert p.images[0].get_clim() == pytest.approx((0.0, float(w.max())))
    # 4 columns at most: 5 heads -> 2 rows x 4 columns, 3 cells hidden
    grid_axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(grid_axes) == 8 and sum(not a.get_visible() for a in grid_axes) == 3
    assert fig._suptitle.get_text() == "five heads"

    titled = plot_attention(w[:2], head_titles=["left", "right"])
    assert [p.get_title() for p in _image_axes(titled)] == ["left", "right"]


def test_draws_into_a_given_axes_and_accepts_numpy_and_bfloat16():
    from matplotlib.figure import Figure

    host = Figure()
    ax = host.add_subplot(1, 2, 2)
    w = _weights(4, 4).to(torch.bfloat16)
    fig = plot_attention(w, ax=ax, title="mine")
    assert fig is host and ax.images and ax.get_title() == "mine"
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), w.double().numpy())
    plot_attention(np.eye(3) * 0.5 + 0.1)  # array-likes work as well


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(row_labels=["a", "b"]), ValueError, r"row_labels has 2 labels but weights has 3 query rows .*\(3, 5\)"),
        (dict(col_labels=list("abcdef")), ValueError, r"col_labels has 6 labels but weights has 5 key columns"),
        (dict(row_labels="abc"), TypeError, r"row_labels must be a sequence of labels"),
        (dict(head_titles=["x"]), ValueError, r"head_titles has 1 titles but weights has 1 heads|head_titles"),
    ],
)
def test_label_errors_name_the_argument_and_the_shape(kwargs, exc, match):
    w = _weights(3, 5)
    if "head_titles" in kwargs:
        w = _weights(2, 3, 5)
        match = r"head_titles has 1 titles but weights has 2 heads"
    with pytest.raises(exc, match=match):
        plot_attention(w, **kwargs)


@pytest.mark.parametrize(
    "weights, exc, match",
    [
        (torch.ones(5), ValueError, r"weights must have shape \(Tq, Tk\) or \(H, Tq, Tk\), got shape \(5,\)"),
        (torch.ones(2, 2, 3, 3), ValueError, r"weights must have shape .* got shape \(2, 2, 3, 3\)"),
        (torch.ones(0, 3), ValueError, r"weights must not be empty"),
        (torch.tensor([[0.5, float("nan")]]), ValueError, r"weights contains NaN"),
        ([["a", "b"]], TypeError, r"weights must be a real-valued"),
    ],
)
def test_bad_weights_are_rejected(weights, exc, match):
    with pytest.raises(exc, match=match):
        plot_attention(weights)


def test_ax_with_several_heads_is_rejected():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    with pytest.raises(ValueError, match=r"ax draws one head, but weights has shape \(2, 3, 3\)"):
        plot_attention(_weights(2, 3, 3), ax=ax)


def test_saves_a_png_atomically_replacing_an_old_file(tmp_path):
    target = tmp_path / "attn.png"
    target.write_bytes(b"old")
    fig = plot_attention(_weights(3, 5), list("abc"), list("vwxyz"), path=target)
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attn.png"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    # The figure's pixel size follows its inches at 150 dpi.
    width = int.from_bytes(data[16:20], "big")
    assert width == pytest.approx(fig.get_figwidth() * 150, abs=2)


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "attn.png"
    target.write_bytes(b"old")
    fig = plot_attention(_weights(3, 3))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["attn.png"]


def test_saving_into_a_missing_folder_names_it(tmp_path):
    missing = tmp_path / "nope" / "attn.png"
    with pytest.raises(FileNotFoundError, match=r"folder .*nope.* does not exist"):
        plot_attention(_weights(2, 2), path=missing)


def test_svg_format_follows_the_suffix(tmp_path):
    target = tmp_path / "attn.svg"
    plot_attention(_weights(2, 3), path=target)
    assert b"<svg" in target.read_bytes()[:500]
