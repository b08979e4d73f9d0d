"""Planning a sweep without training (ttbench.plan), launching from a plan (the sweeper),
and judging a plan against the real runs (ttbench.judge)."""

import math
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, compose_cfg, run_dir, run_id, run_in_process, spec_of
from ttbench import judge
from ttbench.bands import default_calibration
from ttbench.plan import COLUMNS, DIRS, finish, plan_job, read_table
from ttbench.sweep import from_plan
from ttbench.validate import ConfigError
from ttbench.validity import before, before_features

JOB = [*TINY[:-1], "steps=20"]


def test_a_plan_is_the_runs_prediction_with_times_and_limits(tmp_path, cache_dir, capsys):
    """On the run's own Theta (the default) the plan predicts exactly what the run's discrete
    predictor does, band included; its times and limits follow from the probe's seconds per
    step."""
    jobs = [[*JOB, "seed=0"], [*JOB, "seed=1", "lr=0.01"]]
    unstable = [*JOB, "seed=0", "lr=3", "momentum=0.9"]
    for job in [unstable, *jobs]:
        spec = spec_of([*job, f"cache_dir={cache_dir}"])
        plan_job(spec, run_dir(tmp_path / "plan", job), job)
    table = finish(tmp_path / "plan")
    out = capsys.readouterr().out
    assert "plan of 3 jobs (discrete on Theta hybrid)" in out
    # the probe's watch: the unstable job is forecast to explode, and ranked last
    said = table[table["target"]].set_index("job")["forecast"]
    name = run_id(unstable).name
    assert said[name] == "diverges"
    assert set(said.drop(name)) == {"converges"}
    last = out.index(name)
    assert all(out.index(run_id(job).name) < last for job in jobs)
    assert f"{name}  diverges" in out
    assert "[diverges in some seeds]" in out
    assert (tmp_path / "plan" / "plan.parquet").is_file()
    (tmp_path / "plan" / "plan.parquet").unlink()  # a plan killed before its table: gathered
    pd.testing.assert_frame_equal(read_table(tmp_path / "plan"), table)
    assert (tmp_path / "plan" / "plan.parquet").is_file()
    assert not list(tmp_path.glob("plan/*/result.json"))  # nothing was run
    rec = run_in_process([*jobs[0], "predictor.names=[discrete]"], tmp_path / "run", cache_dir)
    mine = table[table["run_id"] == run_id(jobs[0]).digest]
    assert mine["t_eps"].tolist() == list(rec.predictors["discrete"].t_eps["loss"])
    # its band is read before training: from the stability at w0 alone, by the BEFORE cells
    cal, key = default_calibration(), before("discrete")
    v = cal.validity.expected(key, before_features(rec.signals))
    steps, model = rec.config["steps"], rec.config["model"]["name"]
    want = [cal.band(key, "loss", t, v, model, steps) for t in mine["t_eps"]]
    assert mine["q95"].tolist() == [q[2] for q in want]
    assert v > rec.predictors["discrete"].validity  # the run has seen relin agree; the plan not
    p = spec.plan
    for r in table[table["target"]].itertuples():
        assert r.eps == p.eps and r.step_s > 0 and r.plan_s > r.setup_s
        assert r.planned_steps == max(1, math.ceil(r.q95 * (1 + p.margin)))
        assert np.isclose(r.predicted_s, r.t_eps * r.step_s)
        assert np.isclose(r.planned_limit_s, r.overhead_s + r.setup_s + r.planned_steps * r.step_s)
        assert np.isclose(r.limit_s, r.overhead_s + r.setup_s + 20 * r.step_s * (1 + p.margin))
        # measured: the run's start-up, its two Theta builds (w0, and k for relin), its watch
        assert r.overhead == "measured" and r.thetas == 2 and r.theta_s > 0 and r.watch_s > 0
        assert np.isclose(r.overhead_s, r.startup_s + 2 * r.theta_s + r.watch_s)
    # a budget: limits in whole minutes as SLURM counts them, totals in device-hours
    target = table[table["target"]]
    assert f"{math.ceil(target['limit_s'].iloc[0] / 60)}" in out
    hours = target["predicted_s"].sum() / 3600
    assert f"budget on cpu: predicted {hours:.3g} CPU-hours to eps" in out
    assert f"{target['limit_s'].sum() / 3600:.3g} with all steps" in out


def test_two_plans_started_at_once_get_two_folders():
    a, b = (compose_cfg(DIRS[:2], hydra=True) for _ in range(2))
    assert a.hydra.sweep.dir != b.hydra.sweep.dir
    assert a.hydra.run.dir.startswith(a.hydra.sweep.dir + "/")


