"""The cheap ways to build Theta and the SGD noise, end to end through a run."""

import logging

import pytest

from tests.conftest import TINY, run_in_process, spec_of
from ttbench import build
from ttbench.core.linearize import exact_memory_bytes
from ttbench.validate import ConfigError

SGD_TRACE = ["optim=sgd", "optim.batch_size=5", "theta.mode=trace", "theta.outputs=1"]
SGD_TRACE += ["predictor.names=[sde,exact_sgd]", "stochastic.paths=4"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["theta.mode=trace", "theta.outputs=1", "predictor.names=[ode,discrete,relin]"],
        ["theta.mode=projected", "theta.dim=4", "theta.outputs=2", "predictor.names=[discrete]"],
        SGD_TRACE,
    ],
)
def test_cheap_modes_predict_end_to_end(overrides, tmp_path, cache_dir):
    rec = run_in_process([*TINY, "steps=20", *overrides], tmp_path / "r", cache_dir)
    assert rec.predictors and not any(p.diverged for p in rec.predictors.values())
    assert rec.stages["theta"]["wall_s"] > 0
    if overrides is SGD_TRACE:
        assert "noise" in rec.predictors["sde"].stages


def test_projected_mode_builds_the_exact_theta_where_that_is_cheaper(tmp_path, cache_dir, caplog):
    """On the tiny model (D = 5057) a 16384-column sketch costs more than the exact Theta."""
    names = "predictor.names=[discrete]"
    exact = run_in_process([*TINY, names], tmp_path / "a", cache_dir)
    with caplog.at_level(logging.INFO):
        projected = ["theta.mode=projected", "theta.dim=16384"]
        rec = run_in_process([*TINY, names, *projected], tmp_path / "b", cache_dir)
    assert "costs fewer multiply-adds here than the sketch" in caplog.text
    assert rec.predictors["discrete"].t_eps == exact.predictors["discrete"].t_eps


def test_output_directions_need_a_mode_that_estimates_the_trace():
    assert spec_of(["theta.outputs=1", "refine.theta=projected"]).theta.outputs == 1  # at w_k
    with pytest.raises(ConfigError, match=r"theta\.outputs=1 is invalid: estimates"):
        spec_of(["theta.outputs=1"])
    with pytest.raises(ConfigError, match=r"theta\.outputs=0"):
        spec_of(["theta.mode=trace", "theta.outputs=0"])


def test_a_run_over_its_memory_budget_builds_theta_in_blocks(tmp_path, cache_dir, caplog):
    spec = spec_of([*TINY, f"cache_dir={cache_dir}"])
    s = build.setup(spec)
    need = exact_memory_bytes(s.model(), s.x, len(s.x)) / 2**30
    names = ["predictor.names=[discrete]", "theta.mode=exact"]  # the hybrid would stream a sketch
    whole = run_in_process([*TINY, *names], tmp_path / "a", cache_dir)
    with caplog.at_level(logging.INFO):
        blocks = run_in_process(
            [*TINY, *names, f"theta.memory_gb={0.8 * need}"], tmp_path / "b", cache_dir
        )
    assert "Theta in blocks of" in caplog.text
    assert blocks.predictors["discrete"].t_eps == whole.predictors["discrete"].t_eps
