"""Every run setting declared once: its type, default, range and meaning on one line
(DomainBed's hparams_registry), as the Hydra structured config that `conf/config.yaml` starts
from. A config group's keys (dataset.*, model.*, optim.*, predictor.*) take their values from
the option chosen (its YAML) and their ranges from GROUP_RULES. `SETTINGS` is every rule by its
dotted key; the rules that read several settings are `ttbench.validate.validate`'s.
`python -m ttbench.settings` prints the table of docs/settings.md. Free of torch."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ttbench.errors import ConfigError

MAX_STEPS = 10_000_000  # curves (and SGD batches) are held in memory, per step


def registry(name: str) -> Any:
    """A name of a registry module ("module:NAME"), imported when first needed: they import
    torch (~2 s), which a bad number on the command line need not wait for."""
    import importlib

    module, attr = name.split(":")
    return getattr(importlib.import_module(f"ttbench.{module}"), attr)


def _names(name: str) -> Callable[[], Iterable]:
    return lambda: registry(name)


def choice(key: str, value: object, allowed: Iterable[str]) -> None:
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
    def range(self) -> str:
        return "true or false"

    def check(self, key: str, value: object) -> None:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")


@dataclass(frozen=True)
class OneOf:
    """One of `values` (a callable: the names of a registry, read when checked)."""

    values: tuple | Callable[[], Iterable]
    optional: bool = False

    def range(self) -> str:
        values = self.values() if callable(self.values) else self.values
        return " | ".join(map(str, sorted(values))) + (" | null" if self.optional else "")

    def check(self, key: str, value: object) -> None:
        if value is None and self.optional:
            return
        choice(key, value, self.values() if callable(self.values) else self.values)


@dataclass(frozen=True)
class Text:
    optional: bool = False

    def range(self) -> str:
        return "a text" + (" or null" if self.optional else "")

    def check(self, key: str, value: object) -> None:
        if not (isinstance(value, str) or (value is None and self.optional)):
            raise ConfigError(key, value, "must be a text" + (" or null" if self.optional else ""))


@dataclass(frozen=True)
class Each:
    """A list whose every value follows `rule`; `says` when it is not a list (or an empty one,
    unless `empty`)."""

    rule: Number | OneOf
    says: str
    empty: bool = False
    distinct: bool = False

    def range(self) -> str:
        return self.says

    def check(self, key: str, value: object) -> None:
        if not isinstance(value, list | tuple | ListConfig) or not (value or self.empty):
            raise ConfigError(key, plain(value), self.says)
        shown = plain(value)
        for v in value:
            try:
                self.rule.check(key, v)
            except ConfigError as e:
                raise ConfigError(key, shown, f"every value {e.allowed}") from None
        if self.distinct and len(set(value)) < len(value):
            raise ConfigError(key, shown, "every value must be different")


Rule = Number | Flag | OneOf | Text | Each
CROSS = None  # a setting checked by a rule of validate() that reads other settings
POSITIVE, COUNT, NONNEGATIVE = Number(gt=0), Number(ge=1, integer=True), Number(ge=0)
SEED = Number(ge=0, lt=2**32, integer=True, says="must be an integer in [0, 2**32)")
MODES = OneOf(_names("core.linearize:MODES"))
EVERY_CLASS, SKETCHED = ("exact", "hybrid"), ("projected", "hybrid")  # Θ's modes that are so
TRAINABLE = ("all", "head", "norm", "adapters")


def plain(value: Any) -> Any:
    """A config node as plain Python (resolved); anything else as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def setting(default: Any, rule: Rule | None, doc: str) -> Any:
    """A field of the schema: its default, its rule (CROSS: validate's), its meaning."""
    meta = {"rule": rule, "doc": doc}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """A group of settings (theta.*, ...): a field holding its dataclass."""
    return field(default_factory=cls)


@dataclass
class Task:
    k: int = setting(5, Number(ge=2, integer=True), "classes per task (paper: 5; with one, every curve is flat)")
    n: int = setting(50, COUNT, "images per class (paper: 150, or all available when fewer)")


