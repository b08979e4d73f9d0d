"""`python -m ttbench.judge PLAN RUNS... [--out DIR]`: how good a plan (ttbench.plan) was, for a
sweep that also ran for real (the same overrides, all of their steps).

At the plan's target eps, over the jobs that both planned and ran. A job whose real run
exploded, or never reached the target within its steps, has no time to the target: it counts
as never reaching it (an infinite time), so the plan is right about an explosion only when it
said "diverges" (its probe's forecast), its band never holds it, and every metric counts it:

* spearman_steps, spearman_time: rank correlation of predicted and real T_eps, and of
  predicted and real time to the target (real T_eps x the run's seconds per step), "never"
  ranking last on either side;
* regret: the real time to the target of the job the plan ranks first (by its forecast, then
  its predicted time), over the real fastest one's, minus 1 (0: the plan picked the best; inf:
  its pick exploded); regret_config the same for the configurations (a job less its seed), by
  their median over seeds;
* band_coverage: the share of jobs whose real T_eps lies inside the plan's 5-95% band (an
  explosion lies in no finite band);
* diverge_hits, diverge_misses: jobs whose explosion the plan announced ("diverges"), and
  those it did not, or announced for a run that did not explode (the confusion table is
  printed);
* hit_limit: the share of jobs whose whole run took longer than the plan's limit_s;
* short_of_target: the share of jobs that, stopped at the plan's recommended steps
  (plan.set_steps), would not yet have reached the target (real T_eps > planned_steps, or
  never);
* step_time_error: the median relative error of the probe's seconds per step (a run that
  exploded over the steps it ran);
* plan_cost: the plan's cost over the sweep's, both over the jobs that planned and ran.

Writes judge.csv (one row per job) and plan.png (predicted against real time to the target,
with the band and the limits) into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from scipy.stats import spearmanr

from ttbench import cli, record
from ttbench.core.curves import EXPLODED, OUTCOMES
from ttbench.core.stability import CONVERGES, DIVERGES, SEVERITY
from ttbench.plan import read_table
from ttbench.runid import RunId
from ttbench.stages import FINETUNE, is_prefix
from ttbench.validate import ConfigError


def real_rows(roots: list[Path], eps: float) -> pd.DataFrame:
    """One row per complete run below roots: its identity (ttbench.runid), real T_eps at eps
    (steps), seconds per fine-tuning step and the whole run's seconds."""
    rows = []
    for run in record.run_dirs(roots):
        rec = record.complete(run)
        if rec is None or eps not in rec.eps:
            continue
        finetune = rec.stages[FINETUNE]["wall_s"]
        ran = rec.real.stopped_at if rec.real.stopped_at is not None else rec.config["steps"]
        rows.append(
            {
                "run_id": RunId.of(rec.config).digest,
                "t_real": rec.real.t_eps["loss"][rec.eps.index(eps)],
                "outcome": rec.real.outcome,
                "real_step_s": finetune / max(ran, 1),
                "job_s": sum(v["wall_s"] for k, v in rec.stages.items() if not is_prefix(k)),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["run_id", "t_real", "outcome", "real_step_s", "job_s"]


def judge(plan: pd.DataFrame, real: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """The plan's quality (module docstring) and the per-job table it is computed from."""
    target = plan[plan["target"]]
    if "forecast" not in target:
        target = target.assign(forecast=CONVERGES)
    jobs = target.merge(real.drop_duplicates("run_id"), on="run_id", how="inner")
    exploded = jobs["outcome"] == EXPLODED
    said = jobs["forecast"].fillna(CONVERGES)
    never = np.inf
    # "never" as an infinite time on both sides: a forecast explosion, a run that exploded or
    # did not reach the target in its steps
    jobs["t_real"] = jobs["t_real"].astype(float).where(~exploded, never).fillna(never)
    jobs["real_s"] = jobs["t_real"] * jobs["real_step_s"]
    ranked = jobs.assign(
        _rank=said.map(SEVERITY).fillna(0), predicted_s=jobs["predicted_s"].astype(float)
    )
    ranked["predicted_s"] = ranked["predicted_s"].where(said != DIVERGES, never).fillna(never)
    configs = ranked.groupby("config").agg(
        _rank=("_rank", "max"), predicted_s=("predicted_s", "median"), real_s=("real_s", "median")
    )
    timed = jobs["t_real"].notna()
    inside = (jobs["q05"] <= jobs["t_real"]) & (jobs["t_real"] <= jobs["q95"])
    hits = (exploded & (said == DIVERGES)).sum()
    metrics = {
        "jobs": float(len(jobs)),
        "exploded": float(exploded.sum()),
        "spearman_steps": _spearman(ranked["predicted_s"] / jobs["step_s"], jobs["t_real"]),
        "spearman_time": _spearman(ranked["predicted_s"], jobs["real_s"]),
        "regret": _regret(ranked),
        "regret_config": _regret(configs),
        "band_coverage": float(inside[timed].mean()),
        "diverge_hits": float(hits),
        "diverge_misses": float((exploded != (said == DIVERGES)).sum()),
        "hit_limit": float((jobs["job_s"] > jobs["limit_s"]).mean()),
        "short_of_target": float((jobs["t_real"] > jobs["planned_steps"].fillna(never)).mean()),
        "step_time_error": float((jobs["step_s"] / jobs["real_step_s"] - 1).abs().median()),
        "plan_cost": float(jobs["plan_s"].sum() / jobs["job_s"].sum()),
    }
    return metrics, jobs


def confusion(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs by the plan's forecast against the real outcome."""
    said = jobs["forecast"].fillna(CONVERGES) if "forecast" in jobs else CONVERGES
    return (
        pd.crosstab(pd.Series(said, index=jobs.index, name="forecast"), jobs["outcome"])
        .reindex(columns=list(OUTCOMES), fill_value=0)
        .rename_axis(columns="real")
    )


def _regret(t: pd.DataFrame) -> float:
    """The real time of the plan's first choice (forecast, then predicted time) over the best
    real time, minus 1."""
    if not len(t) or not np.isfinite(t["real_s"]).any():
        return np.nan
    first = t.sort_values(["_rank", "predicted_s"], kind="stable").iloc[0]
    return float(first["real_s"] / t["real_s"].min() - 1)


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
    j = j[np.isfinite(j["t_real"].astype(float))]
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
        return cli.error(f"no such file or directory: {missing[0]}")
    try:
        plan = read_table(a.plan, "plan")
    except ConfigError as e:
        return cli.error(e)
    eps = float(plan.loc[plan["target"], "eps"].iloc[0])
    metrics, jobs = judge(plan, real_rows(a.runs, eps))
    if not len(jobs):
        return cli.error("no job of the plan ran below the given folders")
    print(f"plan of {len(plan[plan['target']])} jobs against {len(jobs)} real runs, eps={eps:g}:")
    for k, v in metrics.items():
        print(f"  {k:16s} {v:.3g}")
    print("forecast (rows) against the real outcome (columns), jobs:")
    print(confusion(jobs).to_string())
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        jobs.to_csv(a.out / "judge.csv", index=False)
        figure(jobs).savefig(a.out / "plan.png", dpi=120, bbox_inches="tight")
        print(f"wrote {a.out / 'judge.csv'} and {a.out / 'plan.png'}")
    return 0


if __name__ == "__main__":
    cli.command(main)
