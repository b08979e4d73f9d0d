"""Plug-ins from the command line: `model=custom model._target_=...` and `dataset=custom
dataset._target_=...` built through Hydra's instantiate, drawn and checked like the built-in
ones, with one-line errors."""

from __future__ import annotations

import pytest

from tests.conftest import cli_error, run_in_process

MLP = ["model=custom", "model._target_=tests.plugins.make_mlp", "steps=4", "task.n=6"]
BLOBS = ["dataset=custom", "dataset._target_=tests.plugins.make_blobs", "task.k=3"]


def test_a_plugin_model_on_the_default_data_runs(tmp_path, cache_dir):
    rec = run_in_process([*MLP, "task.k=3"], tmp_path / "run", cache_dir)
    assert (rec.task.N, rec.task.C) == (18, 3)  # its head replaced by a 3-way one
    assert rec.task.D == 64 * 16 + 16 + 16 * 3 + 3
    assert rec.predictors["discrete"].t_eps["loss"][0] is not None


def test_a_plugin_model_on_a_plugin_dataset_runs(tmp_path, cache_dir):
    side = ["model.kwargs={side:4}"]
    rec = run_in_process([*MLP, *side, *BLOBS, "dataset.kwargs={n:40}"], tmp_path / "r", cache_dir)
    assert rec.task.dataset == "custom" and rec.task.N == 18 and rec.task.C == 3


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["model=custom"], "model._target_=None is invalid: must name a callable to import"),
        (["model=custom", "model._target_=nowhere.fn"], "cannot be imported (No module"),
        (["model=custom", "model._target_=tests.plugins.nothing"], "cannot be imported"),
        (["model=custom", "model._target_=tests.plugins.not_a_model"], "not a Module"),
        ([*MLP, "model.kwargs={channels:3}"], "its forward fails on images of shape (2, 1, 8, 8)"),
        ([*MLP, *BLOBS], "its forward fails on images of shape (2, 1, 4, 4) from dataset custom"),
        (["model._target_=tests.plugins.make_mlp"], "set model=custom with it"),
        ([*MLP, "model.kwargs=3"], "model.kwargs=3 is invalid: must be a mapping"),
    ],
)
def test_a_bad_plugin_is_one_line(tmp_path, cache_dir, capsys, args, says):
    line = cli_error([*args, f"cache_dir={cache_dir}"], tmp_path, capsys)
    assert says in line, line
