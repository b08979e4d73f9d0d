"""Every config value checked once, at the edge, before any computation, and the typed run
specification built from them (`validate(cfg) -> RunSpec`).

A bad value raises ConfigError, whose message is one line naming the key, the value given and
what is allowed; the entry points print it and exit with status 2, without a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttbench.config import compose, config_groups
from ttbench.errors import ConfigError
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


def _registry(name: str) -> Any:
    """A name of a registry module ("module:NAME"), imported when first needed: they import
    torch (~2 s), which a bad number on the command line need not wait for."""
    module, attr = name.split(":")
    return getattr(importlib.import_module(f"ttbench.{module}"), attr)


def _names(name: str) -> Callable[[], Iterable]:
    return lambda: _registry(name)


MAX_STEPS = 10_000_000  # curves (and SGD batches) are held in memory, per step


def _choice(key: str, value: object, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    if value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class Number:
    """A finite number (an integer with `integer`) within the bounds given; `null` allowed
    with `optional`; `says` replaces the generated range."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    integer: bool = False
    optional: bool = False
    says: str | None = None

    def range(self) -> str:
        if self.says:
            return self.says
        kind = "an integer " if self.integer else ""
        low = "[" if self.ge is not None else "(" if self.gt is not None else None
        high = "]" if self.le is not None else ")" if self.lt is not None else None
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if low and high:
            return f"must be {kind}in {low}{lo:g}, {hi:g}{high}"
        if low:
            return f"must be {kind}{'>=' if low == '[' else '>'} {lo:g}"
        if high:
            return f"must be {kind}{'<=' if high == ']' else '<'} {hi:g}"
        return "must be an integer" if self.integer else "must be a finite number"

    def check(self, key: str, value: object) -> None:
        if value is None and self.optional:
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.integer and not isinstance(value, int)):
            raise ConfigError(key, value, self.range() if self.integer else "must be a number")
        if not math.isfinite(value):  # nan passes every comparison, inf hangs the fine-tuning
            raise ConfigError(key, value, "must be a finite number")
        if (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        ):
            raise ConfigError(key, value, self.range())


@dataclass(frozen=True)
class Flag:
    def check(self, key: str, value: object) -> None:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")


@dataclass(frozen=True)
class OneOf:
    """One of `values` (a callable: the names of a registry, read when checked)."""

    values: tuple | Callable[[], Iterable]
    optional: bool = False

    def check(self, key: str, value: object) -> None:
        if value is None and self.optional:
            return
        _choice(key, value, self.values() if callable(self.values) else self.values)


@dataclass(frozen=True)
class Text:
    optional: bool = False

    def check(self, key: str, value: object) -> None:
        if not (isinstance(value, str) or (value is None and self.optional)):
            raise ConfigError(key, value, "must be a text" + (" or null" if self.optional else ""))


Rule = Number | Flag | OneOf | Text
TRAINABLE = ("all", "head", "norm", "adapters")
POSITIVE, COUNT, NONNEGATIVE = Number(gt=0), Number(ge=1, integer=True), Number(ge=0)
SEED = Number(ge=0, lt=2**32, integer=True, says="must be an integer in [0, 2**32)")

