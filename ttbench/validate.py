"""Every config value checked once, at the edge, before any computation, and the typed run
specification built from them (`validate(cfg) -> RunSpec`).

A bad value raises ConfigError, whose message is one line naming the key, the value given and
what is allowed; the entry points print it and exit with status 2, without a traceback.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ttbench.config import compose, config_groups
from ttbench.core.linearize import MODES
from ttbench.core.losses import LOSSES
from ttbench.core.sgd import NOISES, SCHEDULES, SCHEMES
from ttbench.core.sketch import SKETCHES
from ttbench.core.stability import schedule
from ttbench.data.registry import DATASETS, NUM_CLASSES
from ttbench.models.zoo import TIMM_MODELS, TTBENCH
from ttbench.predictors import PREDICTORS, STOCHASTIC
from ttbench.probes import PROBES
from ttbench.spec import (
    DataSpec,
    FinetuneSpec,
    ModelSpec,
    PlanSpec,
    PretrainSettings,
    ProbeSpec,
    RefineSpec,
    RunSpec,
    StochasticSpec,
    SubsetSpec,
    ThetaSpec,
    Training,
    WatchSpec,
)

MAX_STEPS = 10_000_000  # curves (and SGD batches) are held in memory, per step


class ConfigError(ValueError):
    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def _number(cfg: DictConfig, key: str) -> float:
    """A finite number (nan passes every comparison and inf hangs the fine-tuning: refused)."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, value, "must be a number")
    if not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number")
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


