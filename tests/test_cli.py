"""`python -m ttbench.run` and `python -m ttbench.pretrain`, in-process: compose as Hydra does,
then the task function; bad input gives one line and exit status 2."""

import importlib

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, cli_error, compose_cfg, run_in_process
from ttbench import bands, cli, pretrain, record


def test_run_writes_record_curves_and_figure(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    rec = run_in_process([*TINY, "seed=3", "predictor=all", "loss=mse"], out, cache_dir)
    assert rec == record.read(out) and record.is_done(out)
    assert rec.task.N == 30 and rec.task.C == 5
    assert rec.config["seed"] == 3 and "seed=3" in rec.overrides
    assert set(rec.stages) >= {"data", "model", "jacobian", "theta", "finetune"}
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in rec.stages.values())
    assert rec.eps == (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
    assert list(rec.predictors) == ["ode", "heavy_ball", "discrete", "closed_form", "subset"]
    for name, pred in rec.predictors.items():
        assert pred.kind == "deterministic" and len(pred.t_eps["loss"]) == 6
        timing = rec.timing(name)
        own = sum(rec.stages[s]["wall_s"] for s in pred.stages)
        signals = sum(rec.stages[s]["wall_s"] for s in pred.signals)
        assert timing["predict_s"] == pytest.approx(own) and own > 0
        assert timing["signals_s"] == pytest.approx(signals) and signals > 0
        assert timing["total_s"] == pytest.approx(own + signals)
        assert ("theta_s" in timing) == (name != "subset")  # subset builds its own Theta
        # its validity reads the stability at w0 (in its cost) and the watch (counted apart)
        assert "stability" in pred.stages and pred.signals == ("watch",)
        for (a, _), p, r in zip(
            rec.errors(name, "loss"), pred.t_eps["loss"], rec.real.t_eps["loss"], strict=True
        ):
            assert a == abs(p - r)
    curves = pd.read_parquet(out / "curves.parquet")
    assert sorted(curves.curve.unique()) == [
        "closed_form",
        "discrete",
        "heavy_ball",
        "ode",
        "real",
        "subset",
    ]
    assert (curves.groupby("curve").size() == 5).all() and curves["quantile"].isna().all()
    assert (out / "curves.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "T_eps of the loss curve" in printed and "closed_form err" in printed
    # each prediction's cost against the fine-tuning's, as the record's timing says
    finetune = rec.stages["finetune"]["wall_s"]
    t = rec.timing("discrete")
    assert f"cost against the fine-tuning's {finetune:.2g}s" in printed
    assert f"discrete {t['predict_s']:.2g}s ({t['finetune_over_predict']:.2g}x)" in printed
    assert f"discrete {t['finetune_over_total']:.2g}x" in printed.split("with the signals")[1]


def test_a_complete_run_is_skipped_and_its_summary_printed(tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    first = run_in_process(TINY, out, cache_dir)
    mtime = (out / record.RESULT).stat().st_mtime_ns
    capsys.readouterr()
    again = run_in_process(TINY, out, cache_dir)
    assert again == first and (out / record.RESULT).stat().st_mtime_ns == mtime
    assert "T_eps of the loss curve" in capsys.readouterr().out


def test_sgd_run_reports_quantiles_and_coverage(tmp_path, cache_dir, capsys):
    out = tmp_path / "sgd"
    sgd = ["optim=sgd", "optim.batch_size=5", "optim.eval_every=2", "optim.smooth=3"]
    rec = run_in_process(
        [*TINY, "steps=6", *sgd, "predictor=all", "stochastic.paths=4"], out, cache_dir
    )
    assert list(rec.predictors) == ["ode", "heavy_ball", "discrete", "sde", "exact_sgd"]
    assert "noise" in rec.stages and "noise_s" in rec.timing("sde")
    assert rec.stages["evaluate"]["wall_s"] > 0  # the whole-task losses, apart from the steps
    for name in ("sde", "exact_sgd"):
        pred = rec.predictors[name]
        assert pred.kind == "stochastic" and pred.paths == 4
        for q, t in zip(pred.quantiles["loss"], rec.real.t_eps["loss"], strict=True):
            assert q.q05 <= q.q50 <= q.q95
            assert isinstance(q.covers(t), bool)
    for pred in rec.predictors.values():  # measured on the real curve's grid, every 2 steps
        assert all(t is None or t % 2 == 0 for t in pred.t_eps["loss"])
    curves = pd.read_parquet(out / "curves.parquet")
    real = curves[curves.curve == "real"]
    assert real.step.tolist() == [0, 2, 4, 6]
    bands = curves[curves["quantile"].notna()]
    assert set(zip(bands.curve, bands["quantile"], strict=True)) == {
        (n, q) for n in ("sde", "exact_sgd") for q in (0.05, 0.95)
    }
    assert "sde 5-95%" in capsys.readouterr().out


def test_pretrain_entry_point_fills_the_cache(fresh_cache):
    pretrain.app(compose_cfg([*TINY, f"cache_dir={fresh_cache}"]))
    assert len(list(fresh_cache.glob("small_resnet_w4_digits_*.pt"))) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lr=-0.1"], "lr=-0.1 is invalid: must be > 0"),
        (["lr=inf"], "lr=inf is invalid: must be a finite number"),
        (["lr=nan"], "lr=nan is invalid: must be a finite number"),
        (["momentum=nan"], "momentum=nan is invalid: must be a finite number"),
        (["lora.rank=4", "lora.alpha=nan"], "lora.alpha=nan is invalid: must be a finite"),
        (["plan.margin=nan"], "plan.margin=nan is invalid: must be a finite number"),
        (["plan.theta.dim=0"], "plan.theta.dim=0 is invalid: must be an integer >= 1"),
        (["plan.theta.mode=fft"], "plan.theta.mode='fft' is invalid: must be one of"),
        (["model.head_init_std=nan"], "model.head_init_std=nan is invalid: must be a finite"),
        (["model.width=0"], "model.width=0 is invalid: must be an integer >= 1"),
        (["seed=4294967296"], "seed=4294967296 is invalid: must be an integer in [0, 2**32)"),
        (["momentum=1"], "momentum=1 is invalid: must be in [0, 1)"),
        (["steps=0"], "steps=0 is invalid"),
        (
            ["steps=1000000000"],
            "steps=1000000000 is invalid: must be an integer in [1, 10,000,000]",
        ),
        (["eps=[0.5,2]"], "eps=[0.5, 2] is invalid: every value must be in (0, 1)"),
        (["eps=[0.1,0.1]"], "eps=[0.1, 0.1] is invalid: every value must be different"),
        (["task.k=12"], "task.k=12 is invalid: must be <= 10"),
        (["task.n=0"], "task.n=0 is invalid"),
        (
            ["dataset=imagenet"],
            "dataset='imagenet' is invalid: must be one of cifar10, cifar100, cub200, custom, "
            "digits",
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
        (  # digits has about 90 target images per class: N = 451 here, not 5 x 200
            ["optim=sgd", "task.k=5", "task.n=200", "optim.batch_size=1000"],
            "optim.batch_size=1000 is invalid: must be <= N = 451, the images of this task",
        ),
        (["optim=adam"], "optim='adam' is invalid: must be one of gd, sgd"),
        (
            ["theta.mode=exact", "theta.memory_gb=0.0001"],
            "theta.mode='exact' is invalid: needs at least",
        ),
        (["theta.sketch=fft"], "theta.sketch='fft' is invalid: must be one of"),
        (
            ["predictor=subset", "loss=mse", "subset.n0=4", "subset.k0=20"],
            "subset.k0=20 is invalid: must be below the subset's 20 eigenvalues",
        ),
        (
            ["out_root=/etc/hostname/sub"],
            "out_root='/etc/hostname/sub' is invalid: must be a writable",
        ),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, cache_dir, capsys, args, expected):
    line = cli_error([*TINY, f"cache_dir={cache_dir}", *args], tmp_path, capsys)
    assert expected in line
    if "memory_gb" not in args[0]:  # the memory check needs the model, so it comes later
        assert not (tmp_path / "run").exists()  # nothing was computed


@pytest.mark.parametrize("text", ["{}", "{not json", None])
def test_a_damaged_calibration_stops_a_run_before_any_compute(
    tmp_path, cache_dir, capsys, monkeypatch, text
):
    if text is not None:
        (tmp_path / "calibration.json").write_text(text)
    monkeypatch.setattr(bands, "shipped", lambda: tmp_path / "calibration.json")
    line = cli_error([*TINY, f"cache_dir={cache_dir}"], tmp_path, capsys)
    assert line.startswith(f"ttbench: error: the band calibration {tmp_path}/calibration.json ")
    assert "reinstall ttbench" in line and not (tmp_path / "run").exists()


def test_a_resolution_the_patches_do_not_tile_is_refused_before_pretraining(
    tmp_path, cache_dir, capsys
):
    args = ["model=vit_tiny", "dataset.resolution=18", "dataset.channels=3"]
    line = cli_error([*args, f"cache_dir={cache_dir}"], tmp_path, capsys)
    said = "dataset.resolution=18 is invalid: must be set to a multiple of vit_tiny's"
    assert f"{said} model.patch_size=4" in line


def test_an_rgb_model_on_the_grey_digits_names_the_setting(tmp_path, cache_dir, capsys):
    line = cli_error(["model=vit_tiny", f"cache_dir={cache_dir}"], tmp_path, capsys)
    assert line.endswith(
        "takes 3-channel images; dataset digits has 1 (set dataset.channels=3: the digits' grey "
        "channel repeated)"
    )


@pytest.mark.parametrize(
    "module,argv",
    [
        ("ttbench.bench.theta", ["lr=-1"]),
        ("ttbench.bench.modes", ["seed=-1"]),
        ("ttbench.collect", ["/nonexistent"]),
        ("ttbench.bands", ["/nonexistent", "--out", "/nonexistent/calibration.json"]),
    ],
)
def test_every_argparse_entry_point_reports_a_users_error_in_one_line(module, argv, capsys):
    """cli.command, the one wrapper of the argparse entry points: status 2 and one line, also
    for the benchmarks, which validate their overrides like a run."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        cli.command(lambda: main(argv))
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ttbench: error: ") and ("invalid" in line or "no such" in line), line


def test_tensorboard_true_writes_the_curves_and_t_eps_as_scalars(tmp_path, cache_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = run_in_process([*TINY, "tensorboard=true"], tmp_path / "run", cache_dir)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/real", "error/real", "loss/discrete", "t_eps_loss/real"} <= scalars
    real = [e.value for e in events.Scalars("loss/real")]
    curves, _ = record.read_curves(tmp_path / "run" / "curves.parquet")
    np.testing.assert_allclose(real, curves["real"].loss, rtol=1e-6)
    t = {e.step: e.value for e in events.Scalars("t_eps_loss/discrete")}
    steps = [round(e * 1000) for e in rec.eps]
    want = dict(zip(steps, rec.predictors["discrete"].t_eps["loss"], strict=True))
    assert t == {k: v for k, v in want.items() if v is not None}
    assert "t_eps/text_summary" in events.Tags()["tensors"]  # the summary table, as text
