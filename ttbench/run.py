"""`python -m ttbench.run`: task -> pretrained model at w0 -> predict -> fine-tune -> record.

`task(cfg, out_dir, overrides)` is one whole run, callable in-process (tests, notebooks); `app`
is its Hydra entry point. A run writes result.json, curves.parquet and curves.png into its
directory and prints real against predicted T_eps.
"""

from __future__ import annotations

if __name__ == "__main__":  # a bad command line answered before the imports below load torch
    from ttbench.cli import check_argv

    check_argv()

import copy
import logging
import math
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

# No `import torch` here: submitit pickles this __main__ module's functions by value, and a
# global torch module does not pickle ("cannot pickle '_Classes' object").
from ttbench import build, cli, record
from ttbench import stages as stages_
from ttbench.bands import Calibration, default_calibration
from ttbench.config import CONF_DIR
from ttbench.core.curves import CATAPULT, Curves
from ttbench.core.stability import CONVERGES
from ttbench.files import Busy, locked
from ttbench.plots import plot_curves
from ttbench.prediction import (
    Evidence,
    Predicted,
    after_prefix,
    at_w0,
    entry,
    path_bands,
    prefix_stage,
    with_bands,
    with_signal_costs,
)
from ttbench.predictors import PREDICTORS, SETTLED, Solved, refine_step
from ttbench.probes import PROBES
from ttbench.runid import RunId
from ttbench.spec import RunSpec
from ttbench.stages import Stages
from ttbench.train import EVALUATE_S, finetune_run, load_state
from ttbench.validate import ConfigError, validate
from ttbench.validity import REFERENCES
from ttbench.watching import Watching, keeper

log = logging.getLogger("ttbench.run")

STATE = "finetune.state"  # fine-tuning checkpoint inside the run directory, gone once done
VALIDITY_LIMIT = math.log(1.2)  # a plain prediction 20% off the refined one is not trusted