# Every setting with a type or a range of its own, one line each, checked wherever it is set
# (even when nothing reads it in this run). Its default and meaning are in the YAML; what
# depends on other settings is in validate(). test_config keeps this in step with the YAML.
SETTINGS: dict[str, Rule] = {
    "seed": SEED,
    "preset": Text(optional=True),
    "task.k": Number(ge=2, integer=True),  # one class: every curve is flat, nothing to predict
    "task.n": COUNT,
    "lr": POSITIVE,
    "momentum": Number(ge=0, lt=1),
    "weight_decay": NONNEGATIVE,
    "steps": Number(
        ge=1,
        le=MAX_STEPS,
        integer=True,
        says=f"must be an integer in [1, {MAX_STEPS:,}] (every step's loss is kept in memory)",
    ),
    "loss": OneOf(_names("core.losses:LOSSES")),
    "device": OneOf(("auto", "cpu", "cuda")),
    "threads": Number(ge=1, integer=True, optional=True),
    "checkpoint_s": Number(ge=0, says="must be >= 0 (0: every step)"),
    "dataset.name": OneOf(_names("data.registry:DATASETS")),
    "dataset.channels": OneOf((1, 3)),
    "dataset.resolution": Number(ge=1, integer=True, optional=True),
    "dataset.source_fraction": Number(gt=0, lt=1),
    "dataset.split_seed": SEED,
    "dataset.verify": Flag(),
    "model.source": OneOf(("timm", "torchvision")),
    "model._target_": Text(optional=True),
    "dataset._target_": Text(optional=True),
    "model.head_init_std": NONNEGATIVE,
    "model.width": COUNT,
    "model.patch_size": COUNT,
    "model.pretrain.epochs": COUNT,
    "model.pretrain.batch_size": COUNT,
    "model.pretrain.lr": POSITIVE,
    "model.pretrain.seed": SEED,
    "model.pretrain.conv_scale": POSITIVE,
    "model.pretrain.schedule": OneOf(("constant", "onecycle")),
    "model.pretrain.augment": Flag(),
    "model.pretrain.precise_bn": Flag(),
    "optim.name": OneOf(("gd", "sgd")),
    "optim.eval_every": COUNT,
    "optim.smooth": COUNT,
    "optim.batch_size": COUNT,
    "optim.sampling": OneOf(_names("core.sgd:SCHEMES")),
    "predictor.skip_inapplicable": Flag(),
    "theta.mode": OneOf(_names("core.linearize:MODES")),
    "theta.block": COUNT,
    "theta.dim": COUNT,
    "theta.sketch": OneOf(_names("core.sketch:SKETCHES")),
    "theta.chunk": COUNT,
    "theta.memory_gb": POSITIVE,
    "theta.outputs": Number(ge=1, integer=True, optional=True),
    "subset.n0": Number(ge=2, integer=True),
    "subset.alpha": Number(),
    "subset.k0": COUNT,
    "stochastic.paths": COUNT,
    "stochastic.noise": OneOf(_names("core.sgd:NOISES")),
    "stochastic.schedule": OneOf(_names("core.sgd:SCHEDULES")),
    "refine.steps": Number(ge=0, integer=True, optional=True),
    "refine.theta": OneOf(_names("core.linearize:MODES"), optional=True),
    "watch.samples": COUNT,
    "watch.threshold": POSITIVE,
    "trainable": OneOf(TRAINABLE),
    "lora.rank": Number(ge=1, integer=True, optional=True),
    "lora.alpha": POSITIVE,
    "probe.components": COUNT,
    "plan.eps": Number(gt=0, lt=1, optional=True),
    "plan.probe_steps": COUNT,
    "plan.margin": NONNEGATIVE,
    "plan.overhead_s": Number(ge=0, optional=True),
    "plan.set_steps": Flag(),
    "tensorboard": Flag(),
}
# Settings checked by a rule of validate() that reads other settings, or free text.
BY_RULE = (
    "eps", "predictor.names", "probes", "probe.sizes", "probe.dims", "watch.steps",
    "model.name", "model.pretrained", "model.weights", "model.pretrain.dataset",
    "plan.predictor", "plan.theta", "plan.table", "dataset.root", "cache_dir", "out_root",
    "model.kwargs", "dataset.kwargs",
)  # fmt: skip
_ABSENT = object()


def check_settings(cfg: DictConfig) -> None:
    """Every setting of SETTINGS that this config has, against its rule; the names of the
    registries last, since reading those imports torch."""
    order = sorted(SETTINGS.items(), key=lambda item: isinstance(item[1], OneOf))
    for key, rule in order:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            rule.check(key, value)


