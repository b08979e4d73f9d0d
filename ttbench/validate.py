"""Every config value checked once, at the edge, before any computation, and the typed run
specification built from them (`validate(cfg) -> RunSpec`): each setting against its own rule
(declared with it, in ttbench.settings), then the rules that read several settings.

A bad value raises ConfigError, whose message is one line naming the key, the value given and
what is allowed; the entry points print it and exit with status 2, without a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ttbench.config import compose, config_groups
from ttbench.errors import ConfigError
from ttbench.settings import EVERY_CLASS, SETTINGS, Each, OneOf, choice, plain, registry
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

_ABSENT = object()


def _imports_torch(rule: object) -> bool:
    """A rule reading a registry's names, which imports torch."""
    return isinstance(rule, OneOf) or (isinstance(rule, Each) and isinstance(rule.rule, OneOf))


def check_settings(cfg: DictConfig) -> None:
    """Every setting of SETTINGS that this config has, against its rule; the names of the
    registries last, since reading those imports torch."""
    order = sorted(SETTINGS.items(), key=lambda item: _imports_torch(item[1]))
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
    if cfg.device == "cuda" and not importlib.import_module("torch").cuda.is_available():
        raise ConfigError("device", "cuda", "no CUDA device is available; use auto or cpu")
    classes = registry("data.registry:NUM_CLASSES").get(cfg.dataset.name)
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
    exact_only = cfg.theta.mode in EVERY_CLASS and cfg.refine.theta in (None, *EVERY_CLASS)
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
    if "weight_function" in cfg.probes and cfg.weight_decay != 0:
        raise ConfigError(
            "weight_decay", cfg.weight_decay, "the weight_function probe models 0 only"
        )
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
    predictors = registry("predictors:PREDICTORS")
    choice("plan.predictor", name, predictors)
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
    own = registry("models.zoo:TTBENCH")  # model.pretrained=ttbench
    if value not in (True, False, own):
        raise ConfigError("model.pretrained", value, f"must be true, false or {own}")
    if (
        value is True
        and cfg.model.name in registry("models.zoo:TIMM_MODELS")
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
        return registry("core.stability:schedule")(cfg.steps)
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
    predictors = registry("predictors:PREDICTORS")
    names = cfg.predictor.names
    names = list(predictors) if names == "all" else list(names)
    for name in names:
        choice("predictor.names", name, predictors)
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
    config = OmegaConf.to_container(compose(chosen), resolve=False)
    # plan.theta (empty by default) takes any theta.* key
    known = list(dict.fromkeys(_flat_keys(config) + _flat_keys(config["theta"], "plan.theta.")))
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


def _check_values(overrides: list[tuple[str, str, str]], groups: dict[str, list[str]]) -> None:
    """A sweep's single values, against their settings' rules and composed as Hydra will (a
    list where a number belongs is refused here in one line, before Hydra's own compose); its
    swept values are its jobs', which the sweeper checks naming the job."""
    values = [f"{k}={v}" for _, k, v in overrides if k not in groups and not k.startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(values)
    single = [o.input_line for o in parsed if not o.is_sweep_override()]
    chosen = [f"{k}={v.split(',')[0]}" for _, k, v in overrides if k in groups]
    compose(chosen + single)  # checks each value against its rule first


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
                choice(key, option, groups[key])
        elif key in ("out_root", "hydra.run.dir", "hydra.sweep.dir"):
            dirs[key] = value
    _check_keys(overrides, groups)
    if "-m" in argv or "--multirun" in argv:  # a single run's config is composed next
        _check_values(overrides, groups)
    if not dirs:
        dirs["out_root"] = default_out_root
    for key, d in dirs.items():
        if "${" not in d and not _writable(Path(d)):
            raise ConfigError(key, d, "must be a writable directory")


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
        kwargs = tuple(sorted((plain(m.kwargs) or {}).items()))
        return ModelSpec(m.name, m.head_init_std, target=m._target_, kwargs=kwargs)
    if m.name == "small_resnet":
        return ModelSpec(
            m.name, m.head_init_std, width=m.width, pretrain=PretrainSettings(**plain(m.pretrain))
        )
    own = m.pretrained == registry("models.zoo:TTBENCH")
    return ModelSpec(
        m.name,
        m.head_init_std,
        source=m.source,
        pretrained=m.pretrained,
        weights=m.weights,
        pretrain=PretrainSettings(**plain(m.pretrain)) if own else None,
        patch_size=m.get("patch_size"),
    )


def spec_of(cfg: DictConfig, predictors: tuple[str, ...]) -> RunSpec:
    """The spec of a validated config; `predictors` are the names that apply to it. The
    recorded config holds the k that refine.steps resolved to."""
    o = cfg.optim
    sgd = o.name == "sgd"
    config = plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    config["refine"]["steps"] = refine_steps(cfg)
    dataset = plain(cfg.dataset)
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
        theta=ThetaSpec(**plain(cfg.theta)),
        subset=SubsetSpec(**plain(cfg.subset)),
        stochastic=StochasticSpec(**plain(cfg.stochastic)),
        refine=RefineSpec(refine_steps(cfg), cfg.refine.theta),
        watch=WatchSpec(watch_steps(cfg), cfg.watch.samples, float(cfg.watch.threshold)),
        finetune=FinetuneSpec(cfg.trainable, cfg.lora.rank, float(cfg.lora.alpha)),
        plan=PlanSpec(
            eps=plan_eps(cfg),
            predictor=plan_predictor(cfg),
            theta=ThetaSpec(**plain(plan_theta(cfg))),
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