@dataclass(frozen=True)
class ThetaSpec:
    """theta.*: how Θ is built (and the spec's Θ: `RunSpec.theta_at`)."""

    mode: str = setting("hybrid", MODES, "hybrid (exact, but the layers whose exact Gram is costly sketched to D0: within 0.1-0.3 step of exact on average, docs/theta.md) | exact (the paper's) | trace (Θ_s ⊗ I_C, ~1/C the cost) | projected (random sketch)")
    block: int = setting(128, COUNT, "samples per side of a structured contraction block (bounds memory)")
    dim: int = setting(4096, COUNT, "projected, hybrid: sketch dimension D0")
    sketch: str = setting("countsketch", OneOf(_names("core.sketch:SKETCHES")), "projected, hybrid: countsketch (O(D) per gradient) | achlioptas | gaussian")
    chunk: int = setting(256, COUNT, "projected: samples per streamed chunk")
    memory_gb: float = setting(16.0, POSITIVE, "exact/trace (run, subset, probes): above this estimate Θ is built block pair by block pair over samples; refused (suggesting projected) when Θ alone does not fit")
    outputs: int | None = setting(None, Number(ge=1, integer=True, optional=True), "trace/projected (at w0, or at w_k by refine.theta): P random output directions estimate Θ_s from P backward passes instead of C (P = C exact); null: the C classes")

    @property
    def directions(self) -> int | None:
        """The random output directions this mode takes: none in the exact and hybrid modes
        (every class)."""
        return None if self.mode in EVERY_CLASS else self.outputs

    def unsketched(self) -> ThetaSpec:
        """The same Θ without the sketch: exact, or trace with output directions (what a
        projected Θ falls back to when building it outright costs less)."""
        if self.mode not in SKETCHED:
            return self
        return replace(self, mode="exact" if self.directions is None else "trace")


@dataclass(frozen=True)
class SubsetSpec:
    """subset.*: the subset predictor (Appendix D)."""

    n0: int = setting(100, Number(ge=2, integer=True), "samples whose Θ is computed")
    alpha: float = setting(0.15, Number(), "slope correction of the power law (paper: 0.1-0.2)")
    k0: int = setting(100, COUNT, "projections kept from the subset below this index")


@dataclass(frozen=True)
class StochasticSpec:
    """stochastic.*: the SGD predictors."""

    paths: int = setting(32, COUNT, "Monte-Carlo paths R (batch sequences / Brownian paths)")
    noise: str = setting("diagonal", OneOf(_names("core.sgd:NOISES")), "diagonal (the paper's Σ ~ diag) | full (exact, from Θ)")
    schedule: str = setting("grad_norm", OneOf(_names("core.sgd:SCHEDULES")), "grad_norm (rescale diagonal noise by |∇_f L|) | constant (Fig. 8 centre)")


@dataclass
class Refine:
    steps: int | None = setting(None, Number(ge=0, integer=True, optional=True), "k real steps the refined predictors observe; null: 10% of steps (a multiple of optim.eval_every); 0: none")
    theta: str | None = setting(None, OneOf(MODES.values, optional=True), "mode of Θ at w_k: null (theta.mode) | exact | trace (cheaper) | projected | hybrid")


@dataclass
class Watch:
    steps: Any = setting("auto", CROSS, "the watched steps: auto (0, 1, 2, 3, 4, 6, 8, 11, 16, ... x sqrt 2, below steps) | [] none | a list")
    samples: int = setting(64, COUNT, "the task's samples it is measured on (a fixed random subset; all when fewer)")
    threshold: float = setting(1.1, POSITIVE, "lr λ_max / (2 (1 + m)) at or above which a spike is announced (the edge 1, plus the watch's ~10% error)")


@dataclass
class Lora:
    rank: int | None = setting(None, Number(ge=1, integer=True, optional=True), "adapters B A of rank r on every Linear of the body, B zero at w0; null: none")
    alpha: float = setting(8.0, POSITIVE, "their scale is alpha / rank")


@dataclass
class Probe:
    sizes: list[int] = setting([25, 50, 100, 250], Each(COUNT, "must be a non-empty list of integers >= 1"), "spectrum: sizes N of the nested subsets whose Θ spectrum is taken")
    dims: list[int] = setting([64, 256, 1024, 4096], Each(COUNT, "must be a non-empty list of integers >= 1"), "projection: sketch dimensions D0 compared with the exact Θ")
    components: int = setting(5, COUNT, "clustering: principal components kept of gradients and features")


