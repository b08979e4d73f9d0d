"""`python -m ttbench.judge PLAN RUNS... [--out DIR]`: how good a plan (ttbench.plan) was, for a
sweep that also ran for real (the same overrides, all of their steps).

At the plan's target eps, over the jobs that both planned and ran:

* spearman_steps, spearman_time: rank correlation of predicted and real T_eps, and of
  predicted and real time to the target (real T_eps x the run's seconds per step);
* regret: the real time to the target of the job the plan ranks fastest, over the real
  fastest one's, minus 1 (0: the plan picked the best); regret_config the same for the
  configurations (a job less its seed), by their median over seeds;
* band_coverage: the share of real T_eps inside the plan's 5-95% band;
* hit_limit: the share of jobs whose whole run took longer than the plan's limit_s;
* short_of_target: the share of jobs that, stopped at the plan's recommended steps
  (plan.set_steps), would not yet have reached the target (real T_eps > planned_steps);
* step_time_error: the median relative error of the probe's seconds per step;
* plan_cost: the plan's cost over the sweep's (the runs' stages, summed).

Writes judge.csv (one row per job) and plan.png (predicted against real time to the target,
with the band and the limits) into --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from scipy.stats import spearmanr

from ttbench import record
from ttbench.config import configuration
from ttbench.prediction import PREFIX


def real_rows(roots: list[Path], eps: float) -> pd.DataFrame:
    """One row per complete run below roots: its job name, real T_eps at eps (steps), seconds
    per fine-tuning step and the whole run's seconds."""
    rows = []
    for run in record.run_dirs(roots):
        rec = record.complete(run)
        if rec is None or eps not in rec.eps:
            continue
        finetune = rec.stages["finetune"]["wall_s"]
        rows.append(
            {
                "job": run.name,
                "t_real": rec.real.t_eps["loss"][rec.eps.index(eps)],
                "real_step_s": finetune / rec.config["steps"],
                "job_s": sum(v["wall_s"] for k, v in rec.stages.items() if k != PREFIX),
            }
        )
    return pd.DataFrame(rows, columns=["job", "t_real", "real_step_s", "job_s"])


def judge(plan: pd.DataFrame, real: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """The plan's quality (module docstring) and the per-job table it is computed from."""
    target = plan[plan["target"]]
    jobs = target.merge(real, on="job", how="inner")
    jobs["real_s"] = jobs["t_real"] * jobs["real_step_s"]
    both = jobs.dropna(subset=["t_eps", "t_real"])
    config = both["job"].map(configuration)
    configs = both.groupby(config)[["predicted_s", "real_s"]].median()
    metrics = {
        "jobs": float(len(jobs)),
        "spearman_steps": _spearman(both["t_eps"], both["t_real"]),
        "spearman_time": _spearman(both["predicted_s"], both["real_s"]),
        "regret": _regret(both),
        "regret_config": _regret(configs),
        "band_coverage": float(
            ((both["q05"] <= both["t_real"]) & (both["t_real"] <= both["q95"])).mean()
        ),
        "hit_limit": float((jobs["job_s"] > jobs["limit_s"]).mean()),
        "short_of_target": float((both["t_real"] > both["planned_steps"]).mean()),
        "step_time_error": float((jobs["step_s"] / jobs["real_step_s"] - 1).abs().median()),
        "plan_cost": float(target["plan_s"].sum() / real["job_s"].sum()),
    }
    return metrics, jobs


def _regret(t: pd.DataFrame) -> float:
    if not len(t):
        return np.nan
    return float(t.loc[t["predicted_s"].idxmin(), "real_s"] / t["real_s"].min() - 1)


def _spearman(a: pd.Series, b: pd.Series) -> float:
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return np.nan
    return float(spearmanr(a, b).statistic)


def figure(jobs: pd.DataFrame) -> Figure:
    """Predicted against real time to the target per job: the band as an error bar, and the
    time of the recommended steps (where a job launched with plan.set_steps stops) as a
    marker; below the diagonal through the markers, such a job reaches the target."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    j = jobs.dropna(subset=["t_eps", "t_real"])
    low = (j["t_eps"] - j["q05"]).clip(lower=0) * j["step_s"]
    high = (j["q95"] - j["t_eps"]).clip(lower=0) * j["step_s"]
    ax.errorbar(j["predicted_s"], j["real_s"], xerr=[low, high], fmt="o", ms=4, label="jobs")
    stop_s = j["planned_steps"] * j["step_s"]
    ax.scatter(stop_s, j["real_s"], marker="|", s=80, color="C3", label="recommended steps")
    times = j[["predicted_s", "real_s"]].to_numpy()
    span = [times.min() * 0.8, times.max() * 1.2]
    ax.plot(span, span, color="grey", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="predicted time to target (s)",
           ylabel="real time to target (s)")  # fmt: skip
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, minor ticks too: spans are short
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(frameon=False)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan", type=Path, help="a plan table (plan.parquet of ttbench.plan)")
    p.add_argument("runs", nargs="+", type=Path, help="folders holding the sweep's runs")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    missing = [d for d in [a.plan, *a.runs] if not d.exists()]
    if missing:
        print(f"ttbench: error: no such file or directory: {missing[0]}", file=sys.stderr)
        return 2
    plan = pd.read_parquet(a.plan)
    eps = float(plan.loc[plan["target"], "eps"].iloc[0])
    metrics, jobs = judge(plan, real_rows(a.runs, eps))
    if not len(jobs):
        print("ttbench: error: no job of the plan ran below the given folders", file=sys.stderr)
        return 2
    print(f"plan of {len(plan[plan['target']])} jobs against {len(jobs)} real runs, eps={eps:g}:")
    for k, v in metrics.items():
        print(f"  {k:16s} {v:.3g}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        jobs.to_csv(a.out / "judge.csv", index=False)
        figure(jobs).savefig(a.out / "plan.png", dpi=120, bbox_inches="tight")
        print(f"wrote {a.out / 'judge.csv'} and {a.out / 'plan.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