def _finetune(
    spec: RunSpec, model, x, y, state_file: Path, resume: dict | None, kept: dict, watch, keep
) -> Curves:
    """Real fine-tuning with progress, saving its state into `state_file` and continuing
    from `resume` (a saved state) when given, keeping in `kept` the states `keep` names,
    calling `watch` at every step; SGD batches are drawn from the run's seed."""
    steps = spec.train.steps
    every = max(1, steps // 10)
    with tqdm(total=steps + 1, desc="fine-tune", disable=not sys.stderr.isatty()) as bar:

        def on_step(t: int, value: float) -> None:
            bar.update(spec.train.eval_every)
            if t % every == 0 or t == steps:
                log.info("fine-tune step %d/%d: loss %.5g", t, steps, value)

        return finetune_run(
            spec,
            model,
            x,
            y,
            on_step=on_step,
            state_file=state_file,
            save_every_s=spec.checkpoint_s,
            meta=spec.identity(),
            resume=resume,
            keep=keep,
            kept=kept,
            watch=watch,
        )


def run(
    spec: RunSpec,
    out_dir: Path,
    overrides: list[str] | None = None,
    calibration: Calibration | None = None,
) -> record.Record:
    """Execute one run, write its record into out_dir, and return the record; the bands from
    `calibration` (default: the shipped one)."""
    calibration = default_calibration() if calibration is None else calibration
    device = build.device(spec.device)
    threads = build.cpu_threads(spec.threads)
    log.info("device %s, %d CPU threads", device, threads)
    stages = Stages(device)
    s = build.setup(spec, stages)
    log.info("task: %s classes %s, N=%d", spec.dataset.name, s.task.classes, s.task.n_samples)
    model = s.model()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inputs, predictions, signals = at_w0(spec, model, s.x, s.y, stages)  # before fine-tuning
    probe_files = {}
    for name in spec.probes.names:  # extra measurements at w0, each on its own copy of the model
        with stages(f"probe_{name}"):
            frame = PROBES[name](copy.deepcopy(model), s.x, s.y, spec)
        probe_files[name] = f"probe_{name}.parquet"
        record.write_table(out_dir / probe_files[name], frame)
    state = load_state(out_dir / STATE, spec.identity())
    kept: dict = dict(state["kept"]) if state is not None else {}
    watching = Watching(spec, s.x, kept, device) if spec.watch.steps else None
    with stages(stages_.FINETUNE):
        keep = keeper(spec, watching)
        real = _finetune(spec, model, s.x, s.y, out_dir / STATE, state, kept, watching, keep)
    if state is not None:  # a resumed run: its earlier segments' time too, and how many
        stages.stats[stages_.FINETUNE]["wall_s"] += state.get("seconds", 0.0)
        stages.stats[stages_.FINETUNE]["segments"] = state.get("segments", 1) + 1
    if EVALUATE_S in kept:  # SGD's whole-task losses: timed apart from its bare steps
        stages.carve(stages_.EVALUATE, kept[EVALUATE_S])
    if real.diverged:
        log.warning("fine-tuning diverged: its loss exploded")
    elif real.outcome(spec.train.smooth) == CATAPULT:
        log.warning(
            "fine-tuning spiked at step %d and recovered (a catapult)",
            real.spike_at(spec.train.smooth),
        )
    if any(PREDICTORS[n].prefix for n in spec.predictors):
        refined, more = _refine(spec, s, kept, real, inputs, stages)
        predictions |= refined
        signals |= more
    watched = None if watching is None else watching.record(stages, kept)
    if watched is not None:
        early = [v for t, v in watched.stability.items() if t <= spec.refine.steps]
        if early and all(np.isfinite(early)):
            signals["stability_prefix"] = max(early)
    predictions = {n: predictions[n] for n in spec.predictors}
    predictions = with_signal_costs(predictions, stages)

    curves = {"real": real} | {name: p.curves for name, p in predictions.items()}
    paths = {n: path_bands(p.solved.paths) for n, p in predictions.items() if p.solved.paths}
    for name, p in predictions.items():
        if p.solved.spectra is not None:  # the subset predictor's spectra (Figs. 7 and 11)
            frame = record.spectra_frame(p.solved.spectra)
            record.write_table(out_dir / f"spectra_{name}.parquet", frame)
    rec = record.Record(
        config=spec.config,
        overrides=tuple(overrides or ()),
        versions=record.versions(),
        device=str(device),
        cpu_threads=threads,
        task=record.TaskInfo(
            spec.dataset.name, tuple(s.task.classes), s.task.n_samples, s.task.n_classes, n_params
        ),
        stages=stages.stats,
        eps=spec.eps,
        real=record.Real.of(
            real, spec.eps, spec.train.smooth, None if state is None else state["t"]
        ),
        predictors=with_bands(
            {name: entry(name, p, spec) for name, p in predictions.items()},
            spec,
            calibration,
            Evidence(
                signals,
                real.spike_at(spec.train.smooth),
                None if watched is None else watched.at,
            ),
        ),
        probes=probe_files,
        signals=signals,
        watch=watched,
    )
    record.write(out_dir, rec, curves, paths)
    (out_dir / STATE).unlink(missing_ok=True)
    try:  # a figure, after the record: a full disk here costs the picture, not the run
        plot_curves(
            curves, paths, out_dir / "curves.png", title=f"{spec.dataset.name} {s.task.classes}"
        )
    except OSError as e:
        log.warning("could not draw %s (%s): the record is complete", out_dir / "curves.png", e)
    if spec.tensorboard:
        from ttbench.tensorboard import write_run

        try:  # like the figure: the record is complete already
            write_run(out_dir / "tensorboard", curves, rec, summary(rec))
        except OSError as e:
            log.warning("could not write the TensorBoard scalars (%s): the record is complete", e)
    return rec


def _refine(spec: RunSpec, s: build.Setup, kept: dict, real: Curves, inputs, stages: Stages):
    """The refined predictions, each from the state kept at its step; when the run exploded
    before that step, marked diverged; when the loss never settled (SETTLED), none (it would
    have observed every step)."""
    states = kept.get("states", {})
    by_at: dict[str, list] = {}
    for n in spec.predictors:
        if PREDICTORS[n].prefix:
            by_at.setdefault(PREDICTORS[n].at, []).append(PREDICTORS[n])
    out, signals, built = {}, {}, {}
    for at, chosen in sorted(by_at.items(), key=lambda item: item[0] == SETTLED):
        state = states.get(at)
        if state is None:
            nan = np.full(len(real.loss), np.nan)
            step = refine_step(at, spec.refine.steps, spec.train.eval_every)
            missing = Predicted(Solved(Curves(nan, nan, real.diverged)), (), step)
            if step is None:
                missing = replace(missing, k=spec.train.steps)
            out |= dict.fromkeys((p.name for p in chosen), missing)
            continue
        if state["step"] not in built:
            stages.stats[prefix_stage(at)] = {"wall_s": state["seconds"]}
        model_k = s.model()
        model_k.load_state_dict(state["model"])
        got, more = after_prefix(
            spec,
            chosen,
            at,
            state["step"],
            model_k,
            state.get("velocity"),
            real,
            inputs,
            stages,
            built,
        )
        out |= got
        signals |= more
    return out, signals


def summary(rec: record.Record) -> str:
    """A table of real and predicted T_eps per eps, for loss and error curves."""
    t, cfg = rec.task, rec.config
    head = (
        f"{t.dataset} classes {list(t.classes)}: N={t.N} C={t.C} D={t.D:,}; "
        f"lr={cfg['lr']} momentum={cfg['momentum']} T={cfg['steps']} loss={cfg['loss']}"
    )
    timing = ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in rec.stages.items())
    tables = []
    for kind in record.KINDS:
        columns: dict[str, list] = {"real": list(rec.real.t_eps[kind])}
        for name, pred in rec.predictors.items():
            columns[name] = list(pred.t_eps[kind])
            columns[f"{name} err"] = [
                "-" if rel is None else f"{rel:.0%}" for _, rel in rec.errors(name, kind)
            ]
            if pred.band is not None:
                columns[f"{name} 5-95%"] = [
                    "-" if q.q05 is None else f"{q.q05:.0f}-{q.q95:.0f}" for q in pred.band[kind]
                ]
        table = pd.DataFrame(columns, index=[f"eps={e}" for e in rec.eps]).fillna("-")
        tables.append(f"T_eps of the {kind} curve, in steps:\n{table.to_string()}")
    diverged = {
        "exploded": "  (real run DIVERGED: its loss exploded)",
        "catapult": f"  (real run spiked at step {rec.real.spike_at}, then recovered: a catapult)",
    }.get(rec.real.outcome, "")
    lines = [f"{head}{diverged}", f"stages: {timing}", *cost_lines(rec), *tables]
    return "\n".join([*lines, *signal_lines(rec)])