@dataclass
class Plan:
    eps: float | None = setting(None, Number(gt=0, lt=1, optional=True), "the target: T_eps of the loss at this eps (one of eps; null: the one nearest 0.05)")
    predictor: str | None = setting(None, CROSS, "null: discrete under GD, exact_sgd under SGD (a plain predictor)")
    theta: dict[str, Any] = setting({}, CROSS, "the plan's Θ: these theta.* over the run's theta.* (default: none, the run's own Θ)")
    probe_steps: int = setting(5, COUNT, "real fine-tuning steps timed per job, after one warm-up step: steps -> seconds")
    margin: float = setting(0.25, NONNEGATIVE, "recommended steps = the band's 95% point x (1 + margin); limits likewise")
    overhead_s: float | None = setting(None, Number(ge=0, optional=True), "added to every time limit besides data and model: null measures it per job (start-up, the run's own Θ builds and watch); a number fixes it")
    table: str | None = setting(None, CROSS, "launching a sweep from a plan (plan.parquet): per-job SLURM time limits")
    set_steps: bool = setting(False, Flag(), "with plan.table: each job's steps set to its recommended steps")


EPS = Each(Number(gt=0, lt=1), "must be a non-empty list of numbers in (0, 1)", distinct=True)
PROBES = Each(OneOf(_names("probes:PROBES")), "must be a list, e.g. probes=[spectrum]", empty=True)
STEPS = Number(ge=1, le=MAX_STEPS, integer=True, says=f"must be an integer in [1, {MAX_STEPS:,}] (every step's loss is kept in memory)")


@dataclass
class Settings:
    """The run config. dataset, model, optim and predictor are config groups (their keys:
    GROUP_RULES); the rest are the settings below, each overridable, e.g. `lr=0.01`."""

    dataset: Any = None
    model: Any = None
    optim: Any = None
    predictor: Any = None
    preset: str | None = setting(None, Text(optional=True), "the experiment preset a run belongs to (set by conf/experiment/*.yaml)")
    seed: int = setting(0, SEED, "drives the task, the head init and every other random choice of the run")
    task: Task = group(Task)
    lr: float = setting(0.003, POSITIVE, "learning rate η (fine-tuning regime: docs/choices.md)")
    momentum: float = setting(0.0, Number(ge=0, lt=1), "heavy-ball momentum m in [0, 1)")
    weight_decay: float = setting(0.0, NONNEGATIVE, "weight decay (the predictors model 0 only)")
    steps: int = setting(150, STEPS, "fine-tuning budget T")
    loss: str = setting("ce", OneOf(_names("core.losses:LOSSES")), "ce | mse (mean over samples; mse is 1/2 ||f - onehot||^2 per sample)")
    eps: list[float] = setting([0.01, 0.02, 0.05, 0.1, 0.2, 0.4], EPS, "T_eps thresholds, relative to the loss range")
    theta: ThetaSpec = group(ThetaSpec)
    subset: SubsetSpec = group(SubsetSpec)
    stochastic: StochasticSpec = group(StochasticSpec)
    refine: Refine = group(Refine)
    watch: Watch = group(Watch)
    trainable: str = setting("all", OneOf(TRAINABLE), "what fine-tuning trains, and Θ is built over: all | head | norm (BatchNorm, LayerNorm, GroupNorm affine) | adapters (LoRA); the new head always trains")
    lora: Lora = group(Lora)
    probes: list[str] = setting([], PROBES, "extra measurements for Figs. 3, 4, 9 (docs/probes.md): spectrum | projection | clustering | weight_function")
    probe: Probe = group(Probe)
    plan: Plan = group(Plan)
    checkpoint_s: float = setting(60.0, Number(ge=0, says="must be >= 0 (0: every step)"), "fine-tuning state saved in the run directory at most this often (s); resumed after preemption")
    device: str = setting("auto", OneOf(("auto", "cpu", "cuda")), "auto (cuda when available) | cpu | cuda")
    threads: int | None = setting(None, Number(ge=1, integer=True, optional=True), "CPU threads for torch; null: SLURM's CPUs in a SLURM job, 1 per job under the joblib launcher, else torch's default")
    cache_dir: str = setting('${oc.env:TTBENCH_CACHE,"~/.cache/ttbench"}', CROSS, "pretrained checkpoints")
    out_root: str = setting("outputs", CROSS, "run directories land under here")
    tensorboard: bool = setting(False, Flag(), "true: real and predicted curves and T_eps as TensorBoard scalars in <run dir>/tensorboard (needs ttbench[tensorboard])")


