"""The figures, read back from the Figure objects: the loss curve's title, lines and zero marks on
runs of 1 step, with float32 losses of exactly 0, and of 200,000 steps; the note about characters
the font lacks; every PNG written parses. Every test fails on any warning.

Legend: n steps, w steps per block, V vocab size.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib import image
from matplotlib.collections import PolyCollection

from npmlp.app import plots

CJK = (".", *"北京東都市", "a", "b")


@pytest.fixture(autouse=True)
def warnings_are_errors():
    """No RuntimeWarning from log10(0), no 'Glyph missing' flood: any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def saved(fig, path, notes=None):
    """Save through plots.save and read the PNG back: it must parse and have pixels."""
    p = plots.save(fig, path, notes)
    assert p == path and path.is_file()
    img = image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def lecture_like_losses(n: int, seed: int = 0) -> np.ndarray:
    """A falling curve with minibatch noise, float32 as training records it."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return ((2.1 + 25 * np.exp(-t / 300)) * np.exp(rng.normal(0, 0.15, n))).astype(np.float32)


# ----------------------------------------------------------------------------- the loss curve

def test_losses_of_exactly_zero_are_drawn_at_the_floor_and_said(tmp_path):
    """--batch-size 1: a confident model's float32 loss rounds to 0; log10(0) warned and hid the
    block means, and the title showed 0.000 for a run whose train loss was 8.7."""
    rng = np.random.default_rng(1)
    lossi = rng.exponential(8.7, 5000).astype(np.float32)              # (n,)
    lossi[rng.random(5000) < 0.2] = 0
    fig = plots.loss_figure(lossi, 2500, 0.1, 0.01, 1)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    w = plots.smoothing_window(5000)
    assert w == 250
    mean = float(lossi[-w:].astype(np.float64).mean())
    assert f"{mean:.3f}" in ax.get_title() and "5,000 steps" in ax.get_title() and "(batch 1)" in ax.get_title()
    lines = lines_by_label(ax)
    per_step = lines["each step's minibatch loss"].get_ydata()
    assert np.all(np.isfinite(per_step)) and per_step.min() > 0
    nz = int((lossi == 0).sum())
    zeros = [line for label, line in lines.items() if "exactly 0" in label]
    assert len(zeros) == 1, list(lines)
    label = zeros[0].get_label()
    assert label.startswith(f"{nz:,} steps with loss exactly 0")
    floor = zeros[0].get_ydata()
    assert len(floor) == nz and np.all(floor == floor[0]) and 0 < floor[0] < lossi[lossi > 0].min()
    assert np.array_equal(zeros[0].get_xdata(), np.flatnonzero(lossi == 0))
    blocks = lines[f"mean over {w}-step blocks"].get_ydata()
    np.testing.assert_allclose(blocks, lossi.astype(np.float64).reshape(-1, w).mean(axis=1), rtol=1e-12)
    assert label in [t.get_text() for t in fig.legends[0].get_texts()]
    saved(fig, tmp_path / "loss.png")


def test_one_step_draws_a_point(tmp_path):
    fig = plots.loss_figure(np.array([8.7], np.float32), None, batch_size=32)
    ax = fig.axes[0]
    assert "1 step " in ax.get_title() and "1 steps" not in ax.get_title()
    assert f"{np.float32(8.7):.3f}" in ax.get_title()
    (line,) = ax.get_lines()
    assert line.get_marker() == "o" and list(line.get_ydata()) == [np.float32(8.7)]
    lo, hi = ax.get_xlim()
    assert lo < 0 < hi and hi - lo >= 1
    saved(fig, tmp_path / "loss.png")


def test_one_step_of_loss_zero(tmp_path):
    fig = plots.loss_figure(np.zeros(1, np.float32))
    ax = fig.axes[0]
    assert "1 step:" in ax.get_title() and "0.000" in ax.get_title()
    assert any(label.startswith("1 step with loss exactly 0") for label in lines_by_label(ax))
    saved(fig, tmp_path / "loss.png")


def test_lecture_length_run_shows_the_arithmetic_mean(tmp_path):
    """200,000 steps: the band, 200 block means, and the title's mean is arithmetic (the title once
    showed the geometric mean, 2.704 for a real 2.75)."""
    n = 200_000
    lossi = lecture_like_losses(n)
    lossi[-1000:] *= np.where(np.arange(1000) % 2, 0.5, 1.5).astype(np.float32)   # spread: means differ
    fig = plots.loss_figure(lossi, n // 2, 0.1, 0.01, 32)
    ax = fig.axes[0]
    last = lossi[-1000:].astype(np.float64)
    arith, geo = last.mean(), np.exp(np.log(last).mean())
    assert f"{arith:.3f}" != f"{geo:.3f}"
    title = ax.get_title()
    assert "200,000 steps" in title and f"the last 1,000 steps {arith:.3f}" in title, title
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    blocks = lines_by_label(ax)["mean over 1,000-step blocks"].get_ydata()
    assert len(blocks) == 200
    np.testing.assert_allclose(blocks, lossi.astype(np.float64).reshape(200, 1000).mean(axis=1), rtol=1e-12)
    assert not any("exactly 0" in label for label in lines_by_label(ax))
    saved(fig, tmp_path / "loss.png")


def test_long_run_with_zeros_marks_them_per_bin(tmp_path):
    n = 200_000
    lossi = lecture_like_losses(n, seed=2)
    lossi[::997] = 0
    fig = plots.loss_figure(lossi)
    ax = fig.axes[0]
    (zeros,) = [line for label, line in lines_by_label(ax).items() if "exactly 0" in label]
    assert zeros.get_label().startswith(f"{len(lossi[::997]):,} steps with loss exactly 0")
    assert 0 < len(zeros.get_xdata()) <= plots.BAND_BINS
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert np.all(np.isfinite(band.get_paths()[0].vertices)) and band.get_paths()[0].vertices[:, 1].min() > 0
    assert f"{lossi[-1000:].astype(np.float64).mean():.3f}" in ax.get_title()
    saved(fig, tmp_path / "loss.png")


@pytest.mark.parametrize("n", [2, 30, 2_345, 19_999])
def test_title_mean_is_the_last_block_of_any_length(n, tmp_path):
    lossi = lecture_like_losses(n, seed=n)
    ax = plots.loss_figure(lossi).axes[0]
    w = plots.smoothing_window(n)
    want = float(lossi[-w:].astype(np.float64).mean())
    assert f"{want:.3f}" in ax.get_title()
    assert f"{n:,} steps" in ax.get_title()
    if w > 1:
        assert len(lines_by_label(ax)[f"mean over {w:,}-step blocks"].get_ydata()) == n // w


def test_plural():
    assert plots.plural(1, "step") == "1 step"
    assert plots.plural(0, "step") == "0 steps"
    assert plots.plural(200_000, "step") == "200,000 steps"


# ----------------------------------------------------------------------------- characters the font lacks

def test_missing_glyphs_finds_cjk_in_the_default_font():
    assert plots.missing_glyphs("abc.ëñαЖ") == []
    assert plots.missing_glyphs("a北京北b") == ["北", "京"]


def test_cjk_embedding_says_which_characters_show_as_boxes(tmp_path):
    C = np.random.default_rng(0).normal(size=(len(CJK), 2))
    fig = plots.embedding_figure(C, CJK)
    shown = fig.get_supxlabel()
    assert shown.startswith("note: 5 characters (U+5317, U+4EAC, U+6771, U+90FD, U+5E02)"), shown
    assert "show as boxes" in shown and plots.font_name() in shown
    notes: list[str] = []
    saved(fig, tmp_path / "embedding.png", notes)
    assert len(notes) == 1, notes
    assert notes[0].startswith("embedding.png: 5 characters (U+5317 '北', U+4EAC '京'"), notes[0]
    assert "font.sans-serif" in notes[0]
    again: list[str] = []
    plots.save(fig, tmp_path / "again.png", again)
    assert again == [notes[0].replace("embedding.png", "again.png")], "one note per save"
    assert fig.get_supxlabel() == shown, "the figure's note is written once"


def test_latin_embedding_has_no_note(tmp_path):
    itos = (".", *"abcëñ")
    fig = plots.embedding_figure(np.random.default_rng(0).normal(size=(len(itos), 2)), itos)
    assert fig.get_supxlabel() == ""
    notes: list[str] = []
    saved(fig, tmp_path / "embedding.png", notes)
    assert notes == []


def test_gradient_figure_with_cjk_ticks_gets_the_note(tmp_path):
    from npmlp.data import Vocab, build_dataset
    from npmlp.mlp import MLP
    words = ["北京", "東京都", "京都", "ab", "都市", "ba"]
    vocab = Vocab.from_words(words)
    X, Y = build_dataset(words, vocab, 3)
    model = MLP.init(vocab.size, 3, 2, 8, seed=0)
    fig = plots.gradient_figure(model, X, Y, vocab.itos)
    assert "U+5317" in fig.get_supxlabel()
    notes: list[str] = []
    saved(fig, tmp_path / "gradients.png", notes)
    assert len(notes) == 1 and notes[0].startswith("gradients.png: 5 characters")


def test_write_run_figures_collects_one_note_per_figure(tmp_path):
    model = SimpleNamespace(params={"C": np.random.default_rng(0).normal(size=(len(CJK), 2))},
                            spec=SimpleNamespace(embedding="C"))
    vocab = SimpleNamespace(itos=CJK)
    notes: list[str] = []
    written = plots.write_run_figures(tmp_path, model, vocab, lecture_like_losses(300), notes=notes)
    assert [p.name for p in written] == ["loss.png", "embedding.png"]
    for p in written:
        image.imread(p)
    assert len(notes) == 1 and notes[0].startswith("embedding.png: ")


def test_save_passes_other_warnings_on(tmp_path):
    """save hides only the glyph warnings (said once in the note); any other warning reaches the caller."""
    from matplotlib.figure import Figure

    def savefig(*a, **k):   # a stand-in that warns about something else
        warnings.warn("something else", UserWarning, stacklevel=2)
    fig = Figure()
    fig.savefig = savefig
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.save(fig, tmp_path / "x.png")
    assert [str(w.message) for w in caught] == ["something else"]


# ----------------------------------------------------------------------------- hostile shapes: deep, 1-wide, diverged

def deep_readings(n_layers, n_hidden=4, n_embd=2, batchnorm=1):
    from npmlp.app import diagnose
    from npmlp.deep import Deep
    rng = np.random.default_rng(0)
    model = Deep.init(27, n_embd=n_embd, n_hidden=n_hidden, n_layers=n_layers, batchnorm=batchnorm, seed=1)
    X, Y = rng.integers(0, 27, (32, 3)), rng.integers(0, 27, 32)
    return model, X, Y, diagnose.read(model, X, Y)


def test_a_100_layer_network_is_coloured_by_depth_not_buried_under_a_legend(tmp_path):
    """100 curves in a legend covered the plot (and matplotlib warned that constrained layout
    collapsed): more than LEGEND_MAX curves get a colour map by depth and a colorbar."""
    from npmlp.app.diagnose import UpdateRatios
    model, X, Y, r = deep_readings(100)
    for make in (plots.activations_figure, plots.activation_grads_figure, plots.weight_grads_figure):
        fig = make(r)
        assert not fig.legends and not fig.axes[0].get_legend()
        assert len(fig.axes) == 2
        assert fig.axes[1].get_ylabel() in ("100 layers, first to last", "102 weight matrices, first to last")
        saved(fig, tmp_path / "f.png")
    u = UpdateRatios(model.params)
    cfg = SimpleNamespace(lr_at=lambda step: 0.1, seed=1, batch_size=8)
    for step in (0, 100):
        u.record(model, X, Y, cfg, step)
    fig = plots.update_ratio_figure(u, model.params)
    assert not fig.legends and len(fig.axes) == 2
    saved(fig, tmp_path / "u.png")
    fig = plots.gradient_figure(model, X, Y, [chr(97 + i) for i in range(27)])
    assert "7 of its 102 matrices" in fig.get_suptitle()      # C, W1 ... W101
    assert sum(ax.get_title().startswith("dW") for ax in fig.axes) == 6     # and dC: 7 histograms
    saved(fig, tmp_path / "g.png")


def test_few_legend_entries_sit_below_the_plot(tmp_path):
    _, _, _, r = deep_readings(3, n_hidden=10)
    fig = plots.activations_figure(r)
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 3 and len(fig.axes) == 1
    saved(fig, tmp_path / "a.png")


def test_one_wide_layers_draw_without_warnings(tmp_path):
    """n_hidden 1, n_embd 1: constant layers, NaN grad:data ratios; no RuntimeWarning, no collapse."""
    for batchnorm in (1, 0):
        model, X, Y, r = deep_readings(3, n_hidden=1, n_embd=1, batchnorm=batchnorm)
        saved(plots.weight_grads_figure(r), tmp_path / "w.png")
        saved(plots.gradient_figure(model, X, Y, [chr(97 + i) for i in range(27)]), tmp_path / "g.png")


def test_a_diverged_models_nan_gradients_are_left_out_and_counted(tmp_path):
    """A run that diverged keeps the parameters of its last finite loss, whose gradients may be
    NaN/inf: the histograms leave those out and say how many (np.histogram raised on them)."""
    model, X, Y, _ = deep_readings(3, n_hidden=6)
    model.params["W2"][...] = 3e38                       # finite, but the activations overflow
    from npmlp.app import diagnose
    r = diagnose.read(model, X, Y)
    fig = plots.weight_grads_figure(r)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("NaN/inf left out" in label for label in labels), labels
    saved(fig, tmp_path / "w.png")
    fig = plots.gradient_figure(model, X, Y, [chr(97 + i) for i in range(27)])
    assert any("NaN/inf left out" in ax.get_title() for ax in fig.axes)
    saved(fig, tmp_path / "g.png")


def test_a_single_update_ratio_sample_is_drawn_as_points(tmp_path):
    """One sample (a run of up to 100 steps) was a line of one point: an empty plot."""
    from npmlp.app.diagnose import UpdateRatios
    model, X, Y, _ = deep_readings(2, n_hidden=6)
    u = UpdateRatios(model.params)
    u.record(model, X, Y, SimpleNamespace(lr_at=lambda step: 0.1, seed=1, batch_size=8), 0)
    fig = plots.update_ratio_figure(u, model.params)
    weights = [line for line in fig.axes[0].get_lines() if line.get_label() in ("W1", "W2", "W3", "C")]
    assert len(weights) == 4 and all(line.get_marker() == "o" for line in weights)
    assert all(np.isfinite(line.get_ydata()).all() and len(line.get_xdata()) == 1 for line in weights)
    left, right = fig.axes[0].get_xlim()
    assert left < 0 < right
    saved(fig, tmp_path / "u.png")


def test_embedding_titles_say_what_is_drawn():
    C1 = np.random.default_rng(0).normal(size=(5, 1))
    assert plots.embedding_figure(C1, list(".abcd")).axes[0].get_title().endswith("its one dimension")
    C2 = np.random.default_rng(0).normal(size=(5, 2)) * [3, 0.1]
    pts, xlabel, _ = plots.embedding_2d(C2 @ [[0.6, 0.8], [-0.8, 0.6]], pca=True)   # a rotated ellipse
    assert xlabel.startswith("PC 1 (") and pts.var(0)[0] > 100 * pts.var(0)[1]
    assert "principal components" in plots.embedding_figure(C2, list(".abcd"), pca=True).axes[0].get_title()


def test_a_figure_that_cannot_be_written_is_one_error(tmp_path, monkeypatch):
    """A full disk (simulated: atomic_open raises ENOSPC) while saving: NpmlpError naming the file."""
    import contextlib
    import errno

    from matplotlib.figure import Figure

    from npmlp.app.errors import NpmlpError

    @contextlib.contextmanager
    def full(path, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device")
        yield
    monkeypatch.setattr(plots, "atomic_open", full)
    with pytest.raises(NpmlpError, match=r"cannot write .*x\.png: No space left on device; free space"):
        plots.save(Figure(), tmp_path / "x.png")
