"""The command line as a user types it, in a subprocess."""

import json

import pandas as pd
import pytest

from tests.conftest import TINY, run_cli


def test_run_writes_record_curves_and_figure(tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = run_cli(
        "ttbench.run",
        *TINY,
        "seed=3",
        "predictor=all",
        "loss=mse",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["task"]["N"] == 30 and result["task"]["C"] == 5
    assert result["config"]["seed"] == 3 and "seed=3" in result["overrides"]
    assert set(result["stages"]) >= {"data", "model", "jacobian", "theta", "finetune"}
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in result["stages"].values())
    assert set(result["real"]["t_eps"]["loss"]) == {"0.01", "0.02", "0.05", "0.1", "0.2", "0.4"}
    assert set(result["predictors"]) == {"ode", "discrete", "closed_form", "subset"}
    for name, pred in result["predictors"].items():
        assert set(pred["t_eps"]["loss"]) == set(result["real"]["t_eps"]["loss"])
        assert pred["timing"]["total_s"] > 0 and pred["timing"]["total_s"] == pytest.approx(
            sum(v for k, v in pred["timing"].items() if k.endswith("_s") and k != "total_s")
        )
        assert ("subset_s" in pred["timing"]) == (name == "subset")
        for e, t_real in result["real"]["t_eps"]["loss"].items():
            assert pred["errors"]["loss"][e]["abs"] == abs(pred["t_eps"]["loss"][e] - t_real)
    curves = pd.read_parquet(out / "curves.parquet")
    assert sorted(curves.curve.unique()) == ["closed_form", "discrete", "ode", "real", "subset"]
    assert (curves.groupby("curve").size() == 5).all()
    assert (out / "curves.png").stat().st_size > 0
    assert "T_eps of the loss curve" in proc.stdout and "closed_form err" in proc.stdout
    assert "pretraining" in proc.stdout + proc.stderr  # first use says so


def test_sgd_run_reports_quantiles_and_coverage(tmp_path, cache_dir):
    out = tmp_path / "sgd"
    proc = run_cli(
        "ttbench.run",
        *TINY,
        "steps=6",
        "optim=sgd",
        "optim.batch_size=5",
        "optim.eval_every=2",
        "optim.smooth=3",
        "predictor=all",
        "stochastic.paths=4",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert set(result["predictors"]) == {"ode", "discrete", "sde", "exact_sgd"}
    assert "noise" in result["stages"]
    for name in ("sde", "exact_sgd"):
        pred = result["predictors"][name]
        assert pred["paths"] == 4
        for q in pred["quantiles"]["loss"].values():
            assert q["q05"] <= q["q50"] <= q["q95"]
            assert isinstance(q["covered"], bool)
    curves = pd.read_parquet(out / "curves.parquet")
    real = curves[curves.curve == "real"]
    assert real.step.tolist() == [0, 2, 4, 6]
    assert {"sde:q05", "sde:q95", "exact_sgd:q05"} <= set(curves.curve)
    assert "sde 5-95%" in proc.stdout


def test_pretrain_entry_point_fills_the_cache(tmp_path, cache_dir):
    proc = run_cli(
        "ttbench.pretrain", *TINY, f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path, cache=cache_dir
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(cache_dir.glob("small_resnet_w4_digits_*.pt"))) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lr=-0.1"], "lr=-0.1 is invalid: must be > 0"),
        (["momentum=1"], "momentum=1 is invalid: must be in [0, 1)"),
        (["steps=0"], "steps=0 is invalid"),
        (["eps=[0.5,2]"], "eps=[0.5, 2] is invalid: every value must be in (0, 1)"),
        (["task.k=12"], "task.k=12 is invalid: must be <= 10"),
        (["task.n=0"], "task.n=0 is invalid"),
        (
            ["dataset=imagenet"],
            "dataset='imagenet' is invalid: must be one of cifar10, cifar100, cub200, digits",
        ),
        (["model=vgg"], "model='vgg' is invalid: must be one of"),
        (["predictor=oracle"], "predictor='oracle' is invalid: must be one of"),
        (
            ["predictor=closed_form"],
            "predictor='closed_form' is invalid: closed_form needs loss=mse",
        ),
        (["weight_decay=0.1"], "weight_decay=0.1 is invalid: the predictors model 0 only"),
        (["predictor=sde"], "predictor='sde' is invalid: sde needs optim=sgd"),
        (["optim=sgd", "optim.batch_size=31"], "optim.batch_size=31 is invalid: must be <= N"),
        (["optim=adam"], "optim='adam' is invalid: must be one of gd, sgd"),
        (["theta.memory_gb=0.0001"], "theta.mode='exact' is invalid: needs about"),
        (["theta.sketch=fft"], "theta.sketch='fft' is invalid: must be one of"),
        (
            ["out_root=/etc/hostname/sub"],
            "out_root='/etc/hostname/sub' is invalid: must be a writable",
        ),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, cache_dir, args, expected):
    proc = run_cli("ttbench.run", *TINY, *args, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    if "memory_gb" not in args[0]:  # the memory check needs the model, so it comes later
        assert not list(cache_dir.iterdir())  # nothing was computed
