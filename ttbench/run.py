"""`python -m ttbench.run`: task -> pretrained model at w0 -> fine-tune -> predict -> record.

Writes result.json, curves.parquet and curves.png into the Hydra run directory and prints a
summary of real against predicted T_eps.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

# No `import torch` here: submitit pickles this __main__ module's functions by value, and a
# global torch module does not pickle ("cannot pickle '_Classes' object").
from ttbench import build, record
from ttbench.cli import CONF_DIR, fail, guarded, validated
from ttbench.core.timing import Curves
from ttbench.data.cache import cached_task
from ttbench.data.images import DataNotFound
from ttbench.data.task import sample_task
from ttbench.measure import Stages
from ttbench.models.classifier import finetune_model
from ttbench.models.zoo import WeightsNotFound
from ttbench.plots import plot_curves
from ttbench.predict import band_curves, quantile_entry, run_predictors
from ttbench.probes import PROBES
from ttbench.train import finetune_as_configured, load_state
from ttbench.validate import ConfigError, check_classes

log = logging.getLogger("ttbench.run")


STATE = "finetune.state"  # fine-tuning checkpoint inside the run directory, gone once done
# Settings that may differ between a run and its resumption without changing its result.
_NOT_STATE = ("device", "out_root", "cache_dir", "checkpoint_s")


def _finetune(cfg: DictConfig, model, x, y, state_file: Path, resume: dict | None) -> Curves:
    """Real fine-tuning with progress, saving its state into `state_file` and continuing
    from `resume` (a saved state) when given; SGD batches are drawn from the run's seed."""
    every = max(1, cfg.steps // 10)
    with tqdm(total=cfg.steps + 1, desc="fine-tune", disable=not sys.stderr.isatty()) as bar:

        def on_step(t: int, value: float) -> None:
            bar.update(cfg.optim.eval_every)
            if t % every == 0 or t == cfg.steps:
                log.info("fine-tune step %d/%d: loss %.5g", t, cfg.steps, value)

        return finetune_as_configured(
            cfg,
            model,
            x,
            y,
            on_step=on_step,
            state_file=state_file,
            save_every_s=cfg.checkpoint_s,
            meta=_state_meta(cfg),
            resume=resume,
        )


def _state_meta(cfg: DictConfig) -> dict[str, Any]:
    meta = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in meta.items() if k not in _NOT_STATE}


