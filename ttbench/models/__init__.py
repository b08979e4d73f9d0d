"""Networks to fine-tune: a pretrained body, a fresh linear head, BatchNorm frozen."""

from ttbench.models.classifier import Classifier, finetune_model
from ttbench.models.small_resnet import small_resnet

__all__ = ["Classifier", "finetune_model", "small_resnet"]
