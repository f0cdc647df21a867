"""Figures a reader could put in a paper: every figure of the registry, rendered from the committed run's figure data
(``figures/data``, the fixture), stays within 4:1 and no text artist shows a cell id or other snake_case id."""

import json
import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from matplotlib.image import imread
from matplotlib.text import Text

from invgrad.replication import figures, notebook, registry

matplotlib.use("Agg")
COMMITTED = Path(__file__).resolve().parents[1] / "figures" / "data"
SNAKE = re.compile(r"[A-Za-z0-9]+_[A-Za-z0-9_]+")
STEMS = [(name, stem) for name, stems in figures.FIGURES.items() for stem in stems]


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _check(fig, tmp_path, stem: str) -> None:
    ids = [t for t in _texts(fig) if SNAKE.search(t) or any(m in t for m in figures.base.MODEL_NAMES)]
    assert not ids, f"{stem}: ids in text artists: {ids}"
    notebook.save_figure(fig, tmp_path, stem)
    height, width = imread(tmp_path / f"{stem}.png").shape[:2]
    assert max(width / height, height / width) <= 4, f"{stem}: {width} x {height} px"


def test_every_registry_figure_has_one_drawing_function():
    for name in figures.FIGURES:
        assert tuple(figures.FIGURES[name]) == tuple(registry.get(name).figures), name


@pytest.mark.parametrize(("experiment", "stem"), STEMS)
def test_every_figure_renders_from_the_committed_data_without_ids_within_4_to_1(experiment, stem, tmp_path):
    data = figures.ExperimentData.load(COMMITTED / experiment, "config/config.yaml", 18.0)
    fig = figures.draw(stem, data)
    _check(fig, tmp_path, stem)
    titles = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) else []
    titles += [ax.get_title() for ax in fig.axes]
    assert all("config" not in t for t in titles), f"{stem}: the config belongs in the footer: {titles}"
    assert any("config: config/config.yaml" in t for t in _texts(fig)), f"{stem}: no footer naming the config"


def _images_csv() -> pd.DataFrame:
    curve = json.dumps([[25, 9.0], [50, 12.0], [100, 15.0], [200, 17.5]])
    cells = ("LeNetZhu_untrained_ours", "LeNetZhu_untrained_zhu")
    return pd.DataFrame(
        {
            "cell": [c for c in cells for _ in range(2)],
            "preset": [c.split("_", 2)[2] for c in cells for _ in range(2)],
            "target": ["0", "1"] * 2,
            "status": "ok",
            "snapshots": curve,
        }
    )


def _fixture(tmp_path) -> figures.ExperimentData:
    return figures.ExperimentData(tmp_path, pd.DataFrame({"cell": []}), _images_csv(), "", "config/test.yaml")


def test_human_labels_name_model_weights_and_method():
    assert figures.human_label("LeNetZhu_untrained_zhu_halfce") == "untrained LeNet (Zhu), DLG (user 0.5·CE)"
    assert figures.human_label("LeNetZhu_trained_ours") == "trained LeNet (Zhu), proposed"
    assert figures.human_label("LeNetZhu_untrained_zhu") == "untrained LeNet (Zhu), DLG"
    assert figures.human_label("n5_lr0.1_K4_B0") == "5 local step(s), τ=0.1, K=4, full batch"
    assert figures.human_label("noise-0.01") == "Gaussian noise σ=0.01"
    assert figures.human_label("LeNetZhu_untrained_K18") == "untrained LeNet (Zhu), 18 images"


def test_adam_iterations_and_lbfgs_steps_get_separate_panels_legends_beside_the_data(tmp_path):
    fig = figures.convergence(_fixture(tmp_path), "Table 1 cells")
    _check(fig, tmp_path, "table1_convergence")
    assert [ax.get_xlabel() for ax in fig.axes] == ["signed-Adam iterations", "L-BFGS steps"]
    for ax in fig.axes:
        beside = ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1
        assert beside, "the legend sits on the data"


def test_the_check_fails_on_a_cell_id_in_a_title(tmp_path):
    fig = figures.convergence(_fixture(tmp_path), "LeNetZhu_untrained_zhu_halfce")
    with pytest.raises(AssertionError, match="ids in text"):
        _check(fig, tmp_path, "bad")


def test_cells_not_run_are_named_by_their_readers_labels():
    table = pd.DataFrame(
        {"cell": ["LeNetZhu_trained_zhu_halfce"], "status": ["not run"], "reason": ["no victim"]}
    )
    assert notebook.not_run_note(table) == "1 cell(s) no victim: trained LeNet (Zhu), DLG (user 0.5·CE)"