def validate(cfg: DictConfig) -> RunSpec:
    """Check a composed run config and return its spec; raises ConfigError on the first bad
    value."""
    if _number(cfg, "lr") <= 0:
        raise ConfigError("lr", cfg.lr, "must be > 0")
    if not 0 <= _number(cfg, "momentum") < 1:
        raise ConfigError("momentum", cfg.momentum, "must be in [0, 1)")
    if _number(cfg, "weight_decay") < 0:
        raise ConfigError("weight_decay", cfg.weight_decay, "must be >= 0")
    cache = Path(cfg.cache_dir).expanduser()
    if cache.exists() and not cache.is_dir():
        raise ConfigError("cache_dir", cfg.cache_dir, "must be a directory (or not exist yet)")
    if cfg.threads is not None:
        _integer(cfg, "threads", 1)
    if _number(cfg, "checkpoint_s") < 0:
        raise ConfigError("checkpoint_s", cfg.checkpoint_s, "must be >= 0 (0: every step)")
    if _integer(cfg, "steps", 1) > MAX_STEPS:
        raise ConfigError(
            "steps", cfg.steps, f"must be <= {MAX_STEPS:,}: every step's loss is kept in memory"
        )
    if not 0 <= _integer(cfg, "seed", 0) < 2**32:  # numpy's and torch's generators take these
        raise ConfigError("seed", cfg.seed, "must be below 2**32")
    eps = cfg.eps
    if not OmegaConf.is_list(eps) or len(eps) == 0:
        raise ConfigError("eps", eps, "must be a non-empty list of numbers in (0, 1)")
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, int | float) or not 0 < e < 1:
            raise ConfigError("eps", list(eps), "every value must be in (0, 1)")
    if len(set(eps)) < len(eps):
        raise ConfigError("eps", list(eps), "every value must be different")
    _choice("loss", cfg.loss, LOSSES)
    _choice("device", cfg.device, ("auto", "cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "no CUDA device is available; use auto or cpu")
    _choice("dataset.name", cfg.dataset.name, DATASETS)
    k = _integer(cfg, "task.k", 2)  # one class: every curve is flat, nothing to predict
    check_classes(k, NUM_CLASSES.get(cfg.dataset.name), cfg.dataset.name)
    if cfg.model.name != "small_resnet":
        _choice("model.source", cfg.model.source, ("timm", "torchvision"))
    channels = cfg.dataset.get("channels", 1) if cfg.dataset.name == "digits" else 3
    # the small ResNet takes the channels of its pretraining data: the run's own dataset's
    # when it pretrains on it, the default digits' (1) otherwise
    if cfg.model.name == "small_resnet":
        wanted = channels if cfg.model.pretrain.dataset == cfg.dataset.name else 1
    else:
        wanted = 3
    if cfg.model.name != "small_resnet":
        _pretrained(cfg)
    if channels != wanted:
        raise ConfigError(
            "model",
            cfg.model.name,
            f"takes {wanted}-channel images; dataset {cfg.dataset.name} has {channels}"
            + (
                f" (set dataset.channels={wanted}: the digits' grey channel repeated)"
                if cfg.dataset.name == "digits"
                else ""
            ),
        )
    _patches(cfg)
    _integer(cfg, "task.n", 1)
    if _number(cfg, "model.head_init_std") < 0:
        raise ConfigError("model.head_init_std", cfg.model.head_init_std, "must be >= 0")
    if cfg.model.name == "small_resnet":
        _integer(cfg, "model.width", 1)
    _pretrain_settings(cfg)
    _optim(cfg)
    _theta_fields(cfg.theta, "theta")
    if cfg.refine.theta is not None:
        _choice("refine.theta", cfg.refine.theta, MODES)
    exact_only = cfg.theta.mode == "exact" and cfg.refine.theta in (None, "exact")
    if cfg.theta.get("outputs") is not None and exact_only:
        raise ConfigError(
            "theta.outputs",
            cfg.theta.outputs,
            "estimates the class-averaged Theta_s: use theta.mode (or refine.theta) = "
            "trace or projected",
        )
    names = predictor_names(cfg)
    if "subset" in names:
        n0 = _integer(cfg, "subset.n0", 2)
        k0 = _integer(cfg, "subset.k0", 1)
        _number(cfg, "subset.alpha")
        size = n0 * (cfg.task.k if cfg.theta.mode != "trace" else 1)  # the subset's spectrum
        if k0 >= size:
            raise ConfigError(
                "subset.k0",
                k0,
                f"must be below the subset's {size} eigenvalues (subset.n0 x classes, or "
                "subset.n0 in trace mode): the tail beyond k0 is what it extrapolates",
            )
    if any(PREDICTORS[n].kind == STOCHASTIC for n in names):
        _integer(cfg, "stochastic.paths", 1)
        _choice("stochastic.noise", cfg.stochastic.noise, NOISES)
        _choice("stochastic.schedule", cfg.stochastic.schedule, SCHEDULES)
    if not OmegaConf.is_list(cfg.probes):
        raise ConfigError("probes", cfg.probes, "must be a list, e.g. probes=[spectrum]")
    for name in cfg.probes:
        _choice("probes", name, PROBES)
    _probe_settings(cfg)
    watch_steps(cfg)
    _integer(cfg, "watch.samples", 1)
    if not _number(cfg, "watch.threshold") > 0:
        raise ConfigError("watch.threshold", cfg.watch.threshold, "must be > 0")
    _plan_settings(cfg)
    _finetune_settings(cfg)
    if names and cfg.weight_decay != 0:
        raise ConfigError(
            "weight_decay", cfg.weight_decay, "the predictors model 0 only (or use predictor=none)"
        )
    return spec_of(cfg, tuple(names))


def plan_eps(cfg: DictConfig) -> float:
    """The plan's target eps: plan.eps, else the one of eps nearest 0.05."""
    if cfg.plan.eps is not None:
        return float(cfg.plan.eps)
    return float(min(cfg.eps, key=lambda e: abs(e - 0.05)))


def plan_predictor(cfg: DictConfig) -> str:
    """The plain predictor a plan solves: plan.predictor, else discrete (GD) or exact_sgd."""
    if cfg.plan.predictor is not None:
        return cfg.plan.predictor
    return "exact_sgd" if cfg.optim.name == "sgd" else "discrete"


def _theta_fields(node: DictConfig, key: str) -> None:
    """The settings of one Θ (theta.*, or the plan's), named under `key`."""
    holder = OmegaConf.create({key.split(".")[0]: {}})
    OmegaConf.update(holder, key, node, merge=False)
    _choice(f"{key}.mode", node.mode, MODES)
    for name in ("block", "dim", "chunk"):
        _integer(holder, f"{key}.{name}", 1)
    _choice(f"{key}.sketch", node.sketch, SKETCHES)
    if node.get("outputs") is not None:
        _integer(holder, f"{key}.outputs", 1)
    if _number(holder, f"{key}.memory_gb") <= 0:
        raise ConfigError(f"{key}.memory_gb", node.memory_gb, "must be > 0")


def plan_theta(cfg: DictConfig) -> DictConfig:
    """The plan's Θ: theta.* with plan.theta.* over it."""
    return OmegaConf.merge(cfg.theta, cfg.plan.theta)


def _plan_settings(cfg: DictConfig) -> None:
    p = cfg.plan
    if p.eps is not None and p.eps not in cfg.eps:
        raise ConfigError("plan.eps", p.eps, f"must be one of eps={list(cfg.eps)}")
    name = plan_predictor(cfg)
    _choice("plan.predictor", name, PREDICTORS)
    pred = PREDICTORS[name]
    why = pred.applies(cfg.loss, cfg.optim.name, 0)
    if pred.prefix or pred.pooled or why:
        raise ConfigError("plan.predictor", name, why or "must be a plain predictor (no prefix)")
    unknown = sorted(set(p.theta) - set(cfg.theta))
    if unknown:
        raise ConfigError(f"plan.theta.{unknown[0]}", p.theta[unknown[0]], "is not a theta setting")
    _theta_fields(plan_theta(cfg), "plan.theta")
    _integer(cfg, "plan.probe_steps", 1)
    if _number(cfg, "plan.margin") < 0:
        raise ConfigError("plan.margin", p.margin, "must be >= 0")
    if _number(cfg, "plan.overhead_s") < 0:
        raise ConfigError("plan.overhead_s", p.overhead_s, "must be >= 0")
    if p.table is not None and not Path(p.table).expanduser().exists():
        raise ConfigError("plan.table", p.table, "does not exist: run python -m ttbench.plan first")


TRAINABLE = ("all", "head", "norm", "adapters")


def _finetune_settings(cfg: DictConfig) -> None:
    _choice("trainable", cfg.trainable, TRAINABLE)
    if cfg.lora.rank is not None:
        _integer(cfg, "lora.rank", 1)
        if _number(cfg, "lora.alpha") <= 0:
            raise ConfigError("lora.alpha", cfg.lora.alpha, "must be > 0")
    elif cfg.trainable == "adapters":
        raise ConfigError("trainable", "adapters", "needs adapters: set lora.rank (e.g. 8)")


def _patches(cfg: DictConfig) -> None:
    """A ViT's images are tiled by its patches: dataset.resolution set, and a multiple."""
    patch = cfg.model.get("patch_size")
    if patch is None:
        return
    _integer(cfg, "model.patch_size", 1)
    resolution = cfg.dataset.get("resolution")
    if resolution is None or resolution % patch:
        raise ConfigError(
            "dataset.resolution",
            resolution,
            f"must be set to a multiple of {cfg.model.name}'s model.patch_size={patch}",
        )


def _pretrained(cfg: DictConfig) -> None:
    """model.pretrained of an ImageNet ResNet: its weights, none, or ttbench's own, pretrained
    on the source part of the run's dataset (which must have one)."""
    value = cfg.model.pretrained
    if value not in (True, False, TTBENCH):
        raise ConfigError("model.pretrained", value, f"must be true, false or {TTBENCH}")
    if value is True and cfg.model.name in TIMM_MODELS and not cfg.model.weights:
        raise ConfigError(
            "model.pretrained",
            value,
            f"{cfg.model.name}: set model.weights=FILE (timm's weights, .safetensors or .pth), "
            f"or model.pretrained={TTBENCH} (pretrained here on the digits) or false",
        )
    if value == TTBENCH and (cfg.model.get("pretrain") is None or cfg.dataset.name != "digits"):
        raise ConfigError(
            "model.pretrained",
            value,
            "needs model.pretrain settings and dataset=digits (whose source part it pretrains on)",
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
    if cfg.refine.steps is not None:
        k = _integer(cfg, "refine.steps", 0)
        if k >= cfg.steps or k % every:
            raise ConfigError(
                "refine.steps",
                k,
                f"must be null (10% of steps) or below steps={cfg.steps} and a multiple of "
                "optim.eval_every",
            )
    if cfg.optim.name == "sgd":
        _choice("optim.sampling", cfg.optim.sampling, SCHEMES)
        b = _integer(cfg, "optim.batch_size", 1)
        if b > cfg.task.k * cfg.task.n:
            raise ConfigError(
                "optim.batch_size", b, f"must be <= N = task.k * task.n = {cfg.task.k * cfg.task.n}"
            )


def watch_steps(cfg: DictConfig) -> tuple[int, ...]:
    """The watched steps: watch.steps, `auto` being ttbench.core.stability.schedule."""
    value = OmegaConf.select(cfg, "watch.steps")
    if value == "auto":
        return schedule(cfg.steps)
    ok = OmegaConf.is_list(value) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < cfg.steps for v in value
    )
    if not ok:
        shown = list(value) if OmegaConf.is_list(value) else value
        raise ConfigError(
            "watch.steps", shown, f"must be auto, [] or a list of steps in [0, steps={cfg.steps})"
        )
    return tuple(sorted(set(value)))


def refine_steps(cfg: DictConfig) -> int:
    """k: refine.steps, or when null 10% of the budget, rounded down to whole evaluations."""
    if cfg.refine.steps is not None:
        return cfg.refine.steps
    every = cfg.optim.eval_every
    return cfg.steps // 10 // every * every


def predictor_names(cfg: DictConfig) -> list[str]:
    """The predictors a run asks for (`all`: every registered one), each known and applicable
    to the loss and optimiser; with predictor.skip_inapplicable those that do not apply are
    dropped, otherwise they are refused."""
    names = cfg.predictor.names
    names = list(PREDICTORS) if names == "all" else list(names)
    for name in names:
        _choice("predictor.names", name, PREDICTORS)
    kept = []
    for name in names:
        reason = PREDICTORS[name].applies(
            cfg.loss, cfg.optim.name, refine_steps(cfg), cfg.steps, cfg.optim.eval_every
        )
        if reason is None:
            kept.append(name)
        elif not cfg.predictor.get("skip_inapplicable", False):
            raise ConfigError("predictor", name, reason)
    return kept


def check_classes(k: int, classes: int | None, dataset: str) -> None:
    """k classes per task must exist in the dataset (None: not known before reading it)."""
    if classes is not None and k > classes:
        raise ConfigError("task.k", k, f"must be <= {classes}, the classes of {dataset}")


def _writable(path: Path) -> bool:
    """Whether `path` is, or can be created as, a writable directory (it is created)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix[:-1]]
    keys = [prefix[:-1]] if prefix else []
    for k, v in node.items():
        keys += _flat_keys(v, f"{prefix}{k}.")
    return keys


def _check_keys(overrides: list[tuple[str, str, str]], groups: dict[str, list[str]]) -> None:
    """Every key set on the command line is one the config has (with the groups it chooses):
    a mistyped key gets a one-line error with the nearest known keys, and '+key' (a key added
    to the config) is refused, since nothing would read it."""
    chosen = [f"{k}={v.split(',')[0]}" for prefix, k, v in overrides if k in groups]
    known = _flat_keys(OmegaConf.to_container(compose(chosen), resolve=False))
    for prefix, key, value in overrides:
        if key in groups or key.startswith("hydra"):
            continue
        if prefix:
            raise ConfigError(
                f"{prefix}{key}", value, "ttbench reads only the keys its config has; set one"
            )
        if key not in known:
            near = difflib.get_close_matches(key, known, n=3)
            hint = f": did you mean {' or '.join(near)}?" if near else ""
            raise ConfigError(key, value, f"is not a setting ttbench has{hint}")


def check_cli(argv: Sequence[str], default_out_root: str) -> None:
    """Checks Hydra cannot state in one line: config-group options, unknown keys and output
    directories (created here, so that an unwritable one is found before Hydra starts)."""
    groups = config_groups()
    dirs: dict[str, str] = {}
    overrides = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        key, value = arg[len(prefix) :].split("=", 1)
        overrides.append((prefix, key, value))
        if key in groups:
            for option in value.split(","):
                _choice(key, option, groups[key])
        elif key in ("out_root", "hydra.run.dir", "hydra.sweep.dir"):
            dirs[key] = value
    _check_keys(overrides, groups)
    if not dirs:
        dirs["out_root"] = default_out_root
    for key, d in dirs.items():
        if "${" not in d and not _writable(Path(d)):
            raise ConfigError(key, d, "must be a writable directory")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _pretrain_settings(cfg: DictConfig) -> None:
    """The settings of a pretraining ttbench does itself."""
    p = cfg.model.get("pretrain")
    if p is None or (cfg.model.name != "small_resnet" and cfg.model.pretrained != TTBENCH):
        return
    _integer(cfg, "model.pretrain.epochs", 1)
    _integer(cfg, "model.pretrain.batch_size", 1)
    if not _number(cfg, "model.pretrain.lr") > 0:
        raise ConfigError("model.pretrain.lr", p.lr, "must be > 0")
    _choice("model.pretrain.schedule", p.get("schedule", "constant"), ("constant", "onecycle"))
    for key in ("augment", "precise_bn"):
        if not isinstance(p.get(key, False), bool):
            raise ConfigError(f"model.pretrain.{key}", p.get(key), "must be true or false")


def _model(m: DictConfig) -> ModelSpec:
    if m.name == "small_resnet":
        return ModelSpec(
            m.name, m.head_init_std, width=m.width, pretrain=PretrainSettings(**_plain(m.pretrain))
        )
    own = m.pretrained == TTBENCH
    return ModelSpec(
        m.name,
        m.head_init_std,
        source=m.source,
        pretrained=m.pretrained,
        weights=m.weights,
        pretrain=PretrainSettings(**_plain(m.pretrain)) if own else None,
        patch_size=m.get("patch_size"),
    )


def spec_of(cfg: DictConfig, predictors: tuple[str, ...]) -> RunSpec:
    """The spec of a validated config; `predictors` are the names that apply to it. The
    recorded config holds the k that refine.steps resolved to."""
    o = cfg.optim
    sgd = o.name == "sgd"
    config = _plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    config["refine"]["steps"] = refine_steps(cfg)
    dataset = _plain(cfg.dataset)
    return RunSpec(
        seed=cfg.seed,
        dataset=DataSpec(dataset.pop("name"), dataset),
        model=_model(cfg.model),
        classes=cfg.task.k,
        per_class=cfg.task.n,
        train=Training(
            o.name,
            float(cfg.lr),
            float(cfg.momentum),
            float(cfg.weight_decay),
            cfg.steps,
            cfg.loss,
            o.eval_every,
            o.smooth,
            o.batch_size if sgd else None,
            o.sampling if sgd else None,
        ),
        eps=tuple(float(e) for e in cfg.eps),
        predictors=predictors,
        theta=ThetaSpec(**_plain(cfg.theta)),
        subset=SubsetSpec(**_plain(cfg.subset)),
        stochastic=StochasticSpec(**_plain(cfg.stochastic)),
        refine=RefineSpec(refine_steps(cfg), cfg.refine.theta),
        watch=WatchSpec(watch_steps(cfg), cfg.watch.samples, float(cfg.watch.threshold)),
        finetune=FinetuneSpec(cfg.trainable, cfg.lora.rank, float(cfg.lora.alpha)),
        plan=PlanSpec(
            eps=plan_eps(cfg),
            predictor=plan_predictor(cfg),
            theta=ThetaSpec(**_plain(plan_theta(cfg))),
            probe_steps=cfg.plan.probe_steps,
            margin=float(cfg.plan.margin),
            overhead_s=float(cfg.plan.overhead_s),
            table=cfg.plan.table,
            set_steps=bool(cfg.plan.set_steps),
        ),
        probes=ProbeSpec(
            tuple(cfg.probes),
            tuple(cfg.probe.sizes),
            tuple(cfg.probe.dims),
            cfg.probe.components,
        ),
        device=cfg.device,
        threads=cfg.threads,
        cache_dir=Path(cfg.cache_dir).expanduser(),
        checkpoint_s=float(cfg.checkpoint_s),
        preset=cfg.preset,
        config=config,
    )