def _plan(rows):
    cols = ["run_id", "limit_s", "planned_steps", "planned_limit_s"]
    table = pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows]).assign(target=True)
    return table.assign(**{c: 1.0 for c in COLUMNS if c not in table})


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("directory", "is a directory: give a plan.parquet"),
        ("missing", "is missing: give a plan.parquet"),
        ("truncated", "does not read as a table"),
        ("empty", "is not a plan table: no column job"),
        ("no_limit", "is not a plan table: no column limit_s"),
        ("no_target", "holds no job: plan the sweep again"),
    ],
)
def test_a_bad_plan_table_is_one_line_in_judge_and_in_a_sweep(tmp_path, capsys, damage, expected):
    good = _plan([("a", 70, 30, 65)])
    path = tmp_path / "plan.parquet"
    if damage == "directory":
        path.mkdir()
    elif damage == "truncated":
        good.to_parquet(path)
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "empty":
        pd.DataFrame().to_parquet(path)
    elif damage == "no_limit":
        good.drop(columns="limit_s").to_parquet(path)
    elif damage == "no_target":
        good.assign(target=False).to_parquet(path)
    assert judge.main([str(path), str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    said = (
        "no such file or directory"
        if damage == "missing"
        else f"plan='{path}' is invalid: {expected}"
    )
    assert len(lines) == 1 and said in lines[0], lines
    with pytest.raises(ConfigError, match=re.escape(expected)):
        from_plan([["lr=0.1"]], str(path), False, compose_cfg)


def test_a_sweep_from_a_plan_takes_its_limits_and_steps(tmp_path):
    path = tmp_path / "plan.parquet"
    jobs = [["lr=0.1"], ["lr=0.2", "steps=150"], ["lr=0.3"]]
    ids = [run_id(job).digest for job in jobs]
    _plan(
        [
            (ids[0], 70, 30, 65),
            (ids[1], 200, 90, 130),
            (ids[2], 110, np.nan, np.nan),
        ]
    ).to_parquet(path)
    assert from_plan(jobs, str(path), False, compose_cfg) == [
        (2, [["lr=0.1"], ["lr=0.3"]]),
        (4, [["lr=0.2", "steps=150"]]),
    ]
    with pytest.raises(ConfigError, match=r"lr=0\.3-\w+ is not predicted to reach the target"):
        from_plan(jobs, str(path), True, compose_cfg)
    groups = from_plan(jobs[:2], str(path), True, compose_cfg)
    assert groups == [(2, [["lr=0.1", "steps=30"]]), (3, [["lr=0.2", "steps=90"]])]
    with pytest.raises(ConfigError, match=r"holds no job lr=0\.4-\w+: plan this sweep first"):
        from_plan([["lr=0.4"]], str(path), False, compose_cfg)


def _ids(plan: pd.DataFrame) -> pd.DataFrame:
    """A plan table's identity columns, here the job names and those less the seed."""
    config = plan["job"].str.replace(r",seed=\d+", "", regex=True)
    return plan.assign(run_id=plan["job"], config=config)


def test_judging_a_plan():
    plan = pd.DataFrame(
        {
            "job": ["lr=1,seed=0", "lr=1,seed=1", "lr=2,seed=0", "lr=2,seed=1"],
            "target": True,
            "eps": 0.05,
            "t_eps": [10.0, 20.0, 30.0, 40.0],
            "q05": [8.0, 15.0, 20.0, 30.0],
            "q95": [12.0, 25.0, 40.0, 50.0],
            "planned_steps": [15, 30, 50, 60],
            "step_s": 1.0,
            "predicted_s": [10.0, 20.0, 30.0, 40.0],
            "limit_s": [100.0, 100.0, 100.0, 100.0],
            "plan_s": 1.0,
        }
    )
    real = pd.DataFrame(
        {
            "run_id": ["lr=1,seed=0", "lr=1,seed=1", "lr=2,seed=0", "lr=2,seed=1"],
            "t_real": [20.0, 15.0, 35.0, 70.0],
            "outcome": "converged",
            "real_step_s": [1.0, 1.0, 1.0, 2.0],
            "job_s": [50.0, 50.0, 150.0, 150.0],
        }
    )
    m, jobs = judge.judge(_ids(plan), real)
    assert m["spearman_steps"] == pytest.approx(0.8)  # ranks 2 1 3 4 against 1 2 3 4
    assert m["regret"] == pytest.approx(20 / 15 - 1)  # picked a (20 s), b was fastest (15 s)
    assert m["regret_config"] == 0  # lr=1 (medians 15 and 35 predicted, 17.5 and 87.5 real)
    assert m["band_coverage"] == 0.5  # b and c
    assert m["hit_limit"] == 0.5 and m["short_of_target"] == 0.5  # a and d
    assert m["step_time_error"] == pytest.approx(0.0)  # median of 0, 0, 0, 0.5
    assert m["plan_cost"] == pytest.approx(4 / 400)
    assert jobs["real_s"].tolist() == [20.0, 15.0, 35.0, 140.0]
    assert (m["exploded"], m["diverge_hits"], m["diverge_misses"]) == (0, 0, 0)
    judge.figure(jobs)


def test_judge_counts_a_run_that_exploded():
    """The plan ranks an lr = 3 job first (3 steps predicted, no forecast); its run exploded:
    the plan's pick never reaches the target, its band is a miss, and so is its silence. A
    plan that forecast the explosion ranks the job last and is right about it."""
    plan = pd.DataFrame(
        {
            "job": ["lr=3,seed=0", "lr=1,seed=0", "lr=1,seed=1"],
            "target": True,
            "eps": 0.05,
            "t_eps": [3.0, 20.0, 25.0],
            "q05": [2.0, 15.0, 20.0],
            "q95": [4.0, 25.0, 30.0],
            "planned_steps": [5, 30, 35],
            "step_s": 1.0,
            "predicted_s": [3.0, 20.0, 25.0],
            "limit_s": 100.0,
            "plan_s": [1.0, 1.0, 2.0],
        }
    )
    real = pd.DataFrame(
        {
            "run_id": ["lr=3,seed=0", "lr=1,seed=0", "lr=1,seed=1", "lr=9,seed=0"],
            "t_real": [None, 22.0, 24.0, 10.0],
            "outcome": ["exploded", "converged", "catapult", "converged"],
            "real_step_s": 1.0,
            "job_s": [10.0, 50.0, 50.0, 1000.0],
        }
    )
    m, jobs = judge.judge(_ids(plan), real)
    assert m["jobs"] == 3 and m["exploded"] == 1
    assert m["regret"] == np.inf and m["regret_config"] == np.inf
    assert m["band_coverage"] == pytest.approx(2 / 3)  # the explosion is in no band
    assert (m["diverge_hits"], m["diverge_misses"]) == (0, 1)
    assert m["short_of_target"] == pytest.approx(1 / 3)
    assert m["plan_cost"] == pytest.approx(4 / 110)  # the matched jobs only, not lr=9
    assert m["spearman_steps"] == pytest.approx(-0.5)  # 3 < 20 < 25 against inf > 24 > 22
    said = ["diverges", "converges", "spike ahead"]
    m, jobs = judge.judge(_ids(plan).assign(forecast=said), real)
    assert m["regret"] == pytest.approx(0) and (m["diverge_hits"], m["diverge_misses"]) == (1, 0)
    assert m["spearman_steps"] == pytest.approx(1.0)
    table = judge.confusion(jobs)
    assert table.loc["diverges", "exploded"] == 1 and table.loc["spike ahead", "catapult"] == 1


def test_judge_counts_a_run_that_never_reached_the_target():
    """The plan's pick (5 steps predicted) ran all its steps without reaching eps: its regret
    is infinite, its band a miss, and a job stopped at its planned steps falls short."""
    plan = pd.DataFrame(
        {
            "job": ["a", "b"], "run_id": ["a", "b"], "config": ["a", "b"], "target": True,
            "eps": 0.05, "t_eps": [5.0, 20.0], "q05": [4.0, 15.0], "q95": [6.0, 25.0],
            "planned_steps": [8, 30], "step_s": 1.0, "predicted_s": [5.0, 20.0],
            "limit_s": 100.0, "plan_s": 1.0,
        }
    )  # fmt: skip
    real = pd.DataFrame(
        {"run_id": ["a", "b"], "t_real": [None, 22.0], "outcome": "converged",
         "real_step_s": 1.0, "job_s": 50.0}
    )  # fmt: skip
    m, _ = judge.judge(plan, real)
    assert m["regret"] == np.inf and m["regret_config"] == np.inf
    assert m["band_coverage"] == 0.5 and m["short_of_target"] == 0.5


@pytest.mark.slow
def test_plan_launch_and_judge_from_the_command_line(tmp_path, cache_dir):
    """The process boundary is the point: Hydra's multirun, its callback, the sweeper."""
    env = {**os.environ, "TTBENCH_CACHE": str(cache_dir)}
    out = tmp_path / "out"
    sweep = [*JOB, "seed=0,1", "predictor=discrete", f"out_root={out}"]

    def cli(module, *args):
        done = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    printed = cli("ttbench.plan", "-m", *sweep)
    assert "plan of 2 jobs" in printed and "configurations (median over seeds)" in printed
    (table,) = out.glob("plans/*/plan.parquet")
    cli("ttbench.run", "-m", *sweep, f"plan.table={table}", "plan.set_steps=true")
    planned = pd.read_parquet(table).query("target")["planned_steps"].astype(int)
    names = [p.name for p in (out / "runs").iterdir() if p.is_dir()]
    labels = [n.rsplit("-", 1)[0] for n in names]
    assert sorted(n.split("steps=")[1].split(",")[0] for n in labels) == sorted(map(str, planned))
    cli("ttbench.run", "-m", *sweep, f"plan.table={table}")
    printed = cli("ttbench.judge", str(table), str(out / "runs"), "--out", str(tmp_path / "j"))
    assert "against 2 real runs" in printed and (tmp_path / "j" / "plan.png").is_file()
