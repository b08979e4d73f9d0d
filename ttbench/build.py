"""From a run spec to the objects of a run: device, dataset, task and the model at w0. The one
path that the run and the benchmarks take (`setup`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ttbench import stages as stages_
from ttbench.data.cache import cached_task
from ttbench.data.registry import get_dataset
from ttbench.data.task import Task, sample_task
from ttbench.models.classifier import Classifier, finetune_model, set_trainable
from ttbench.models.lora import add_lora
from ttbench.models.pretrain import PretrainSpec, load_or_pretrain
from ttbench.models.zoo import (
    TIMM_MODELS,
    TTBENCH,
    WEIGHT_FILES,
    custom_classifier,
    imagenet_resnet,
    timm_classifier,
)
from ttbench.spec import RunSpec
from ttbench.stages import Stages
from ttbench.validate import CUSTOM, ConfigError, check_classes


def cpu_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: `threads` when given, else the CPUs a SLURM job was given,
    else torch's own choice; returns the number in use. torch otherwise starts a thread per
    core of the machine, and jobs sharing those cores spin in each other's barriers: two
    1-CPU jobs of the embedded default on a 2-core node fine-tuned 20 times slower."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if threads is None and cpus and cpus.isdigit() and int(cpus) > 0:
        threads = int(cpus)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def launcher_threads(launcher: str, threads: int | None) -> int | None:
    """The threads a job starts with: the `threads` setting, else one under the joblib
    launcher, whose jobs run side by side on the same cores, else None (cpu_threads decides)."""
    if threads is None and "joblib" in launcher:
        return 1
    return threads


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dataset(spec: RunSpec):
    return get_dataset(spec.dataset.name, **spec.dataset.options)


def _source_options(spec: RunSpec) -> dict:
    """The pretraining dataset's options: the run's own when it pretrains on the run's dataset
    (so that its source part is disjoint from the run's target part, and its images have the
    same size and channels), the defaults otherwise."""
    same = spec.model.pretrain.dataset == spec.dataset.name
    return dict(spec.dataset.options) if same else {}


def pretrain_spec(spec: RunSpec) -> PretrainSpec:
    p = spec.model.pretrain
    options = _source_options(spec)
    source = get_dataset(p.dataset, **options)
    small = spec.model.name == "small_resnet"
    return PretrainSpec(
        dataset=p.dataset,
        in_channels=source.in_channels,
        width=spec.model.width if small else 0,
        num_classes=source.num_classes,
        epochs=p.epochs,
        lr=p.lr,
        batch_size=p.batch_size,
        seed=p.seed,
        conv_scale=p.conv_scale,
        augment=p.augment,
        precise_bn=p.precise_bn,
        schedule=p.schedule,
        arch=spec.model.name,
        resolution=options.get("resolution"),
        patch_size=spec.model.patch_size,
        source_fraction=options.get("source_fraction", 0.5),
        split_seed=options.get("split_seed", 0),
    )


def pretrained_model(spec: RunSpec) -> Classifier:
    """A network pretrained (and cached) by ttbench on a source task (the small ResNet, or a
    torchvision ResNet with model.pretrained=ttbench), or an ImageNet ResNet from disk."""
    m = spec.model
    if m.target is not None:  # model=custom
        return custom_classifier(m.target, dict(m.kwargs))
    if m.name in WEIGHT_FILES and m.pretrained != TTBENCH:
        return imagenet_resnet(m.name, m.pretrained, m.weights, m.source)
    if m.name in TIMM_MODELS and m.pretrained != TTBENCH:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights (model.pretrained=false) are the same each run
            return timm_classifier(
                m.name,
                10,
                spec.dataset.resolution,
                m.patch_size,
                m.weights if m.pretrained else None,
            )
    pre = pretrain_spec(spec)
    source = get_dataset(pre.dataset, **_source_options(spec)).source
    return load_or_pretrain(pre, spec.cache_dir, source)


def held_out_accuracy(spec: RunSpec, model: Classifier, batch: int = 256) -> tuple[float, int]:
    """The pretrained model's accuracy on its pretraining dataset's target part (images it never
    saw, of the classes it learned), and their number: how strong the pretraining is."""
    data = get_dataset(spec.model.pretrain.dataset, **_source_options(spec))
    labels = torch.from_numpy(np.asarray(data.labels()))
    right = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            x = data.images(np.arange(start, min(start + batch, len(labels))))
            right += int((model(x).argmax(1) == labels[start : start + len(x)]).sum())
    return right / len(labels), len(labels)


def task(spec: RunSpec, data) -> Task:
    """The run's task, its images decoded once per sweep through the task cache; ConfigError
    when an SGD batch is larger than the task (classes with fewer than task.n images make
    N smaller than task.k * task.n, which validation checked)."""
    check_classes(spec.classes, len(np.unique(data.labels())), spec.dataset.name)
    if spec.dataset.name in ("digits", "custom"):  # in memory, or the user's: not cached
        t = sample_task(data, spec.classes, spec.per_class, spec.seed)
    else:
        key = (spec.dataset.name, str(spec.dataset.root), spec.dataset.resolution)
        t = cached_task(data, spec.classes, spec.per_class, spec.seed, spec.cache_dir, key)
    b = spec.train.batch_size
    if b is not None and b > t.n_samples:
        raise ConfigError(
            "optim.batch_size", b, f"must be <= N = {t.n_samples}, the images of this task"
        )
    return t


@dataclass
class Setup:
    """A run's device, task (on the device) and pretrained model."""

    spec: RunSpec
    device: torch.device
    task: Task
    x: torch.Tensor
    y: torch.Tensor
    pretrained: Classifier

    def model(self) -> Classifier:
        """A fresh fine-tuning model at w0: the pretrained body, the seed's k-way head, the
        adapters (drawn from the seed), and the weights that train set (spec.finetune)."""
        spec = self.spec
        model = finetune_model(
            self.pretrained, self.task.n_classes, spec.model.head_init_std, spec.seed
        )
        if spec.finetune.lora_rank is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                add_lora(model.body, spec.finetune.lora_rank, spec.finetune.lora_alpha)
        set_trainable(model, spec.finetune.trainable)
        return model.to(self.device)


def setup(spec: RunSpec, stages: Stages | None = None) -> Setup:
    """Device, task and pretrained model of a run (timed as the stages data and model)."""
    dev = device(spec.device)
    stages = stages or Stages(dev)
    with stages(stages_.DATA):
        t = task(spec, dataset(spec))
        x, y = t.x.to(dev), t.y.to(dev)
    with stages(stages_.MODEL):
        pretrained = pretrained_model(spec)
    if CUSTOM in (spec.model.name, spec.dataset.name):
        takes_images(spec, pretrained, t.x[:2])
    return Setup(spec, dev, t, x, y, pretrained)


def takes_images(spec: RunSpec, model: Classifier, x: torch.Tensor) -> None:
    """A plug-in model or data set, checked before any compute: the model's forward on two of
    the task's images; a ConfigError naming the shape when it fails."""
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as e:  # whatever the user's forward raises, one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            "model",
            spec.model.target or spec.model.name,
            f"its forward fails on images of shape {tuple(x.shape)} from dataset "
            f"{spec.dataset.name} ({type(e).__name__}: {first[:200]})",
        ) from None
