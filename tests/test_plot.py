import re

import matplotlib.text
import pytest
import torch
from PIL import Image

from invgrad import metrics, plot

SNAKE_CASE = re.compile(r"\b[A-Za-z0-9]+_[A-Za-z0-9_]+\b")


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(n, 3, 8, 8, generator=g)
    return truth, (truth + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


@pytest.mark.parametrize("n", [1, 4, 18, 20])
def test_saved_grid_stays_within_four_to_one(tmp_path, n):
    truth, rec = _batch(n)
    fig = plot.grid(truth, rec, labels=["cat"] * n, title="LeNet (Zhu) on CIFAR-10")
    fig.savefig(tmp_path / "grid.png", dpi=50)
    width, height = Image.open(tmp_path / "grid.png").size
    assert max(width / height, height / width) <= 4, (n, width, height)


def test_long_batches_wrap_into_blocks():
    truth, rec = _batch(20)
    fig = plot.grid(truth, rec, max_columns=12)
    columns = {round(ax.get_position().x0, 4) for ax in fig.axes}
    rows = {round(ax.get_position().y0, 4) for ax in fig.axes}
    assert (
        len(fig.axes) == 40 and len(columns) <= 12 and len(rows) == 4
    )  # 2 blocks × (truth + reconstruction)


def test_psnr_under_each_reconstruction_and_lpips_only_where_a_number():
    truth, rec = _batch(5)
    scores = metrics.image_metrics(rec, truth)  # LPIPS of 8-px images is an "n/a: ..." text
    fig = plot.grid(truth, rec, metrics=scores)
    recs = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(recs) == 5 and len(fig.axes) == 10  # the ground-truth row carries no caption
    for ax, value in zip(sorted(recs, key=lambda a: a.get_position().x0), scores["psnr"], strict=True):
        assert ax.get_xlabel() == f"{value:.2f} dB"
        assert ax.get_position().y0 < min(a.get_position().y0 for a in fig.axes if not a.get_xlabel())
    assert not any("LPIPS" in t or "n/a" in t for t in _texts(fig))
    with_lpips = plot.grid(truth, rec, metrics={**scores, "lpips": [0.25] * 5})
    assert sum("\nLPIPS 0.250" in t for t in _texts(with_lpips)) == 5


def test_psnr_is_computed_when_not_given_and_failures_read_as_failed():
    truth, rec = _batch(3)
    rec[1] = float("nan")
    fig = plot.grid(truth, rec)
    expected = metrics.psnr_per_image(rec, truth).tolist()
    captions = [
        ax.get_xlabel() for ax in sorted(fig.axes, key=lambda a: a.get_position().x0) if ax.get_xlabel()
    ]
    assert captions == [f"{expected[0]:.2f} dB", "failed (NaN)", f"{expected[2]:.2f} dB"]


def test_several_rows_are_named_and_no_snake_case_id_is_drawn():
    truth, rec = _batch(4)
    fig = plot.grid(
        truth,
        {"proposed": rec, "DLG": rec.flip(0)},
        labels=["airplane", "automobile", "bird", "cat"],
        title="untrained LeNet (Zhu), CIFAR-10",
        caption="config: paper settings",
    )
    texts = _texts(fig)
    assert {"ground truth", "proposed", "DLG", "airplane", "cat"} <= set(texts)
    assert sum(t.endswith(" dB") for t in texts) == 8
    assert not [t for t in texts if SNAKE_CASE.search(t)]


def test_groups_stay_together_under_their_titles_side_by_side():
    truth, rec = _batch(12)
    groups = [(f"cell {g}", 3) for g in range(4)]
    fig = plot.grid(truth, rec, labels=["best", "median", "worst"] * 4, groups=groups)
    texts = _texts(fig)
    assert [t for t in texts if t.startswith("cell ")] == [name for name, _ in groups]
    truths = sorted(
        (ax for ax in fig.axes if ax.get_title()), key=lambda a: (-a.get_position().y0, a.get_position().x0)
    )
    lines = {round(ax.get_position().y0, 4) for ax in truths}
    assert len(lines) == 2  # four groups of three: two lines of two groups, never three and one
    for g in range(4):  # a group's images sit side by side on one line, closer than the gap between groups
        members = truths[3 * g : 3 * g + 3]
        assert len({round(ax.get_position().y0, 4) for ax in members}) == 1
    x = [ax.get_position().x0 for ax in truths[:6]]
    assert x[3] - x[2] > 1.2 * (x[1] - x[0])
    with pytest.raises(ValueError, match=r"groups count \[3, 3\] images, ground truth has 12"):
        plot.grid(truth, rec, groups=[("a", 3), ("b", 3)])


def test_bad_input_fails_with_one_clear_line():
    truth, rec = _batch(3)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\), ground truth \(3, 3, 8, 8\)"):
        plot.grid(truth, rec[:2])
    with pytest.raises(ValueError, match="labels has 2 entries for 3 images"):
        plot.grid(truth, rec, labels=["a", "b"])
