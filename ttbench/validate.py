"""Every config value checked once, at the edge, before any computation.

A bad value raises ConfigError, whose message is one line naming the key, the value given and
what is allowed; the entry points print it and exit with status 2, without a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ttbench.core.dynamics import PREDICTORS
from ttbench.core.linearize import MODES
from ttbench.core.losses import LOSSES
from ttbench.core.sgd import NOISES, SCHEDULES, SCHEMES
from ttbench.core.sketch import SKETCHES
from ttbench.data.registry import DATASETS, NUM_CLASSES
from ttbench.probes import PROBES


class ConfigError(ValueError):
    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, value, "must be a number")
    return value


def _integer(cfg: DictConfig, key: str, low: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"must be an integer >= {low}")
    return value


def _choice(key: str, value: object, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    if value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(allowed)}")


def validate(cfg: DictConfig) -> None:
    """Check a composed run config; raises ConfigError on the first bad value."""
    if _number(cfg, "lr") <= 0:
        raise ConfigError("lr", cfg.lr, "must be > 0")
    if not 0 <= _number(cfg, "momentum") < 1:
        raise ConfigError("momentum", cfg.momentum, "must be in [0, 1)")
    if _number(cfg, "weight_decay") < 0:
        raise ConfigError("weight_decay", cfg.weight_decay, "must be >= 0")
    if _number(cfg, "checkpoint_s") < 0:
        raise ConfigError("checkpoint_s", cfg.checkpoint_s, "must be >= 0 (0: every step)")
    _integer(cfg, "steps", 1)
    _integer(cfg, "seed", 0)
    eps = cfg.eps
    if not OmegaConf.is_list(eps) or len(eps) == 0:
        raise ConfigError("eps", eps, "must be a non-empty list of numbers in (0, 1)")
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, int | float) or not 0 < e < 1:
            raise ConfigError("eps", list(eps), "every value must be in (0, 1)")
    _choice("loss", cfg.loss, LOSSES)
    _choice("device", cfg.device, ("auto", "cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "no CUDA device is available; use auto or cpu")
    _choice("dataset.name", cfg.dataset.name, DATASETS)
    k = _integer(cfg, "task.k", 1)
    check_classes(k, NUM_CLASSES.get(cfg.dataset.name), cfg.dataset.name)
    if cfg.model.name != "small_resnet":
        _choice("model.source", cfg.model.source, ("timm", "torchvision"))
    channels = 1 if cfg.dataset.name == "digits" else 3
    wanted = 1 if cfg.model.name == "small_resnet" else 3  # small_resnet: pretrained on digits
    if channels != wanted:
        raise ConfigError(
            "model",
            cfg.model.name,
            f"takes {wanted}-channel images; dataset {cfg.dataset.name} has {channels}",
        )
    _integer(cfg, "task.n", 1)
    _optim(cfg)
    _choice("theta.mode", cfg.theta.mode, MODES)
    _integer(cfg, "theta.block", 1)
    _integer(cfg, "theta.dim", 1)
    _integer(cfg, "theta.chunk", 1)
    _choice("theta.sketch", cfg.theta.sketch, SKETCHES)
    if _number(cfg, "theta.memory_gb") <= 0:
        raise ConfigError("theta.memory_gb", cfg.theta.memory_gb, "must be > 0")
    for name in predictor_names(cfg, check=True):
        reason = _inapplicable(cfg, name)
        if reason:
            raise ConfigError("predictor", name, reason)
    if "subset" in predictor_names(cfg):
        _integer(cfg, "subset.n0", 2)
        _integer(cfg, "subset.k0", 1)
        _number(cfg, "subset.alpha")
    if set(predictor_names(cfg)) & set(STOCHASTIC):
        _integer(cfg, "stochastic.paths", 1)
        _choice("stochastic.noise", cfg.stochastic.noise, NOISES)
        _choice("stochastic.schedule", cfg.stochastic.schedule, SCHEDULES)
    if not OmegaConf.is_list(cfg.probes):
        raise ConfigError("probes", cfg.probes, "must be a list, e.g. probes=[spectrum]")
    for name in cfg.probes:
        _choice("probes", name, PROBES)
    _probe_settings(cfg)
    if predictor_names(cfg) and cfg.weight_decay != 0:
        raise ConfigError(
            "weight_decay", cfg.weight_decay, "the predictors model 0 only (or use predictor=none)"
        )


def _integers(cfg: DictConfig, key: str, low: int) -> None:
    value = OmegaConf.select(cfg, key)
    ok = OmegaConf.is_list(value) and len(value) > 0
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value):
        shown = list(value) if OmegaConf.is_list(value) else value
        raise ConfigError(key, shown, f"must be a non-empty list of integers >= {low}")


def _probe_settings(cfg: DictConfig) -> None:
    """The settings of the probes a run asks for."""
    probes = set(cfg.probes)
    if probes & {"spectrum", "projection"}:
        _integers(cfg, "probe.sizes", 1)
    if "projection" in probes:
        _integers(cfg, "probe.dims", 1)
    if "clustering" in probes:
        _integer(cfg, "probe.components", 1)
    if "weight_function" in probes and cfg.weight_decay != 0:
        raise ConfigError(
            "weight_decay", cfg.weight_decay, "the weight_function probe models 0 only"
        )


def _optim(cfg: DictConfig) -> None:
    _choice("optim", cfg.optim.name, ("gd", "sgd"))
    every = _integer(cfg, "optim.eval_every", 1)
    if cfg.steps % every:
        raise ConfigError("optim.eval_every", every, f"must divide steps={cfg.steps}")
    window = _integer(cfg, "optim.smooth", 1)
    if window % 2 == 0:
        raise ConfigError("optim.smooth", window, "must be odd (a centred window)")
    if cfg.optim.name == "sgd":
        _choice("optim.sampling", cfg.optim.sampling, SCHEMES)
        b = _integer(cfg, "optim.batch_size", 1)
        if b > cfg.task.k * cfg.task.n:
            raise ConfigError(
                "optim.batch_size", b, f"must be <= N = task.k * task.n = {cfg.task.k * cfg.task.n}"
            )


STOCHASTIC = ("sde", "exact_sgd")


def _inapplicable(cfg: DictConfig, name: str) -> str | None:
    if name in ("closed_form", "subset") and cfg.loss != "mse":
        return f"{name} needs loss=mse"
    if name in STOCHASTIC and cfg.optim.name != "sgd":
        return f"{name} needs optim=sgd"
    return None


def predictor_names(cfg: DictConfig, check: bool = False) -> list[str]:
    """The predictors a run asks for; where the predictor config allows it, those that do not
    apply to the loss or optimiser are skipped."""
    names = list(cfg.predictor.names)
    if check:
        for name in names:
            _choice("predictor.names", name, (*PREDICTORS, *STOCHASTIC, "subset"))
    if cfg.predictor.get("skip_inapplicable", False):
        names = [n for n in names if _inapplicable(cfg, n) is None]
    return names


def check_classes(k: int, classes: int | None, dataset: str) -> None:
    """k classes per task must exist in the dataset (None: not known before reading it)."""
    if classes is not None and k > classes:
        raise ConfigError("task.k", k, f"must be <= {classes}, the classes of {dataset}")


def config_groups(conf_dir: Path) -> dict[str, list[str]]:
    """Options of each config group, from the files under conf/."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(Path(conf_dir).iterdir())
        if d.is_dir()
    }


def _writable(path: Path) -> bool:
    """Whether `path` is, or could be created as, a writable directory."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def check_cli(argv: Sequence[str], conf_dir: Path, default_out_root: str) -> None:
    """Checks Hydra cannot state in one line: config-group options and output directories."""
    groups = config_groups(conf_dir)
    dirs: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key in groups:
            for option in value.split(","):
                _choice(key, option, groups[key])
        elif key in ("out_root", "hydra.run.dir", "hydra.sweep.dir"):
            dirs[key] = value
    if not dirs:
        dirs["out_root"] = default_out_root
    for key, d in dirs.items():
        if "${" not in d and not _writable(Path(d)):
            raise ConfigError(key, d, "must be a writable directory")