def run(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose and execute one run, write its record into out_dir, and return the record."""
    device = build.device(cfg.device)
    threads = build.cpu_threads()
    log.info("device %s, %d CPU threads", device, threads)
    stages = Stages(device)
    with stages("data"):
        data = build.dataset(cfg)
        check_classes(cfg.task.k, len(np.unique(data.labels())), cfg.dataset.name)
        if cfg.dataset.name == "digits":  # in memory already: nothing to decode
            task = sample_task(data, cfg.task.k, cfg.task.n, cfg.seed)
        else:
            key = (cfg.dataset.name, str(cfg.dataset.root), cfg.dataset.resolution)
            cache = Path(cfg.cache_dir).expanduser()
            task = cached_task(data, cfg.task.k, cfg.task.n, cfg.seed, cache, key)
        x, y = task.x.to(device), task.y.to(device)
    log.info("task: %s classes %s, N=%d", cfg.dataset.name, task.classes, task.n_samples)
    with stages("model"):
        model = finetune_model(
            build.pretrained_model(cfg), task.n_classes, cfg.model.head_init_std, cfg.seed
        ).to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    predictions = run_predictors(cfg, model, x, y, stages)  # at w0, before fine-tuning
    probe_files = {}
    for name in cfg.probes:  # extra measurements at w0, each on its own copy of the model
        with stages(f"probe_{name}"):
            frame = PROBES[name](copy.deepcopy(model), x, y, cfg)
        probe_files[name] = f"probe_{name}.parquet"
        record.write_table(out_dir / probe_files[name], frame)
    state = load_state(out_dir / STATE, _state_meta(cfg))
    resumed_at = None if state is None else state["t"]
    with stages("finetune"):
        real = _finetune(cfg, model, x, y, out_dir / STATE, state)
    if real.diverged:
        log.warning("fine-tuning diverged: the loss became non-finite")

    curves = {"real": real}
    for name, p in predictions.items():
        curves[name] = p.curves
        if p.paths is not None:
            curves.update(band_curves(name, p.paths))
    record.write_curves(out_dir / record.CURVES, curves)
    for name, p in predictions.items():
        if p.spectra is not None:  # the subset predictor's spectra (Figs. 7 and 11)
            record.write_table(out_dir / f"spectra_{name}.parquet", record.spectra_frame(p.spectra))
    plot_curves(curves, out_dir / "curves.png", title=f"{cfg.dataset.name} {task.classes}")
    window = cfg.optim.smooth
    real_t = record.t_eps_entry(real, cfg.eps, window)
    result = {
        "format_version": record.FORMAT_VERSION,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "overrides": list(overrides or []),
        "seed": cfg.seed,
        "versions": record.versions(),
        "device": str(device),
        "cpu_threads": threads,
        "task": {
            "dataset": cfg.dataset.name,
            "classes": list(task.classes),
            "N": task.n_samples,
            "C": task.n_classes,
            "D": n_params,
        },
        "stages": stages.stats,
        "eps": list(cfg.eps),
        "curves_file": record.CURVES,
        "real": {"diverged": real.diverged, "t_eps": real_t, "resumed_at": resumed_at},
        "predictors": {},
        "probes": probe_files,
    }
    for name, pred in predictions.items():
        t_eps = record.t_eps_entry(pred.curves, cfg.eps, window)
        timing = {f"{k}_s": stages.stats[k]["wall_s"] for k in pred.stages}
        total = sum(timing.values())
        timing |= {
            "total_s": total,
            "finetune_over_predict": stages.stats["finetune"]["wall_s"] / total,
        }
        entry = {
            "curves": record.CURVES,
            "diverged": pred.curves.diverged,
            "t_eps": t_eps,
            "errors": record.error_entry(t_eps, real_t),
            "timing": timing,
        }
        if pred.paths is not None:
            entry["paths"] = len(pred.paths.paths_loss)
            entry["quantiles"] = quantile_entry(pred.paths, real_t, cfg.eps, window)
        result["predictors"][name] = entry
    record.write_json(out_dir / record.RESULT, result)
    record.mark_done(out_dir)
    (out_dir / STATE).unlink(missing_ok=True)
    return result


def summary(result: dict[str, Any]) -> str:
    """A table of real and predicted T_eps per eps, for loss and error curves."""
    t = result["task"]
    cfg = result["config"]
    head = (
        f"{t['dataset']} classes {t['classes']}: N={t['N']} C={t['C']} D={t['D']:,}; "
        f"lr={cfg['lr']} momentum={cfg['momentum']} T={cfg['steps']} loss={cfg['loss']}"
    )
    timing = ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in result["stages"].items())
    tables = []
    for kind in ("loss", "error"):
        columns: dict[str, list] = {"real": list(result["real"]["t_eps"][kind].values())}
        for name, pred in result["predictors"].items():
            columns[name] = list(pred["t_eps"][kind].values())
            columns[f"{name} err"] = [
                "-" if v["rel"] is None else f"{v['rel']:.0%}"
                for v in pred["errors"][kind].values()
            ]
            if "quantiles" in pred:
                columns[f"{name} 5-95%"] = [
                    "-" if q["q05"] is None else f"{q['q05']:.0f}-{q['q95']:.0f}"
                    for q in pred["quantiles"][kind].values()
                ]
        table = pd.DataFrame(columns, index=[f"eps={e}" for e in result["eps"]]).fillna("-")
        tables.append(f"T_eps of the {kind} curve, in steps:\n{table.to_string()}")
    diverged = "  (real run DIVERGED)" if result["real"]["diverged"] else ""
    return f"{head}{diverged}\nstages: {timing}\n" + "\n".join(tables)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    validated(cfg)
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    if record.is_done(out_dir):
        log.info("%s holds a complete record: skipped (delete it to run again)", out_dir)
        print(summary(record.read_result(out_dir / record.RESULT)))
        return
    try:
        result = run(cfg, out_dir, list(hc.overrides.task))
    except (ConfigError, DataNotFound, WeightsNotFound) as e:  # known once data and model load
        fail(e)
    print(summary(result))
    print(f"record: {out_dir / record.RESULT}")


if __name__ == "__main__":
    guarded(app)
