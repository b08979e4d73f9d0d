"""From a validated config to the objects of a run: device, dataset, pretrained model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from ttbench.data.registry import get_dataset
from ttbench.models.classifier import Classifier
from ttbench.models.pretrain import PretrainSpec, load_or_pretrain
from ttbench.models.zoo import WEIGHT_FILES, imagenet_resnet


def cpu_threads() -> int:
    """Use only the CPUs a SLURM job was given. torch otherwise starts a thread per core of
    the node, and jobs sharing those cores then spin in each other's barriers: two 1-CPU jobs
    of the embedded default on a 2-core node fine-tuned 20 times slower."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))
    return torch.get_num_threads()


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dataset(cfg: DictConfig):
    options = {k: v for k, v in cfg.dataset.items() if k != "name"}
    return get_dataset(cfg.dataset.name, **options)


def pretrain_spec(cfg: DictConfig) -> PretrainSpec:
    p = cfg.model.pretrain
    source = get_dataset(p.dataset)
    return PretrainSpec(
        dataset=p.dataset,
        in_channels=source.in_channels,
        width=cfg.model.width,
        num_classes=source.num_classes,
        epochs=p.epochs,
        lr=p.lr,
        batch_size=p.batch_size,
        seed=p.seed,
        conv_scale=p.conv_scale,
    )


def pretrained_model(cfg: DictConfig) -> Classifier:
    """The small ResNet pretrained (and cached) by ttbench, or an ImageNet ResNet from disk."""
    if cfg.model.name in WEIGHT_FILES:
        m = cfg.model
        return imagenet_resnet(m.name, m.pretrained, m.weights, m.source)
    spec = pretrain_spec(cfg)
    return load_or_pretrain(
        spec, Path(cfg.cache_dir).expanduser(), get_dataset(spec.dataset).source
    )
