"""`python -m ttbench.plan [-m] <the overrides of a sweep>`: every job's training time, predicted
without training it.

Each job, validated as `python -m ttbench.run` would validate it, runs only a prediction:
`plan.predictor` (discrete under GD, exact_sgd under SGD) on the run's Theta (`plan.theta.*`
over `theta.*`: none by default), with its model-error band (ttbench.bands), and a timing
probe of `plan.probe_steps` real fine-tuning steps on the job's device, after one warm-up
step, to turn steps into seconds. The jobs' rows make one plan table,
`out_root/plans/<date_time>/plan.parquet`, one row per (job, eps), and the summary ranks the
configurations by predicted time to the target eps (`plan.eps`). Per job and eps:

* t_eps, q05, q95: the predicted T_eps of the loss and its 5-95% band, in steps;
* planned_steps: q95 x (1 + plan.margin), rounded up to optim.eval_every: the steps a job
  needs to reach eps with a margin (`plan.set_steps=true` launches the job with them);
* predicted_s = t_eps x step_s, the predicted fine-tuning time to eps;
* planned_limit_s = overhead_s + setup_s + planned_steps x step_s, the time limit of a job
  that stops at planned_steps, and limit_s = overhead_s + setup_s + steps x step_s x
  (1 + plan.margin), that of the job as configured (all of its steps); overhead_s is measured
  per job (`run_overhead`) unless plan.overhead_s fixes it;
* plan_s: what planning the job cost (setup, prediction, probe).

`python -m ttbench.run -m <the same overrides> plan.table=<plan.parquet>` then launches the
sweep with each job's time limit from the plan (launchers that have one: submitit's SLURM),
and with `plan.set_steps=true` each job's steps; `python -m ttbench.judge` measures the plan
against the sweep's real runs.
"""

from __future__ import annotations

if __name__ == "__main__":  # a bad command line answered before the imports below load torch
    from ttbench.cli import check_argv

    check_argv()

import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ttbench import build, cli, record
from ttbench import stages as stages_
from ttbench.bands import default_calibration
from ttbench.config import CONF_DIR
from ttbench.core.linearize import linearize
from ttbench.core.sketch import Sketch
from ttbench.core.stability import CONVERGES, SEVERITY, Watch, forecast, subsample
from ttbench.files import atomic_write
from ttbench.prediction import Evidence, at_w0, entry, with_bands
from ttbench.predictors import PREDICTORS, W0, WK
from ttbench.runid import RunId
from ttbench.spec import RunSpec
from ttbench.stages import Stages, timed
from ttbench.train import finetune_run
from ttbench.validate import ConfigError, validate

log = logging.getLogger("ttbench.plan")

ROW = record.PLAN_FILES[0]  # one job's plan, in its directory
TABLE = "plan.parquet"  # the sweep's plan, in the plan directory
STAMP = "${now:%Y-%m-%d_%H-%M-%S-%f}"  # to the microsecond: two plans, two folders
DIRS = [  # a plan's own directory under out_root/plans, one sub-directory per job
    f"hydra.sweep.dir='${{out_root}}/plans/{STAMP}'",
    f"hydra.run.dir='${{ttbench.run_dir:${{out_root}}/plans/{STAMP},${{hydra.overrides.task}}}}'",
    "+hydra.callbacks.plan_table._target_=ttbench.plan.PlanTable",
]


def planning_spec(spec: RunSpec) -> RunSpec:
    """The job's spec as the plan predicts it: plan.predictor alone, on plan.theta's Theta, no
    refinement and no probes."""
    return replace(
        spec,
        predictors=(spec.plan.predictor,),
        theta=spec.plan.theta,
        refine=replace(spec.refine, steps=0),
        probes=replace(spec.probes, names=()),
    )