def cost_lines(rec: record.Record) -> list[str]:
    """Each prediction's wall-clock against the fine-tuning's (its bare steps), alone and with
    the signals its validity reads."""
    timings = {n: rec.timing(n) for n in rec.predictors}
    timings = {n: t for n, t in timings.items() if t["predict_s"] and t["finetune_over_predict"]}
    if not timings:
        return []
    alone = ", ".join(
        f"{n} {t['predict_s']:.2g}s ({t['finetune_over_predict']:.2g}x)" for n, t in timings.items()
    )
    signals = sorted({s for n in timings for s in rec.predictors[n].signals})
    out = [
        f"cost against the fine-tuning's {rec.stages[stages_.FINETUNE]['wall_s']:.2g}s "
        f"(x: how many times cheaper): {alone}"
    ]
    if signals:
        spent = ", ".join(f"{s} {rec.stages[s]['wall_s']:.2g}s" for s in signals)
        ratios = ", ".join(f"{n} {t['finetune_over_total']:.2g}x" for n, t in timings.items())
        out.append(f"  with the signals their validity reads ({spent}): {ratios}")
    return out


def signal_lines(rec: record.Record) -> list[str]:
    """The run's signals (ttbench.prediction) in words."""
    sig, out = rec.signals, []
    if "stability" in sig:
        verdict = "UNSTABLE" if sig["stability"] >= 1 else "stable"
        out.append(
            f"linearised GD at w0: lr * lambda_max / (2 (1 + m)) = {sig['stability']:.3g} "
            f"({verdict})"
        )
    w = rec.watch
    if w is not None and w.stability:
        peak = max(w.stability, key=lambda t: np.nan_to_num(w.stability[t], nan=np.inf))
        said = (
            f"{w.verdict.upper()}, announced at step {w.at} (stability "
            f"{w.stability[w.at]:.3g} >= {w.threshold:g})"
            if w.verdict != CONVERGES
            else f"no spike announced (threshold {w.threshold:g})"
        )
        out.append(
            f"stability watched at {len(w.stability)} steps of fine-tuning: max "
            f"{w.stability[peak]:.3g} at step {peak}; {said}"
        )
    after = [f"{k} {sig[k]:.3g}" for k in ("drift", "kernel_change", "time_scale") if k in sig]
    if after:
        k = rec.config["refine"]["steps"]
        out.append(f"after the first {k} real steps: " + ", ".join(after))
    valid = {n: p for n, p in rec.predictors.items() if p.validity is not None}
    modelled = any(p.trusted is not None for p in valid.values())
    if valid and modelled:
        parts = ", ".join(f"{n} {math.exp(p.validity) - 1:.0%}" for n, p in valid.items())
        out.append(f"validity (each prediction's expected error, from the run's signals): {parts}")
        for name, p in valid.items():
            if p.trusted is False:
                out.append(
                    f"NOT TRUSTWORTHY: {name} (expected error {math.exp(p.validity) - 1:.0%}): "
                    "the network has left its linearisation; read its T_eps as unknown"
                )
    elif valid:
        ref = next(n for n in REFERENCES if n in rec.predictors)
        parts = ", ".join(f"{n} {math.exp(p.validity) - 1:.0%}" for n, p in valid.items())
        out.append(f"validity: disagreement of the plain predictions with {ref}: {parts}")
        for name, p in valid.items():
            if p.validity > VALIDITY_LIMIT:
                out.append(
                    f"WARNING: {name} disagrees with the prediction refined from the real steps "
                    f"by {math.exp(p.validity) - 1:.0%} (over {math.exp(VALIDITY_LIMIT) - 1:.0%}): "
                    f"the network has left its linearisation; do not trust {name}, trust {ref}"
                )
    return out