# The config groups' keys: their values are the chosen option's (its YAML), their ranges here.
GROUP_RULES: dict[str, Rule | None] = {
    "dataset.name": OneOf(_names("data.registry:DATASETS")),
    "dataset.channels": OneOf((1, 3)),
    "dataset.resolution": Number(ge=1, integer=True, optional=True),
    "dataset.source_fraction": Number(gt=0, lt=1),
    "dataset.split_seed": SEED,
    "dataset.verify": Flag(),
    "dataset._target_": Text(optional=True),
    "dataset.root": CROSS,
    "dataset.kwargs": CROSS,
    "model.name": CROSS,
    "model.source": OneOf(("timm", "torchvision")),
    "model._target_": Text(optional=True),
    "model.head_init_std": NONNEGATIVE,
    "model.width": COUNT,
    "model.patch_size": COUNT,
    "model.pretrained": CROSS,
    "model.weights": CROSS,
    "model.kwargs": CROSS,
    "model.pretrain.dataset": CROSS,
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
    "predictor.names": CROSS,
    "predictor.skip_inapplicable": Flag(),
}


def declared(cls: type = Settings, prefix: str = "") -> dict[str, Any]:
    """Each setting of the schema by its dotted key: its field (metadata: rule, doc)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if is_dataclass(f.default_factory):
            out |= declared(f.default_factory, f"{prefix}{f.name}.")
        elif "doc" in f.metadata:
            out[f"{prefix}{f.name}"] = f
    return out


_ALL = {k: f.metadata["rule"] for k, f in declared().items()} | GROUP_RULES
SETTINGS: dict[str, Rule] = {k: rule for k, rule in _ALL.items() if rule is not CROSS}
BY_RULE: tuple[str, ...] = tuple(k for k, rule in _ALL.items() if rule is CROSS)
SCHEMA = "ttbench_schema"  # its name in Hydra's ConfigStore (config.yaml's first default)


def _writable(node: DictConfig) -> DictConfig:
    """The frozen spec classes (ThetaSpec, ...) make read-only nodes: overridable here."""
    OmegaConf.set_readonly(node, None)
    for value in node.values():
        if isinstance(value, DictConfig):
            _writable(value)
    return node


def register() -> None:
    """Store the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    node = _writable(OmegaConf.structured(Settings))
    OmegaConf.set_struct(node.plan.theta, False)  # any theta.* key may be set over the run's
    ConfigStore.instance().store(name=SCHEMA, node=node)


def check_overrides(overrides: Iterable[str]) -> None:
    """Each value a command line sets (every value of a sweep) against its setting's rule,
    before Hydra merges it into a typed setting, which would convert some (`tensorboard=yes`
    to true) and refuse others with a message of its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key, rule = o.key_or_group, SETTINGS.get(o.key_or_group)
        if rule is None or o.is_delete():
            continue
        if o.is_sweep_override():  # an interval's values are a sweeper's to draw
            values = list(o.sweep_iterator()) if o.is_discrete_sweep() else []
        else:
            values = [o.value()]
        for value in values:
            if not (isinstance(value, str) and "${" in value):  # an interpolation: once resolved
                rule.check(key, value)


def refused(error: Exception) -> ConfigError:
    """A value Hydra could not merge into its typed setting (a list where a number belongs,
    a number where a group of settings does), as a ConfigError."""
    cause = error.__cause__ or error
    key = getattr(cause, "full_key", None) or "config"
    value = getattr(cause, "value", None)
    schema = OmegaConf.structured(Settings)
    node = OmegaConf.select(schema, key, default=None)
    if isinstance(node, DictConfig):
        names = list(node) or list(schema.theta)  # empty: plan.theta, which takes theta.*'s
        known = ", ".join(f"{key}.{k}" for k in names)
        return ConfigError(key, value, f"is a group of settings: set one of {known}")
    msg = str(getattr(cause, "msg", cause)).splitlines()[0]
    return ConfigError(key, value, msg)


def table() -> str:
    """The settings as a Markdown table (docs/settings.md)."""
    rows = ["| setting | default | allowed | meaning |", "|---|---|---|---|"]
    for key, f in declared().items():
        default = f.default if f.default is not MISSING else f.default_factory()
        rule = f.metadata["rule"]
        allowed = rule.range().removeprefix("must be ") if rule is not CROSS else "see its meaning"
        cells = [f"`{key}`", f"`{OmegaConf.to_yaml({'v': default})[3:].strip()}`", allowed]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in [*cells, f.metadata["doc"]]) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
