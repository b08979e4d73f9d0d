from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ttbench.cli import CONF_DIR

REPO = Path(__file__).resolve().parent.parent

# Overrides that keep a whole run to a few seconds: a 4-wide network pretrained for one epoch.
TINY = ["model.width=4", "model.pretrain.epochs=1", "task.n=6", "steps=4"]


def compose_cfg(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides or [])


def run_cli(module: str, *args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTBENCH_CACHE": str(cache)}
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