HYDRA_FILES = {".hydra", ".lock", "run.log"}  # what a run directory holds before any compute


def _leave_nothing(out_dir: Path) -> None:
    """A run stopped by bad input (a missing data root, say) before it computed anything
    leaves no directory behind, so that collect and sweep never list it."""
    if out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(out_dir, ignore_errors=True)


def task(
    cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None
) -> record.Record | None:
    """Validate the config and run it into out_dir, or, when out_dir holds a complete record,
    skip it; print the summary either way. A run directory another process is running is
    skipped (None). Raises the errors of cli.USER_ERRORS."""
    spec = validate(cfg)
    calibration = default_calibration()  # before any compute: a damaged one stops here
    out_dir = Path(out_dir)
    try:
        with locked(out_dir):  # two processes on one job: the second skips it
            rec = record.complete(out_dir)
            if rec is not None and RunId.of(rec.config).digest != RunId.of(spec.config).digest:
                raise ConfigError(
                    "hydra.run.dir",
                    str(out_dir),
                    "holds the record of another run (other settings): choose another directory",
                )
            if rec is not None:
                log.info("%s holds a complete record: skipped (delete it to run again)", out_dir)
                print(summary(rec))
                return rec
            if (out_dir / STATE).is_dir():
                raise ConfigError(
                    "hydra.run.dir",
                    str(out_dir),
                    f"holds a directory {STATE} where the fine-tuning checkpoint goes: remove it",
                )
            if record.is_done(out_dir):
                log.warning("%s is marked done but its record is unreadable: redoing", out_dir)
                (out_dir / record.DONE).unlink()
            rec = run(spec, out_dir, overrides, calibration)
    except Busy as e:
        log.warning("%s: skipped", e)
        print(f"ttbench: {e}: skipped")
        return None
    except cli.USER_ERRORS:
        _leave_nothing(out_dir)
        raise
    print(summary(rec))
    print(f"record: {out_dir / record.RESULT}")
    return rec


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    with cli.job(cfg) as hc:
        task(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))


if __name__ == "__main__":
    cli.main(app)