def validate(cfg: DictConfig) -> RunSpec:
    """Check a composed run config and return its spec; raises ConfigError on the first bad
    value."""
    check_settings(cfg)
    cache = Path(cfg.cache_dir).expanduser()
    if cache.exists() and not cache.is_dir():
        raise ConfigError("cache_dir", cfg.cache_dir, "must be a directory (or not exist yet)")
    eps = cfg.eps
    if not OmegaConf.is_list(eps) or len(eps) == 0:
        raise ConfigError("eps", eps, "must be a non-empty list of numbers in (0, 1)")
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, int | float) or not 0 < e < 1:
            raise ConfigError("eps", list(eps), "every value must be in (0, 1)")
    if len(set(eps)) < len(eps):
        raise ConfigError("eps", list(eps), "every value must be different")
    if cfg.device == "cuda" and not importlib.import_module("torch").cuda.is_available():
        raise ConfigError("device", "cuda", "no CUDA device is available; use auto or cpu")
    classes = _registry("data.registry:NUM_CLASSES").get(cfg.dataset.name)
    check_classes(cfg.task.k, classes, cfg.dataset.name)
    plugins = [g for g in ("model", "dataset") if cfg[g].name == CUSTOM]
    for group in plugins:
        _importable(f"{group}._target_", cfg[group]._target_)
        kwargs = cfg[group].kwargs
        if kwargs is not None and not OmegaConf.is_dict(kwargs):
            raise ConfigError(f"{group}.kwargs", kwargs, "must be a mapping, e.g. {width:64}")
    channels = cfg.dataset.get("channels", 1) if cfg.dataset.name == "digits" else 3
    # the small ResNet takes the channels of its pretraining data: the run's own dataset's
    # when it pretrains on it, the default digits' (1) otherwise
    if cfg.model.name == "small_resnet":
        wanted = channels if cfg.model.pretrain.dataset == cfg.dataset.name else 1
    else:
        wanted = 3
    if cfg.model.name not in ("small_resnet", CUSTOM):
        _pretrained(cfg)
    if channels != wanted and not plugins:  # a plug-in's are checked on the task's images
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
    _optim(cfg)
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
        k0 = cfg.subset.k0
        size = cfg.subset.n0 * (cfg.task.k if cfg.theta.mode != "trace" else 1)  # its spectrum
        if k0 >= size:
            raise ConfigError(
                "subset.k0",
                k0,
                f"must be below the subset's {size} eigenvalues (subset.n0 x classes, or "
                "subset.n0 in trace mode): the tail beyond k0 is what it extrapolates",
            )
    if not OmegaConf.is_list(cfg.probes):
        raise ConfigError("probes", cfg.probes, "must be a list, e.g. probes=[spectrum]")
    for name in cfg.probes:
        _choice("probes", name, _registry("probes:PROBES"))
    _probe_settings(cfg)
    watch_steps(cfg)
    _plan_settings(cfg)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard", True, "needs the tensorboard package: pip install tensorboard"
        )
    if cfg.lora.rank is None and cfg.trainable == "adapters":
        raise ConfigError("trainable", "adapters", "needs adapters: set lora.rank (e.g. 8)")
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


def _plan_theta_fields(node: DictConfig) -> None:
    """The plan's Θ (theta.* with plan.theta.* over it), by theta.*'s rules."""
    for name, value in node.items():
        SETTINGS[f"theta.{name}"].check(f"plan.theta.{name}", value)


def plan_theta(cfg: DictConfig) -> DictConfig:
    """The plan's Θ: theta.* with plan.theta.* over it."""
    return OmegaConf.merge(cfg.theta, cfg.plan.theta)


def _plan_settings(cfg: DictConfig) -> None:
    p = cfg.plan
    if p.eps is not None and p.eps not in cfg.eps:
        raise ConfigError("plan.eps", p.eps, f"must be one of eps={list(cfg.eps)}")
    name = plan_predictor(cfg)
    predictors = _registry("predictors:PREDICTORS")
    _choice("plan.predictor", name, predictors)
    pred = predictors[name]
    why = pred.applies(cfg.loss, cfg.optim.name, 0)
    if pred.prefix or pred.pooled or why:
        raise ConfigError("plan.predictor", name, why or "must be a plain predictor (no prefix)")
    unknown = sorted(set(p.theta) - set(cfg.theta))
    if unknown:
        raise ConfigError(f"plan.theta.{unknown[0]}", p.theta[unknown[0]], "is not a theta setting")
    _plan_theta_fields(plan_theta(cfg))
    if p.table is not None and not (
        isinstance(p.table, str) and Path(p.table).expanduser().exists()
    ):
        raise ConfigError("plan.table", p.table, "does not exist: run python -m ttbench.plan first")


