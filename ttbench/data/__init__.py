"""Datasets and fine-tuning tasks. A dataset exposes the labels of its target pool (to sample a
task without decoding images) and decodes only the images a task selects."""

from ttbench.data.registry import DATASETS, get_dataset
from ttbench.data.task import Task, sample_task

__all__ = ["DATASETS", "Task", "get_dataset", "sample_task"]
