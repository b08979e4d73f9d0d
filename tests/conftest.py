from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ttbench.cli import CONF_DIR
from ttbench.core.linearize import linearize
from ttbench.models.small_resnet import small_resnet

REPO = Path(__file__).resolve().parent.parent

# Overrides that keep a whole run to a few seconds: a 4-wide network pretrained for one epoch.
TINY = ["model.width=4", "model.pretrain.epochs=1", "task.n=6", "steps=4"]


def compose_cfg(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides or [])


def run_cli(
    module: str, *args: str, cwd: Path, cache: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTBENCH_CACHE": str(cache), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def problem():
    """A small ResNet in float64 with a large head, 12 inputs, 3 classes, and its Theta."""
    torch.manual_seed(0)
    model = small_resnet(1, 4, 3).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(10)
    x = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(12) % 3
    return model, x, y, linearize(model, x)