def step_seconds(
    spec: RunSpec, model, x, y, watch: Watch | None = None
) -> tuple[float, float, float]:
    """(Seconds per fine-tuning step; the watch's seconds over the warm-up, its first and
    dearest steps; its seconds per later watched step) of this job on its device:
    plan.probe_steps real steps,
    rounded up to a multiple of optim.eval_every so that the whole-task loss is recorded as
    often as in the run, timed after a warm-up of eval_every steps (first-call allocations,
    kernel selection). The model is fine-tuned in place, `watch` measuring the stability at
    every step of the warm-up and the probe (its time left out of the steps')."""
    every = spec.train.eval_every
    k = -(-spec.plan.probe_steps // every) * every
    spent = [0.0]

    def steps(n: int) -> RunSpec:
        return replace(spec, train=replace(spec.train, steps=n))

    def watching(offset: int):
        def call(t: int, m) -> None:
            if watch is not None:
                spent[0] += timed(lambda: watch(offset + t, m), x.device)[1]

        return call

    finetune_run(steps(every), model, x, y, watch=watching(0))
    first, spent[0] = spent[0], 0.0
    _, seconds = timed(lambda: finetune_run(steps(k), model, x, y, watch=watching(every)), x.device)
    return (seconds - spent[0]) / k, first, spent[0] / (k + 1)


_STARTED = time.monotonic()  # this module's import: a process's start-up is measured once
_STARTUP: list[float] = []


def run_overhead(
    spec: RunSpec, model_fn, x: torch.Tensor, watch_first_s: float, watch_step_s: float
) -> dict:
    """What the run pays besides its data, model and steps, measured here: its process's
    start-up (this process's, up to its first job), each Theta it builds in its own mode (at
    w0 and at every refinement step: timed on 64 samples after a warm-up and scaled by
    (N / 64)^2, an upper bound, so that a limit errs long) and its watch (as the probe's:
    its first steps as over the warm-up, each later one at the probe's seconds per step)."""
    if not _STARTUP:
        _STARTUP.append(process_age())
    chosen = [PREDICTORS[n] for n in spec.predictors]
    builds = int(any(p.theta == W0 for p in chosen))
    builds += len({p.at for p in chosen if p.prefix and p.theta == WK and spec.refine.steps})
    th, n = spec.theta, len(x)
    model = model_fn()

    def build(m: int) -> float:
        def run():
            return linearize(
                model, x[:m], th.mode, block=th.block, sketch=Sketch(th.sketch, th.dim, spec.seed),
                chunk=th.chunk, outputs=th.directions, memory_gb=th.memory_gb,
            )  # fmt: skip

        return timed(run, x.device)[1]

    theta_s = 0.0
    if builds:  # Theta's cost grows at most as N^2 (Jacobian ~N, contraction ~N^2): a bound
        small = min(64, n)
        build(min(2, n))  # warm-up: first-call costs are not Theta's
        theta_s = build(small) * (n / small) ** 2
    later = max(0, len(spec.watch.steps) - (spec.train.eval_every + 1))
    watch = (watch_first_s + watch_step_s * later) if spec.watch.steps else 0.0
    overhead = _STARTUP[0] + builds * theta_s + watch
    return {"startup_s": _STARTUP[0], "theta_s": theta_s, "thetas": builds, "watch_s": watch,
            "overhead_s": overhead}  # fmt: skip


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), else since this module's import."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _STARTED


def _round_up(value: float, every: int) -> int:
    return max(every, math.ceil(value / every) * every)


