from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttbench import cli, record
from ttbench.build import pretrained_model
from ttbench.config import compose
from ttbench.core.linearize import linearize
from ttbench.models.small_resnet import small_resnet
from ttbench.run import task
from ttbench.runid import RunId
from ttbench.spec import RunSpec
from ttbench.validate import check_cli, validate

REPO = Path(__file__).resolve().parent.parent

# Overrides that keep a whole run to a few seconds: a 4-wide network pretrained for one epoch.
TINY = ["model.width=4", "model.pretrain.epochs=1", "task.n=6", "steps=4"]


def compose_cfg(overrides: list[str] | None = None, hydra: bool = False):
    return compose(overrides or [], hydra=hydra)


def run_id(overrides: list[str]) -> RunId:
    return RunId.of(spec_of(list(overrides)).config, overrides)


def run_dir(root: Path, overrides: list[str]) -> Path:
    """A run's directory under root, as `python -m ttbench.run` picks it."""
    return run_id(overrides).directory(root)


def spec_of(overrides: list[str] | None = None) -> RunSpec:
    return validate(compose_cfg(overrides))


def run_in_process(overrides: list[str], out: Path, cache: Path) -> record.Record:
    """One run as `python -m ttbench.run <overrides>` does it, in this process: compose, then
    the task function (validation, run, record, summary) into `out`."""
    return task(compose_cfg([*overrides, f"cache_dir={cache}"]), out, list(overrides))


def cli_error(args: list[str], tmp_path: Path, capsys) -> str:
    """What `python -m ttbench.run <args>` prints for bad input, in this process: the checks
    before Hydra, then the task function; asserts one line, no traceback, exit status 2."""
    with pytest.raises(SystemExit) as e, cli.one_line_errors():
        check_cli(args, str(tmp_path / "outputs"))
        task(compose_cfg(args), tmp_path / "run", args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_cli(
    module: str, *args: str, cwd: Path, cache: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """A command as a user types it, for tests where the process boundary is the point."""
    env = {**os.environ, "TTBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache shared by the whole session, holding the TINY pretrained checkpoint, so that
    no test pays for pretraining it again."""
    d = tmp_path_factory.mktemp("cache")
    pretrained_model(spec_of([*TINY, f"cache_dir={d}"]))
    return d


@pytest.fixture
def fresh_cache(tmp_path: Path) -> Path:
    """An empty cache, for tests about what happens on first use."""
    d = tmp_path / "fresh-cache"
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
