"""The default network: a small ResNet (stem + 3 basic blocks of widths w, 2w, 4w, BatchNorm).

At w = 48 it has about 690k weights; how well its linearisation predicts fine-tuning on the
digits data is measured in docs/choices.md.
"""

from __future__ import annotations

from torch import nn

from ttbench.models.classifier import Classifier


def _conv_bn(cin: int, cout: int, stride: int, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            *_conv_bn(cin, cout, stride), nn.ReLU(), *_conv_bn(cout, cout, 1)
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(*_conv_bn(cin, cout, stride, kernel=1))
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.residual(x) + self.shortcut(x))


def small_resnet(in_channels: int = 1, width: int = 48, num_classes: int = 10) -> Classifier:
    body = nn.Sequential(
        *_conv_bn(in_channels, width, 1),
        nn.ReLU(),
        BasicBlock(width, width, 1),
        BasicBlock(width, 2 * width, 2),
        BasicBlock(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(body, nn.Linear(4 * width, num_classes))