def plan_job(spec: RunSpec, out_dir: Path, overrides: list[str]) -> dict:
    """Plan one job into out_dir/plan.json; returns what it wrote."""
    calibration = default_calibration()  # before any compute: a damaged one stops here
    device = build.device(spec.device)
    build.cpu_threads(spec.threads)
    stages = Stages(device)
    s = build.setup(spec, stages)
    pspec = planning_spec(spec)
    name = pspec.predictors[0]
    with stages(stages_.PREDICT):
        _, predicted, signals = at_w0(pspec, s.model(), s.x, s.y, Stages(device))
        rec = entry(name, predicted[name], pspec)
        rec = with_bands({name: rec}, pspec, calibration, Evidence(signals), True)[name]
    t = spec.train
    every = t.eval_every
    probed = -(-spec.plan.probe_steps // every) * every + every
    idx = subsample(len(s.x), spec.watch.samples, spec.seed).to(s.x.device)
    watch = Watch(t.lr, t.momentum, t.loss, s.x[idx], frozenset(range(probed)))
    with stages(stages_.PROBE):
        step_s, *watch_s = step_seconds(spec, s.model(), s.x, s.y, watch)
    said = forecast(watch.values, t.momentum, spec.watch.threshold)
    setup_s = sum(v["wall_s"] for k, v in stages.stats.items() if k not in ("predict", "probe"))
    p, every, steps = spec.plan, spec.train.eval_every, spec.train.steps
    cost = run_overhead(spec, s.model, s.x, *watch_s) if p.overhead_s is None else {}
    overhead = p.overhead_s if p.overhead_s is not None else cost["overhead_s"]
    rows = []
    for eps, t, q in zip(spec.eps, rec.t_eps["loss"], rec.band["loss"], strict=True):
        planned = None if q.q95 is None else _round_up(q.q95 * (1 + p.margin), every)
        rows.append(
            {
                "eps": eps,
                "target": eps == p.eps,
                "t_eps": t,
                "q05": q.q05,
                "q95": q.q95,
                "planned_steps": planned,
                "predicted_s": None if t is None else t * step_s,
                "planned_limit_s": None
                if planned is None
                else overhead + setup_s + planned * step_s,
            }
        )
    rid = RunId.of(spec.config, overrides)
    job = {
        "job": rid.name,
        "run_id": rid.digest,
        "config": rid.config,
        "overrides": list(overrides),
        "predictor": name,
        "theta": pspec.theta.mode,
        "device": str(device),
        "steps": steps,
        "step_s": step_s,
        "setup_s": setup_s,
        "overhead_s": overhead,
        "overhead": "configured" if p.overhead_s is not None else "measured",
        **cost,
        "limit_s": overhead + setup_s + steps * step_s * (1 + p.margin),
        "plan_s": sum(v["wall_s"] for v in stages.stats.values()),
        "stability": signals.get("stability"),
        "forecast": said.verdict,
        "forecast_at": said.at,
        "watch_max": max(watch.values.values(), default=None),
        "rows": rows,
    }
    atomic_write(out_dir / ROW, json.dumps(job, indent=1).encode())
    target = next(r for r in rows if r["target"])
    log.info(
        "%s: T_eps(%g) %s steps (band %s-%s), %.3g s per step, planned in %.1f s",
        job["job"],
        p.eps,
        target["t_eps"],
        target["q05"],
        target["q95"],
        step_s,
        job["plan_s"],
    )
    return job


# What `judge` and a sweep launched from a plan read; the plan writes more.
COLUMNS = (
    *("job", "run_id", "config", "target", "eps", "t_eps", "q05", "q95", "planned_steps"),
    *("step_s", "predicted_s", "planned_limit_s", "limit_s", "plan_s"),
)


def read_table(path: str | Path, key: str = "plan.table") -> pd.DataFrame:
    """A plan table (plan.parquet), or a plan's directory: its table, or, when the plan was
    killed before writing it, the table gathered from its finished jobs (and written).
    ConfigError naming `key` when there is none, it does not read, holds no job at its target
    eps, or lacks a column of COLUMNS."""
    path = Path(path).expanduser()
    if path.is_dir() and not (path / TABLE).is_file() and any(path.glob(f"*/{ROW}")):
        table = gather(path)
        atomic_write(path / TABLE, table.to_parquet(index=False))
        log.info("gathered %s from the plan's %d finished jobs", path / TABLE, len(table))
    if path.is_dir() and (path / TABLE).is_file():
        path = path / TABLE
    if not path.is_file():
        what = "a directory" if path.is_dir() else "missing"
        raise ConfigError(
            key, str(path), f"is {what}: give a plan.parquet of python -m ttbench.plan"
        )
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(key, str(path), f"does not read as a table ({e})") from e
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ConfigError(key, str(path), f"is not a plan table: no column {', '.join(missing)}")
    if not table["target"].astype(bool).any():
        raise ConfigError(key, str(path), "holds no job: plan the sweep again")
    return table


def gather(plan_dir: Path) -> pd.DataFrame:
    """The plan table of every job planned under plan_dir."""
    out = []
    for path in sorted(plan_dir.glob(f"*/{ROW}")):
        job = json.loads(path.read_text())
        rows = job.pop("rows")
        settings = dict(o.lstrip("+").split("=", 1) for o in job["overrides"] if "=" in o)
        job["overrides"] = " ".join(job["overrides"])
        out += [{**job, **{f"cfg.{k}": v for k, v in settings.items()}, **r} for r in rows]
    return pd.DataFrame(out)


def summary(table: pd.DataFrame) -> str:
    """The jobs at the target eps, fastest first, those whose probe's watch forecast a spike
    after the others and those forecast to explode last, marked; and the configurations over
    seeds, ranked alike by their worst seed."""
    t = table[table["target"]]
    if t.empty:
        return "plan: no jobs"
    said = t["forecast"] if "forecast" in t else pd.Series(CONVERGES, index=t.index)
    t = t.assign(_rank=said.map(SEVERITY).fillna(0), _said=said).sort_values(
        ["_rank", "predicted_s"], na_position="last"
    )
    eps = t["eps"].iloc[0]
    shown = pd.DataFrame(
        {
            "job": t["job"],
            "forecast": t["_said"],
            f"predicted steps to eps={eps:g} [band]": [_steps(r) for r in t.itertuples()],
            "predicted time to eps": [_duration(v) for v in t["predicted_s"]],
            "recommended steps": t["planned_steps"].map(lambda v: "-" if pd.isna(v) else int(v)),
            "limit, those steps (min)": [_minutes(v) for v in t["planned_limit_s"]],
            "limit, all steps (min)": [_minutes(v) for v in t["limit_s"]],
        }
    )
    lines = [
        f"plan of {len(t)} jobs ({t['predictor'].iloc[0]} on Theta {t['theta'].iloc[0]}), "
        f"cost {t['plan_s'].sum():.0f} s; fastest to eps={eps:g} first:",
        shown.to_string(index=False),
        *budget_lines(t),
    ]
    if "cfg.seed" in t and t["cfg.seed"].nunique() > 1:  # configurations: the median over seeds
        by = t.groupby("config")
        ranked = pd.DataFrame({"worst": by["_rank"].max(), "s": by["predicted_s"].median()})
        ranked.index = by["job"].first().map(_configuration).loc[ranked.index]
        ranked = ranked.sort_values(["worst", "s"], na_position="last")
        lines.append("configurations (median over seeds), fastest first, forecast trouble last:")
        marks = {v: k for k, v in SEVERITY.items()}
        lines += [
            f"  {_duration(r.s):>8s}  {c}"
            + ("" if r.worst == 0 else f"  [{marks[int(r.worst)]} in some seeds]")
            for c, r in ranked.iterrows()
        ]
    return "\n".join(lines)


def _configuration(job: str) -> str:
    """A configuration's readable name: a job's label less its seed."""
    label = job.rsplit("-", 1)[0]
    return ",".join(o for o in label.split(",") if not o.startswith("seed=")) or "default"


def _steps(r) -> str:
    if pd.isna(r.t_eps):
        return "not within the steps"
    band = "" if pd.isna(r.q05) else f" ({r.q05:.0f}-{r.q95:.0f})"
    return f"{r.t_eps:.0f}{band}"


def budget_lines(t: pd.DataFrame) -> list[str]:
    """The sweep as a budget, per device: the predicted compute to the target eps and the
    time limits' totals, in device-hours (a job holds one device). Limits in whole minutes,
    as SLURM counts them."""
    out = []
    for device, part in t.groupby("device", sort=True):
        kind = "GPU" if str(device).startswith("cuda") else "CPU"
        predicted = part["predicted_s"].sum(min_count=1)
        line = (
            f"budget on {device}: predicted {_hours(predicted)} {kind}-hours to eps "
            f"({part['predicted_s'].notna().sum()} of {len(part)} jobs reach it); limits "
            f"{_hours(part['planned_limit_s'].sum(min_count=1))} {kind}-hours with the "
            f"recommended steps, {_hours(part['limit_s'].sum())} with all steps"
        )
        if "overhead" in part:
            how = "measured" if (part["overhead"] == "measured").all() else "configured"
            line += f" (each includes a {how} overhead, median {part['overhead_s'].median():.3g} s)"
        out.append(line)
    return out


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None or pd.isna(seconds) else f"{seconds / 3600:.3g}"


def _minutes(seconds: float | None) -> str:
    """A time limit as SLURM takes it: whole minutes, rounded up."""
    return "-" if seconds is None or pd.isna(seconds) else str(math.ceil(seconds / 60))


def _duration(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def finish(plan_dir: Path) -> pd.DataFrame:
    """Gather the jobs' plans into plan_dir/plan.parquet and print the summary."""
    table = gather(plan_dir)
    atomic_write(plan_dir / TABLE, table.to_parquet(index=False))
    print(summary(table))
    print(f"plan: {plan_dir / TABLE}")
    return table


class PlanTable(Callback):
    """Hydra callback: once every job of a planned sweep is done, the plan table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        finish(Path(config.hydra.sweep.dir))


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    with cli.job(cfg) as hc:
        out = Path(hc.runtime.output_dir)
        plan_job(validate(cfg), out, list(hc.overrides.task))
    if hc.mode == RunMode.RUN:
        finish(out.parent)


if __name__ == "__main__":
    cli.main(app, extra=DIRS)
