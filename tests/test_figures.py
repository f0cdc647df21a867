"""Figures a reader could put in a paper: rendered from a small fixture, every saved PNG stays within 4:1 and no text
artist shows a cell id (snake_case, e.g. ``LeNetZhu_untrained_zhu_halfce``)."""

import json
import re

import pandas as pd
from matplotlib.image import imread
from matplotlib.text import Text

from invgrad.replication import notebook

CELLS = ("LeNetZhu_untrained_ours", "LeNetZhu_untrained_zhu_halfce")
SNAKE = re.compile(r"[A-Za-z0-9]+_[A-Za-z0-9_]+")


def _images_csv() -> pd.DataFrame:
    curve = json.dumps([[25, 9.0], [50, 12.0], [100, 15.0], [200, 17.5]])
    return pd.DataFrame(
        {
            "cell": [c for c in CELLS for _ in range(2)],
            "target": ["0", "1"] * 2,
            "status": "ok",
            "snapshots": curve,
        }
    )


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _check(fig, tmp_path, stem: str) -> None:
    cell_ids = [
        t for t in _texts(fig) if any(SNAKE.search(t) and c in t for c in CELLS) or SNAKE.fullmatch(t)
    ]
    assert not cell_ids, f"{stem}: cell ids in text artists: {cell_ids}"
    notebook.save_figure(fig, tmp_path, stem)
    height, width = imread(tmp_path / f"{stem}.png").shape[:2]
    assert max(width / height, height / width) <= 4, f"{stem}: {width} x {height} px"


def test_human_labels_name_model_weights_and_method():
    assert notebook.human_label("LeNetZhu_untrained_zhu_halfce") == "untrained LeNet (Zhu), DLG (user 0.5·CE)"
    assert notebook.human_label("LeNetZhu_trained_ours") == "trained LeNet (Zhu), proposed"
    assert notebook.human_label("LeNetZhu_untrained_zhu") == "untrained LeNet (Zhu), DLG"


def test_convergence_figure_shows_no_cell_id_and_keeps_the_config_out_of_the_title(tmp_path):
    fig = notebook.convergence_figure(_images_csv(), "Table 1 cells", footer="config: config/test.yaml")
    _check(fig, tmp_path, "table1_convergence")
    assert all("config" not in ax.get_title() for ax in fig.axes)
    assert "config: config/test.yaml" in _texts(fig)
    legend = fig.axes[0].get_legend()
    assert legend.get_bbox_to_anchor().y0 < fig.axes[0].get_window_extent().y0  # below the data, not on it


def test_the_check_fails_on_a_cell_id_in_a_title(tmp_path):
    import pytest

    fig = notebook.convergence_figure(_images_csv(), CELLS[1])
    with pytest.raises(AssertionError, match="cell ids"):
        _check(fig, tmp_path, "bad")