def _patches(cfg: DictConfig) -> None:
    """A ViT's images are tiled by its patches: dataset.resolution set, and a multiple."""
    patch = cfg.model.get("patch_size")
    if patch is None:
        return
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
    own = _registry("models.zoo:TTBENCH")  # model.pretrained=ttbench
    if value not in (True, False, own):
        raise ConfigError("model.pretrained", value, f"must be true, false or {own}")
    if (
        value is True
        and cfg.model.name in _registry("models.zoo:TIMM_MODELS")
        and not (cfg.model.weights)
    ):
        raise ConfigError(
            "model.pretrained",
            value,
            f"{cfg.model.name}: set model.weights=FILE (timm's weights, .safetensors or .pth), "
            f"or model.pretrained={own} (pretrained here on the digits) or false",
        )
    if value == own and (cfg.model.get("pretrain") is None or cfg.dataset.name != "digits"):
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
    """The probes' settings (refused when bad, like every setting, even if no probe runs)."""
    _integers(cfg, "probe.sizes", 1)
    _integers(cfg, "probe.dims", 1)
    if "weight_function" in cfg.probes and cfg.weight_decay != 0:
        raise ConfigError(
            "weight_decay", cfg.weight_decay, "the weight_function probe models 0 only"
        )


def _optim(cfg: DictConfig) -> None:
    every = cfg.optim.eval_every
    if cfg.steps % every:
        raise ConfigError("optim.eval_every", every, f"must divide steps={cfg.steps}")
    window = cfg.optim.smooth
    if window % 2 == 0:
        raise ConfigError("optim.smooth", window, "must be odd (a centred window)")
    if cfg.refine.steps is not None:
        k = cfg.refine.steps
        if k >= cfg.steps or k % every:
            raise ConfigError(
                "refine.steps",
                k,
                f"must be null (10% of steps) or below steps={cfg.steps} and a multiple of "
                "optim.eval_every",
            )
    if cfg.optim.name == "sgd":
        b = cfg.optim.batch_size
        if b > cfg.task.k * cfg.task.n:
            raise ConfigError(
                "optim.batch_size", b, f"must be <= N = task.k * task.n = {cfg.task.k * cfg.task.n}"
            )


def watch_steps(cfg: DictConfig) -> tuple[int, ...]:
    """The watched steps: watch.steps, `auto` being ttbench.core.stability.schedule."""
    value = OmegaConf.select(cfg, "watch.steps")
    if value == "auto":
        return _registry("core.stability:schedule")(cfg.steps)
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
    predictors = _registry("predictors:PREDICTORS")
    names = cfg.predictor.names
    names = list(predictors) if names == "all" else list(names)
    for name in names:
        _choice("predictor.names", name, predictors)
    kept = []
    for name in names:
        reason = predictors[name].applies(
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
        group = key.split(".")[0]
        if key not in known and key.endswith("._target_") and group in ("model", "dataset"):
            raise ConfigError(key, value, f"set {group}=custom with it (your own {group})")
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


CUSTOM = "custom"  # the plug-in option of the model and dataset groups


def _importable(key: str, target: object) -> None:
    """An importable callable (a plug-in's _target_), else a line naming what failed."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(key, target, "must name a callable to import, e.g. my_pkg.make_model")
    module, _, name = target.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(key, target, f"cannot be imported ({e})") from None
    if not callable(fn):
        raise ConfigError(key, target, "is not callable")


def _model(m: DictConfig) -> ModelSpec:
    if m.name == CUSTOM:
        kwargs = tuple(sorted((_plain(m.kwargs) or {}).items()))
        return ModelSpec(m.name, m.head_init_std, target=m._target_, kwargs=kwargs)
    if m.name == "small_resnet":
        return ModelSpec(
            m.name, m.head_init_std, width=m.width, pretrain=PretrainSettings(**_plain(m.pretrain))
        )
    own = m.pretrained == _registry("models.zoo:TTBENCH")
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
            overhead_s=None if cfg.plan.overhead_s is None else float(cfg.plan.overhead_s),
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
        tensorboard=cfg.tensorboard,
    )
