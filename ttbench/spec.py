"""The typed run specification: one run's settings, built once from the composed config by
`ttbench.validate.validate`. Everything below the entry points takes these plain values, never
the config itself. Where a group of settings is its own spec as given (theta.*, subset.*,
stochastic.*), the spec class is the schema's (ttbench.settings); the others are resolved
(`refine.steps` null is 10% of `steps`, `watch.steps` auto a schedule) or gathered."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ttbench import runid
from ttbench.settings import StochasticSpec, SubsetSpec, ThetaSpec


@dataclass(frozen=True)
class Training:
    """How the network is fine-tuned, and so what the predictors integrate."""

    optimizer: str  # "gd" (full batch) | "sgd" (mini-batches)
    lr: float
    momentum: float
    weight_decay: float
    steps: int  # the budget T
    loss: str
    eval_every: int  # the whole-task loss is recorded every this many steps
    smooth: int  # centred moving-average window (recorded points) before T_eps
    batch_size: int | None = None  # sgd only
    sampling: str | None = None  # sgd only: with_replacement | epoch

    @property
    def dynamics(self) -> dict[str, Any]:
        """The keyword arguments every ttbench.core predictor takes."""
        return {"lr": self.lr, "momentum": self.momentum, "steps": self.steps, "loss": self.loss}


@dataclass(frozen=True)
class RefineSpec:
    steps: int  # k: real steps the refined predictors observe (0: none)
    theta: str | None = None  # the mode of Theta at w_k (None: theta.mode)


@dataclass(frozen=True)
class WatchSpec:
    """The stability watched along the real fine-tuning (ttbench.core.stability)."""

    steps: tuple[int, ...]  # the watched steps, below the budget
    samples: int  # the task's samples it is measured on (a fixed random subset)
    threshold: float  # at or above it a spike is announced


@dataclass(frozen=True)
class PlanSpec:
    """Planning a sweep without training (ttbench.plan), and launching one from a plan."""

    eps: float  # the target: T_eps of the loss at this eps
    predictor: str  # the plain predictor the plan solves
    theta: ThetaSpec  # the plan's Theta: theta.* with plan.theta.* over it
    probe_steps: int  # real steps timed per job, after one warm-up step
    margin: float  # recommended steps: the band's 95% point x (1 + margin)
    overhead_s: float | None  # added to every time limit (None: measured per job)
    table: str | None  # launching: the plan whose time limits (and steps) the jobs take
    set_steps: bool  # launching: each job's steps from the plan


@dataclass(frozen=True)
class ProbeSpec:
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    dims: tuple[int, ...]
    components: int


@dataclass(frozen=True)
class PretrainSettings:
    """How ttbench pretrains the small ResNet on a source task (models.pretrain)."""

    dataset: str
    epochs: int
    lr: float
    batch_size: int
    seed: int
    conv_scale: float
    augment: bool = False  # random affine copies of the source images every epoch
    precise_bn: bool = False  # BatchNorm statistics recomputed over the source after training
    schedule: str = "constant"  # the learning rate: constant | onecycle


@dataclass(frozen=True)
class ModelSpec:
    name: str
    head_init_std: float
    width: int | None = None  # small_resnet
    pretrain: PretrainSettings | None = None  # small_resnet
    source: str | None = None  # ImageNet ResNets: torchvision | timm
    pretrained: bool | str = True  # ImageNet weights, none, or "ttbench": pretrained by ttbench
    weights: str | None = None
    patch_size: int | None = None  # a ViT's
    target: str | None = None  # model=custom: the callable that builds it
    kwargs: tuple[tuple[str, Any], ...] = ()  # and its keyword arguments


@dataclass(frozen=True)
class FinetuneSpec:
    """Which weights fine-tuning trains (and Theta is built over), and the adapters."""

    trainable: str  # all | head | norm | adapters (the head always trains)
    lora_rank: int | None  # LoRA on every Linear of the body (None: none)
    lora_alpha: float  # the adapters' scale is alpha / rank


@dataclass(frozen=True)
class DataSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # the reader's keyword arguments

    @property
    def root(self) -> str | None:
        return self.options.get("root")

    @property
    def resolution(self) -> int | None:
        return self.options.get("resolution")


@dataclass(frozen=True)
class RunSpec:
    seed: int  # drives every random choice of the run
    dataset: DataSpec
    model: ModelSpec
    classes: int  # task.k: classes per task
    per_class: int  # task.n: images per class
    train: Training
    eps: tuple[float, ...]
    predictors: tuple[str, ...]  # those that apply, in the config's order
    theta: ThetaSpec
    subset: SubsetSpec
    stochastic: StochasticSpec
    refine: RefineSpec
    watch: WatchSpec
    probes: ProbeSpec
    plan: PlanSpec
    finetune: FinetuneSpec
    device: str
    threads: int | None  # CPU threads (None: build.cpu_threads decides)
    cache_dir: Path
    checkpoint_s: float
    preset: str | None
    config: dict[str, Any] = field(compare=False, repr=False)  # resolved, as recorded
    tensorboard: bool = False  # curves and T_eps also as TensorBoard scalars

    def theta_at(self, refined: bool) -> ThetaSpec:
        """The Θ a run builds at w0, or at a refinement's w_k (refine.theta's mode there)."""
        if refined and self.refine.theta is not None:
            return replace(self.theta, mode=self.refine.theta)
        return self.theta

    def identity(self) -> dict[str, Any]:
        """The settings that determine the run's result (ttbench.runid)."""
        return runid.identity(self.config)
